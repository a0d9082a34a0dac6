"""The background publisher: one thread and one broker connection per process.

Request threads call :func:`publish`, which only appends the event to a
bounded buffer under a lock and, at most once per round, wakes the
publisher thread. That thread owns the pika connection (pika connections are
not thread-safe), publishes with confirms, keeps up to ``MAX_IN_FLIGHT``
unconfirmed, puts unconfirmed events back when the connection drops, and
reconnects with jittered backoff. Nothing a request does waits on the network.

What a round costs the process is mostly fixed (waking the thread, one
``send`` to the broker, its confirm coming back: about 0.6 ms of CPU on the
machines the package is measured on), so rounds are few: events that change
which sessions count (logins, logouts, claims) go out within ``LINGER``,
and requests, which only say a session is in use, wait up to
``REQUEST_LINGER`` and go out together, or within ``LINGER`` once
``ROUND_SIZE`` wait: rounds stay small enough that the thread never holds
the GIL long. Requests of one session within SESSION_GUARD_REQUEST_INTERVAL
are not published at all (coalesce.py).

The thread starts on the first event of each process, never at import, so a
process that forks (gunicorn with ``--preload``) gets its own thread and
connection in every child; see :func:`_after_fork`.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import pika
from django.core.signals import setting_changed
from django.dispatch import receiver
from pika.adapters.select_connection import IOLoop, SelectConnection
from pika.spec import Basic

from . import brokers, conf, events
from .buffer import Buffer, Event, Pushed
from .coalesce import RecentRequests, table_path

logger = logging.getLogger("session_guard_django")

#: The publisher thread's name (also how its pika log lines are told apart).
THREAD_NAME = "session-guard-publisher"
#: The same thread's name for the operating system (at most 15 bytes):
#: ``top -H``, ``ps -L`` and ``/proc/<pid>/task/<tid>/comm`` show it, so its
#: CPU can be told apart from the request threads'.
OS_THREAD_NAME = b"sg-publisher"
#: Least time between two warnings of one kind: an unreachable broker would
#: otherwise write a line per request.
WARNING_INTERVAL = 10.0
#: Events per round, at most, and the number of waiting events that makes
#: a round go out within ``LINGER`` even if they are all requests. The
#: thread holds the GIL while it publishes a round (about 30 us an event),
#: and a request thread waiting for it that long shows in the app's
#: latency; the worker, too, then takes events in small steady batches
#: rather than in bursts. More are taken in the next round, at once.
ROUND_SIZE = 50
#: How long a login, logout or claim waits for others to go out with it:
#: one round (one lock, one write to the socket, one confirm) then serves
#: every event of those milliseconds; session-guard itself waits about as
#: long to fill a batch.
LINGER = 0.02
#: How long requests wait for others to go out with them when no login,
#: logout or claim is waiting. A request only moves its session's
#: last-seen time, which the worker stores to the second
#: (``worker.last_seen_resolution_ms``), so half a second late changes
#: nothing it records, and a process then pays for a round at most twice
#: a second instead of once per request (measured: README, "Per-request
#: cost").
REQUEST_LINGER = 0.5
#: Pause before events the broker nacked or returned (no queue bound: the
#: worker has not declared its queue yet) are sent again: they are kept,
#: not dropped, as the Rust client keeps them.
RETRY_PAUSE = 1.0
#: First pause before reconnecting; it doubles up to ``MAX_BACKOFF``.
FIRST_BACKOFF = 0.1
#: Seconds to wait for the broker's TCP and AMQP handshake.
CONNECT_TIMEOUT = 5.0
#: A connection the broker blocks (memory or disk alarm) this long is
#: closed and reopened, so buffered events are not held by a stuck socket.
BLOCKED_TIMEOUT = 30.0


@dataclass(frozen=True)
class Stats:
    """What the process's publisher did so far."""

    #: Events the broker confirmed.
    published: int
    #: Events waiting to be published, or published and not yet confirmed.
    pending: int
    #: Requests dropped because the buffer was full.
    dropped_requests: int
    #: Logins, logouts and claims dropped because the buffer was full of them.
    refused_full: int
    #: Events the broker returned: no queue bound (is the worker running?).
    unroutable: int
    #: Events left out because the worker would refuse them.
    invalid: int
    #: Requests not published because their session had one published less
    #: than SESSION_GUARD_REQUEST_INTERVAL before (coalesce.py).
    coalesced_requests: int
    #: Whether the publisher has a connection in confirm mode right now.
    connected: bool
    #: CPU seconds the publisher thread used so far (0.0 before it started,
    #: or where the platform cannot tell a thread's CPU time).
    cpu_seconds: float = 0.0
    #: The broker of the current (or last) connection, password masked; None
    #: before the first.
    broker: str | None = None


class _BatchedConnection(SelectConnection):  # type: ignore[misc]
    """A SelectConnection that, between :meth:`hold` and :meth:`release`,
    collects outgoing frames and writes them with one ``send``: pika writes
    each frame on its own (three per message), and on the publisher thread,
    which shares the GIL with the request threads, those system calls were
    the largest cost per event."""

    _held: list[bytes] | None = None

    def hold(self) -> None:
        self._held = []

    def release(self) -> None:
        held, self._held = self._held, None
        if held:
            super()._output_marshaled_frames([b"".join(held)])
            self.frames_sent += len(held) - 1

    def _output_marshaled_frames(self, marshaled_frames: list[bytes]) -> None:
        if self._held is not None:
            self._held.extend(marshaled_frames)
        else:
            super()._output_marshaled_frames(marshaled_frames)


class _FixedProperties(pika.BasicProperties):  # type: ignore[misc]
    """Message properties that are the same on every event, encoded once:
    pika encodes a message's properties again for each publish, about a
    tenth of the publisher thread's time per event."""

    _encoded: list[bytes] | None = None

    def encode(self) -> list[bytes]:
        if self._encoded is None:
            self._encoded = super().encode()
        # A copy: pika prepends the header frame's start to the list.
        return list(self._encoded)


class _NotFromThePublisherThread(logging.Filter):
    """pika logs every failed connection attempt at ERROR, several lines
    each: from the publisher thread those would flood the app's log while
    the broker is away. The thread reports them itself, rate-limited."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName != THREAD_NAME


def _quiet_pika_in_our_thread() -> None:
    # A filter on a logger applies to records created there, not to ones
    # its children propagate: attach it to every pika logger.
    own = _NotFromThePublisherThread()
    for name in list(logging.root.manager.loggerDict):
        if name == "pika" or name.startswith("pika."):
            logging.getLogger(name).addFilter(own)


class RateLimitedWarning:
    """Logs a warning at most once per ``WARNING_INTERVAL`` per key, with
    how many were suppressed in between."""

    def __init__(self) -> None:
        self._last: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def warn(self, key: Hashable, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < WARNING_INTERVAL:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += " (%d more like this since the last warning)"
            args = (*args, suppressed)
        logger.warning(message, *args)


class Publisher:
    """Buffers events and publishes them from a thread of its own."""

    def __init__(self, settings: conf.GuardSettings) -> None:
        self._settings = settings
        self._app = settings.app or ""
        #: The process that made it: a forked child must make its own.
        self.pid = os.getpid()
        self._lock = threading.Lock()
        #: Notified when the buffer and the unconfirmed events are empty.
        self._idle = threading.Condition(self._lock)
        self._buffer = Buffer(settings.buffer_size)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._warnings = RateLimitedWarning()
        # Owned by the publisher thread (read elsewhere only for stats):
        self._connection: _BatchedConnection | None = None
        #: The loop of the connection attempt under way, and the attempt
        #: (pika's connection workflow, which goes through the URLs).
        self._loop: Any = None
        self._workflow: Any = None
        #: Index in the setting's list of the broker of the last connection:
        #: the next attempt tries it last.
        self._last_broker: int | None = None
        self._channel: Any = None
        self._next_tag = 1
        # Shared, under _lock:
        #: Published, waiting for the broker's confirm, by delivery tag, with
        #: the body sent (a returned message is known by its body).
        self._unconfirmed: dict[int, tuple[Event, bytes]] = {}
        #: Delivery tags the broker returned: re-sent after RETRY_PAUSE.
        self._returned: set[int] = set()
        #: No publishing before this time.monotonic() (after a nack or return).
        self._paused_until = 0.0
        #: Taken from the buffer by the current round and not yet published:
        #: flush must not see "nothing pending" in between.
        self._in_hand = 0
        #: Sessions' last request events, to publish one per interval
        #: (shared with the app's other processes on the host).
        self._recent = RecentRequests(settings.request_interval, settings.recent_sessions, _table_path(settings))
        self._ready = False
        #: A round is scheduled (or running), so a new event need not wake
        #: the thread...
        self._wake_pending = False
        #: ...unless it must not wait ``REQUEST_LINGER`` and the round
        #: scheduled would make it.
        self._urgent_pending = False
        # Owned by the thread: the scheduled round's timer, and when it fires.
        self._timer: Any = None
        self._timer_due = 0.0
        self._published = 0
        self._unroutable = 0
        self._invalid = 0
        # Every URL must log in as one user (ValueError otherwise: get()
        # reports it and publishes nothing, as the check does).
        user = brokers.common_user(settings.amqp_urls)
        self._properties = _FixedProperties(
            content_type="application/json",
            delivery_mode=2,
            # RabbitMQ checks user_id against the connection's user: with the
            # worker's amqp.require_user_id it proves which app sent the event.
            user_id=user,
        )

    # ----- request threads -------------------------------------------------

    def request_due(self, session_id: str, at: float, *, force: bool = False) -> bool:
        """Whether a request of ``session_id`` at ``at`` (``time.time()``) is
        to be published: the first in SESSION_GUARD_REQUEST_INTERVAL, or one
        that must be (``force``, recorded all the same). Asked before the
        event is built, so a coalesced request costs almost nothing."""
        with self._lock:
            return self._recent.due(session_id, at, force=force)

    def publish(self, event: Event) -> bool:
        """Hands the event over; never blocks on the network, never raises.
        False if the buffer refused it (full of logins, logouts and claims)."""
        with self._lock:
            if self._thread is None:
                self._start()
            if event.kind == "logout" and event.session_id is not None:
                self._recent.forget(event.session_id)
            outcome = self._buffer.push(event)
            # A full round goes early, unless the broker has no room for it
            # (its confirms make room, and pump).
            room = len(self._unconfirmed) < self._settings.max_in_flight
            urgent = event.kind != "request" or (len(self._buffer) >= ROUND_SIZE and room)
            wake = self._ready and (not self._wake_pending or (urgent and not self._urgent_pending))
            if wake:
                self._wake_pending = True
                self._urgent_pending = self._urgent_pending or urgent
            dropped, refused = self._buffer.dropped_requests, self._buffer.refused_full
        if outcome is not Pushed.QUEUED:
            self._warnings.warn(
                "full",
                "session-guard: %d events buffered and the broker is not taking them: "
                "%d requests dropped, %d logins/logouts/claims dropped so far",
                self._settings.buffer_size,
                dropped,
                refused,
            )
        if wake:
            self._wake()
        return outcome is not Pushed.FULL

    def _pending(self) -> int:
        """Events not yet confirmed. Under _lock."""
        return len(self._buffer) + len(self._unconfirmed) + self._in_hand

    def stats(self) -> Stats:
        with self._lock:
            return Stats(
                published=self._published,
                pending=self._pending(),
                dropped_requests=self._buffer.dropped_requests,
                refused_full=self._buffer.refused_full,
                unroutable=self._unroutable,
                invalid=self._invalid,
                coalesced_requests=self._recent.coalesced,
                connected=self._ready,
                cpu_seconds=_thread_cpu(self._thread),
                broker=self._shown(self._last_broker),
            )

    def flush(self, timeout: float) -> bool:
        """Waits until every event handed over so far is confirmed (or
        dropped); False if ``timeout`` seconds passed first."""
        deadline = time.monotonic() + timeout
        with self._lock:
            # Whatever is buffered goes out now, not after REQUEST_LINGER.
            wake = self._ready and self._pending() > 0 and not self._urgent_pending
            if wake:
                self._wake_pending = self._urgent_pending = True
        if wake:
            self._wake()
        with self._idle:
            while self._pending() and self._thread is not None and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.1))
        return True

    def close(self, timeout: float) -> bool:
        """Flushes for up to ``timeout`` seconds, then stops the thread.
        False if events were left unpublished."""
        flushed = self.flush(timeout) if self._thread is not None else True
        self._stopping.set()
        loop = self._loop
        if loop is not None:
            try:
                loop.add_callback_threadsafe(self._close_connection)
            except Exception:  # the loop is already gone
                pass
        if self._thread is not None:
            self._thread.join(timeout=max(timeout, 1.0))
        if not flushed:
            logger.warning(
                "session-guard: %d events not published at exit", self.stats().pending
            )
        return flushed

    # ----- the publisher thread --------------------------------------------

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=THREAD_NAME, daemon=True
        )
        self._thread.start()

    def _wake(self) -> None:
        connection = self._connection
        if connection is None:
            return
        try:
            connection.ioloop.add_callback_threadsafe(self._schedule)
        except Exception:
            # The loop closed meanwhile; the next connection pumps on open.
            with self._lock:
                self._wake_pending = self._urgent_pending = False

    def _run(self) -> None:
        _name_os_thread(OS_THREAD_NAME)
        backoff = FIRST_BACKOFF
        while not self._stopping.is_set():
            opened_at = time.monotonic()
            self._connect_and_loop()
            if self._stopping.is_set():
                break
            # A connection that lived a while starts the backoff over.
            if time.monotonic() - opened_at > 30:
                backoff = FIRST_BACKOFF
            self._stopping.wait(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self._settings.max_backoff)
        with self._idle:
            self._idle.notify_all()

    def _shown(self, index: int | None) -> str | None:
        """The URL at ``index`` of the setting, password masked."""
        if index is None or not 0 <= index < len(self._settings.amqp_urls):
            return None
        return brokers.mask(self._settings.amqp_urls[index])

    def _parameters(self) -> list[Any]:
        """pika's parameters for each URL, in the setting's order, with the
        publisher's defaults where a URL does not set its own. ValueError
        (password masked) if one does not parse."""
        urls = self._settings.amqp_urls
        made = []
        for url in urls:
            try:
                parameters = pika.URLParameters(url)
            except Exception as error:
                raise ValueError(f"{brokers.mask(url)}: {brokers.scrub(str(error), urls)}") from None
            given = url.partition("?")[2]
            # One try per URL and attempt: the next URL comes at once, and
            # the thread's backoff paces the attempts.
            if "connection_attempts" not in given:
                parameters.connection_attempts = 1
            if "socket_timeout" not in given:
                parameters.socket_timeout = CONNECT_TIMEOUT
            if "stack_timeout" not in given:
                parameters.stack_timeout = CONNECT_TIMEOUT * 2
            if "blocked_connection_timeout" not in given:
                parameters.blocked_connection_timeout = BLOCKED_TIMEOUT
            parameters.client_properties = {"connection_name": f"django-session-guard {self._app}"}
            made.append(parameters)
        return made

    def _connect_and_loop(self) -> None:
        """One connection attempt over the brokers (each tried once, in an
        order shuffled anew, the last one connected to last: brokers.order),
        then the connection's loop until it is lost."""
        try:
            parameters = self._parameters()
        except ValueError as error:
            self._warnings.warn("url", "session-guard: bad SESSION_GUARD_AMQP_URL: %s", error)
            return
        tried = [parameters[index] for index in brokers.order(len(parameters), self._last_broker)]
        loop = IOLoop()
        self._loop = loop
        try:
            # pika goes through the list itself: the first that answers.
            self._workflow = _BatchedConnection.create_connection(
                tried, on_done=lambda result: self._on_connected(loop, parameters, result), custom_ioloop=loop
            )
        except Exception as error:
            self._loop = None
            loop.close()
            self._warnings.warn(
                "connect",
                "session-guard: cannot reach the broker: %s",
                brokers.scrub(str(error), self._settings.amqp_urls),
            )
            return
        try:
            loop.start()
        except Exception:
            logger.exception("session-guard: the publisher's connection loop failed")
        finally:
            self._connection = None
            self._workflow = None
            self._loop = None
            self._lost()
            try:
                loop.close()
            except Exception:
                pass

    def _on_connected(self, loop: Any, parameters: list[Any], result: Any) -> None:
        """The end of a connection attempt: a connection, or why every
        broker failed. Runs on the attempt's loop."""
        self._workflow = None
        if isinstance(result, BaseException):
            self._on_open_error(loop, result)
            return
        connection: _BatchedConnection = result
        self._last_broker = brokers.index_of(parameters, connection.params)
        self._connection = connection
        if self._stopping.is_set():
            connection.add_on_close_callback(self._on_closed)
            connection.close()
            return
        connection.add_on_close_callback(self._on_closed)
        self._on_open(connection)

    def _on_open(self, connection: SelectConnection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_open_error(self, loop: Any, error: BaseException) -> None:
        if not self._stopping.is_set():
            urls = self._settings.amqp_urls
            self._warnings.warn(
                "connect",
                "session-guard: cannot reach the broker%s (%s): events are buffered, "
                "up to SESSION_GUARD_BUFFER_SIZE=%d",
                "" if len(urls) == 1 else f"s {brokers.mask_all(urls)}",
                brokers.scrub(repr(error), urls),
                self._settings.buffer_size,
            )
        loop.stop()

    def _on_closed(self, connection: SelectConnection, reason: BaseException) -> None:
        if not self._stopping.is_set():
            self._warnings.warn(
                "closed",
                "session-guard: connection to %s lost (%s): reconnecting%s",
                self._shown(self._last_broker),
                brokers.scrub(str(reason), self._settings.amqp_urls),
                "" if len(self._settings.amqp_urls) == 1 else ", this broker last",
            )
        connection.ioloop.stop()

    def _on_channel_open(self, channel: Any) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_confirm_mode)

    def _on_confirm_mode(self, _frame: Any) -> None:
        with self._lock:
            self._ready = True
            self._wake_pending = True
        logger.info(
            "session-guard: publishing to %s on %s", self._settings.events_exchange, self._shown(self._last_broker)
        )
        self._pump()

    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        # e.g. NOT_FOUND: the events exchange does not exist (yet): the
        # worker declares it at start.
        if self._stopping.is_set() or getattr(reason, "reply_code", None) == 200:
            return
        connection = self._connection
        if connection is None or connection.is_closing or connection.is_closed:
            return  # the connection was lost: _on_closed says so
        self._warnings.warn("channel", "session-guard: broker closed the channel: %s", reason)
        if connection.is_open:
            connection.close()

    def _close_connection(self) -> None:
        connection = self._connection
        if connection is not None and not (connection.is_closing or connection.is_closed):
            connection.close()
        workflow = self._workflow
        if connection is None and workflow is not None:
            # Still connecting: on_done gets "aborted" and stops the loop.
            try:
                workflow.abort()
            except Exception:
                if self._loop is not None:
                    self._loop.stop()

    def _lost(self) -> None:
        """The connection is gone: unconfirmed events go back to the front."""
        with self._lock:
            self._ready = False
            self._wake_pending = self._urgent_pending = False
            self._timer = None
            self._channel = None
            self._in_hand = 0
            if self._unconfirmed:
                self._buffer.put_back(self._unconfirmed[tag][0] for tag in sorted(self._unconfirmed))
                self._unconfirmed.clear()
            self._returned.clear()
            self._next_tag = 1
            self._idle.notify_all()

    def _schedule(self) -> None:
        """Schedules the next round: within ``LINGER`` if an event that must
        not wait is buffered, else within ``REQUEST_LINGER``; a round already
        scheduled sooner stands. Runs on the connection's loop."""
        connection = self._connection
        if connection is None:
            return
        with self._lock:
            delay = LINGER if self._urgent_pending else REQUEST_LINGER
        due = time.monotonic() + delay
        if self._timer is not None:
            if self._timer_due <= due:
                return
            connection.ioloop.remove_timeout(self._timer)
        self._timer = connection.ioloop.call_later(delay, self._pump)
        self._timer_due = due

    def _pump(self) -> None:
        """Publishes buffered events while fewer than MAX_IN_FLIGHT wait for
        their confirm. Runs on the connection's loop."""
        channel = self._channel
        if self._timer is not None and self._connection is not None:
            # Called before its timer (a confirm made room, or a new
            # connection): that round is this one.
            self._connection.ioloop.remove_timeout(self._timer)
        self._timer = None
        wait = self._paused_until - time.monotonic()
        if wait > 0 and self._connection is not None:
            self._timer = self._connection.ioloop.call_later(wait, self._pump)
            self._timer_due = self._paused_until
            return
        with self._lock:
            self._wake_pending = self._urgent_pending = False
            if channel is None or not self._ready:
                return
            room = self._settings.max_in_flight - len(self._unconfirmed)
            batch = self._buffer.take(min(room, ROUND_SIZE)) if room > 0 else []
            self._in_hand = len(batch)
            more = len(self._buffer) > 0 and room > len(batch)
            if more:
                self._wake_pending = self._urgent_pending = True
        if not batch:
            return
        connection = self._connection
        if connection is not None:
            connection.hold()
        try:
            self._publish_batch(channel, batch)
        finally:
            if connection is not None:
                connection.release()
        with self._lock:
            if not self._pending():
                self._idle.notify_all()
        if more and connection is not None:
            connection.ioloop.add_callback_threadsafe(self._pump)

    def _publish_batch(self, channel: Any, batch: list[Event]) -> None:
        for position, event in enumerate(batch):
            payload = events.body(event, self._app)
            if payload is None:
                with self._lock:
                    self._invalid += 1
                    self._in_hand -= 1
                self._warnings.warn(
                    "invalid",
                    "session-guard: left out a %s event the worker would refuse "
                    "(session or user id missing, over 256 characters or with control characters)",
                    event.kind,
                )
                continue
            try:
                channel.basic_publish(
                    self._settings.events_exchange,
                    f"{event.kind}.{self._app}",
                    payload,
                    self._properties,
                    mandatory=True,
                )
            except Exception as error:
                # The channel closed under us: keep what is left for the
                # next connection.
                with self._lock:
                    self._buffer.put_back(batch[position:])
                    self._in_hand = 0
                self._warnings.warn("publish", "session-guard: publish failed: %r", error)
                return
            with self._lock:
                self._unconfirmed[self._next_tag] = (event, payload)
                self._in_hand -= 1
            self._next_tag += 1

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag = method.delivery_tag
        with self._lock:
            if method.multiple:
                done = [t for t in self._unconfirmed if t <= tag]
            else:
                done = [tag] if tag in self._unconfirmed else []
            nacked = isinstance(method, Basic.Nack)
            retry = []
            for t in done:
                event, _payload = self._unconfirmed.pop(t)
                if nacked or t in self._returned:
                    retry.append(event)
                self._returned.discard(t)
            self._published += len(done) - len(retry)
            if retry:
                # Nacked (the broker could not take them) or returned (no
                # queue bound): kept, and sent again after a pause.
                self._buffer.put_back(retry)
                self._paused_until = time.monotonic() + RETRY_PAUSE
            if not self._pending():
                self._idle.notify_all()
            wake = len(self._buffer) > 0 and not self._wake_pending
            if wake:
                self._wake_pending = True
        if isinstance(method, Basic.Nack):
            self._warnings.warn("nack", "session-guard: the broker refused %d events: sending them again", len(done))
        if wake:
            self._pump()

    def _on_return(self, _channel: Any, method: Any, _properties: Any, body: bytes) -> None:
        # The broker sends the return before the confirm of the same
        # message: mark it, and _on_confirm keeps it for another try.
        with self._lock:
            self._unroutable += 1
            for tag, (_event, payload) in self._unconfirmed.items():
                if payload == body and tag not in self._returned:
                    self._returned.add(tag)
                    break
        self._warnings.warn(
            "unroutable",
            "session-guard: no queue is bound for %s on exchange %s: "
            "is session-guard running with amqp.events_exchange=%s? Kept, sent again in a moment",
            method.routing_key,
            self._settings.events_exchange,
            self._settings.events_exchange,
        )


def _table_path(settings: conf.GuardSettings) -> str | None:
    try:
        return table_path(settings.app or "", settings.amqp_urls, settings.events_exchange, settings.recent_sessions)
    # ValueError: a URL pika will refuse anyway (the checks say why);
    # AttributeError: no os.getuid (Windows): each process keeps its table.
    except (ValueError, AttributeError):
        return None


def _name_os_thread(name: bytes) -> None:
    """Names the calling thread for the operating system (Linux only;
    Python before 3.14 names threads for itself alone)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name[:15], 0, 0, 0)  # PR_SET_NAME
    except Exception:  # a name is a convenience, never a reason to fail
        pass


def _thread_cpu(thread: threading.Thread | None) -> float:
    """CPU seconds ``thread`` used so far, 0.0 if unknown."""
    if thread is None or thread.ident is None or not thread.is_alive():
        return 0.0
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    except (AttributeError, OSError):
        return 0.0


# ----- the process's publisher ---------------------------------------------

_publisher: Publisher | None = None
_publisher_lock = threading.Lock()
_bad_settings = RateLimitedWarning()


def get() -> Publisher | None:
    """This process's publisher, made on first use; None when publishing is
    off or SESSION_GUARD_APP is not usable (``manage.py check`` says why)."""
    global _publisher
    publisher = _publisher
    if publisher is not None:
        if publisher.pid == os.getpid():
            return publisher
        # Forked without the fork hooks running (uWSGI without
        # py-call-osafterfork): the parent's publisher is not ours.
        _after_fork()
    settings = conf.get()
    if not settings.enabled or not settings.app_valid:
        return None
    with _publisher_lock:
        if _publisher is None:
            try:
                _publisher = Publisher(settings)
            except Exception as error:
                _bad_settings.warn("settings", "session-guard: not publishing: %s", error)
                return None
        return _publisher


def publish(event: Event) -> bool:
    """Hands an event to this process's publisher (see :class:`Publisher`);
    False if publishing is off or the buffer refused it."""
    publisher = get()
    return publisher is not None and publisher.publish(event)


def request_due(session_id: str, at: float, *, force: bool = False) -> bool:
    """Whether this process publishes a request of ``session_id`` at ``at``
    (see :meth:`Publisher.request_due`)."""
    publisher = get()
    return publisher is not None and publisher.request_due(session_id, at, force=force)


def reset() -> None:
    """Stops this process's publisher (flushing for a moment); the next
    event makes a new one with the settings then in force."""
    global _publisher
    with _publisher_lock:
        publisher, _publisher = _publisher, None
    if publisher is not None:
        publisher.close(timeout=1.0)


@receiver(setting_changed)
def _restart(*, setting: str, **kwargs: Any) -> None:
    """A test changed a setting the publisher was made with: the next event
    makes a new one."""
    if setting.startswith(conf.PREFIX):
        reset()


def _after_fork() -> None:
    """In a forked child the parent's thread does not exist and its
    connection belongs to the parent: forget both, and start afresh on the
    child's first event."""
    global _publisher, _publisher_lock
    _publisher = None
    _publisher_lock = threading.Lock()


def _at_exit() -> None:
    publisher = _publisher
    if publisher is not None and publisher._thread is not None and os.getpid() == publisher.pid:
        publisher.close(timeout=conf.get().exit_flush_timeout)


_quiet_pika_in_our_thread()
os.register_at_fork(after_in_child=_after_fork)
atexit.register(_at_exit)
