"""System checks (``manage.py check``, and every ``runserver`` start): a
misconfiguration is reported before the first request, not found in a log."""

from __future__ import annotations

import difflib
from typing import Any

from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from . import brokers, conf

MIDDLEWARE = "session_guard_django.middleware.SessionGuardMiddleware"
SESSION_MIDDLEWARE = "django.contrib.sessions.middleware.SessionMiddleware"
AUTH_MIDDLEWARE = "django.contrib.auth.middleware.AuthenticationMiddleware"
#: Cache backends that keep data in one process: the listener's records
#: would never reach the web processes.
PROCESS_LOCAL_CACHES = (
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
)
#: AMQP's limit on exchange and queue names, in bytes.
MAX_NAME_BYTES = 255


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    messages += _unknown_settings()
    if not conf.raw("ENABLED"):
        return messages
    messages += _app()
    messages += _url()
    messages += _names()
    messages += _numbers()
    messages += _middleware()
    messages += _signed_cookies()
    messages += _cached_sessions()
    header = conf.raw("CLIENT_IP_HEADER")
    if header is not None and (not isinstance(header, str) or not header):
        messages.append(
            Error(
                "SESSION_GUARD_CLIENT_IP_HEADER must be a request.META key such as "
                "'HTTP_X_FORWARDED_FOR', or None for REMOTE_ADDR.",
                id="session_guard.E007",
            )
        )
    return messages


def _unknown_settings() -> list[CheckMessage]:
    known = [conf.PREFIX + name for name in conf.DEFAULTS]
    messages: list[CheckMessage] = []
    for name in dir(django_settings):
        if name.startswith(conf.PREFIX) and name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"Did you mean {close[0]}?" if close else f"Known: {', '.join(known)}."
            messages.append(
                Warning(f"Unknown setting {name}: it has no effect.", hint=hint, id="session_guard.W001")
            )
    return messages


def _app() -> list[CheckMessage]:
    app = conf.raw("APP")
    if app is None:
        return [
            Error(
                "SESSION_GUARD_APP is not set: session-guard needs the app's name.",
                hint="Set it to the name this app has in session-guard, e.g. 'shop'.",
                id="session_guard.E001",
            )
        ]
    if not isinstance(app, str) or not conf.APP_NAME.match(app):
        return [
            Error(
                f"SESSION_GUARD_APP={app!r} is not an app name session-guard accepts.",
                hint="1-64 characters of A-Z a-z 0-9 _ . -",
                id="session_guard.E001",
            )
        ]
    return []


def _url() -> list[CheckMessage]:
    """Each URL of SESSION_GUARD_AMQP_URL (one, a list, or comma-separated):
    usable by pika, and all logging in as the same user. Passwords are
    masked in every message."""
    value = conf.raw("AMQP_URL")
    urls = brokers.urls_of(value)
    hint = (
        "e.g. 'amqp://shop:secret@mq.internal:5672/%2f' (the vhost is the path), or a cluster's "
        "nodes: a list of such URLs, or one string of them separated by commas."
    )
    if not urls or (isinstance(value, (list, tuple)) and not value):
        return [Error("SESSION_GUARD_AMQP_URL is an empty list: it needs at least one broker URL.", hint=hint, id="session_guard.E002")]
    messages: list[CheckMessage] = []
    strings = [url for url in urls if isinstance(url, str)]
    for position, url in enumerate(urls, start=1):
        problem = None
        if not isinstance(url, str) or not url.startswith(("amqp://", "amqps://")):
            problem = "must start with amqp:// or amqps://"
        else:
            try:
                import pika

                pika.URLParameters(url)
            except Exception as error:
                problem = brokers.scrub(str(error), strings)
        if problem is None:
            continue
        shown = brokers.mask(url) if isinstance(url, str) else repr(url)
        which = f"URL {position} of {len(urls)} ({shown})" if len(urls) > 1 else shown
        messages.append(
            Error(
                f"SESSION_GUARD_AMQP_URL: {which} is not a usable broker URL: {problem}.",
                hint=hint,
                id="session_guard.E002",
            )
        )
    if not messages and len(urls) > 1:
        try:
            brokers.common_user(strings)
        except ValueError as error:
            messages.append(
                Error(
                    f"{error}.",
                    hint="Give every node of the cluster the app's own user (users and their "
                    "permissions are shared by a cluster's nodes anyway).",
                    id="session_guard.E011",
                )
            )
    return messages


def _names() -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    for name in ("EVENTS_EXCHANGE", "REVOCATIONS_EXCHANGE", "REVOKE_QUEUE", "NOTICES_EXCHANGE", "NOTICE_QUEUE"):
        value = conf.raw(name)
        if name in ("REVOKE_QUEUE", "NOTICE_QUEUE") and value is None:
            continue
        if not isinstance(value, str) or not value or len(value.encode()) > MAX_NAME_BYTES:
            messages.append(
                Error(
                    f"SESSION_GUARD_{name}={value!r} is not a broker name: "
                    f"1-{MAX_NAME_BYTES} bytes of text.",
                    id="session_guard.E003",
                )
            )
        elif value.startswith("amq."):
            messages.append(
                Error(
                    f"SESSION_GUARD_{name}={value!r}: names starting with 'amq.' are reserved by RabbitMQ.",
                    id="session_guard.E003",
                )
            )
    return messages


def _numbers() -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    for name in (
        "BUFFER_SIZE",
        "MAX_IN_FLIGHT",
        "LISTEN_PREFETCH",
        "RECENT_SESSIONS",
        "QUORUM_INITIAL_GROUP_SIZE",
        "NOTICE_SEEN_SECONDS",
    ):
        value = conf.raw(name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 1_000_000:
            messages.append(
                Error(f"SESSION_GUARD_{name}={value!r} must be a whole number from 1 to 1000000.", id="session_guard.E004")
            )
    attempts = conf.raw("LISTEN_MAX_ATTEMPTS")
    if not isinstance(attempts, int) or isinstance(attempts, bool) or not 1 <= attempts <= 1000:
        messages.append(
            Error(
                f"SESSION_GUARD_LISTEN_MAX_ATTEMPTS={attempts!r} must be a whole number from 1 to 1000.",
                id="session_guard.E004",
            )
        )
    for name in ("MAX_BACKOFF", "EXIT_FLUSH_TIMEOUT"):
        value = conf.raw(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            messages.append(Error(f"SESSION_GUARD_{name}={value!r} must be a number of seconds above 0.", id="session_guard.E004"))
    interval = conf.raw("REQUEST_INTERVAL")
    if not isinstance(interval, (int, float)) or isinstance(interval, bool) or not 0 <= interval <= 86_400:
        messages.append(
            Error(
                f"SESSION_GUARD_REQUEST_INTERVAL={interval!r} must be a number of seconds from 0 "
                "(every request) to 86400.",
                id="session_guard.E004",
            )
        )
    return messages


def _middleware() -> list[CheckMessage]:
    middleware = list(getattr(django_settings, "MIDDLEWARE", None) or [])
    if MIDDLEWARE not in middleware:
        return [
            Warning(
                f"{MIDDLEWARE} is not in MIDDLEWARE: requests are not reported, so sessions "
                "look idle to session-guard, and revoked signed-cookie sessions are not refused.",
                hint="Add it after SessionMiddleware and AuthenticationMiddleware.",
                id="session_guard.W005",
            )
        ]
    ours = middleware.index(MIDDLEWARE)
    for needed in (SESSION_MIDDLEWARE, AUTH_MIDDLEWARE):
        if needed in middleware and middleware.index(needed) > ours:
            return [
                Error(
                    f"{MIDDLEWARE} comes before {needed} in MIDDLEWARE: it would never see a user.",
                    hint="Move it after SessionMiddleware and AuthenticationMiddleware.",
                    id="session_guard.E005",
                )
            ]
    return []


def _signed_cookies() -> list[CheckMessage]:
    if not conf.signed_cookies():
        return []
    alias = conf.raw("REVOKED_CACHE")
    caches = getattr(django_settings, "CACHES", {})
    if alias not in caches:
        return [
            Error(
                f"SESSION_GUARD_REVOKED_CACHE={alias!r} is not in CACHES.",
                id="session_guard.E006",
            )
        ]
    backend = caches[alias].get("BACKEND", "")
    if backend in PROCESS_LOCAL_CACHES:
        return [
            Error(
                f"Sessions are signed cookies and SESSION_GUARD_REVOKED_CACHE={alias!r} uses "
                f"{backend}: the listener's record of revoked sessions would not reach the web "
                "processes, so revoked sessions would stay logged in.",
                hint="Use a cache all processes share (Redis, Memcached, database or file cache).",
                id="session_guard.E006",
            )
        ]
    return []


#: Session engines that keep sessions (or a copy of them) in SESSION_CACHE_ALIAS.
CACHE_ENGINES = (
    "django.contrib.sessions.backends.cache",
    "django.contrib.sessions.backends.cached_db",
)


def _cached_sessions() -> list[CheckMessage]:
    engine = getattr(django_settings, "SESSION_ENGINE", "")
    if engine not in CACHE_ENGINES:
        return []
    alias = getattr(django_settings, "SESSION_CACHE_ALIAS", "default")
    backend = getattr(django_settings, "CACHES", {}).get(alias, {}).get("BACKEND", "")
    if backend not in PROCESS_LOCAL_CACHES:
        return []
    return [
        Error(
            f"SESSION_ENGINE {engine} keeps sessions in the cache {alias!r}, which uses "
            f"{backend}: each process has its own, so the listener's deletes would never "
            "reach the web processes, and revoked sessions would stay logged in.",
            hint="Use a cache all processes share (Redis, Memcached, database or file cache) "
            "for SESSION_CACHE_ALIAS.",
            id="session_guard.E008",
        )
    ]


@register(Tags.urls)
def check_devices_page(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The "Your devices" page (urls.py) is included but cannot reach the
    sessions API: every visit would answer "unavailable"."""
    from django.urls import NoReverseMatch, reverse

    try:
        reverse("session_guard_django:devices")
    except NoReverseMatch:
        return []  # not included: the settings are not needed
    except Exception:
        return []  # a broken URLconf: Django's own URL checks report it
    messages: list[CheckMessage] = []
    missing = [f"SESSION_GUARD_{name}" for name in ("API_URL", "API_TOKEN") if not conf.raw(name)]
    if missing:
        messages.append(
            Error(
                f"session_guard_django.urls is included but {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set: the devices page cannot reach the sessions API.",
                hint="Set SESSION_GUARD_API_URL to the worker's api.listen (e.g. 'http://127.0.0.1:9465') and "
                "SESSION_GUARD_API_TOKEN to a token of `session-guard tokens create NAME --apps APP "
                "--scopes sessions:read,sessions:revoke`, read from the environment.",
                id="session_guard.E009",
            )
        )
    url = conf.raw("API_URL")
    if url and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
        messages.append(
            Error(
                f"SESSION_GUARD_API_URL={url!r} must start with http:// or https://.",
                id="session_guard.E010",
            )
        )
    timeout = conf.raw("API_TIMEOUT")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= 60:
        messages.append(
            Error(f"SESSION_GUARD_API_TIMEOUT={timeout!r} must be a number of seconds above 0, at most 60.", id="session_guard.E010")
        )
    return messages
