"""Per-request cost of SessionGuardMiddleware, measured.

    clients/django/.venv/bin/python clients/django/bench/request_cost.py [--seconds 10] [--runs 3]

Serves the test project (tests/testproject) with gunicorn, one sync worker,
and drives one logged-in session's GET /whoami (a view that reads the user,
as real views do) with wrk, one connection, in three variants interleaved
run by run, so that the machine's noise hits them alike:

- ``without``:       the project without the package;
- ``session-guard``: with SessionGuardMiddleware (real broker);
- ``sync-confirm``:  with bench/sync_publish.py, which publishes each event on
                     the request thread and waits for its confirm.

Mean time per request is 1 / requests per second (one connection, so the
requests follow each other). The request thread's own share, building and
handing over the event, is timed in-process on the same middleware call.
Needs RabbitMQ (SG_TEST_AMQP_URL) and wrk.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from http.cookiejar import CookieJar
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
AMQP_URL = os.environ.get("SG_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
VARIANTS = {
    "without": {"SG_TEST_NO_MIDDLEWARE": "1"},
    "session-guard": {},
    "sync-confirm": {"SG_BENCH_SYNC_PUBLISH": "1"},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", "1", "--worker-class", "sync",
         "--bind", f"127.0.0.1:{port}", "--log-level", "warning", "testproject.wsgi:application"],
        cwd=TESTS, env=env,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/pid", timeout=1).read()
            return server
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("gunicorn did not start")
            time.sleep(0.1)


def session_cookie(port: int) -> str:
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    data = urllib.parse.urlencode({"username": "bench", "password": "pw"}).encode()
    opener.open(f"http://127.0.0.1:{port}/login", data=data).read()
    [cookie] = [c for c in jar if c.name == "sessionid"]
    return f"sessionid={cookie.value}"


def wrk(port: int, cookie: str, seconds: int) -> float:
    """Requests per second over one connection."""
    out = subprocess.run(
        ["wrk", "-t1", "-c1", f"-d{seconds}s", "-H", f"Cookie: {cookie}", f"http://127.0.0.1:{port}/whoami"],
        capture_output=True, text=True, check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def request_thread_share(env: dict[str, str], calls: int) -> tuple[float, float]:
    """Median µs per middleware call on the request thread (building and
    handing over the event), and µs for building it alone."""
    code = f"""
import os, statistics, time
import django
django.setup()
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.test import RequestFactory
from session_guard_django import events, publisher
from session_guard_django.middleware import SessionGuardMiddleware

user = User.objects.get(username="bench")
request = RequestFactory().get("/whoami", HTTP_USER_AGENT="Mozilla/5.0 (bench)")
request.session = SessionStore()
request.session.create()
request.user = user
middleware = SessionGuardMiddleware(lambda r: None)


def one_request():
    # What the middleware does on the request thread for one authenticated
    # request: note the session before the view, publish after it.
    seen = middleware.before(request, user)
    middleware.after(request, seen)


one_request()  # starts the publisher
publisher.get().flush(10)
sid = request.session.session_key
per_call, build = [], []
for _ in range(7):
    t = time.perf_counter()
    for _ in range({calls}):
        one_request()
    per_call.append((time.perf_counter() - t) / {calls} * 1e6)
    t = time.perf_counter()
    for _ in range({calls}):
        events.from_request("request", request, user, sid)
    build.append((time.perf_counter() - t) / {calls} * 1e6)
    publisher.get().flush(30)
print(statistics.median(per_call), statistics.median(build))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=TESTS, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    share, build = out.stdout.split()
    return float(share), float(build)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (Debian: apt-get install wrk)")

    import pika

    token = uuid.uuid4().hex[:10]
    directory = tempfile.mkdtemp(prefix="sg-django-tests-bench-")
    exchange = f"sgbench.{token}.events"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(HERE)]),
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "SG_TEST_DIR": directory,
        "SG_TEST_AMQP_URL": AMQP_URL,
        "SG_TEST_APP": f"bench{token}",
        "SG_TEST_EVENTS_EXCHANGE": exchange,
    }
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.exchange_declare(exchange, "topic", durable=True)
    # A queue that takes every event, as the worker's would (a message with
    # no queue bound is returned, which is not the normal path).
    channel.queue_declare(exchange, arguments={"x-max-length": 10_000, "x-overflow": "drop-head"})
    channel.queue_bind(exchange, exchange, "#")
    # Closed while the runs go (an idle blocking connection would miss its
    # heartbeats); a new one cleans up.
    connection.close()
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=TESTS, env=env, check=True)
        subprocess.run(
            [sys.executable, "manage.py", "shell", "-c",
             "from django.contrib.auth.models import User; User.objects.create_user('bench', password='pw')"],
            cwd=TESTS, env=env, check=True,
        )
        means: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for run in range(args.runs):
            for name, extra in VARIANTS.items():
                port = free_port()
                server = serve({**env, **extra}, port)
                try:
                    cookie = session_cookie(port)
                    wrk(port, cookie, 2)  # warm-up: imports, connections
                    rate = wrk(port, cookie, args.seconds)
                finally:
                    server.send_signal(signal.SIGTERM)
                    server.wait(timeout=30)
                means[name].append(1e6 / rate)
                print(f"run {run + 1} {name:14} {rate:8.0f} req/s  {1e6 / rate:7.0f} µs/request", flush=True)
        share, build = request_thread_share(env, 20_000)
    finally:
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        channel = connection.channel()
        channel.queue_delete(exchange)
        channel.exchange_delete(exchange)
        connection.close()
        shutil.rmtree(directory, ignore_errors=True)

    print()
    print("added = the variant's time per request minus `without`'s in the same run")
    print(f"{'variant':14} {'median µs/request':>18} {'median added':>13}   added per run")
    for name, values in means.items():
        added = [v - w for v, w in zip(values, means["without"])]
        per_run = ", ".join(f"{a:+.0f}" for a in added)
        print(f"{name:14} {statistics.median(values):18.0f} {statistics.median(added):+13.0f}   {per_run}")
    print()
    print(f"request thread's share per authenticated request: {share:.1f} µs "
          f"(building the event: {build:.1f} µs; median of 7 x 20,000 calls)")


if __name__ == "__main__":
    main()
