"""Notices: session-guard's word that a user signed in from a device (or a
network) none of their sessions used lately, in any app (docs/PROTOCOL.md,
schema/notice.schema.json). ``manage.py session_guard_listen`` reads them
from the app's queue ``<app>.notices`` and sends
:data:`session_guard_django.signals.new_device_login` for each.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.core.cache import caches
from django.core.exceptions import ObjectDoesNotExist, ValidationError

from . import conf

logger = logging.getLogger("session_guard_django.listener")

#: The kinds this version knows; a notice of another kind (added to the
#: protocol later) is still delivered, with its ``type`` as sent.
NEW_DEVICE = "new_device"
NEW_NETWORK = "new_network"

#: Prefix of the cache keys that remember the notices handled.
SEEN_KEY = "session-guard:notice:"


@dataclass(frozen=True)
class Device:
    """The device of the session, from its user agent."""

    #: "Chrome", "Firefox"... or None if unknown.
    browser: str | None
    #: "Android", "Windows 10"... or None if unknown.
    os: str | None
    #: "desktop", "phone", "tablet", "bot" or "unknown".
    kind: str

    def describe(self) -> str:
        """"Chrome on Android", as an email says it."""
        return f"{self.browser or 'an unknown browser'} on {self.os or 'an unknown system'}"


@dataclass(frozen=True)
class Notice:
    """A notice's body (wire contract v1). Fields a later version adds are
    ignored."""

    #: What is new: "new_device" (the browser and OS; the network may be new
    #: too), "new_network" (only the network), or a kind added later.
    type: str
    #: The same on every re-send of this notice (at-least-once delivery).
    event_id: str
    app: str
    #: The user's id as the app published it (``str(user.pk)``).
    user_id: str
    #: The session's handle in the sessions API (never its session key).
    session: str
    #: When the session signed in (aware, UTC).
    signed_in_at: datetime
    device: Device
    #: The session's IP address, if known.
    ip: str | None
    new_device: bool
    new_network: bool
    #: Distinct devices (networks) the user's other sessions used lately.
    known_devices: int
    known_networks: int

    @classmethod
    def from_json(cls, body: Any) -> Notice:
        """The notice in a decoded JSON body; ValueError says what is wrong."""
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")

        def text(name: str, source: dict[str, Any] = body, optional: bool = False) -> Any:
            value = source.get(name)
            if value is None and optional:
                return None
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name}: expected a non-empty string, got {value!r}")
            return value

        def flag(name: str) -> bool:
            value = body.get(name)
            if not isinstance(value, bool):
                raise ValueError(f"{name}: expected true or false, got {value!r}")
            return value

        def count(name: str) -> int:
            value = body.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}: expected a count, got {value!r}")
            return value

        device = body.get("device")
        if not isinstance(device, dict):
            raise ValueError(f"device: expected an object, got {device!r}")
        try:
            signed_in_at = datetime.fromisoformat(text("signed_in_at"))
        except ValueError as error:
            raise ValueError(f"signed_in_at: {error}") from None
        if signed_in_at.tzinfo is None:
            raise ValueError("signed_in_at: no time zone")
        return cls(
            type=text("type"),
            event_id=text("event_id"),
            app=text("app"),
            user_id=text("user_id"),
            session=text("session"),
            signed_in_at=signed_in_at,
            device=Device(
                browser=text("browser", device, optional=True),
                os=text("os", device, optional=True),
                kind=text("kind", device),
            ),
            ip=text("ip", optional=True),
            new_device=flag("new_device"),
            new_network=flag("new_network"),
            known_devices=count("known_devices"),
            known_networks=count("known_networks"),
        )


def user_of(notice: Notice) -> Any | None:
    """The user the notice is about, from the user model; None if there is
    none with that primary key (deleted since, or an id of another shape)."""
    model = get_user_model()
    try:
        return model._default_manager.get(pk=notice.user_id)
    except (ObjectDoesNotExist, ValueError, TypeError, ValidationError):
        return None


class Seen:
    """The notices already handled, in the cache SESSION_GUARD_NOTICE_CACHE
    for SESSION_GUARD_NOTICE_SEEN_SECONDS (none if the setting is None)."""

    def __init__(self, settings: conf.GuardSettings) -> None:
        self.cache = caches[settings.notice_cache] if settings.notice_cache is not None else None
        self.seconds = settings.notice_seen_seconds

    def first(self, notice: Notice) -> bool:
        """Claims the notice: False if it was claimed already (a re-sent
        notice, here or by another listener sharing the cache). ``cache.add``
        is atomic in the shared caches (Redis, Memcached, the database)."""
        if self.cache is None:
            return True
        return bool(self.cache.add(SEEN_KEY + notice.event_id, 1, timeout=self.seconds))

    def forget(self, notice: Notice) -> None:
        """Releases the claim: the signal failed and the notice comes again."""
        if self.cache is not None:
            self.cache.delete(SEEN_KEY + notice.event_id)
