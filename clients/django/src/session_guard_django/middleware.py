"""SessionGuardMiddleware: reports each authenticated request and, with
signed-cookie sessions, refuses the ones session-guard revoked.

Place it after SessionMiddleware and AuthenticationMiddleware. Before the
view it notes the session and the time (and refuses a revoked signed-cookie
session); after the view it publishes what happened to the session:

- the same session: a ``request`` event, with the session's new expiry if
  the response will save the session (Django moves the expiry then), at
  most one per session per SESSION_GUARD_REQUEST_INTERVAL (coalesce.py);
- a new key without a login (``update_session_auth_hash`` after a password
  change, ``cycle_key``): ``logout`` of the old key and ``login`` of the new,
  so the session keeps its place rather than looking like a stranger;
- no session any more without a logout (``session.flush()``): ``logout``;
- a login or logout in the view: nothing more (the signal receivers
  published it).

Its cost on the request thread is reading the user and session it finds
(which the view loads anyway) and handing an event to the background
publisher: a few microseconds, and no database query (requests carry no
claims: see attributes.py).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings as django_settings
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponseBase

from . import conf, events, publisher, revoked
from .buffer import Event
from .signals import SIGNALLED

_warnings = publisher.RateLimitedWarning()


@dataclass(slots=True)
class Seen:
    """What the middleware noted before the view."""

    #: The session's id for session-guard when the request came in.
    session_id: str
    #: The authenticated user.
    user: Any
    #: ``time.time()`` when the request came in: the event's time.
    at: float


class SessionGuardMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(
        self,
        get_response: Callable[[HttpRequest], HttpResponseBase]
        | Callable[[HttpRequest], Awaitable[HttpResponseBase]],
    ) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        seen = None
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            seen = self.before(request, user)
        response = self.get_response(request)
        if seen is not None:
            self.after(request, seen)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        seen = None
        user = await _auser(request)
        if user is not None and user.is_authenticated:
            if conf.signed_cookies():
                # The revoked-session lookup is cache I/O.
                seen = await sync_to_async(self.before)(request, user)
            else:
                seen = self.before(request, user)
        response: HttpResponseBase = await self.get_response(request)  # type: ignore[misc]
        if seen is not None:
            # Reads the session only as loaded already (no I/O).
            self.after(request, seen)
        return response

    def before(self, request: HttpRequest, user: Any) -> Seen | None:
        """Notes the session, or refuses it if it is a revoked signed-cookie
        session."""
        if publisher.get() is None:
            return None
        try:
            # create: signed-cookie sessions from before the package was
            # installed get their id at their first request.
            sid = events.session_id(request, create=conf.signed_cookies())
            if sid is None:
                return None
            if conf.signed_cookies() and revoked.is_revoked(sid):
                _refuse(request)
                return None
            return Seen(session_id=sid, user=user, at=time.time())
        except Exception as error:
            # A request must never fail because of session-guard.
            _warnings.warn("before", "session-guard: could not check a request's session: %r", error)
            return None

    def after(self, request: HttpRequest, seen: Seen) -> None:
        """Publishes what became of the session noted before the view."""
        if getattr(request, SIGNALLED, False):
            return
        try:
            session = request.session
            now = events.session_id(request)
            if now is None:
                publisher.publish(_event("logout", request, seen, seen.session_id))
            elif now != seen.session_id:
                publisher.publish(_event("logout", request, seen, seen.session_id))
                login = _event("login", request, seen, now)
                login.expires_at = session.get_expiry_date()
                publisher.publish(login)
            else:
                # The response saves the session when the view wrote to it
                # (or on every request): its expiry moves. A write goes out
                # even within the interval, or the worker would keep the
                # older expiry; with SESSION_SAVE_EVERY_REQUEST every
                # request moves it, and the worker's lags Django's by less
                # than the interval.
                every = getattr(django_settings, "SESSION_SAVE_EVERY_REQUEST", False)
                wrote = session.modified and not every
                if publisher.request_due(now, seen.at, force=wrote):
                    event = _event("request", request, seen, now)
                    if session.modified or every:
                        event.expires_at = events.to_the_minute(session.get_expiry_date())
                    publisher.publish(event)
        except Exception as error:
            _warnings.warn("after", "session-guard: could not report a request: %r", error)


def _event(kind: str, request: HttpRequest, seen: Seen, sid: str) -> Event:
    event = events.from_request(kind, request, seen.user, sid)
    event.occurred_at = seen.at
    return event


def _refuse(request: HttpRequest) -> None:
    """Ends a revoked session the client still holds, quietly (no logout
    event: session-guard has ended it already)."""
    request.session.flush()
    anonymous = AnonymousUser()
    request.user = anonymous

    async def auser() -> AnonymousUser:
        return anonymous

    request.auser = auser


async def _auser(request: HttpRequest) -> Any:
    """The request's user in async code: ``request.auser()`` from Django 5.0,
    the lazy ``request.user`` resolved in a thread before that."""
    auser = getattr(request, "auser", None)
    if auser is not None:
        return await auser()
    if not hasattr(request, "user"):
        return None

    def resolve() -> Any:
        user = request.user
        return user if user.is_authenticated else None

    return await sync_to_async(resolve)()
