"""The revocation listener behind ``manage.py session_guard_listen``.

It consumes the app's durable queue (``<app>.revocations`` by default) bound
to ``revoke.<app>`` on the worker's revocations exchange, ends each revoked
session through Django's configured session engine, and acks only then. The
queue and its dead-letter queue are declared exactly as the Rust client's
``RevocationListener`` declares them (docs/PROTOCOL.md, "Subscribing as an
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

from . import brokers, conf, revoked

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
#: First pause before reconnecting; it doubles up to SESSION_GUARD_MAX_BACKOFF.
FIRST_BACKOFF = 0.1
#: A connection that lived this long before failing starts the backoff over.
STABLE_AFTER = 30.0


class ListenerError(Exception):
    """A problem retrying cannot fix: the command exits with it."""


class Listener:
    """Ends the sessions session-guard revokes, until ``stop`` is set."""

    def __init__(self, stop: threading.Event) -> None:
        self.settings = conf.get()
        if not self.settings.app_valid:
            raise ListenerError("SESSION_GUARD_APP is missing or invalid: run manage.py check")
        self.app: str = self.settings.app or ""
        self.stop = stop
        #: Sessions ended since start, for the log and for tests.
        self.ended = 0
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
            channel = connection.channel()
            try:
                self.declare(connection, channel)
            except pika.exceptions.ChannelClosedByBroker as error:
                if error.reply_code == 406:  # PRECONDITION_FAILED: retrying cannot help
                    raise ListenerError(
                        f"queue {self.settings.revoke_queue} or exchange "
                        f"{self.settings.dead_letter_queue} exists with other arguments "
                        f"({error.reply_text}): the queue must be a quorum queue with "
                        f"x-delivery-limit {self.settings.listen_max_attempts - 1} and "
                        f"x-dead-letter-exchange {self.settings.dead_letter_queue} (a fanout "
                        "exchange); delete them or make SESSION_GUARD_LISTEN_MAX_ATTEMPTS match"
                    ) from error
                raise
            # Dead letters go out on a channel of their own, in confirm mode,
            # so a revoke is acked only once its copy is safe.
            self._dead_channel = connection.channel()
            self._dead_channel.confirm_delivery()
            channel.basic_qos(prefetch_count=self.settings.listen_prefetch)
            logger.info(
                "session-guard: listening on %s (revoke.%s on %s) via %s",
                self.settings.revoke_queue,
                self.app,
                self.settings.revocations_exchange,
                self._shown(self._last_broker),
            )
            consumer = channel.consume(self.settings.revoke_queue, inactivity_timeout=POLL)
            for method, properties, body in consumer:
                if method is not None:
                    self.handle(channel, method, properties, body)
                if self.stop.is_set():
                    break
            # Unacked deliveries the broker already sent go back to the queue.
            channel.cancel()
        finally:
            if connection.is_open:
                try:
                    connection.close()
                except pika.exceptions.AMQPError:
                    pass

    def declare(self, connection: Any, channel: Any) -> None:
        """The dead-letter exchange and queue, then the revoke queue and its
        binding: idempotent, as every instance declares them at each start.
        The queues are quorum queues with ``QUORUM_INITIAL_GROUP_SIZE``
        replicas, each declared on a channel of its own (a refusal closes
        the channel): see :func:`declare_quorum_queue`."""
        dead = self.settings.dead_letter_queue
        quorum = {
            "x-queue-type": "quorum",
            "x-quorum-initial-group-size": self.settings.quorum_initial_group_size,
        }
        # An exchange of the app's own, not the default exchange: publishing
        # there would let the app's user reach any queue of the vhost.
        channel.exchange_declare(dead, "fanout", durable=True)
        self._kept(declare_quorum_queue(connection, dead, quorum))
        channel.queue_bind(dead, dead)
        revoke_queue = self.settings.revoke_queue
        self._kept(
            declare_quorum_queue(
                connection,
                revoke_queue,
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
        channel.queue_bind(
            revoke_queue,
            self.settings.revocations_exchange,
            routing_key=f"revoke.{self.app}",
        )

    def _kept(self, kept: KeptGroupSize | None) -> None:
        if kept is not None:
            logger.warning("session-guard: %s", kept.describe())

    # ----- one revoke -----------------------------------------------------------

    def handle(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        tag = method.delivery_tag
        revoke, problem = self.parse(body)
        if revoke is None:
            # Not a revoke of this app: it goes to the dead-letter queue,
            # where someone can read it, rather than round and round.
            logger.warning("session-guard: dead-lettered a message in %s: %s", self.settings.revoke_queue, problem)
            self.give_up(channel, method, properties, body, problem, "invalid")
            return
        session_id = revoke["session_id"]
        try:
            close_old_connections()
            end_session(session_id)
        except SuspiciousOperation as error:
            # A key the engine refuses to look up (the file engine checks
            # its characters): no such session can exist here.
            logger.warning("session-guard: revoke for a session key %r this engine refuses: %s", session_id, error)
            channel.basic_ack(tag)
            return
        except Exception as error:
            headers = (properties.headers or {}) if properties is not None else {}
            attempt = int(headers.get(DELIVERY_COUNT_HEADER, 0)) + 1
            last = attempt >= self.settings.listen_max_attempts
            logger.error(
                "session-guard: could not end session %s (attempt %d of %d%s): %r",
                session_id,
                attempt,
                self.settings.listen_max_attempts,
                ", dead-lettered" if last else ", will retry",
                error,
            )
            connections.close_all()
            if last:
                self.give_up(channel, method, properties, body, f"ending the session failed: {error!r}", "failed")
                return
            if not self.stop.is_set():
                # A shutdown requeues at once rather than holding the revoke.
                self.stop.wait(min(RETRY_PAUSE * attempt, self.settings.max_backoff))
            channel.basic_nack(tag, requeue=True)
            return
        channel.basic_ack(tag)
        self.ended += 1
        logger.info(
            "session-guard: ended session %s of user %s (%s%s)",
            session_id,
            revoke.get("user_id"),
            revoke.get("reason"),
            ", repeat" if revoke.get("repeat") else "",
        )

    def give_up(self, channel: Any, method: Any, properties: Any, body: bytes, error: str, kind: str) -> None:
        """Publishes a copy of the message, with the reason in the error
        headers, to the app's dead-letter exchange, then acks it. If the copy
        cannot be published, rejects it: the broker dead-letters it itself
        (without the headers)."""
        properties = properties or pika.BasicProperties()
        headers = dict(properties.headers or {})
        headers[ERROR_HEADER] = error_header_value(error)
        headers[ERROR_KIND_HEADER] = kind
        properties.headers = headers
        properties.delivery_mode = 2
        try:
            self._dead_channel.basic_publish(
                self.settings.dead_letter_queue, method.routing_key, body, properties
            )
        except pika.exceptions.AMQPError as failure:
            logger.warning("session-guard: cannot publish the dead letter (%r): rejecting it instead", failure)
            channel.basic_reject(method.delivery_tag, requeue=False)
            return
        channel.basic_ack(method.delivery_tag)

    def parse(self, body: bytes) -> tuple[dict[str, Any] | None, str]:
        """The revoke, or None and why the body is not one for this app."""
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
