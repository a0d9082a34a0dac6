"""What the app publishes, against the real broker (no worker needed: a
private queue bound to the test's events exchange sees every event)."""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime, timezone
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from conftest import broker, rabbitmqctl, wait_until
from session_guard_django import publisher
from session_guard_django.buffer import Event


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.django_db(transaction=True)
def test_login_request_and_logout_are_published(names: Any, capture: Any) -> None:
    events = capture(names.events_exchange)
    user = User.objects.create_user("ada", password="pw")
    client = Client(HTTP_USER_AGENT="Firefox\x00 on Linux", REMOTE_ADDR="192.0.2.7")
    before = datetime.now(timezone.utc)
    assert client.post("/login", {"username": "ada", "password": "pw"}).status_code == 200
    key = client.session.session_key
    assert client.get("/whoami").content == b"ada"
    assert client.post("/logout").status_code == 200

    # The logout view's own request adds nothing: the logout says it all.
    got = events.take(3)
    assert [key for key, _, _ in got] == [f"login.{names.app}", f"request.{names.app}", f"logout.{names.app}"]
    assert events.quiet(0.3) == []
    (_, login, props), (_, request, _), (_, logout, _) = got
    assert props.content_type == "application/json" and props.delivery_mode == 2
    assert props.user_id == "guest"
    for body in (login, request, logout):
        assert body["app"] == names.app
        assert body["session_id"] == key
        assert body["user_id"] == str(user.pk)
        assert body["ip"] == "192.0.2.7"
        assert body["user_agent"] == "Firefox on Linux"  # NUL removed
        assert before <= parse_time(body["occurred_at"]) <= datetime.now(timezone.utc)
    assert [login["type"], request["type"], logout["type"]] == ["login", "request", "logout"]
    # Claims go with the login; session-guard remembers them, so requests
    # and logouts carry none.
    assert login["attributes"] == {"superuser": False, "staff": False, "roles": []}
    assert "attributes" not in request
    assert "attributes" not in logout
    # The login carries Django's own expiry of the session.
    expires = parse_time(login["expires_at"])
    assert abs((expires - parse_time(login["occurred_at"])).total_seconds() - 1209600) < 60
    assert "expires_at" not in request  # not known without a query


@pytest.mark.django_db(transaction=True)
def test_requests_of_one_session_are_published_once_per_interval(names: Any, capture: Any, settings: Any) -> None:
    # Long enough that the burst below fits in it on a busy machine.
    settings.SESSION_GUARD_REQUEST_INTERVAL = 3.0
    events = capture(names.events_exchange)
    User.objects.create_user("ada", password="pw")
    User.objects.create_user("bob", password="pw")
    ada, bob = Client(), Client()
    ada.post("/login", {"username": "ada", "password": "pw"})
    bob.post("/login", {"username": "bob", "password": "pw"})
    started = time.monotonic()
    for _ in range(5):  # a page and its API calls
        assert ada.get("/whoami").content == b"ada"
    assert bob.get("/whoami").content == b"bob"
    burst = time.monotonic() - started
    assert burst < 3.0, f"the burst took {burst:.2f} s: too slow for this test"
    got = events.take(4)
    assert [body["type"] for _, body, _ in got] == ["login", "login", "request", "request"]
    assert {body["user_id"] for _, body, _ in got[2:]} == {str(User.objects.get(username=u).pk) for u in ("ada", "bob")}
    assert events.quiet(0.3) == []

    # A request whose view wrote to the session goes even within the
    # interval: the write moved the session's expiry.
    wrote = time.monotonic()
    assert ada.get("/remember").content == b"ok"
    [(_, remembered, _)] = events.take(1)
    assert remembered["type"] == "request" and "expires_at" in remembered

    # An interval later the session's next request goes again; a logout
    # always goes, and forgets the session.
    time.sleep(max(0.0, 3.05 - (time.monotonic() - wrote)))
    ada.get("/whoami")
    ada.get("/whoami")
    ada.post("/logout")
    got = events.take(2)
    assert [body["type"] for _, body, _ in got] == ["request", "logout"]
    assert events.quiet(0.3) == []
    pub = publisher.get()
    assert pub is not None
    assert pub.stats().coalesced_requests == 4 + 1


@pytest.mark.django_db(transaction=True)
def test_requests_wait_for_a_round_and_claims_do_not(names: Any, capture: Any, monkeypatch: Any) -> None:
    """Rounds are few: a lone request waits up to REQUEST_LINGER for others,
    a claim (or a full round of requests) goes within LINGER."""
    monkeypatch.setattr(publisher, "REQUEST_LINGER", 3.0)
    events = capture(names.events_exchange)
    pub = publisher.get()
    assert pub is not None
    pub.publish(Event(kind="logout", session_id="warm-up", user_id=None, occurred_at=time.time()))
    events.take(1)  # connected

    pub.publish(Event(kind="request", session_id="r0", user_id="1", occurred_at=time.time()))
    assert events.quiet(1.5) == [], "a lone request waits for its round"
    pub.publish(Event(kind="attributes", session_id=None, user_id="1", occurred_at=time.time(), attributes={}))
    started = time.monotonic()
    assert [body["type"] for _, body, _ in events.take(2)] == ["request", "attributes"]
    assert time.monotonic() - started < 1.5, "the claim took the request with it at once"

    for i in range(publisher.ROUND_SIZE):
        pub.publish(Event(kind="request", session_id=f"s{i}", user_id="1", occurred_at=time.time()))
    started = time.monotonic()
    events.take(publisher.ROUND_SIZE)
    assert time.monotonic() - started < 1.5, "a full round of requests goes without waiting"


@pytest.mark.django_db(transaction=True)
def test_an_interval_of_zero_publishes_every_request(names: Any, capture: Any, settings: Any) -> None:
    settings.SESSION_GUARD_REQUEST_INTERVAL = 0
    events = capture(names.events_exchange)
    User.objects.create_user("ada", password="pw")
    client = Client()
    client.post("/login", {"username": "ada", "password": "pw"})
    for _ in range(5):
        client.get("/whoami")
    assert [body["type"] for _, body, _ in events.take(6)] == ["login"] + ["request"] * 5


@pytest.mark.django_db(transaction=True)
def test_a_request_costs_no_database_query(names: Any, settings: Any, capture: Any, monkeypatch: Any) -> None:
    """Not on the request thread, nor on the publisher thread: the claims
    went with the login, and requests carry none."""
    from django.db.backends.utils import CursorWrapper

    events = capture(names.events_exchange)
    User.objects.create_user("ada", password="pw")
    client = Client()
    client.post("/login", {"username": "ada", "password": "pw"})
    events.take(1)
    executed: list[tuple[str, str]] = []
    run = CursorWrapper._execute

    def counted(self: CursorWrapper, sql: str, *args: Any) -> Any:
        # Every query of the process, whichever thread runs it.
        executed.append((threading.current_thread().name, sql))
        return run(self, sql, *args)

    monkeypatch.setattr(CursorWrapper, "_execute", counted)

    def queries_of_a_request() -> list[tuple[str, str]]:
        executed.clear()
        assert client.get("/whoami").content == b"ada"
        pub = publisher.get()
        if pub is not None:
            assert pub.flush(10)
        return list(executed)

    settings.SESSION_GUARD_REQUEST_INTERVAL = 0  # every request published
    published = queries_of_a_request()
    assert events.take(1)[0][1]["type"] == "request"
    settings.SESSION_GUARD_ENABLED = False
    bare = queries_of_a_request()
    assert len(published) == len(bare) == 2, "the view's own queries (session and user), nothing more"
    assert {thread for thread, _ in published} == {threading.current_thread().name}


@pytest.mark.django_db(transaction=True)
def test_the_client_ip_header_is_used_when_set(names: Any, capture: Any, settings: Any) -> None:
    settings.SESSION_GUARD_CLIENT_IP_HEADER = "HTTP_X_FORWARDED_FOR"
    events = capture(names.events_exchange)
    User.objects.create_user("ada", password="pw")
    client = Client(REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9, 198.51.100.4")
    client.post("/login", {"username": "ada", "password": "pw"})
    [(_, login, _)] = events.take(1)
    assert login["ip"] == "198.51.100.4"


@pytest.mark.django_db(transaction=True)
def test_anonymous_requests_publish_nothing(names: Any, capture: Any) -> None:
    events = capture(names.events_exchange)
    assert Client().get("/whoami").content == b"anonymous"
    assert events.quiet(0.5) == []


@pytest.mark.django_db(transaction=True)
def test_the_broker_being_away_does_not_fail_requests(names: Any, settings: Any, caplog: Any) -> None:
    settings.SESSION_GUARD_AMQP_URL = "amqp://guest:guest@127.0.0.1:1/%2f"
    User.objects.create_user("ada", password="pw")
    caplog.set_level(logging.WARNING, logger="session_guard_django")
    client = Client()
    assert client.post("/login", {"username": "ada", "password": "pw"}).status_code == 200
    for _ in range(20):
        assert client.get("/whoami").content == b"ada"
    assert client.post("/logout").status_code == 200

    pub = publisher.get()
    assert pub is not None
    # Every event is held for when the broker comes back: the login, the
    # first of the 20 requests (the others came within the request
    # interval) and the logout.
    assert pub.stats().pending == 3
    assert pub.stats().coalesced_requests == 19
    warned = wait_until(
        "a warning about the broker",
        lambda: [r for r in caplog.records if "cannot reach the broker" in r.getMessage()],
    )
    time.sleep(1.0)  # several more attempts, within one warning interval
    assert len([r for r in caplog.records if "cannot reach the broker" in r.getMessage()]) == len(warned) == 1


@pytest.mark.django_db(transaction=True)
def test_events_buffered_while_the_broker_is_away_are_sent_when_it_returns(
    names: Any, capture: Any, settings: Any
) -> None:
    """The publisher's connection is closed by the broker (as in a broker
    restart); events handed over meanwhile and unconfirmed ones arrive."""
    events = capture(names.events_exchange)
    pub = publisher.get()
    assert pub is not None
    now = time.time()
    pub.publish(Event(kind="logout", session_id="s-0", user_id=None, occurred_at=now))
    events.take(1)
    # Close every connection of this test's app, from the broker's side.
    wait_until("the publisher's connection to close", lambda: close_connections(f"django-session-guard {names.app}"))
    for i in range(1, 50):
        pub.publish(Event(kind="logout", session_id=f"s-{i}", user_id=None, occurred_at=now))
    got = {body["session_id"] for _, body, _ in events.take(49)}
    assert got == {f"s-{i}" for i in range(1, 50)}
    assert pub.flush(10)


def close_connections(name: str) -> bool:
    out = _rabbitmqctl_out("list_connections", "pid", "client_properties")
    closed = False
    for line in out.splitlines():
        if name in line:
            pid = line.split("\t", 1)[0]
            try:
                rabbitmqctl("close_connection", pid, "closed by the test")
                closed = True
            except Exception:
                pass
    return closed


def _rabbitmqctl_out(*args: str) -> str:
    import subprocess

    return subprocess.run(
        ["rabbitmqctl", "-q", "--no-table-headers", *args], check=True, capture_output=True, text=True
    ).stdout


def test_a_forked_child_publishes_on_a_connection_of_its_own(names: Any, capture: Any) -> None:
    events = capture(names.events_exchange)
    parent = publisher.get()
    assert parent is not None
    parent.publish(Event(kind="logout", session_id="parent-before", user_id=None, occurred_at=time.time()))
    events.take(1)  # the parent's thread and connection are up
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit code
        ok = False
        try:
            publisher.publish(Event(kind="logout", session_id="child", user_id=None, occurred_at=time.time()))
            mine = publisher.get()
            ok = mine is not None and mine is not parent and mine.flush(10)
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    parent.publish(Event(kind="logout", session_id="parent-after", user_id=None, occurred_at=time.time()))
    got = sorted(body["session_id"] for _, body, _ in events.take(2))
    assert got == ["child", "parent-after"]


def test_unroutable_events_are_kept_and_sent_once_a_queue_is_bound(names: Any, capture: Any) -> None:
    connection = broker()
    connection.channel().exchange_declare(names.events_exchange, "topic", durable=True)
    connection.close()
    pub = publisher.get()
    assert pub is not None
    pub.publish(Event(kind="logout", session_id="early", user_id=None, occurred_at=time.time()))
    wait_until("the broker to return the event", lambda: pub.stats().unroutable >= 1)
    assert pub.stats().pending == 1  # kept, not dropped
    events = capture(names.events_exchange, declare=False)
    [(_, body, _)] = events.take(1)
    assert body["session_id"] == "early"
    assert pub.flush(10)
    assert pub.stats().published == 1


@pytest.mark.django_db(transaction=True)
def test_a_password_change_moves_the_session_to_its_new_key(names: Any, capture: Any) -> None:
    """Django gives the session a new key and sends no signal: the worker
    must learn that the old key ended and the new one is this session."""
    events = capture(names.events_exchange)
    User.objects.create_user("ada", password="pw")
    client = Client()
    client.post("/login", {"username": "ada", "password": "pw"})
    old = client.session.session_key
    new = client.post("/password", {"password": "new"}).content.decode()
    assert new and new != old
    got = [(body["type"], body["session_id"]) for _, body, _ in events.take(3)]
    assert got == [("login", old), ("logout", old), ("login", new)]
    assert client.get("/whoami").content == b"ada"
    [(_, request, _)] = events.take(1)
    assert (request["type"], request["session_id"]) == ("request", new)


@pytest.mark.django_db(transaction=True)
def test_a_session_write_sends_its_new_expiry_and_a_flush_ends_it(names: Any, capture: Any) -> None:
    events = capture(names.events_exchange)
    User.objects.create_user("ada", password="pw")
    client = Client()
    client.post("/login", {"username": "ada", "password": "pw"})
    key = client.session.session_key
    client.get("/remember")
    client.get("/forget")
    (_, login, _), (_, remember, _), (_, forget, _) = events.take(3)
    assert remember["type"] == "request" and remember["expires_at"].endswith(":00.000000Z")
    assert parse_time(remember["expires_at"]) >= parse_time(login["expires_at"]).replace(second=0, microsecond=0)
    assert (forget["type"], forget["session_id"]) == ("logout", key)


@pytest.mark.django_db(transaction=True)
def test_async_views_are_reported_too(names: Any, capture: Any) -> None:
    import asyncio

    from django.test import AsyncClient

    events = capture(names.events_exchange)
    User.objects.create_user("ada", password="pw")

    async def scenario() -> bytes:
        client = AsyncClient()
        await client.post("/login", {"username": "ada", "password": "pw"})
        response = await client.get("/awhoami")
        return bytes(response.content)

    assert asyncio.run(scenario()) == b"ada"
    (_, login, _), (_, request, _) = events.take(2)
    assert (login["type"], request["type"]) == ("login", "request")
    assert request["session_id"] == login["session_id"]


@pytest.mark.django_db(transaction=True)
def test_the_naive_expiry_of_use_tz_false_is_read_in_time_zone(names: Any, capture: Any, settings: Any) -> None:
    settings.USE_TZ = False
    settings.TIME_ZONE = "America/Chicago"
    events = capture(names.events_exchange)
    User.objects.create_user("ada", password="pw")
    Client().post("/login", {"username": "ada", "password": "pw"})
    [(_, login, _)] = events.take(1)
    lifetime = parse_time(login["expires_at"]) - parse_time(login["occurred_at"])
    assert abs(lifetime.total_seconds() - 1209600) < 60
