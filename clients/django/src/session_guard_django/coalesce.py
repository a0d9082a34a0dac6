"""At most one ``request`` event per session per interval, across the app's
processes on a host.

A page load is a burst of requests (the page, then its API calls), and a
request event only tells session-guard that the session is still in use.
The worker writes no ``last_seen_at`` move smaller than its
``worker.last_seen_resolution_ms`` (1 s by default), so publishing every
request of a burst costs the app, the broker and the worker for nothing.

The requests of one page load land on different processes (gunicorn's sync
workers take each connection in turn), so a table each process kept for
itself would let every process publish the session's first request: two
events per page with two workers, three with four. The table is therefore
shared by the app's processes on the host: a file in ``/dev/shm`` (memory,
not disk) that each process maps, with one 8-byte slot per entry. Reading
and writing a slot is a memory access and no system call: a request costs
about two microseconds here (the publisher's lock taken for a moment, a
BLAKE2 digest of the session key), whether it is published or not.

Two processes that read a slot at the same instant may both publish: one
event too many, which the worker takes as it takes any request. A session
whose slot another session took (the table is a hash table that keeps the
newest entry) has its next request published at once. Both err towards
publishing. A request that is due is dropped only when another session
recently took its slot with the same 24-bit tag: about once in 16 million
lookups, and then only until the next interval.

The Rust client's ``EventPublisher`` decides the same way within its
process (a Rust app is usually one process).
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import stat
import struct
import tempfile
import urllib.parse
from collections.abc import Sequence

from .brokers import split_urls

logger = logging.getLogger("session_guard_django")

#: One slot: the session's tag in the high 24 bits and the time of its last
#: request event published, in milliseconds since the epoch, in the low 40
#: (they wrap every 34 years). Native byte order and size: struct then
#: reads and writes the 8 bytes in one aligned access, which no other
#: process can see half done.
SLOT = struct.Struct("Q")
#: Bits of a slot holding the time.
TIME_BITS = 40
TIME_MASK = (1 << TIME_BITS) - 1
#: Bits of a slot holding the session's tag.
TAG_MASK = (1 << (64 - TIME_BITS)) - 1
#: How far a request may be older than the one published last and still
#: count as that burst (processes' clocks and threads interleave by a few
#: milliseconds); anything older is taken for a slot from another era.
EARLIER_SLACK_MS = 60_000


def table_path(app: str, amqp_url: str | Sequence[str], exchange: str, slots: int) -> str:
    """Where the app's processes on this host share their table: named by
    what makes two processes one app (the broker, the events exchange, the
    app name) and by the user, so that two apps, or the same app on two
    brokers, never share one. ``amqp_url``: one URL, or a cluster's (a list,
    or comma-separated), named by its nodes in any order."""
    urls = split_urls(amqp_url) if isinstance(amqp_url, str) else list(amqp_url)
    nodes = []
    for url in urls:
        parsed = urllib.parse.urlsplit(url)
        nodes.append(f"{parsed.hostname}:{parsed.port}{parsed.path}")
    broker = ",".join(sorted(set(nodes)))
    who = hashlib.sha256(f"{broker}\n{exchange}\n{app}".encode()).hexdigest()[:16]
    shm = "/dev/shm"
    directory = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()
    return os.path.join(directory, f"session-guard-{os.getuid()}-{who}-{slots}.recent")


def _shared_table(path: str, size: int) -> mmap.mmap:
    """The file at ``path`` mapped shared, made if missing. ``/dev/shm`` and
    ``/tmp`` are writable by everyone: refuses a symbolic link, a hard link,
    anything but a plain file, and a file of another user or that others
    may write."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        found = os.fstat(fd)
        if (
            not stat.S_ISREG(found.st_mode)
            or found.st_nlink != 1
            or found.st_uid != os.getuid()
            or found.st_mode & 0o077
        ):
            raise PermissionError(f"{path} is not a file of this user's alone")
        if found.st_size < size:
            os.ftruncate(fd, size)  # processes racing here set the same size
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


class RecentRequests:
    """When each session's last request event was published.

    A request is due when its session has no entry, or when it occurred at
    least ``interval`` seconds after the one published last; otherwise it is
    dropped and counted (one that occurred up to a minute earlier than that
    one too: the worker's ``last_seen_at`` only moves forward). The first
    request of a session goes at once, so a session revoked meanwhile is
    noticed on its first use. Logins and logouts never pass through here; a
    logout forgets its session.

    Memory: ``slots`` entries of 8 bytes, 80 KB for the default 10,000,
    shared by the app's processes on the host (``path``; ``None``, or a
    path that cannot be used, keeps the table to this process). Only
    sessions active within one interval need an entry, so 10,000 is far
    beyond what a host serves in a second.
    """

    def __init__(self, interval: float, slots: int, path: str | None = None) -> None:
        #: Least time between two request events of one session, in ms
        #: (at least 1 ms unless 0); 0 publishes every request.
        self.interval_ms = max(1, round(interval * 1000)) if interval > 0 else 0
        #: Entries in the table.
        self.slots = max(1, slots)
        #: Requests this process dropped so far.
        self.coalesced = 0
        #: Whether the table is shared with the app's other processes.
        self.shared = False
        size = self.slots * SLOT.size
        table: mmap.mmap | None = None
        if path is not None and self.interval_ms > 0:
            try:
                table = _shared_table(path, size)
                self.shared = True
            except (OSError, AttributeError) as error:  # AttributeError: no O_NOFOLLOW/getuid (Windows)
                logger.warning(
                    "session-guard: cannot share the request table at %s (%s): each process "
                    "coalesces its own requests",
                    path,
                    error,
                )
        #: The slots.
        self._table = table if table is not None else mmap.mmap(-1, size)

    def due(self, session_id: str, at: float, *, force: bool = False) -> bool:
        """Whether a request of ``session_id`` that occurred at ``at``
        (``time.time()``) is to be published; if so it is recorded, else
        counted. ``force``: it is published whatever the table says (it
        carries something the worker must have), and recorded."""
        if self.interval_ms <= 0:
            return True
        offset, tag = self._place(session_id)
        now = int(at * 1000) & TIME_MASK
        (value,) = SLOT.unpack_from(self._table, offset)
        if not force and value >> TIME_BITS == tag:
            since = (now - (value & TIME_MASK)) & TIME_MASK
            if since < self.interval_ms or since > TIME_MASK - EARLIER_SLACK_MS:
                self.coalesced += 1
                return False
        SLOT.pack_into(self._table, offset, tag << TIME_BITS | now)
        return True

    def forget(self, session_id: str) -> None:
        """The session ended (a logout): its entry is of no more use."""
        offset, tag = self._place(session_id)
        (value,) = SLOT.unpack_from(self._table, offset)
        if value >> TIME_BITS == tag:
            SLOT.pack_into(self._table, offset, 0)

    def _place(self, session_id: str) -> tuple[int, int]:
        """The session's slot (byte offset) and tag, from one 64-bit BLAKE2
        digest, the same in every process (Python's own ``hash()`` differs
        per process): the slot from its high half, the tag from its low
        bits, independent of each other (two CRC-32s are not: CRC is
        affine). Two sessions share a slot and a tag about once in 16
        million lookups."""
        digest = int.from_bytes(hashlib.blake2b(session_id.encode(), digest_size=8).digest(), "little")
        return (digest >> 32) % self.slots * SLOT.size, digest & TAG_MASK
