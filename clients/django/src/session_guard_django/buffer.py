"""The events waiting for the publisher thread, and what happens when there
are too many: the same drop policy as the Rust client's ``EventPublisher``.

Pure: no I/O, no clock, no lock (the publisher holds one around it).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(slots=True)
class Event:
    """What the request thread hands over: only what it already has at hand,
    so that handing over stays cheap. The publisher thread turns it into the
    message body (time formatting, checks)."""

    #: ``login``, ``request``, ``logout`` or ``attributes``: the body's
    #: ``type`` and the routing key's first part.
    kind: str
    #: The session key (or, for signed-cookie sessions, the id the package
    #: keeps inside the session); ``None`` for ``attributes``, which is
    #: about the user.
    session_id: str | None
    #: ``str(user.pk)``; ``None`` only for a logout without a user.
    user_id: str | None
    #: ``time.time()`` when the app saw it: the event's ``occurred_at``.
    occurred_at: float = 0.0
    #: The client's address as found in the request, not yet checked.
    ip: str | None = None
    #: The User-Agent header, not yet trimmed.
    user_agent: str | None = None
    #: When the session expires by itself, if known.
    expires_at: datetime | None = None
    #: What the app claims about the user (``superuser``, ``staff``,
    #: ``roles``), read at login and when it changes (attributes.py);
    #: ``None`` = the claim session-guard remembers stands.
    attributes: dict[str, Any] | None = None


class Pushed(enum.Enum):
    """What became of an event pushed into a :class:`Buffer`."""

    QUEUED = "queued"
    #: Queued in place of the oldest buffered request.
    EVICTED = "evicted"
    #: A request, dropped: the buffer is full.
    DROPPED = "dropped"
    #: A login, logout or claim refused: the buffer holds nothing but those.
    FULL = "full"


@dataclass
class Buffer:
    """Events in the order they were handed over, at most ``capacity``.

    When full, a new ``request`` is dropped (the session's next request says
    the same thing again); a ``login``, ``logout`` or ``attributes`` evicts
    the oldest buffered request, or is refused when there is none. Those
    decide which sessions count, so they are the last to go.
    """

    capacity: int
    items: deque[Event] = field(default_factory=deque)
    #: Requests among ``items``: when 0 there is nothing to evict, and when
    #: below ``len(items)`` some event must not wait long (publisher.py).
    requests: int = 0
    #: Requests dropped so far, new or evicted.
    dropped_requests: int = 0
    #: Logins, logouts and claims refused so far.
    refused_full: int = 0

    def __len__(self) -> int:
        return len(self.items)

    def push(self, event: Event) -> Pushed:
        is_request = event.kind == "request"
        outcome = Pushed.QUEUED
        if len(self.items) >= self.capacity:
            if is_request:
                self.dropped_requests += 1
                return Pushed.DROPPED
            if not self._evict_oldest_request():
                self.refused_full += 1
                return Pushed.FULL
            outcome = Pushed.EVICTED
        self.items.append(event)
        if is_request:
            self.requests += 1
        return outcome

    def take(self, most: int) -> list[Event]:
        """Removes and returns up to ``most`` events, oldest first."""
        taken: list[Event] = []
        while self.items and len(taken) < most:
            event = self.items.popleft()
            if event.kind == "request":
                self.requests -= 1
            taken.append(event)
        return taken

    def put_back(self, events: Iterable[Event]) -> None:
        """Returns events that were taken but not confirmed (the connection
        dropped) to the front, in their order. They were already accepted,
        so the capacity applies by evicting requests, newest last."""
        for event in reversed(list(events)):
            self.items.appendleft(event)
            if event.kind == "request":
                self.requests += 1
        while len(self.items) > self.capacity and self._evict_oldest_request():
            pass

    def _evict_oldest_request(self) -> bool:
        if self.requests == 0:
            return False
        for index, event in enumerate(self.items):
            if event.kind == "request":
                del self.items[index]
                self.requests -= 1
                self.dropped_requests += 1
                return True
        return False  # pragma: no cover - requests counts them
