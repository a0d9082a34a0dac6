"""Under gunicorn: several processes, several threads each, forked from a
master that had already started its publisher (--preload)."""

from __future__ import annotations

import http.cookiejar
import os
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.contrib.auth.models import User

from conftest import TESTS, free_port, wait_until

CLIENTS = 24
REQUESTS = 3


def serve(names: Any, tmp_path: Any, log_name: str, **env: str) -> tuple[subprocess.Popen[bytes], str, Any]:
    """gunicorn with 2 processes x 4 threads, forked after --preload."""
    port = free_port()
    log = open(tmp_path / log_name, "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--preload", "--workers", "2", "--threads", "4",
         "--bind", f"127.0.0.1:{port}", "testproject.wsgi:application"],
        cwd=TESTS,
        env={**os.environ, **names.env(), "PYTHONPATH": str(TESTS), **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    wait_until("gunicorn to answer", lambda: _get(urllib.request.build_opener(), base + "/pid"))
    return server, base, log


def stop(server: subprocess.Popen[bytes], log: Any, tmp_path: Any, log_name: str) -> None:
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)
    log.close()
    assert server.returncode == 0, (tmp_path / log_name).read_text()


def log_in(base: str, username: str) -> tuple[Any, str]:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    data = urllib.parse.urlencode({"username": username, "password": "pw"}).encode()
    key = opener.open(base + "/login", data=data, timeout=30).read().decode()
    return opener, key


@pytest.mark.django_db(transaction=True)
def test_a_burst_spread_over_processes_is_one_request_event(names: Any, capture: Any, tmp_path: Any) -> None:
    """The app's processes share the record of each session's last request
    event: a page load's requests, whichever process serves each, cost one
    event."""
    events = capture(names.events_exchange)
    sessions = 6
    for i in range(sessions):
        User.objects.create_user(f"user{i}", password="pw")
    # An interval long enough that every burst fits in it on a busy machine.
    server, base, log = serve(names, tmp_path, "gunicorn.log", SG_TEST_REQUEST_INTERVAL="10")
    try:
        spread = 0  # bursts served by both processes
        keys = []
        for i in range(sessions):
            opener, key = log_in(base, f"user{i}")
            keys.append(key)
            served_by = set()
            for _ in range(3):  # a page and its requests
                assert _get(opener, base + "/whoami") == f"user{i}"
                served_by.add(_get(opener, base + "/pid"))
            spread += len(served_by) == 2
    finally:
        stop(server, log, tmp_path, "gunicorn.log")
    assert spread, "no burst was served by both processes: nothing to share"
    got = [body for _, body, _ in events.take(2 * sessions)]
    assert events.quiet(1.0) == []
    for key in keys:
        assert sorted(b["type"] for b in got if b["session_id"] == key) == ["login", "request"]


@pytest.mark.django_db(transaction=True)
def test_every_event_arrives_from_every_process_and_thread(names: Any, capture: Any, tmp_path: Any) -> None:
    events = capture(names.events_exchange)
    for i in range(CLIENTS):
        User.objects.create_user(f"user{i}", password="pw")
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--preload", "--workers", "2", "--threads", "4",
         "--bind", f"127.0.0.1:{port}", "testproject.wsgi:application"],
        cwd=TESTS,
        env={
            **os.environ,
            **names.env(),
            "PYTHONPATH": str(TESTS),
            "SG_TEST_PUBLISH_AT_IMPORT": "1",
            # Every request published, so that every one can be counted.
            "SG_TEST_REQUEST_INTERVAL": "0",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until("gunicorn to answer", lambda: _get(urllib.request.build_opener(), base + "/pid"))

        def session(i: int) -> tuple[str, set[str]]:
            jar = http.cookiejar.CookieJar()
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
            data = urllib.parse.urlencode({"username": f"user{i}", "password": "pw"}).encode()
            key = opener.open(base + "/login", data=data, timeout=30).read().decode()
            pids = set()
            for _ in range(REQUESTS):
                assert _get(opener, base + "/whoami") == f"user{i}"
                pids.add(_get(opener, base + "/pid"))
            return key, pids

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(session, range(CLIENTS)))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
    assert server.returncode == 0, (tmp_path / "gunicorn.log").read_text()

    # The master's event, then each session's login and 2 x REQUESTS requests.
    expected = 1 + CLIENTS * (1 + 2 * REQUESTS)
    got = [body for _, body, _ in events.take(expected)]
    assert events.quiet(0.5) == []
    assert len([b for b in got if b["session_id"].startswith("preload-")]) == 1
    for key, _ in results:
        mine = [b["type"] for b in got if b["session_id"] == key]
        assert sorted(mine) == ["login"] + ["request"] * (2 * REQUESTS)
    # Both worker processes served (each with its own publisher: the
    # master's was left behind at the fork).
    assert len(set().union(*(pids for _, pids in results))) == 2


def _get(opener: Any, url: str) -> str | None:
    try:
        return str(opener.open(url, timeout=30).read().decode())
    except OSError:
        return None
