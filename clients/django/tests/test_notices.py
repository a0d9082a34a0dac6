"""Notices: ``session_guard_listen`` sends ``new_device_login`` once per
notice, with the right user; bodies that are not notices are dead-lettered.
The first test has them come from the real worker; the others publish them
by hand, as the worker does."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import pika
import pytest
from django.contrib.auth.models import User
from django.core.cache import caches
from django.test import override_settings

from session_guard_django import conf
from session_guard_django.notices import Notice, Seen

from conftest import AMQP_URL, broker, rabbitmqctl, wait_until
from test_enforcement import log_in
from test_listener import revoke

SUBJECT = "Subject: A new sign-in to your account"
FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
CHROME_ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Mobile Safari/537.36"
)


def notice(app: str, user_id: str, kind: str = "new_device", event_id: str | None = None) -> dict[str, Any]:
    return {
        "type": kind,
        "event_id": event_id or str(uuid.uuid4()),
        "app": app,
        "user_id": user_id,
        "session": "sgh_" + uuid.uuid4().hex,
        "signed_in_at": "2026-12-07T16:00:00.000000Z",
        "device": {"browser": "Chrome", "os": "Android", "kind": "phone"},
        "ip": "203.0.113.7",
        "new_device": kind == "new_device",
        "new_network": False,
        "known_devices": 1,
        "known_networks": 1,
    }


def publish(channel: Any, exchange: str, body: dict[str, Any] | bytes) -> None:
    """As the worker publishes a notice: routing key <type>.<app>, message
    id = event id, persistent."""
    if isinstance(body, bytes):
        channel.basic_publish(exchange, "new_device.x", body)
        return
    properties = pika.BasicProperties(
        message_id=body["event_id"], type=body["type"], app_id="session-guard", delivery_mode=2
    )
    channel.basic_publish(exchange, f"{body['type']}.{body['app']}", json.dumps(body).encode(), properties)


@pytest.mark.django_db(transaction=True)
def test_a_login_from_a_new_device_emails_the_right_user_once_through_the_worker(
    names: Any, worker: Any, listener: Any
) -> None:
    ada = User.objects.create_user("ada", "ada@example.com", "pw")
    bob = User.objects.create_user("bob", "bob@example.com", "pw")
    w = worker(max_sessions=5, extra="[notices]\nenabled = true\n")
    lst = listener()
    wait_until("the listener to consume notices", lambda: f"listening on {names.notice_queue}" in lst.output())

    # Ada's first session gives no notice (nothing to compare with), her
    # phone does; Bob's first session gives none, nor does Ada's laptop again.
    log_in("ada", FIREFOX_LINUX)
    wait_until("ada's first session in the worker's log", lambda: len(w.sessions(ada.pk)) == 1)
    log_in("bob", CHROME_ANDROID)
    log_in("ada", CHROME_ANDROID)
    wait_until("the email to ada", lambda: SUBJECT in lst.output())
    log_in("ada", FIREFOX_LINUX)
    wait_until("every login in the worker's log", lambda: len(w.sessions(ada.pk)) == 3 and w.sessions(bob.pk))
    # Long enough for a second notice, if there were one, to be handled.
    lst_output = wait_until("a quiet listener", lambda: _quiet(lst))
    assert lst_output.count(SUBJECT) == 1, lst_output
    assert lst_output.count("To: ada@example.com") == 1
    assert "bob@example.com" not in lst_output
    assert f"(new_device) of user {ada.pk}" in lst_output
    assert "A new sign-in to your account: Chrome on Android from 127.0.0.1 at " in lst_output


def _quiet(lst: Any, seconds: float = 2.0) -> str | None:
    """The listener's output once it did not change for ``seconds``."""
    before = lst.output()
    time.sleep(seconds)
    after = lst.output()
    return after if after == before else None


@pytest.mark.django_db(transaction=True)
def test_a_notice_sends_the_signal_once_with_the_right_user(names: Any, listener: Any) -> None:
    ada = User.objects.create_user("ada", "ada@example.com", "pw")
    User.objects.create_user("bob", "bob@example.com", "pw")
    connection = broker()
    channel = connection.channel()
    # As the worker declares them.
    channel.exchange_declare(names.revocations_exchange, "topic", durable=True)
    channel.exchange_declare(names.notices_exchange, "topic", durable=True)
    lst = listener()
    wait_until("the listener to consume notices", lambda: f"listening on {names.notice_queue}" in lst.output())

    sent = notice(names.app, str(ada.pk))
    publish(channel, names.notices_exchange, sent)
    # At-least-once delivery: the same notice again sends no second email.
    publish(channel, names.notices_exchange, sent)
    # A user deleted since: no signal, and the notice does not come back.
    publish(channel, names.notices_exchange, notice(names.app, "999999"))
    # A kind added later reaches the receiver too.
    publish(channel, names.notices_exchange, notice(names.app, str(ada.pk), kind="new_country"))

    wait_until("the four notices handled", lambda: lst.output().count(" notice ") >= 4)
    output = lst.output()
    assert output.count("sent new_device_login for notice") == 2, output
    assert f"sent new_device_login for notice {sent['event_id']} (new_device) of user {ada.pk}" in output
    assert "(new_country)" in output
    assert f"no signal for notice {sent['event_id']}: sent already" in output
    assert "user 999999 does not exist" in output
    assert output.count(SUBJECT) == 2, output
    assert output.count("To: ada@example.com") == 2
    assert "bob@example.com" not in output
    assert "A new sign-in to your account: Chrome on Android from 203.0.113.7 at 2026-12-07 16:00 UTC" in output
    assert channel.queue_declare(names.notice_queue, passive=True).method.message_count == 0
    connection.close()


@pytest.mark.django_db(transaction=True)
def test_bodies_that_are_not_notices_of_the_app_are_dead_lettered(names: Any, listener: Any) -> None:
    User.objects.create_user("ada", "ada@example.com", "pw")
    connection = broker()
    channel = connection.channel()
    # As the worker declares them.
    channel.exchange_declare(names.revocations_exchange, "topic", durable=True)
    channel.exchange_declare(names.notices_exchange, "topic", durable=True)
    lst = listener()
    wait_until("the listener to consume notices", lambda: f"listening on {names.notice_queue}" in lst.output())

    bad = notice(names.app, "1")
    del bad["device"]
    other_app = notice("another-app", "1")
    channel.queue_bind(names.notice_queue, names.notices_exchange, "new_device.x")
    garbage = [b"not json", json.dumps(bad).encode(), json.dumps(other_app).encode()]
    for body in garbage:
        publish(channel, names.notices_exchange, body)
    dead_queue = f"{names.notice_queue}.dead"
    wait_until(
        "the bodies in the notices' dead-letter queue",
        lambda: channel.queue_declare(dead_queue, passive=True).method.message_count == len(garbage),
    )
    errors = []
    for _ in garbage:
        _method, props, _body = channel.basic_get(dead_queue, auto_ack=True)
        assert props.headers["x-session-guard-error-kind"] == "invalid"
        errors.append(props.headers["x-session-guard-error"])
    assert sorted(errors) == sorted(
        [
            "not a notice: Expecting value: line 1 column 1 (char 0)",
            "not a notice: device: expected an object, got None",
            f"a notice for app 'another-app', not {names.app!r}",
        ]
    )
    assert SUBJECT not in lst.output()
    connection.close()


def test_a_notice_is_read_from_its_json_whatever_its_kind() -> None:
    body = notice("shop", "42", kind="new_network")
    body["country"] = "NL"  # a field added later: ignored
    n = Notice.from_json(body)
    assert (n.type, n.user_id, n.ip, n.new_device) == ("new_network", "42", "203.0.113.7", False)
    assert n.device.describe() == "Chrome on Android"
    assert n.signed_in_at.utcoffset() is not None
    del body["ip"]
    body["device"] = {"browser": None, "os": None, "kind": "unknown"}
    n = Notice.from_json(body)
    assert n.ip is None
    assert n.device.describe() == "an unknown browser on an unknown system"
    for field, value, error in (
        ("type", "", "type: expected a non-empty string, got ''"),
        ("known_devices", True, "known_devices: expected a count, got True"),
        ("new_device", "yes", "new_device: expected true or false, got 'yes'"),
        ("signed_in_at", "2026-12-07T16:00:00", "signed_in_at: no time zone"),
    ):
        with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
            Notice.from_json({**body, field: value})


@override_settings(
    CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "seen"}},
    SESSION_GUARD_NOTICE_SEEN_SECONDS=60,
)
def test_a_notice_is_claimed_once_and_released_when_its_signal_failed() -> None:
    seen = Seen(conf.get())
    n = Notice.from_json(notice("shop", "42"))
    assert seen.first(n)
    assert not seen.first(n), "a re-sent notice"
    seen.forget(n)
    assert seen.first(n), "after a failure, the notice comes again and is signalled"
    caches["default"].clear()
    with override_settings(SESSION_GUARD_NOTICE_CACHE=None):
        nothing = Seen(conf.get())
        assert nothing.first(n) and nothing.first(n), "with no cache, every delivery is signalled"


@pytest.mark.django_db(transaction=True)
def test_an_app_user_allowed_revokes_only_keeps_its_revokes(names: Any, listener: Any) -> None:
    """An app user with the permissions of a revoke subscriber only (as
    before notices): the listener warns about the notice queue and ends
    revoked sessions all the same."""
    user, password = f"sgdj-{names.token}", uuid.uuid4().hex
    queues = re.escape(names.revoke_queue) + r"(\.dead)?"
    rabbitmqctl("add_user", user, password)
    try:
        # docs/SECURITY.md's revoke subscriber row, for the test's names.
        exchange = re.escape(names.revocations_exchange)
        rabbitmqctl("set_permissions", "-p", "/", user, f"^{queues}$", f"^{queues}$", f"^({queues}|{exchange})$")
        connection = broker()
        channel = connection.channel()
        channel.exchange_declare(names.revocations_exchange, "topic", durable=True)
        channel.exchange_declare(names.notices_exchange, "topic", durable=True)
        names.amqp_url = AMQP_URL.replace("guest:guest", f"{user}:{password}")
        try:
            lst = listener()
        finally:
            names.amqp_url = AMQP_URL  # the test's cleanup runs as guest
        wait_until(
            "the warning about the notice queue",
            lambda: f"the broker refused to declare or bind {names.notice_queue}" in lst.output(),
        )
        key = "k" * 32
        channel.basic_publish(names.revocations_exchange, f"revoke.{names.app}", revoke(names.app, key))
        wait_until("the revoke to be handled", lambda: f"ended session {key}" in lst.output())
        connection.close()
    finally:
        rabbitmqctl("delete_user", user)
