"""Revoked signed-cookie sessions, recorded by the listener in a shared
cache (SESSION_GUARD_REVOKED_CACHE) and refused by the middleware.

A signed-cookie session lives in the client's cookie: no server-side delete
can end it, so the listener records its id instead, for as long as such a
cookie can be valid (SESSION_COOKIE_AGE: Django refuses older signatures).
"""

from __future__ import annotations

import hashlib

from django.conf import settings as django_settings
from django.core.cache import caches

from . import conf

#: Cache key prefix; the id is hashed so any id fits any cache's key rules.
KEY_PREFIX = "session_guard:revoked:"


def _key(session_id: str) -> str:
    return KEY_PREFIX + hashlib.sha256(session_id.encode()).hexdigest()


def record(session_id: str) -> None:
    """Remembers that ``session_id`` was revoked."""
    cache = caches[conf.get().revoked_cache]
    cache.set(_key(session_id), 1, timeout=int(django_settings.SESSION_COOKIE_AGE))


def is_revoked(session_id: str) -> bool:
    return caches[conf.get().revoked_cache].get(_key(session_id)) is not None
