"""Several broker URLs: how the setting is read and shown (units, and the
checks), and a dead address in the list skipped by the publisher, the
listener and the worker on the machine's broker. The same against a
three-node cluster with a node killed: test_cluster.py."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.checks import run_checks
from django.test import Client

from conftest import AMQP_URL, free_port, wait_until
from session_guard_django import brokers, conf, publisher
from session_guard_django.buffer import Event
from session_guard_django.coalesce import table_path


class TestSplitting:
    def test_one_url_is_a_list_of_one(self) -> None:
        assert brokers.split_urls("amqp://a/%2f") == ["amqp://a/%2f"]
        assert brokers.urls_of("amqp://u:p@mq:5672/%2f?heartbeat=10") == ["amqp://u:p@mq:5672/%2f?heartbeat=10"]

    def test_commas_start_a_url_only_before_a_scheme(self) -> None:
        assert brokers.split_urls("amqp://u:p@a:5672/%2f, amqps://u:p@b/%2f,amqp://c") == [
            "amqp://u:p@a:5672/%2f",
            "amqps://u:p@b/%2f",
            "amqp://c",
        ]
        # A comma in a password (or anywhere not followed by a URL) stays:
        # the Rust side's own cases (amqp/src/url.rs).
        assert brokers.split_urls("amqp://u:p,q@a/%2f,amqp://u:p,amqp@b") == ["amqp://u:p,q@a/%2f", "amqp://u:p,amqp@b"]
        assert brokers.split_urls("") == [""]

    def test_a_list_or_tuple_is_taken_item_by_item(self) -> None:
        assert brokers.urls_of(["amqp://a/%2f", " amqp://u:p,amqp://x@b "]) == ["amqp://a/%2f", "amqp://u:p,amqp://x@b"]
        assert brokers.urls_of(("amqp://a",)) == ["amqp://a"]

    def test_the_settings_hold_every_url(self, settings: Any) -> None:
        settings.SESSION_GUARD_AMQP_URL = "amqp://u:p@a/%2f,amqp://u:p@b/%2f"
        assert conf.get().amqp_urls == ("amqp://u:p@a/%2f", "amqp://u:p@b/%2f")
        settings.SESSION_GUARD_AMQP_URL = ["amqp://u:p@a/%2f", "amqp://u:p@b/%2f"]
        assert conf.get().amqp_urls == ("amqp://u:p@a/%2f", "amqp://u:p@b/%2f")
        assert conf.get().amqp_url == "amqp://u:p@a/%2f,amqp://u:p@b/%2f"

    def test_a_cluster_shares_one_request_table_whatever_the_order(self) -> None:
        one = table_path("shop", "amqp://u:p@a:5672/%2f,amqp://u:p@b:5672/%2f", "ev", 10)
        assert table_path("shop", ["amqp://u:q@b:5672/%2f", "amqp://u:p@a:5672/%2f"], "ev", 10) == one
        assert table_path("shop", "amqp://u:p@a:5672/%2f", "ev", 10) != one


class TestMasking:
    def test_passwords_are_masked(self) -> None:
        assert brokers.mask("amqp://shop:s3cret@mq:5672/%2f") == "amqp://shop:***@mq:5672/%2f"
        assert brokers.mask("amqp://mq/%2f") == "amqp://mq/%2f"
        assert brokers.mask("amqp://guest@mq") == "amqp://guest@mq"
        assert brokers.mask("amqp://u:p@mq?heartbeat=10") == "amqp://u:***@mq?heartbeat=10"
        assert "zz" not in brokers.mask("amqp://u@mq?heartbeat=10&password=zz")

    def test_an_at_sign_in_the_password_does_not_leak_its_start(self) -> None:
        shown = brokers.mask("amqp://a:b@c@mq")
        assert "b@c" not in shown and ":b" not in shown and shown.endswith("@mq"), shown

    def test_every_password_of_a_list_is_masked(self) -> None:
        assert (
            brokers.mask("amqp://u:one@a/%2f, amqp://u:two,x@b/%2f,amqp://c")
            == "amqp://u:***@a/%2f,amqp://u:***@b/%2f,amqp://c"
        )
        assert brokers.mask_all(["amqp://u:one@a", "amqp://u:two@b"]) == "amqp://u:***@a,amqp://u:***@b"

    def test_a_url_that_does_not_parse_is_not_shown_at_all(self) -> None:
        assert brokers.mask("amqp://u:p@[::1") == brokers.UNPARSEABLE_URL

    def test_scrub_takes_passwords_out_of_any_message(self) -> None:
        urls = ["amqp://shop:s3cr%40t@a/%2f", "amqp://shop:other@b/%2f"]
        text = brokers.scrub("failed: amqp://shop:s3cr%40t@a/%2f said s3cr@t, then other", urls)
        assert "s3cr" not in text and "other" not in text, text
        assert "amqp://shop:***@a/%2f" in text


class TestOrder:
    def test_each_url_once_and_the_last_connected_last(self) -> None:
        for last in (None, 0, 1, 2):
            for _ in range(20):
                order = brokers.order(3, last)
                assert sorted(order) == [0, 1, 2]
                if last is not None:
                    assert order[-1] == last

    def test_the_start_is_spread_over_the_list(self) -> None:
        firsts = Counter(brokers.order(3, None)[0] for _ in range(600))
        assert set(firsts) == {0, 1, 2} and min(firsts.values()) > 100, firsts
        # After a lost connection the others share the first place.
        firsts = Counter(brokers.order(3, 0)[0] for _ in range(600))
        assert set(firsts) == {1, 2} and min(firsts.values()) > 200, firsts

    def test_all_urls_log_in_as_one_user(self) -> None:
        assert brokers.common_user(["amqp://shop:a@x/%2f", "amqp://shop:b@y/%2f"]) == "shop"
        assert brokers.common_user(["amqp://x/%2f"]) == "guest"  # pika's default
        with pytest.raises(ValueError) as raised:
            brokers.common_user(["amqp://shop:s3cret@x/%2f", "amqp://admin:s3cret@y/%2f"])
        assert "same user" in str(raised.value) and "s3cret" not in str(raised.value)


def check_messages() -> list[Any]:
    return [m for m in run_checks() if m.id and m.id.startswith("session_guard.")]


class TestChecks:
    def test_a_list_and_a_comma_separated_string_pass(self, settings: Any) -> None:
        settings.SESSION_GUARD_AMQP_URL = ["amqp://shop:s3cret@a:5672/%2f", "amqp://shop:s3cret@b:5672/%2f"]
        assert check_messages() == []
        settings.SESSION_GUARD_AMQP_URL = "amqp://shop:s3cret@a:5672/%2f, amqp://shop:s3cret@b:5672/%2f"
        assert check_messages() == []

    def test_each_url_is_checked_and_named_without_its_password(self, settings: Any) -> None:
        settings.SESSION_GUARD_AMQP_URL = ["amqp://shop:s3cret@a/%2f", "http://shop:s3cret@b/", 5]
        messages = check_messages()
        assert [m.id for m in messages] == ["session_guard.E002", "session_guard.E002"]
        assert "URL 2 of 3 (http://shop:***@b/)" in messages[0].msg
        assert "URL 3 of 3 (5)" in messages[1].msg
        assert all("s3cret" not in f"{m.msg} {m.hint}" for m in messages)
        settings.SESSION_GUARD_AMQP_URL = []
        assert [m.id for m in check_messages()] == ["session_guard.E002"]

    def test_urls_logging_in_as_different_users_are_refused(self, settings: Any) -> None:
        settings.SESSION_GUARD_AMQP_URL = "amqp://shop:s3cret@a/%2f,amqp://admin:s3cret@b/%2f"
        [message] = check_messages()
        assert message.id == "session_guard.E011"
        assert "same user" in message.msg and "'shop'" in message.msg and "'admin'" in message.msg
        assert "s3cret" not in message.msg

    def test_the_publisher_refuses_them_too(self, settings: Any, names: Any, caplog: Any, monkeypatch: Any) -> None:
        settings.SESSION_GUARD_AMQP_URL = ["amqp://shop:s3cret@a/%2f", "amqp://admin:s3cret@b/%2f"]
        # A warning of another test must not rate-limit this one away.
        monkeypatch.setattr(publisher, "_bad_settings", publisher.RateLimitedWarning())
        caplog.set_level(logging.WARNING, logger="session_guard_django")
        assert publisher.get() is None
        [record] = [r for r in caplog.records if "not publishing" in r.getMessage()]
        assert "same user" in record.getMessage() and "s3cret" not in record.getMessage()


@pytest.mark.django_db(transaction=True)
def test_unreachable_brokers_are_named_without_their_passwords(names: Any, settings: Any, caplog: Any) -> None:
    dead = [f"amqp://guest:hunter2@127.0.0.1:{free_port()}/%2f" for _ in range(2)]
    settings.SESSION_GUARD_AMQP_URL = dead
    caplog.set_level(logging.WARNING, logger="session_guard_django")
    pub = publisher.get()
    assert pub is not None
    pub.publish(Event(kind="logout", session_id="s", user_id=None, occurred_at=time.time()))
    [warned] = wait_until(
        "a warning about the brokers",
        lambda: [r.getMessage() for r in caplog.records if "cannot reach the broker" in r.getMessage()],
    )
    assert brokers.mask_all(dead) in warned, warned
    assert all("hunter2" not in r.getMessage() for r in caplog.records)
    assert pub.stats().pending == 1


@pytest.mark.django_db(transaction=True)
def test_a_dead_address_first_in_the_list_is_skipped(
    names: Any, settings: Any, worker: Any, listener: Any, monkeypatch: Any, caplog: Any
) -> None:
    """A closed port first in the list: the publisher (made to try the list
    in order) skips it at once and publishes to the machine's broker; the
    worker and the listener, given the same list comma-separated, run on
    it; a second login still ends the first session."""
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2f"
    names.amqp_url = f"{dead},{AMQP_URL}"  # the worker's and the listener's
    settings.SESSION_GUARD_AMQP_URL = [dead, AMQP_URL]
    monkeypatch.setattr(
        brokers, "order", lambda count, last: [i for i in range(count) if i != last] + ([] if last is None else [last])
    )
    caplog.set_level(logging.WARNING, logger="session_guard_django")
    user = User.objects.create_user("ada", password="pw")
    w = worker()
    lst = listener()
    assert "via amqp://guest:***@127.0.0.1:5672/%2f" in lst.output()

    first = Client(HTTP_USER_AGENT="laptop")
    started = time.monotonic()
    assert first.post("/login", {"username": "ada", "password": "pw"}).status_code == 200
    assert time.monotonic() - started < 2.0
    first_id = first.session.session_key
    pub = publisher.get()
    assert pub is not None
    assert pub.flush(10.0), pub.stats()
    assert pub.stats().broker == brokers.mask(AMQP_URL)
    wait_until("the worker to log the first session", lambda: w.sessions(user.pk))
    second = Client(HTTP_USER_AGENT="phone")
    assert second.post("/login", {"username": "ada", "password": "pw"}).status_code == 200
    wait_until("the first client to be logged out", lambda: first.get("/whoami").content == b"anonymous")
    assert second.get("/whoami").content == b"ada"
    ended = {s["session_id"]: s["state"] for s in w.sessions(user.pk)}
    assert ended[first_id] == "revoked"
    # The dead address cost no warning: the attempt went on to the next.
    assert not [r for r in caplog.records if "cannot reach" in r.getMessage()]
