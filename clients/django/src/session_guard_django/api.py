"""A small client of the worker's sessions API (docs/openapi.json), for the
"Your devices" page (views.py): list a user's sessions, end one, end all but
one. The standard library's urllib, so the package needs no HTTP library.

The token is sent only to ``SESSION_GUARD_API_URL``, in a header, and never
reaches a template or a browser.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from django.utils.dateparse import parse_datetime

from . import conf

#: The API's largest page (`limit`): fewer calls for a user with many sessions.
PAGE_SIZE = 100
#: Pages read at most for one user: a bound on the calls one page view makes.
MAX_PAGES = 10
#: The request header with the caller's own session key (percent-encoded), so
#: the API marks that session ``current``: a header, because the key is the
#: user's cookie and URLs end up in access logs.
CURRENT_SESSION_HEADER = "Session-Guard-Current-Session"
#: The app of that session, when session keys may repeat across apps.
CURRENT_APP_HEADER = "Session-Guard-Current-App"


class ApiError(Exception):
    """The API could not be reached or refused the call: the page says the
    list is unavailable, and the rest of the site carries on."""


@dataclass(frozen=True)
class Device:
    browser: str | None
    os: str | None
    #: desktop, phone, tablet, bot or unknown.
    kind: str


@dataclass(frozen=True)
class SessionView:
    """One session as the page shows it (a subset of the API's ``Session``)."""

    handle: str
    app: str
    login_at: datetime | None
    last_seen_at: datetime | None
    ip: str | None
    user_agent: str | None
    device: Device
    #: The session of the request that asked.
    current: bool

    @property
    def active_now(self) -> bool:
        """Seen within the last minute: "active now" reads better than
        "0 minutes ago"."""
        if self.last_seen_at is None:
            return False
        return (datetime.now(timezone.utc) - self.last_seen_at).total_seconds() < 60


class SessionsApi:
    """Calls to one API server with one token."""

    def __init__(self, url: str, token: str, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    @classmethod
    def from_settings(cls) -> SessionsApi:
        """The API of ``SESSION_GUARD_API_URL`` / ``SESSION_GUARD_API_TOKEN``;
        ApiError when they are not set (the system check says so too)."""
        url, token = conf.raw("API_URL"), conf.raw("API_TOKEN")
        if not isinstance(url, str) or not url or not isinstance(token, str) or not token:
            raise ApiError("SESSION_GUARD_API_URL and SESSION_GUARD_API_TOKEN are not set")
        timeout = conf.raw("API_TIMEOUT")
        ok = isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0
        return cls(url, token, float(timeout) if ok else conf.DEFAULTS["API_TIMEOUT"])

    def sessions(self, user_id: str, current_session: str | None, current_app: str | None) -> list[SessionView]:
        """The user's active sessions in every app the token may see, newest
        login first, the caller's own marked ``current``.

        The caller's session key goes in a header, never in the URL: it is
        the user's cookie, and URLs end up in access logs and proxies."""
        found: list[SessionView] = []
        cursor: str | None = None
        headers: dict[str, str] = {}
        if current_session:
            headers[CURRENT_SESSION_HEADER] = _segment(current_session)
            if current_app:
                headers[CURRENT_APP_HEADER] = _segment(current_app)
        for _ in range(MAX_PAGES):
            query: list[tuple[str, str]] = [("limit", str(PAGE_SIZE))]
            if cursor:
                query.append(("cursor", cursor))
            path = f"/v1/users/{_segment(user_id)}/sessions?{urllib.parse.urlencode(query)}"
            page = self._call("GET", path, headers=headers)
            try:
                found += [_session(s) for s in page.get("sessions", [])]
            except (KeyError, TypeError, AttributeError, ValueError):
                raise ApiError("the sessions API answered a list this page cannot read") from None
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return found

    def revoke(self, handle: str) -> list[str]:
        """Ends one session: the handles ended (empty if it had ended already)."""
        answer = self._call("POST", f"/v1/sessions/{_segment(handle)}/revoke", {})
        return [str(h) for h in answer.get("revoked", [])]

    def revoke_others(self, user_id: str, keep: str) -> list[str]:
        """Ends every active session of the user the token may see but ``keep``."""
        answer = self._call("POST", f"/v1/users/{_segment(user_id)}/revoke", {"except": keep})
        return [str(h) for h in answer.get("revoked", [])]

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:
            # The problem+json's title and type, never the request (its
            # headers hold the token and the user's session key).
            problem = _problem(error)
            raise ApiError(f"the sessions API answered {error.code}: {problem}") from None
        except (OSError, ValueError) as error:
            raise ApiError(f"the sessions API is unreachable: {type(error).__name__}") from None
        if not isinstance(answer, dict):
            raise ApiError("the sessions API answered something other than a JSON object")
        return answer


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _problem(error: urllib.error.HTTPError) -> str:
    try:
        problem = json.loads(error.read())
        return f"{problem.get('type')} ({problem.get('title')})"
    except (OSError, ValueError, AttributeError):
        return "no problem details"


def _time(value: Any) -> datetime | None:
    at = parse_datetime(value) if isinstance(value, str) else None
    # The API writes UTC (RFC 3339 with Z); a time without an offset is read as UTC too.
    return at.replace(tzinfo=timezone.utc) if at is not None and at.tzinfo is None else at


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _session(raw: dict[str, Any]) -> SessionView:
    device = raw.get("device") or {}
    return SessionView(
        handle=str(raw["handle"]),
        app=str(raw.get("app", "")),
        login_at=_time(raw.get("login_at")),
        last_seen_at=_time(raw.get("last_seen_at")),
        ip=_text(raw.get("ip")),
        user_agent=_text(raw.get("user_agent")),
        device=Device(
            browser=_text(device.get("browser")),
            os=_text(device.get("os")),
            kind=str(device.get("kind") or "unknown"),
        ),
        current=bool(raw.get("current")),
    )
