"""SessionGuardMiddleware: publishes a ``request`` event for each
authenticated request and, with signed-cookie sessions, refuses the ones
session-guard revoked.

Place it after SessionMiddleware and AuthenticationMiddleware. Its cost on
the request thread is reading the user and session it finds there (which
the view loads anyway), and handing an event to the background publisher.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponseBase

from . import conf, events, publisher, revoked

logger = logging.getLogger("session_guard_django")


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
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            self.process(request, user)
        return self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        auser = getattr(request, "auser", None)
        if auser is not None:
            user = await auser()
            if user.is_authenticated:
                await sync_to_async(self.process)(request, user)
        return await self.get_response(request)  # type: ignore[no-any-return, misc]

    def process(self, request: HttpRequest, user: Any) -> None:
        """Refuses a revoked signed-cookie session, or publishes the request."""
        if publisher.get() is None:
            return
        try:
            sid = events.session_id(request)
            if sid is None:
                return
            if conf.signed_cookies() and revoked.is_revoked(sid):
                # Revoked: the client still holds the cookie, so end the
                # session here, quietly (no logout event: it is already
                # ended in session-guard).
                request.session.flush()
                anonymous = AnonymousUser()
                request.user = anonymous

                async def auser() -> AnonymousUser:
                    return anonymous

                request.auser = auser
                return
            publisher.publish(
                events.from_request(
                    "request", request, user, sid, expires_at=events.request_expiry(request)
                )
            )
        except Exception:
            # A request must never fail because of session-guard.
            logger.exception("session-guard: could not handle a request")
