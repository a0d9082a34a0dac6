"""The listener behind ``manage.py session_guard_listen``.

It consumes the app's two durable queues on one connection: revokes
(``<app>.revocations`` by default, bound to ``revoke.<app>`` on the worker's
revocations exchange), ending each revoked session through Django's
configured session engine; and notices (``<app>.notices``, bound to
``*.<app>`` on the notices exchange), sending ``signals.new_device_login``
for each. It acks a message only once that is done. One machinery serves
both (:class:`Queue` says what differs: the names, the parsing, the work).
The queues and their dead-letter queues are declared exactly as the Rust
client's listeners declare them (docs/PROTOCOL.md, "Subscribing as an
app"), so Rust and Django instances of one app can share them.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from importlib import import_module
from typing import Any

import pika
import pika.exceptions
from django.conf import settings as django_settings
from django.core.exceptions import SuspiciousOperation
from django.db import close_old_connections, connections

from . import brokers, conf, notices, revoked, signals

logger = logging.getLogger("session_guard_django.listener")

#: Header RabbitMQ sets on a quorum queue's redeliveries: deliveries before.
DELIVERY_COUNT_HEADER = "x-delivery-count"
#: Headers of a dead letter, as session-guard and the Rust client set them
#: (docs/PROTOCOL.md, schema/dead-letter-headers.schema.json): the reason,
#: and its kind ("invalid": not a revoke for this app; "failed": the session
#: could not be ended in SESSION_GUARD_LISTEN_MAX_ATTEMPTS deliveries).
ERROR_HEADER = "x-session-guard-error"
ERROR_KIND_HEADER = "x-session-guard-error-kind"
#: Longest ERROR_HEADER value, in bytes.
MAX_ERROR_HEADER_BYTES = 1024
#: Pause before a failed revoke goes back to the queue, times its attempt:
#: a database that is restarting gets a moment before attempts run out.
RETRY_PAUSE = 0.1
#: How often the consume loop looks at the stop flag when nothing arrives.
POLL = 0.5
#: How often a queue whose exchange did not exist yet is tried again.
REBIND_EVERY = 30.0
#: First pause before reconnecting; it doubles up to SESSION_GUARD_MAX_BACKOFF.
FIRST_BACKOFF = 0.1
#: A connection that lived this long before failing starts the backoff over.
STABLE_AFTER = 30.0


class ListenerError(Exception):
    """A problem retrying cannot fix: the command exits with it."""


class Queue:
    """One of the app's queues: its names, and what a message in it is and
    does. Subclasses: :class:`RevokeQueue`, :class:`NoticeQueue`."""

    #: A message, as the log names it.
    what = ""
    #: The setting that names the exchange, for the log.
    exchange_setting = ""

    def __init__(self, name: str, exchange: str, routing_key: str, required: bool) -> None:
        self.name = name
        self.exchange = exchange
        self.routing_key = routing_key
        #: Whether a missing exchange is an error (retried with backoff)
        #: rather than a warning, the queue being tried again later.
        self.required = required

    @property
    def dead(self) -> str:
        """The app's dead-letter exchange and queue for this queue."""
        return f"{self.name}.dead"

    def parse(self, body: bytes) -> tuple[Any | None, str]:
        """The message, or None and why the body is not one for this app."""
        raise NotImplementedError

    def act(self, message: Any, delivery_count: int) -> str | None:
        """Does what the message asks; returns the log line, or None to log
        nothing; raises if it failed (the message is retried)."""
        raise NotImplementedError

    def failed(self, message: Any, error: Exception) -> None:
        """Undoes what ``act`` claimed before it failed."""

    def describe(self, message: Any) -> str:
        """The message in a log line."""
        raise NotImplementedError


class RevokeQueue(Queue):
    what = "revoke"
    exchange_setting = "SESSION_GUARD_REVOCATIONS_EXCHANGE"

    def __init__(self, settings: conf.GuardSettings, app: str) -> None:
        super().__init__(settings.revoke_queue, settings.revocations_exchange, f"revoke.{app}", required=True)
        self.app = app
        #: Sessions ended since start, for the log and for tests.
        self.ended = 0

    def parse(self, body: bytes) -> tuple[dict[str, Any] | None, str]:
        try:
            revoke = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            return None, f"not JSON: {error}"
        if not isinstance(revoke, dict) or revoke.get("type") != "revoke":
            return None, "not a revoke (type is not \"revoke\")"
        if revoke.get("app") != self.app:
            return None, f"a revoke for app {revoke.get('app')!r}, not {self.app!r}"
        session_id = revoke.get("session_id")
        if not isinstance(session_id, str) or not session_id:
            return None, "a revoke without a session_id"
        return revoke, ""

    def act(self, message: Any, delivery_count: int) -> str | None:
        session_id = message["session_id"]
        try:
            end_session(session_id)
        except SuspiciousOperation as error:
            # A key the engine refuses to look up (the file engine checks
            # its characters): no such session can exist here.
            logger.warning("session-guard: revoke for a session key %r this engine refuses: %s", session_id, error)
            return None
        self.ended += 1
        return "ended session %s of user %s (%s%s)" % (
            session_id,
            message.get("user_id"),
            message.get("reason"),
            ", repeat" if message.get("repeat") else "",
        )

    def describe(self, message: Any) -> str:
        return f"ending session {message['session_id']}"


class NoticeQueue(Queue):
    what = "notice"
    exchange_setting = "SESSION_GUARD_NOTICES_EXCHANGE"

    def __init__(self, settings: conf.GuardSettings, app: str) -> None:
        # Every kind (`*`), those added later too: the receiver decides.
        # Not required: a worker older than notices has no such exchange,
        # and revokes must flow all the same.
        super().__init__(settings.notice_queue, settings.notices_exchange, f"*.{app}", required=False)
        self.app = app
        self.seen = notices.Seen(settings)
        #: Signals sent since start, for the log and for tests.
        self.sent = 0

    def parse(self, body: bytes) -> tuple[notices.Notice | None, str]:
        try:
            notice = notices.Notice.from_json(json.loads(body))
        except (ValueError, UnicodeDecodeError) as error:
            return None, f"not a notice: {error}"
        if notice.app != self.app:
            return None, f"a notice for app {notice.app!r}, not {self.app!r}"
        return notice, ""

    def act(self, message: Any, delivery_count: int) -> str | None:
        notice: notices.Notice = message
        user = notices.user_of(notice)
        if user is None:
            return f"no signal for notice {notice.event_id}: user {notice.user_id} does not exist"
        if not self.seen.first(notice):
            return f"no signal for notice {notice.event_id}: sent already (a re-sent notice)"
        signals.new_device_login.send(
            sender=notices.Notice, user=user, notice=notice, delivery_count=delivery_count
        )
        self.sent += 1
        return f"sent new_device_login for notice {notice.event_id} ({notice.type}) of user {notice.user_id}"

    def failed(self, message: Any, error: Exception) -> None:
        # The notice comes again: it must send the signal then.
        self.seen.forget(message)

    def describe(self, message: Any) -> str:
        return f"sending new_device_login for notice {message.event_id}"


class Listener:
    """Ends the sessions session-guard revokes and signals its notices,
    until ``stop`` is set."""

    def __init__(self, stop: threading.Event) -> None:
        self.settings = conf.get()
        if not self.settings.app_valid:
            raise ListenerError("SESSION_GUARD_APP is missing or invalid: run manage.py check")
        self.app: str = self.settings.app or ""
        self.stop = stop
        self.revokes = RevokeQueue(self.settings, self.app)
        self.notices = NoticeQueue(self.settings, self.app) if self.settings.listen_notices else None
        self.queues: list[Queue] = [self.revokes] + ([self.notices] if self.notices is not None else [])
        self._dead_channel: Any = None
        #: Index in the setting's list of the broker of the last connection:
        #: the next attempt tries it last.
        self._last_broker: int | None = None

    # ----- broker ------------------------------------------------------------

    def run(self) -> None:
        """Connects, declares, consumes; reconnects after any broker failure.
        Returns once ``stop`` is set; raises ListenerError on refused
        credentials or a queue declared with other arguments."""
        backoff = FIRST_BACKOFF
        first = True
        while not self.stop.is_set():
            opened = time.monotonic()
            try:
                self._session()
                if self.stop.is_set():
                    return
                # The broker cancelled the consumer (the queue was deleted,
                # say): declare again and go on.
                logger.warning("session-guard: the broker cancelled the consumer: reconnecting")
            except ListenerError:
                raise
            except (pika.exceptions.ProbableAuthenticationError, pika.exceptions.ProbableAccessDeniedError) as error:
                shown = self._scrub(repr(error))
                if first:
                    raise ListenerError(f"the broker refused the credentials: {shown}") from error
                logger.error("session-guard: the broker refused the credentials: %s", shown)
            except pika.exceptions.ChannelClosedByBroker as error:
                if error.reply_code == 404:
                    logger.warning(
                        "session-guard: exchange %s does not exist: start session-guard "
                        "(it declares it) or set SESSION_GUARD_REVOCATIONS_EXCHANGE to the "
                        "worker's amqp.revocations_exchange",
                        self.settings.revocations_exchange,
                    )
                else:
                    logger.warning("session-guard: the broker closed the channel: %s", self._scrub(repr(error)))
            except (pika.exceptions.AMQPError, OSError) as error:
                urls = self.settings.amqp_urls
                logger.warning(
                    "session-guard: broker connection lost or refused (%s): %s",
                    self._shown(self._last_broker) if self._connected else brokers.mask_all(urls),
                    self._scrub(repr(error)),
                )
            first = False
            if time.monotonic() - opened > STABLE_AFTER:
                backoff = FIRST_BACKOFF
            self.stop.wait(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self.settings.max_backoff)

    def _scrub(self, text: str) -> str:
        return brokers.scrub(text, self.settings.amqp_urls)

    def _shown(self, index: int | None) -> str:
        urls = self.settings.amqp_urls
        return brokers.mask(urls[index]) if index is not None and 0 <= index < len(urls) else brokers.mask_all(urls)

    def _parameters(self) -> list[Any]:
        """pika's parameters for each URL, in the setting's order."""
        made = []
        for url in self.settings.amqp_urls:
            try:
                parameters = pika.URLParameters(url)
            except Exception as error:
                raise ListenerError(
                    f"SESSION_GUARD_AMQP_URL: {brokers.mask(url)} is not a usable broker URL: "
                    f"{self._scrub(str(error))} (run manage.py check)"
                ) from None
            # One try per URL and attempt: the next URL comes at once, and
            # run()'s backoff paces the attempts.
            parameters.connection_attempts = 1
            parameters.socket_timeout = 5
            parameters.client_properties = {"connection_name": f"session_guard_listen {self.app}"}
            made.append(parameters)
        return made

    _connected = False

    def _session(self) -> None:
        parameters = self._parameters()
        # Each URL once, in an order shuffled anew, the broker of the last
        # connection last (brokers.order); pika tries them in turn and
        # returns the first connection made.
        tried = [parameters[index] for index in brokers.order(len(parameters), self._last_broker)]
        self._connected = False
        connection = pika.BlockingConnection(tried)
        self._last_broker = brokers.index_of(parameters, connection._impl.params)
        self._connected = True
        try:
            # Dead letters go out on a channel of their own, in confirm mode,
            # so a message is acked only once its copy is safe.
            self._dead_channel = connection.channel()
            self._dead_channel.confirm_delivery()
            channel = connection.channel()
            # Per consumer (pika's default): RabbitMQ 3.x refuses global QoS
            # on quorum queues.
            channel.basic_qos(prefetch_count=self.settings.listen_prefetch)
            waiting = [queue for queue in self.queues if not self._listen(connection, channel, queue)]
            retry_at = time.monotonic() + REBIND_EVERY
            while not self.stop.is_set():
                connection.process_data_events(time_limit=POLL)
                if not channel.is_open or len(channel.consumer_tags) < len(self.queues) - len(waiting):
                    # The broker cancelled a consumer (its queue deleted,
                    # say): run() connects and declares again.
                    return
                if waiting and time.monotonic() >= retry_at:
                    waiting = [queue for queue in waiting if not self._listen(connection, channel, queue)]
                    retry_at = time.monotonic() + REBIND_EVERY
            # Deliveries the broker sent ahead and not yet handled go back
            # to their queue (pika nacks them with requeue).
            for tag in list(channel.consumer_tags):
                channel.basic_cancel(tag)
        finally:
            if connection.is_open:
                try:
                    connection.close()
                except pika.exceptions.AMQPError:
                    pass

    def _listen(self, connection: Any, channel: Any, queue: Queue) -> bool:
        """Declares ``queue`` and consumes it on ``channel``. False if its
        exchange does not exist and the queue is not required: the log says
        so and the caller tries again later."""
        try:
            self.declare(connection, queue)
        except pika.exceptions.ChannelClosedByBroker as error:
            if error.reply_code == 406:  # PRECONDITION_FAILED: retrying cannot help
                raise ListenerError(
                    f"queue {queue.name} or exchange {queue.dead} exists with other arguments "
                    f"({error.reply_text}): the queue must be a quorum queue with "
                    f"x-delivery-limit {self.settings.listen_max_attempts - 1} and "
                    f"x-dead-letter-exchange {queue.dead} (a fanout exchange); delete them or "
                    "make SESSION_GUARD_LISTEN_MAX_ATTEMPTS match"
                ) from error
            if error.reply_code == 404 and not queue.required:
                logger.warning(
                    "session-guard: exchange %s does not exist: %ss are not consumed until "
                    "session-guard declares it (a worker of this version does; or set %s to the "
                    "worker's exchange); trying again in %d s",
                    queue.exchange,
                    queue.what,
                    queue.exchange_setting,
                    REBIND_EVERY,
                )
                return False
            if error.reply_code == 403 and not queue.required:
                # An app user given the permissions for revokes only (as
                # before notices): revokes must flow all the same.
                logger.warning(
                    "session-guard: the broker refused to declare or bind %s (%s): %ss are not "
                    "consumed (the app's user needs the permissions in docs/SECURITY.md, or set "
                    "SESSION_GUARD_LISTEN_NOTICES = False); trying again in %d s",
                    queue.name,
                    self._scrub(error.reply_text or ""),
                    queue.what,
                    REBIND_EVERY,
                )
                return False
            raise
        channel.basic_consume(
            queue.name,
            lambda ch, method, properties, body: self.handle(queue, ch, method, properties, body),
        )
        logger.info(
            "session-guard: listening on %s (%s on %s) via %s",
            queue.name,
            queue.routing_key,
            queue.exchange,
            self._shown(self._last_broker),
        )
        return True

    def declare(self, connection: Any, queue: Queue) -> None:
        """The queue's dead-letter exchange and queue, then the queue and its
        binding: idempotent, as every instance declares them at each start.
        On channels of their own (a refusal closes the channel). The queues
        are quorum queues with ``QUORUM_INITIAL_GROUP_SIZE`` replicas: see
        :func:`declare_quorum_queue`."""
        dead = queue.dead
        quorum = {
            "x-queue-type": "quorum",
            "x-quorum-initial-group-size": self.settings.quorum_initial_group_size,
        }
        channel = connection.channel()
        try:
            # An exchange of the app's own, not the default exchange:
            # publishing there would let the app's user reach any queue of
            # the vhost.
            channel.exchange_declare(dead, "fanout", durable=True)
            self._kept(declare_quorum_queue(connection, dead, quorum))
            channel.queue_bind(dead, dead)
            self._kept(
                declare_quorum_queue(
                    connection,
                    queue.name,
                    {
                        **quorum,
                        # Quorum queues of RabbitMQ 3.x redeliver for ever by default.
                        "x-delivery-limit": self.settings.listen_max_attempts - 1,
                        "x-dead-letter-exchange": dead,
                        # Keep a dead letter until the dead-letter queue has it;
                        # requires reject-publish, a no-op without a length limit.
                        "x-dead-letter-strategy": "at-least-once",
                        "x-overflow": "reject-publish",
                    },
                )
            )
            channel.queue_bind(queue.name, queue.exchange, routing_key=queue.routing_key)
        finally:
            if channel.is_open:
                channel.close()

    def _kept(self, kept: KeptGroupSize | None) -> None:
        if kept is not None:
            logger.warning("session-guard: %s", kept.describe())

    # ----- one message ----------------------------------------------------------

    def handle(self, queue: Queue, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        tag = method.delivery_tag
        message, problem = queue.parse(body)
        if message is None:
            # Not a message for this app: it goes to the dead-letter queue,
            # where someone can read it, rather than round and round.
            logger.warning("session-guard: dead-lettered a message in %s: %s", queue.name, problem)
            self.give_up(queue, channel, method, properties, body, problem, "invalid")
            return
        headers = (properties.headers or {}) if properties is not None else {}
        delivery_count = int(headers.get(DELIVERY_COUNT_HEADER, 0))
        try:
            close_old_connections()
            done = queue.act(message, delivery_count)
        except Exception as error:
            queue.failed(message, error)
            attempt = delivery_count + 1
            last = attempt >= self.settings.listen_max_attempts
            logger.error(
                "session-guard: %s failed (attempt %d of %d%s): %r",
                queue.describe(message),
                attempt,
                self.settings.listen_max_attempts,
                ", dead-lettered" if last else ", will retry",
                error,
            )
            connections.close_all()
            if last:
                self.give_up(
                    queue, channel, method, properties, body, f"{queue.describe(message)} failed: {error!r}", "failed"
                )
                return
            if not self.stop.is_set():
                # A shutdown requeues at once rather than holding the message.
                self.stop.wait(min(RETRY_PAUSE * attempt, self.settings.max_backoff))
            channel.basic_nack(tag, requeue=True)
            return
        channel.basic_ack(tag)
        if done is not None:
            logger.info("session-guard: %s", done)

    def give_up(
        self, queue: Queue, channel: Any, method: Any, properties: Any, body: bytes, error: str, kind: str
    ) -> None:
        """Publishes a copy of the message, with the reason in the error
        headers, to the queue's dead-letter exchange, then acks it. If the
        copy cannot be published, rejects it: the broker dead-letters it
        itself (without the headers)."""
        properties = properties or pika.BasicProperties()
        headers = dict(properties.headers or {})
        headers[ERROR_HEADER] = error_header_value(error)
        headers[ERROR_KIND_HEADER] = kind
        properties.headers = headers
        properties.delivery_mode = 2
        try:
            self._dead_channel.basic_publish(queue.dead, method.routing_key, body, properties)
        except pika.exceptions.AMQPError as failure:
            logger.warning("session-guard: cannot publish the dead letter (%r): rejecting it instead", failure)
            channel.basic_reject(method.delivery_tag, requeue=False)
            return
        channel.basic_ack(method.delivery_tag)


def error_header_value(error: str) -> str:
    """``error`` cut to at most MAX_ERROR_HEADER_BYTES on a character boundary."""
    encoded = error.encode()
    if len(encoded) <= MAX_ERROR_HEADER_BYTES:
        return error
    return encoded[:MAX_ERROR_HEADER_BYTES].decode(errors="ignore")


def end_session(session_id: str) -> None:
    """Ends one session through the configured engine. Ending one that no
    longer exists is fine (revokes may arrive twice)."""
    if conf.signed_cookies():
        revoked.record(session_id)
        return
    engine = import_module(django_settings.SESSION_ENGINE)
    engine.SessionStore().delete(session_id)


#: The argument that sets a quorum queue's replicas at its creation.
INITIAL_GROUP_SIZE_ARG = "x-quorum-initial-group-size"


@dataclass(frozen=True)
class KeptGroupSize:
    """A queue that existed with another initial group size, kept as it is
    (the argument only acts at creation; RabbitMQ refuses a redeclare that
    differs in it)."""

    queue: str
    existing: int | None
    asked: int

    def describe(self) -> str:
        had = f"{self.existing}" if self.existing is not None else "none (created before the setting)"
        return (
            f"queue {self.queue} exists with x-quorum-initial-group-size {had}, not {self.asked}: "
            "kept as it is (`rabbitmq-queues grow` / `shrink` change the replicas of an existing one)"
        )


def existing_group_size(message: str) -> tuple[bool, int | None]:
    """The existing queue's initial group size, read from RabbitMQ's answer
    to a redeclare (PRECONDITION_FAILED, "inequivalent arg
    'x-quorum-initial-group-size' ... but current is ..."): ``(True, None)``
    if it has none, ``(True, n)`` if it has n, ``(False, None)`` if the
    answer is about something else (a real mismatch). The rules of the Rust
    side's ``session_guard_amqp::quorum::existing_group_size``."""
    if f"inequivalent arg '{INITIAL_GROUP_SIZE_ARG}'" not in message or "current is " not in message:
        return (False, None)
    current = message.rsplit("current is ", 1)[1].rstrip()
    if current.startswith("none"):
        return (True, None)
    parts = current.split("'")
    if len(parts) < 2:
        return (False, None)
    try:
        return (True, int(parts[1]))
    except ValueError:
        return (False, None)


def declare_quorum_queue(connection: Any, name: str, arguments: dict[str, Any]) -> KeptGroupSize | None:
    """Declares the durable quorum queue ``name`` with ``arguments``, on a
    channel of its own. If it exists and differs in its initial group size
    only, declares it again with the existing value, so that every other
    argument is still checked, and says what was kept; any other refusal is
    raised as it is."""
    asked = arguments.get(INITIAL_GROUP_SIZE_ARG)
    try:
        _declare_on_own_channel(connection, name, arguments)
        return None
    except pika.exceptions.ChannelClosedByBroker as error:
        found, existing = existing_group_size(error.reply_text or "")
        if error.reply_code != 406 or asked is None or not found:
            raise
    kept = {k: v for k, v in arguments.items() if k != INITIAL_GROUP_SIZE_ARG}
    if existing is not None:
        kept[INITIAL_GROUP_SIZE_ARG] = existing
    _declare_on_own_channel(connection, name, kept)
    return KeptGroupSize(queue=name, existing=existing, asked=int(asked))


def _declare_on_own_channel(connection: Any, name: str, arguments: dict[str, Any]) -> None:
    channel = connection.channel()
    try:
        channel.queue_declare(name, durable=True, arguments=arguments)
    finally:
        if channel.is_open:
            channel.close()
