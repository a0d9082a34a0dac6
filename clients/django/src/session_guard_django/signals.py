"""The package's own signal, :data:`new_device_login`, and the receivers of
Django's login and logout signals: they publish ``login`` (with the user's
claims, see attributes.py) and ``logout``. Connected in ``apps.py`` with
``weak=False`` (plain functions, but the habit avoids receivers collected by
accident).
"""

from __future__ import annotations

import time
from typing import Any

from django.dispatch import Signal
from django.http import HttpRequest

from . import attributes, events, publisher
from .buffer import Event

#: Sent by ``manage.py session_guard_listen`` (in its process, not the web
#: server's) for each notice session-guard publishes for this app: a user
#: signed in from a device, or a network, that none of their sessions in any
#: app used within the worker's ``notices.lookback``. Arguments:
#:
#: - ``sender``: the :class:`~session_guard_django.notices.Notice` class;
#: - ``user``: the user, ``get_user_model()``'s instance whose primary key is
#:   the notice's ``user_id``. A notice for a user that does not exist (any
#:   more) sends no signal: it is acked and logged at INFO;
#: - ``notice``: the :class:`~session_guard_django.notices.Notice` (its
#:   ``type``: ``"new_device"``, ``"new_network"`` or a kind added later;
#:   ``device``, ``ip``, ``signed_in_at``, ``session``, ``event_id``...);
#: - ``delivery_count``: deliveries of this notice before this one (0 the
#:   first time).
#:
#: Sent once per notice: a re-sent notice (same ``event_id``) is dropped if
#: SESSION_GUARD_NOTICE_CACHE remembers it (see the README). A receiver that
#: raises makes the notice come again (every receiver is called again), up
#: to SESSION_GUARD_LISTEN_MAX_ATTEMPTS deliveries, then it is dead-lettered
#: to ``<app>.notices.dead``.
new_device_login = Signal()

#: Set on the request so that the middleware adds no event of its own
#: (middleware.py reads it).
SIGNALLED = "_session_guard_signalled"

_warnings = publisher.RateLimitedWarning()


def on_login(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """``login()`` has already given the session a new key (or flushed it)
    when it sends ``user_logged_in``."""
    if request is None or not hasattr(request, "session") or publisher.get() is None:
        return
    setattr(request, SIGNALLED, True)
    try:
        at = time.time()  # before the claims are read: see claims_of_users
        sid = events.session_id(request, create=True)
        if sid is None:
            return
        event = events.from_request(
            "login", request, user, sid, expires_at=events.login_expiry(request), attributes=_claims(user)
        )
        event.occurred_at = at
        publisher.publish(event)
    except Exception as error:
        # A login must never fail because of session-guard.
        _warnings.warn("login", "session-guard: could not publish a login: %r", error)


def _claims(user: Any) -> dict[str, Any] | None:
    """The user's claims for a login, as the database has them now;
    ``None`` (the remembered claims stand) if they cannot be read, since a
    login must never fail because of session-guard."""
    try:
        return attributes.claims_now(user)
    except Exception as error:
        _warnings.warn("claims", "session-guard: could not read a user's claims at login: %r", error)
        return None


def on_logout(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """``logout()`` sends ``user_logged_out`` before it flushes the session,
    so the key is still there. ``user`` is None when nobody was logged in."""
    if request is None or not hasattr(request, "session") or publisher.get() is None:
        return
    setattr(request, SIGNALLED, True)
    try:
        sid = events.session_id(request)
        if sid is None:
            return
        if user is None or getattr(user, "pk", None) is None:
            publisher.publish(Event(kind="logout", session_id=sid, user_id=None, occurred_at=time.time()))
            return
        publisher.publish(events.from_request("logout", request, user, sid))
    except Exception as error:
        _warnings.warn("logout", "session-guard: could not publish a logout: %r", error)
