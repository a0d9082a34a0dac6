"""At most one ``request`` event per session per interval.

A page load is a burst of requests (the page, then its API calls), and a
request event only tells session-guard that the session is still in use.
The worker writes no ``last_seen_at`` move smaller than its
``worker.last_seen_resolution_ms`` (1 s by default), so publishing every
request of a burst costs the app, the broker and the worker for nothing.

Pure: no clock, no I/O, no lock (the publisher holds its lock around it).
The Rust client's ``EventPublisher`` decides the same way, so that apps in
either language send the same events.
"""

from __future__ import annotations

from collections import OrderedDict


class RecentRequests:
    """When each session's last request event was published, for the
    ``capacity`` sessions with the most recent requests.

    A request is due when its session has no entry, or when it occurred at
    least ``interval`` seconds after the one published last; otherwise it is
    dropped and counted (one that occurred earlier than that one too: the
    worker's ``last_seen_at`` only moves forward). The first request of a
    session goes at once, so a session revoked meanwhile is noticed on its
    first use. Logins and logouts never pass through here; a logout forgets
    its session (the key is not used again).

    Memory: one entry per session, the session whose last request (published
    or not) is the oldest dropped first, as the Rust client's LRU does. Only
    sessions active within one interval need an entry, so the default of
    10,000 is far beyond what one process sees in a second. An entry of a
    32-character session key takes about 170 bytes (measured with
    tracemalloc: 81 for the key, 90 for the dict's slot and the time), 1.7 MB
    when full. A session that falls out only publishes its next request at
    once.
    """

    def __init__(self, interval: float, capacity: int) -> None:
        #: Seconds between two request events of one session, at least;
        #: 0 publishes every request.
        self.interval = interval
        #: Most sessions remembered.
        self.capacity = max(1, capacity)
        #: Requests dropped so far.
        self.coalesced = 0
        #: session id -> ``occurred_at`` of its last request event published,
        #: the session with the oldest request first.
        self._last: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def due(self, session_id: str, at: float) -> bool:
        """Whether a request of ``session_id`` that occurred at ``at``
        (``time.time()``) is to be published; if so it is recorded, else
        counted."""
        if self.interval <= 0:
            return True
        last = self._last.get(session_id)
        if last is not None and at < last + self.interval:
            self.coalesced += 1
            self._last.move_to_end(session_id)  # still in use: kept longest
            return False
        self._last[session_id] = at
        self._last.move_to_end(session_id)
        if len(self._last) > self.capacity:
            self._last.popitem(last=False)
        return True

    def forget(self, session_id: str) -> None:
        """The session ended (a logout): its entry is of no more use."""
        self._last.pop(session_id, None)
