"""Events: taken from a request on the request thread (cheap: attribute reads
only), turned into the wire format (docs/PROTOCOL.md in the repository) on
the publisher thread.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from django.conf import settings as django_settings
from django.http import HttpRequest
from django.utils import timezone as django_timezone

from . import conf
from .buffer import Event

#: Where the package keeps a session's id inside signed-cookie sessions,
#: whose key is the whole signed cookie and changes whenever the data does.
GUARD_ID_KEY = "_session_guard_id"

#: The worker's bounds (docs/PROTOCOL.md): text beyond them would be
#: dead-lettered, so the publisher trims or leaves out what it can.
MAX_ID_CHARS = 256
MAX_USER_AGENT_CHARS = 512
MAX_ROLES = 64
MAX_ROLE_CHARS = 128
MAX_ATTRIBUTES_BYTES = 4096
#: What an id may not contain: control characters (the worker's
#: ``char::is_control``: Unicode category Cc).
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")


def session_id(request: HttpRequest, *, create: bool = False) -> str | None:
    """The id session-guard knows the request's session by: the session key
    for server-side engines, an id kept in the session for signed cookies.

    ``create`` (at login) makes one when there is none yet: a fresh
    signed-cookie id, or a server-side session saved early (``login()``
    flushes, rather than cycles, a session that belonged to another user,
    which leaves it without a key until the response).
    """
    session = request.session
    if conf.signed_cookies():
        sid = session.get(GUARD_ID_KEY)
        if sid is None and create:
            sid = secrets.token_urlsafe(24)
            session[GUARD_ID_KEY] = sid
        return sid if isinstance(sid, str) else None
    key = session.session_key
    if key is None and create:
        session.save()
        key = session.session_key
    return key


def client_ip(request: HttpRequest, header: str | None) -> str | None:
    """The client's address as the request shows it; checked later. With a
    header such as X-Forwarded-For, the last address: the one your own
    proxy appended (the ones before it are the client's word)."""
    if header is None:
        return request.META.get("REMOTE_ADDR")
    value = request.META.get(header)
    if not value:
        return None
    return str(value).rsplit(",", 1)[-1].strip()


def from_request(
    kind: str,
    request: HttpRequest,
    user: Any,
    sid: str,
    *,
    expires_at: datetime | None = None,
    attributes: dict[str, Any] | None = None,
) -> Event:
    """The event for ``user`` acting in ``request``'s session ``sid``."""
    settings = conf.get()
    return Event(
        kind=kind,
        session_id=sid,
        user_id=str(user.pk),
        occurred_at=time.time(),
        ip=client_ip(request, settings.client_ip_header),
        user_agent=request.META.get("HTTP_USER_AGENT"),
        expires_at=expires_at,
        attributes=attributes,
    )


def login_expiry(request: HttpRequest) -> datetime:
    """When a session that logs in now expires: Django's own answer."""
    return request.session.get_expiry_date()


def to_the_minute(at: datetime) -> datetime:
    """Rounded down to the minute: an expiry that moves with every request
    then changes at most once a minute, and the worker skips writing
    requests that change nothing. Down, so it is never later than Django's."""
    return at - timedelta(seconds=at.second, microseconds=at.microsecond)


def _rfc3339(at: datetime) -> str:
    if at.tzinfo is None:
        # USE_TZ = False: Django's datetimes are in its TIME_ZONE.
        at = django_timezone.make_aware(at)
    return at.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _clean_text(value: str, most: int) -> str:
    """Trims to ``most`` characters and drops NUL, which PostgreSQL cannot store."""
    return value.replace("\x00", "")[:most]


def _valid_id(value: str | None) -> bool:
    return value is not None and 0 < len(value) <= MAX_ID_CHARS and CONTROL_CHARACTERS.search(value) is None


def _address(text: str) -> str | None:
    """The address in its canonical form, or None if it is not one (an IPv6
    zone such as ``%eth0`` is dropped). socket's C parser: ipaddress costs
    several times more, on the thread that shares the GIL with requests."""
    text = text.split("%", 1)[0]
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, text))
    except (OSError, ValueError):
        return None


def fit_roles(names: list[str]) -> list[str]:
    """Group names as ``attributes.roles`` accepts them: sorted, each 1-128
    characters without NUL (longer ones are left out), at most 64, and few
    enough that the attributes stay under 4 KiB."""
    roles = sorted({n for n in names if 0 < len(n) <= MAX_ROLE_CHARS and "\x00" not in n})
    roles = roles[:MAX_ROLES]
    while roles and len(json.dumps(roles)) > MAX_ATTRIBUTES_BYTES - 64:
        roles.pop()
    return roles


def body(event: Event, app: str) -> bytes | None:
    """The message body, or ``None`` when the worker would refuse the event
    (an id it cannot take): better not sent than dead-lettered."""
    if event.kind == "attributes":
        if not _valid_id(event.user_id) or event.attributes is None:
            return None
    elif not _valid_id(event.session_id) or (event.user_id is not None and not _valid_id(event.user_id)):
        return None
    message: dict[str, Any] = {"type": event.kind, "app": app}
    if event.session_id is not None:
        message["session_id"] = event.session_id
    message["occurred_at"] = _rfc3339(datetime.fromtimestamp(event.occurred_at, timezone.utc))
    if event.user_id is not None:
        message["user_id"] = event.user_id
    if event.ip:
        ip = _address(event.ip)
        if ip is not None:
            message["ip"] = ip
    if event.user_agent:
        message["user_agent"] = _clean_text(event.user_agent, MAX_USER_AGENT_CHARS)
    if event.expires_at is not None:
        message["expires_at"] = _rfc3339(event.expires_at)
    if event.attributes is not None:
        message["attributes"] = event.attributes
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
