"""The pure parts: drop policy, coalescing, message bodies, settings checks."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from django.core.checks import run_checks
from django.test import RequestFactory

from session_guard_django import conf, events
from session_guard_django.buffer import Buffer, Event, Pushed
from session_guard_django.coalesce import RecentRequests


def ev(kind: str, n: int = 0) -> Event:
    return Event(kind=kind, session_id=f"s{n}", user_id="1", occurred_at=float(n))


class TestDropPolicy:
    def test_a_full_buffer_drops_new_requests(self) -> None:
        b = Buffer(2)
        assert b.push(ev("request", 1)) is Pushed.QUEUED
        assert b.push(ev("login", 2)) is Pushed.QUEUED
        assert b.push(ev("request", 3)) is Pushed.DROPPED
        assert [e.session_id for e in b.take(10)] == ["s1", "s2"]
        assert b.dropped_requests == 1

    def test_a_login_evicts_the_oldest_request(self) -> None:
        b = Buffer(3)
        for e in (ev("login", 1), ev("request", 2), ev("request", 3)):
            b.push(e)
        assert b.push(ev("logout", 4)) is Pushed.EVICTED
        assert [e.session_id for e in b.take(10)] == ["s1", "s3", "s4"]
        assert (b.dropped_requests, b.refused_full, b.requests) == (1, 0, 0)

    def test_claims_are_kept_like_logins(self) -> None:
        b = Buffer(2)
        b.push(ev("request", 1))
        b.push(ev("login", 2))
        claim = Event(kind="attributes", session_id=None, user_id="1", attributes={})
        assert b.push(claim) is Pushed.EVICTED
        assert [e.kind for e in b.take(10)] == ["login", "attributes"]

    def test_logins_are_refused_only_when_nothing_else_can_go(self) -> None:
        b = Buffer(2)
        b.push(ev("login", 1))
        b.push(ev("logout", 2))
        assert b.push(ev("login", 3)) is Pushed.FULL
        assert b.refused_full == 1 and len(b) == 2

    def test_unconfirmed_events_go_back_in_front_in_order(self) -> None:
        b = Buffer(3)
        b.push(ev("request", 1))
        taken = b.take(1)
        b.push(ev("login", 2))
        b.push(ev("request", 3))
        b.push(ev("request", 4))
        b.put_back(taken)  # over capacity: the oldest request goes
        assert [e.session_id for e in b.take(10)] == ["s2", "s3", "s4"]
        assert b.dropped_requests == 1


class TestCoalescing:
    def test_one_request_per_session_per_interval_the_first_at_once(self) -> None:
        recent = RecentRequests(interval=1.0, slots=100)
        assert recent.due("a", 10.0)
        assert not recent.due("a", 10.5)
        assert not recent.due("a", 10.999)
        assert recent.due("b", 10.5), "another session is not held back"
        assert recent.due("a", 11.0), "an interval after the last one published"
        assert not recent.due("a", 10.9), "older than the last one published"
        assert not recent.due("a", 11.5)
        assert recent.due("a", 12.0), "coalesced requests do not push the next one back"
        assert recent.coalesced == 4

    def test_a_forced_request_is_published_and_recorded(self) -> None:
        recent = RecentRequests(interval=1.0, slots=100)
        assert recent.due("a", 10.0)
        assert recent.due("a", 10.5, force=True)
        assert not recent.due("a", 11.2), "an interval after the forced one"
        assert recent.coalesced == 1

    def test_a_record_from_long_ago_holds_nothing_back(self) -> None:
        recent = RecentRequests(interval=1.0, slots=100)
        assert recent.due("a", 1_000_000.0)
        # Up to a minute earlier: another process, a little behind.
        assert not recent.due("a", 999_950.0)
        # More: the record is of another era (the slot's time wrapped).
        assert recent.due("a", 999_000.0)

    def test_a_logout_forgets_the_session_and_no_other(self) -> None:
        recent = RecentRequests(interval=1.0, slots=1)  # one slot: b's forget must not clear a's
        recent.due("a", 10.0)
        recent.forget("b")
        assert not recent.due("a", 10.1)
        recent.forget("a")
        assert recent.due("a", 10.2)

    def test_memory_is_bounded_and_the_newest_session_keeps_a_shared_slot(self) -> None:
        recent = RecentRequests(interval=60.0, slots=1)
        assert recent.due("a", 1.0)
        assert not recent.due("a", 2.0)
        assert recent.due("b", 3.0), "another session takes the slot"
        assert recent.due("a", 4.0), "a lost its slot: its next request goes at once"
        assert not recent.due("a", 5.0)

    def test_the_app_s_processes_share_one_table(self, tmp_path: Any) -> None:
        path = str(tmp_path / "table")
        one, two = RecentRequests(1.0, 100, path), RecentRequests(1.0, 100, path)
        assert one.shared and two.shared
        assert one.due("a", 10.0)
        assert not two.due("a", 10.2), "the other process published it"
        assert not one.due("a", 10.1999), "a few ms earlier, in another process"
        two.forget("a")
        assert one.due("a", 10.3)

    def test_a_table_that_cannot_be_shared_is_kept_to_the_process(self, tmp_path: Any) -> None:
        target = tmp_path / "elsewhere"
        target.write_bytes(b"")
        (tmp_path / "link").symlink_to(target)
        recent = RecentRequests(1.0, 100, str(tmp_path / "link"))
        assert not recent.shared
        assert recent.due("a", 10.0) and not recent.due("a", 10.5)

    def test_an_interval_of_zero_publishes_every_request(self) -> None:
        recent = RecentRequests(interval=0.0, slots=10)
        assert all(recent.due("a", 10.0) for _ in range(5))
        assert recent.coalesced == 0


class TestBody:
    def test_fields_and_format(self) -> None:
        at = datetime(2026, 11, 29, 10, 0, 0, 123456, tzinfo=timezone.utc)
        claims = {"superuser": True, "staff": False, "roles": ["a", "b"]}
        e = Event(
            kind="login", session_id="k" * 32, user_id="42", occurred_at=at.timestamp(),
            ip="::ffff:192.0.2.1", user_agent="x" * 600, expires_at=at, attributes=claims,
        )
        body = json.loads(events.body(e, "shop") or b"")
        assert body == {
            "type": "login", "app": "shop", "session_id": "k" * 32, "user_id": "42",
            "occurred_at": "2026-11-29T10:00:00.123456Z", "ip": "::ffff:192.0.2.1",
            "user_agent": "x" * 512, "expires_at": "2026-11-29T10:00:00.123456Z",
            "attributes": claims,
        }

    def test_no_attributes_keeps_the_workers_remembered_claim(self) -> None:
        e = Event(kind="request", session_id="k", user_id="1", occurred_at=0)
        assert "attributes" not in json.loads(events.body(e, "shop") or b"")

    def test_a_claim_names_its_user_and_no_session(self) -> None:
        e = Event(kind="attributes", session_id=None, user_id="42", occurred_at=0, attributes={"staff": True})
        assert json.loads(events.body(e, "shop") or b"") == {
            "type": "attributes", "app": "shop", "user_id": "42",
            "occurred_at": "1970-01-01T00:00:00.000000Z", "attributes": {"staff": True},
        }
        for bad in (Event(kind="attributes", session_id=None, user_id="42"), Event(kind="attributes", session_id=None, user_id=None, attributes={})):
            assert events.body(bad, "shop") is None

    def test_events_the_worker_would_refuse_are_left_out(self) -> None:
        for sid, uid in (("", "1"), ("k" * 257, "1"), ("k\n", "1"), ("k\x85", "1"), ("k", "bad\x00id"), ("k", ""), (None, "1")):
            assert events.body(Event(kind="request", session_id=sid, user_id=uid), "shop") is None
        assert events.body(Event(kind="request", session_id="k\u00a0", user_id="1"), "shop") is not None

    def test_a_bad_address_is_left_out(self) -> None:
        e = Event(kind="request", session_id="k", user_id="1", ip="unknown")
        assert "ip" not in json.loads(events.body(e, "shop") or b"")

    def test_roles_fit_the_workers_bounds(self) -> None:
        names = [f"group-{i:03}" for i in range(100)] + ["x" * 129, "", "nul\x00"]
        roles = events.fit_roles(names)
        assert roles == sorted(roles) and len(roles) == 64
        assert all(0 < len(r) <= 128 for r in roles)
        long = events.fit_roles([f"{i:03}" + "y" * 120 for i in range(64)])
        assert len(json.dumps(long)) <= 4096 - 64


def test_client_ip_takes_the_address_the_proxy_appended() -> None:
    request = RequestFactory().get("/", HTTP_X_FORWARDED_FOR="1.1.1.1, 2.2.2.2", REMOTE_ADDR="10.0.0.1")
    assert events.client_ip(request, None) == "10.0.0.1"
    assert events.client_ip(request, "HTTP_X_FORWARDED_FOR") == "2.2.2.2"
    assert events.client_ip(request, "HTTP_X_REAL_IP") is None


def ids() -> set[str]:
    return {m.id for m in run_checks() if m.id and m.id.startswith("session_guard.")}


class TestChecks:
    def test_the_test_project_is_clean(self) -> None:
        assert ids() == set()

    def test_missing_or_bad_app(self, settings: Any) -> None:
        del settings.SESSION_GUARD_APP
        assert ids() == {"session_guard.E001"}
        settings.SESSION_GUARD_APP = "shop/eu"
        assert ids() == {"session_guard.E001"}

    def test_bad_url_names_and_numbers(self, settings: Any) -> None:
        settings.SESSION_GUARD_AMQP_URL = "http://mq"
        settings.SESSION_GUARD_EVENTS_EXCHANGE = ""
        settings.SESSION_GUARD_BUFFER_SIZE = 0
        settings.SESSION_GUARD_CLIENT_IP_HEADER = 5
        assert ids() == {"session_guard.E002", "session_guard.E003", "session_guard.E004", "session_guard.E007"}

    def test_the_request_interval_and_its_memory(self, settings: Any) -> None:
        settings.SESSION_GUARD_REQUEST_INTERVAL = 0
        settings.SESSION_GUARD_RECENT_SESSIONS = 1
        assert ids() == set()
        for interval, sessions in ((-1, 10), ("1s", 10), (1.0, 0), (1.0, True)):
            settings.SESSION_GUARD_REQUEST_INTERVAL = interval
            settings.SESSION_GUARD_RECENT_SESSIONS = sessions
            assert ids() == {"session_guard.E004"}, (interval, sessions)

    def test_middleware_order_and_absence(self, settings: Any) -> None:
        guard = "session_guard_django.middleware.SessionGuardMiddleware"
        settings.MIDDLEWARE = [guard] + [m for m in settings.MIDDLEWARE if m != guard]
        assert ids() == {"session_guard.E005"}
        settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != guard]
        assert ids() == {"session_guard.W005"}

    def test_signed_cookies_need_a_shared_cache(self, settings: Any) -> None:
        settings.SESSION_ENGINE = conf.SIGNED_COOKIES_ENGINE
        assert ids() == set()
        settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
        assert ids() == {"session_guard.E006"}

    def test_cache_sessions_need_a_shared_cache(self, settings: Any) -> None:
        settings.SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
        assert ids() == set()
        settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
        assert ids() == {"session_guard.E008"}

    def test_reserved_names(self, settings: Any) -> None:
        settings.SESSION_GUARD_REVOKE_QUEUE = "amq.mine"
        assert ids() == {"session_guard.E003"}

    def test_a_misspelt_setting_is_named_with_a_suggestion(self, settings: Any) -> None:
        settings.SESSION_GUARD_AMQP_ULR = "amqp://x"
        [message] = [m for m in run_checks() if m.id == "session_guard.W001"]
        assert "SESSION_GUARD_AMQP_ULR" in message.msg and message.hint == "Did you mean SESSION_GUARD_AMQP_URL?"


def test_the_callers_session_key_goes_in_a_header_never_in_the_url() -> None:
    """The session key is the user's cookie: URLs end up in access logs, so
    the API client sends it in ``Session-Guard-Current-Session`` only."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from session_guard_django.api import SessionsApi

    seen: list[tuple[str, dict[str, str]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            body = json.dumps({"sessions": [], "next_cursor": None}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        api = SessionsApi(f"http://127.0.0.1:{server.server_port}", "sgt_x", 5.0)
        assert api.sessions("ada", "cookie-key 1/é", "shop") == []
        assert api.sessions("ada", None, "shop") == []
    finally:
        server.shutdown()
        server.server_close()
    (path, headers), (bare_path, bare_headers) = seen
    assert "cookie" not in path and "current" not in path, path
    assert headers["session-guard-current-session"] == "cookie-key%201%2F%C3%A9"
    assert headers["session-guard-current-app"] == "shop"
    assert headers["authorization"] == "Bearer sgt_x"
    assert "session-guard-current-session" not in bare_headers
    assert "session-guard-current-app" not in bare_headers, "an app alone names nothing"
    assert bare_path == path
