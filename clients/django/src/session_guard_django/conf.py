"""The package's settings, read once from Django's settings and checked.

Every setting is optional but ``SESSION_GUARD_APP``; the defaults match the
worker's own defaults (config/default.toml), so an app and a worker that both
keep them find each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from . import brokers

#: Prefix of every setting of this package: any other setting that starts
#: with it is a typo, reported by ``manage.py check``.
PREFIX = "SESSION_GUARD_"

#: An app name as the worker accepts it (docs/PROTOCOL.md): it is also the
#: routing key suffix of the app's revokes.
APP_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

#: Every setting and its default.
DEFAULTS: dict[str, Any] = {
    # Publishing on/off: off in a dev shell without a broker, say.
    "ENABLED": True,
    # The broker, with the app's own user (see the worker's amqp.require_user_id);
    # or a cluster's nodes: a list of URLs, or one string of them separated by
    # commas (brokers.py), all logging in as that user.
    "AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/%2f",
    # The app's name in session-guard: 1-64 chars of A-Z a-z 0-9 _ . -
    "APP": None,
    # The worker's amqp.events_exchange and amqp.revocations_exchange.
    "EVENTS_EXCHANGE": "session_guard.events",
    "REVOCATIONS_EXCHANGE": "session_guard.revocations",
    # The app's durable revoke queue, shared by its listeners; None = "<app>.revocations".
    "REVOKE_QUEUE": None,
    # Listener: consume the app's notices too (signals.new_device_login).
    "LISTEN_NOTICES": True,
    # The worker's amqp.notices_exchange.
    "NOTICES_EXCHANGE": "session_guard.notices",
    # The app's durable notice queue, shared by its listeners; None = "<app>.notices".
    "NOTICE_QUEUE": None,
    # Cache alias that remembers the notices handled, so that a re-sent one
    # (at-least-once delivery) sends no second signal; None = remember none.
    "NOTICE_CACHE": "default",
    # Seconds a handled notice is remembered.
    "NOTICE_SEEN_SECONDS": 86_400,
    # None = REMOTE_ADDR; else a request.META key such as "HTTP_X_FORWARDED_FOR"
    # (its last address: the one your own proxy appended).
    "CLIENT_IP_HEADER": None,
    # Events held per process while the broker is away or slower than the app.
    "BUFFER_SIZE": 10_000,
    # Unconfirmed publishes at once.
    "MAX_IN_FLIGHT": 1_000,
    # Longest pause, in seconds, between two connection attempts.
    "MAX_BACKOFF": 10.0,
    # Send group names as attributes.roles: read at login and when they
    # change (one query then), never per request.
    "SEND_ROLES": True,
    # Seconds between two request events of one session, at least: the rest
    # are counted and dropped. 0 = every request. Default: the worker's
    # worker.last_seen_resolution_ms (1 s), below which it writes nothing.
    "REQUEST_INTERVAL": 1.0,
    # Slots of the table the app's processes on a host share to remember
    # sessions for that interval (coalesce.py): 8 bytes each.
    "RECENT_SESSIONS": 10_000,
    # Cache alias where the listener records revoked keys of signed-cookie
    # sessions, for the middleware to refuse them.
    "REVOKED_CACHE": "default",
    # Listener: deliveries of one revoke before it is dead-lettered.
    "LISTEN_MAX_ATTEMPTS": 5,
    # Listener: revokes the broker may push before they are acked.
    "LISTEN_PREFETCH": 32,
    # Listener: replicas of the quorum queues it declares (a cluster's nodes;
    # a smaller cluster gets one per node), as the worker's
    # amqp.quorum_initial_group_size.
    "QUORUM_INITIAL_GROUP_SIZE": 3,
    # Seconds the process waits at exit for buffered events to be confirmed.
    "EXIT_FLUSH_TIMEOUT": 2.0,
    # The sessions API ("Your devices" page, views.py): the worker's
    # api.listen as a URL, e.g. "http://127.0.0.1:9465". None = no page.
    "API_URL": None,
    # A token of `session-guard tokens create` with sessions:read and
    # sessions:revoke; kept server-side, never sent to the browser.
    "API_TOKEN": None,
    # Seconds one API call may take: the page answers "unavailable" after
    # that rather than holding a web worker.
    "API_TIMEOUT": 3.0,
}


@dataclass(frozen=True)
class GuardSettings:
    """The effective settings. Build with :func:`get`; never raises: bad
    values are reported by the system checks (``checks.py``)."""

    enabled: bool
    #: The broker URLs, in the order given (one for a single broker).
    amqp_urls: tuple[str, ...]
    app: str | None
    events_exchange: str
    revocations_exchange: str
    revoke_queue: str
    listen_notices: bool
    notices_exchange: str
    notice_queue: str
    notice_cache: str | None
    notice_seen_seconds: int
    client_ip_header: str | None
    buffer_size: int
    max_in_flight: int
    max_backoff: float
    send_roles: bool
    request_interval: float
    recent_sessions: int
    revoked_cache: str
    listen_max_attempts: int
    listen_prefetch: int
    quorum_initial_group_size: int
    exit_flush_timeout: float

    @property
    def amqp_url(self) -> str:
        """The broker URLs in one string, comma-separated (the setting's
        string form): for what names the broker, never for a message (it
        holds the passwords; see brokers.mask)."""
        return ",".join(self.amqp_urls)

    @property
    def dead_letter_queue(self) -> str:
        """Where revokes the listener cannot handle end up: an exchange and
        a queue of this name, as the Rust client declares them."""
        return f"{self.revoke_queue}.dead"

    @property
    def notice_dead_letter_queue(self) -> str:
        """Where notices the listener cannot handle end up, likewise."""
        return f"{self.notice_queue}.dead"

    @property
    def app_valid(self) -> bool:
        return self.app is not None and APP_NAME.match(self.app) is not None


_cached: GuardSettings | None = None
_signed: bool | None = None

#: Django's signed-cookie session engine: sessions kept in the client's
#: cookie, which no server-side delete can end.
SIGNED_COOKIES_ENGINE = "django.contrib.sessions.backends.signed_cookies"


def signed_cookies() -> bool:
    """Whether SESSION_ENGINE keeps sessions in signed cookies (that engine
    or a subclass of its store)."""
    global _signed
    if _signed is None:
        from importlib import import_module

        from django.contrib.sessions.backends import signed_cookies as signed

        engine = import_module(django_settings.SESSION_ENGINE)
        store = getattr(engine, "SessionStore", None)
        _signed = isinstance(store, type) and issubclass(store, signed.SessionStore)
    return _signed


def raw(name: str) -> Any:
    """One setting's value as given, or its default."""
    return getattr(django_settings, PREFIX + name, DEFAULTS[name])


def get() -> GuardSettings:
    """The settings, read once per process (and again after a test changes
    them with ``override_settings``)."""
    global _cached
    if _cached is None:
        app = raw("APP")
        queue = raw("REVOKE_QUEUE") or f"{app}.revocations"
        notice_cache = raw("NOTICE_CACHE")
        _cached = GuardSettings(
            enabled=bool(raw("ENABLED")),
            amqp_urls=tuple(str(url) for url in brokers.urls_of(raw("AMQP_URL"))),
            app=app,
            events_exchange=str(raw("EVENTS_EXCHANGE")),
            revocations_exchange=str(raw("REVOCATIONS_EXCHANGE")),
            revoke_queue=str(queue),
            listen_notices=bool(raw("LISTEN_NOTICES")),
            notices_exchange=str(raw("NOTICES_EXCHANGE")),
            notice_queue=str(raw("NOTICE_QUEUE") or f"{app}.notices"),
            notice_cache=None if notice_cache is None else str(notice_cache),
            notice_seen_seconds=_int(raw("NOTICE_SEEN_SECONDS"), DEFAULTS["NOTICE_SEEN_SECONDS"]),
            client_ip_header=raw("CLIENT_IP_HEADER"),
            buffer_size=_int(raw("BUFFER_SIZE"), DEFAULTS["BUFFER_SIZE"]),
            max_in_flight=_int(raw("MAX_IN_FLIGHT"), DEFAULTS["MAX_IN_FLIGHT"]),
            max_backoff=_float(raw("MAX_BACKOFF"), DEFAULTS["MAX_BACKOFF"]),
            send_roles=bool(raw("SEND_ROLES")),
            request_interval=_seconds_or_zero(raw("REQUEST_INTERVAL"), DEFAULTS["REQUEST_INTERVAL"]),
            recent_sessions=_int(raw("RECENT_SESSIONS"), DEFAULTS["RECENT_SESSIONS"]),
            revoked_cache=str(raw("REVOKED_CACHE")),
            listen_max_attempts=_int(raw("LISTEN_MAX_ATTEMPTS"), DEFAULTS["LISTEN_MAX_ATTEMPTS"]),
            listen_prefetch=_int(raw("LISTEN_PREFETCH"), DEFAULTS["LISTEN_PREFETCH"]),
            quorum_initial_group_size=_int(
                raw("QUORUM_INITIAL_GROUP_SIZE"), DEFAULTS["QUORUM_INITIAL_GROUP_SIZE"]
            ),
            exit_flush_timeout=_float(raw("EXIT_FLUSH_TIMEOUT"), DEFAULTS["EXIT_FLUSH_TIMEOUT"]),
        )
    return _cached


def _int(value: Any, default: int) -> int:
    # A bad value is the checks' to report; here it falls back so that a
    # request never fails over a setting.
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def _float(value: Any, default: float) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    return float(value) if ok else default


def _seconds_or_zero(value: Any, default: float) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    return float(value) if ok else default


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    """Re-read on the next use when a test overrides one of our settings
    (or the session and cache settings the middleware and listener depend
    on). The publisher restarts on the same signal (publisher.py)."""
    global _cached, _signed
    if setting.startswith("SESSION_") or setting == "CACHES":
        _cached = None
        _signed = None
