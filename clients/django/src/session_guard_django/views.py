"""The "Your devices" page: the logged-in user's active sessions in every
app the API token may see, with a button to sign out each other session and
one to sign out all of them. The API is called from here, server-side: the
token never reaches the browser, and a user can only end sessions that the
API lists as theirs."""

from __future__ import annotations

import logging

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from . import conf, events
from .api import ApiError, SessionsApi, SessionView

logger = logging.getLogger(__name__)

TEMPLATE = "session_guard_django/devices.html"
#: What the page says when the API cannot be used: the user learns nothing
#: about the cause, the log does.
UNAVAILABLE = "Your list of devices is unavailable right now. Please try again later."


@login_required
@require_http_methods(["GET", "POST"])
def devices(request: HttpRequest) -> HttpResponse:
    """GET lists; POST ``handle=...`` signs out one other session, POST
    ``all_others=1`` signs out every session but this one. Both answer with a
    redirect back here (so a reload sends nothing again); CSRF is checked by
    Django's middleware as for any form."""
    user_id = str(request.user.pk)
    current = events.session_id(request)
    try:
        api = SessionsApi.from_settings()
        sessions = api.sessions(user_id, current, conf.get().app)
        if request.method == "POST":
            ended = _sign_out(request, api, user_id, sessions)
            if ended is None:
                return HttpResponse("Unknown session.", status=400, content_type="text/plain")
            return HttpResponseRedirect(f"{reverse('session_guard_django:devices')}?signed_out={ended}")
    except ApiError as error:
        logger.warning("the devices page could not use the sessions API: %s", error)
        return render(request, TEMPLATE, {"sessions": [], "unavailable": UNAVAILABLE}, status=503)
    signed_out = request.GET.get("signed_out", "")
    return render(
        request,
        TEMPLATE,
        {
            "sessions": sessions,
            "others": [s for s in sessions if not s.current],
            "signed_out": int(signed_out) if signed_out.isascii() and signed_out.isdigit() else None,
            "unavailable": None,
        },
    )


def _sign_out(request: HttpRequest, api: SessionsApi, user_id: str, sessions: list[SessionView]) -> int | None:
    """Ends what the form asks for; the number ended, or None when the form
    names no session of this user (a stale page, or a forged handle: the
    API would end any session its token may see, so it is checked here)."""
    if request.POST.get("all_others"):
        mine = next((s for s in sessions if s.current), None)
        if mine is None:
            # This session is not in the log (yet): ending "all others"
            # would end it too. Nothing is ended.
            return None
        return len(api.revoke_others(user_id, mine.handle))
    handle = request.POST.get("handle", "")
    if not any(s.handle == handle and not s.current for s in sessions):
        return None
    return len(api.revoke(handle))
