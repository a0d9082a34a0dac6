"""The listener on its own: bad messages, revokes published by hand, a
broker restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

import pika
import pika.exceptions
import pytest
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session

from session_guard_django import listener as listener_module

from conftest import TESTS, broker, wait_until
from test_enforcement import log_in


def revoke(app: str, session_id: str) -> bytes:
    return json.dumps(
        {
            "type": "revoke",
            "event_id": str(uuid.uuid4()),
            "app": app,
            "session_id": session_id,
            "user_id": "1",
            "reason": "admin",
            "revoked_at": "2026-11-29T10:00:00Z",
            "max_sessions": 1,
            "repeat": False,
        }
    ).encode()


@pytest.mark.django_db(transaction=True)
def test_bad_messages_are_dead_lettered_and_do_not_stop_the_listener(names: Any, listener: Any) -> None:
    User.objects.create_user("ada", password="pw")
    connection = broker()
    channel = connection.channel()
    channel.exchange_declare(names.revocations_exchange, "topic", durable=True)
    lst = listener()
    client = log_in("ada", "laptop")
    key = client.session.session_key

    garbage = [b"not json", b'{"type": "login"}', revoke("another-app", key), b'{"type": "revoke", "app": "%s"}' % names.app.encode()]
    for body in garbage:
        channel.basic_publish(names.revocations_exchange, f"revoke.{names.app}", body)
    channel.basic_publish(names.revocations_exchange, f"revoke.{names.app}", revoke(names.app, key))

    wait_until("the session to end", lambda: not Session.objects.filter(session_key=key).exists())
    assert client.get("/whoami").content == b"anonymous"
    dead_queue = f"{names.revoke_queue}.dead"
    dead = wait_until(
        "the bad messages in the dead-letter queue",
        lambda: channel.queue_declare(dead_queue, passive=True).method.message_count == len(garbage),
    )
    assert dead
    bodies = []
    for _ in garbage:
        method, props, body = channel.basic_get(dead_queue, auto_ack=True)
        bodies.append(body)
        # The reason travels with it, as the worker and the Rust client put it.
        assert props.headers["x-session-guard-error-kind"] == "invalid"
        assert props.headers["x-session-guard-error"]
    assert sorted(bodies) == sorted(garbage)
    # The same revoke again (at-least-once delivery) is harmless.
    channel.basic_publish(names.revocations_exchange, f"revoke.{names.app}", revoke(names.app, key))
    wait_until("the repeated revoke to be handled", lambda: lst.output().count("ended session") == 2)
    connection.close()


@pytest.mark.django_db(transaction=True)
def test_a_queue_declared_with_other_arguments_is_a_clear_error(names: Any, tmp_path: Any) -> None:
    connection = broker()
    channel = connection.channel()
    channel.exchange_declare(names.revocations_exchange, "topic", durable=True)
    channel.queue_declare(names.revoke_queue, durable=True, arguments={"x-queue-type": "quorum"})
    connection.close()

    result = subprocess.run(
        [sys.executable, str(TESTS / "manage.py"), "session_guard_listen"],
        env={**os.environ, **names.env(), "PYTHONPATH": str(TESTS)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"queue {names.revoke_queue} or exchange {names.revoke_queue}.dead exists with other arguments" in result.stderr


@pytest.mark.django_db(transaction=True)
def test_the_listener_and_publisher_survive_a_broker_restart(
    names: Any, private_broker: Any, worker: Any, listener: Any
) -> None:
    # The worker, the listener and this process's publisher all use a node
    # of the test's own, stopped and started below (a full stop: every
    # connection drops, durable queues come back).
    user = User.objects.create_user("ada", password="pw")
    w = worker()
    lst = listener()
    log_in("ada", "warm-up")  # the publisher's connection is up before the restart
    wait_until("the warm-up login in the worker's log", lambda: len(w.sessions(user.pk)) == 1)

    private_broker.stop()
    private_broker.start()
    wait_until("the worker to be ready again", w.ready, timeout=60)

    first = log_in("ada", "laptop")
    first_key = first.session.session_key
    log_in("ada", "phone")
    wait_until(
        "the first session to end after the restart",
        lambda: not Session.objects.filter(session_key=first_key).exists(),
        timeout=60,
    )
    assert first.get("/whoami").content == b"anonymous"
    assert "broker connection lost" in lst.output()


def test_the_existing_group_size_is_read_from_rabbitmqs_refusal() -> None:
    # RabbitMQ 3.10.8's three answers, verbatim (the Rust side's test has
    # the same ones).
    none = (
        "PRECONDITION_FAILED - inequivalent arg 'x-quorum-initial-group-size' for queue 'q' in vhost '/': "
        "received the value '3' of type 'signedint' but current is none"
    )
    three = (
        "PRECONDITION_FAILED - inequivalent arg 'x-quorum-initial-group-size' for queue 'q' in vhost '/': "
        "received '1' but current is '3'"
    )
    typed = (
        "PRECONDITION_FAILED - inequivalent arg 'x-quorum-initial-group-size' for queue 'q' in vhost '/': "
        "received none but current is the value '5' of type 'signedint'"
    )
    other = (
        "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'q' in vhost '/': "
        "received '2' but current is '5'"
    )
    assert listener_module.existing_group_size(none) == (True, None)
    assert listener_module.existing_group_size(three) == (True, 3)
    assert listener_module.existing_group_size(typed) == (True, 5)
    assert listener_module.existing_group_size(other) == (False, None)


def test_a_queue_of_an_older_version_is_kept_and_a_real_mismatch_still_refused(names: Any) -> None:
    """A revocation queue declared before the group size was set (or by a
    listener with another one) is declared again with what it has; any other
    difference is still a refusal."""
    old = {
        "x-queue-type": "quorum",
        "x-delivery-limit": 4,
        "x-dead-letter-exchange": names.revoke_queue + ".dead",
    }
    connection = broker()
    try:
        channel = connection.channel()
        channel.queue_declare(names.revoke_queue, durable=True, arguments=old)
        asked = {**old, "x-quorum-initial-group-size": 3}
        kept = listener_module.declare_quorum_queue(connection, names.revoke_queue, asked)
        assert kept is not None and kept.existing is None and kept.asked == 3, kept
        assert "kept as it is" in kept.describe()
        # The same value as the queue's: nothing to keep.
        assert listener_module.declare_quorum_queue(connection, names.revoke_queue, old) is None
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            listener_module.declare_quorum_queue(connection, names.revoke_queue, {**asked, "x-delivery-limit": 9})
        assert refused.value.reply_code == 406
        assert "x-delivery-limit" in (refused.value.reply_text or "")
    finally:
        channel = connection.channel()
        channel.queue_delete(names.revoke_queue)
        connection.close()
