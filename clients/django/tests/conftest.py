"""Fixtures: the real session-guard worker binary, the real broker, real
Django. Every test gets its own app name, exchanges, queues and worker
database, and removes them at the end."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pytest

from session_guard_django.brokers import split_urls

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parents[2]
AMQP_URL = os.environ.get("SG_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
PG_URL = os.environ.get("SG_TEST_PG_URL", "postgres://postgres@127.0.0.1:5432")



def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    # The test project's settings made this directory (SQLite file, file
    # cache, file sessions) for this run; the processes it started inherited it.
    directory = os.environ.get("SG_TEST_DIR", "")
    if os.path.basename(directory).startswith("sg-django-tests-"):
        shutil.rmtree(directory, ignore_errors=True)


def wait_until(what: str, predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Polls until ``predicate`` returns something true; fails naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker() -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(AMQP_URL))


@pytest.fixture(scope="session")
def worker_bin() -> Path:
    """The worker binary built from this repository (SESSION_GUARD_BIN, or
    target/debug/session-guard, built if missing)."""
    given = os.environ.get("SESSION_GUARD_BIN")
    if given:
        return Path(given)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    binary = target / "debug" / "session-guard"
    if not binary.exists():
        subprocess.run(["cargo", "build", "--bin", "session-guard"], cwd=REPO, check=True)
    return binary


@dataclass
class Names:
    """One test's names on the broker and in Django."""

    token: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    # The broker of this test: the shared one, or a node of its own
    # (``private_broker``), or several, comma-separated (``test_cluster.py``).
    amqp_url: str = AMQP_URL

    @property
    def app(self) -> str:
        return f"dj{self.token}"

    @property
    def events_exchange(self) -> str:
        return f"sgdj.{self.token}.events"

    @property
    def revocations_exchange(self) -> str:
        return f"sgdj.{self.token}.revocations"

    @property
    def notices_exchange(self) -> str:
        return f"sgdj.{self.token}.notices"

    @property
    def notice_queue(self) -> str:
        return f"{self.app}.notices"

    @property
    def dead_exchange(self) -> str:
        return f"sgdj.{self.token}.dead"

    @property
    def revoke_queue(self) -> str:
        return f"{self.app}.revocations"

    def env(self) -> dict[str, str]:
        """What a process of the test project needs to act as this app."""
        return {
            "SG_TEST_APP": self.app,
            "SG_TEST_EVENTS_EXCHANGE": self.events_exchange,
            "SG_TEST_REVOCATIONS_EXCHANGE": self.revocations_exchange,
            "SG_TEST_NOTICES_EXCHANGE": self.notices_exchange,
            "SG_TEST_AMQP_URL": self.amqp_url,
        }


@pytest.fixture
def names(settings: Any) -> Iterator[Names]:
    """Unique names for this test, in force in Django's settings; every
    exchange and queue of them is deleted at the end."""
    from session_guard_django import publisher
    from session_guard_django.coalesce import table_path

    n = Names()
    settings.SESSION_GUARD_APP = n.app
    settings.SESSION_GUARD_EVENTS_EXCHANGE = n.events_exchange
    settings.SESSION_GUARD_REVOCATIONS_EXCHANGE = n.revocations_exchange
    settings.SESSION_GUARD_NOTICES_EXCHANGE = n.notices_exchange
    settings.SESSION_GUARD_AMQP_URL = AMQP_URL
    tables = os.path.dirname(table_path(n.app, AMQP_URL, n.events_exchange, 0))
    pattern = os.path.join(tables, f"session-guard-{os.getuid()}-*.recent")
    before = set(glob.glob(pattern))
    yield n
    publisher.reset()
    # The request tables the test's processes shared (coalesce.py).
    for path in set(glob.glob(pattern)) - before:
        os.remove(path)
    if AMQP_URL not in split_urls(n.amqp_url):
        return  # a node (or a cluster) of the test's own, gone with everything on it
    connection = broker()
    channel = connection.channel()
    queues = (n.revoke_queue, n.revoke_queue + ".dead", n.notice_queue, n.notice_queue + ".dead")
    for queue in (n.events_exchange, n.dead_exchange, *queues):
        channel.queue_delete(queue)
    for exchange in (
        n.events_exchange,
        n.revocations_exchange,
        n.notices_exchange,
        n.dead_exchange,
        n.revoke_queue + ".dead",
        n.notice_queue + ".dead",
    ):
        channel.exchange_delete(exchange)
    connection.close()


class Capture:
    """A private queue bound to an exchange: sees what is published there."""

    def __init__(self, exchange: str, routing_key: str = "#", declare: bool = True) -> None:
        self.connection = broker()
        self.channel = self.connection.channel()
        if declare:
            self.channel.exchange_declare(exchange, "topic", durable=True)
        self.queue = self.channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        self.channel.queue_bind(self.queue, exchange, routing_key)

    def take(self, count: int, timeout: float = 20.0) -> list[tuple[str, dict[str, Any], Any]]:
        """The next ``count`` messages: (routing key, JSON body, properties)."""
        got: list[tuple[str, dict[str, Any], Any]] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            method, properties, body = self.channel.basic_get(self.queue, auto_ack=True)
            if method is None:
                if time.monotonic() > deadline:
                    pytest.fail(f"received {len(got)} of {count} messages: {got}")
                self.connection.sleep(0.05)
                continue
            got.append((method.routing_key, json.loads(body), properties))
        return got

    def quiet(self, seconds: float) -> list[dict[str, Any]]:
        """Whatever arrives within ``seconds``."""
        got = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            method, _properties, body = self.channel.basic_get(self.queue, auto_ack=True)
            if method is None:
                self.connection.sleep(0.05)
            else:
                got.append(json.loads(body))
        return got

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


@pytest.fixture
def capture() -> Iterator[Callable[..., Capture]]:
    made: list[Capture] = []

    def make(exchange: str, routing_key: str = "#", declare: bool = True) -> Capture:
        c = Capture(exchange, routing_key, declare)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


class Worker:
    """A session-guard worker process on a database of its own."""

    def __init__(
        self, binary: Path, names: Names, hooks: list[str], directory: Path, extra: str = "", max_sessions: int = 1
    ) -> None:
        self.binary = binary
        self.names = names
        self.database = f"sgdj_{names.token}"
        self.port = free_port()
        # The sessions API (the devices page's tests), on a port of its own.
        self.api_port = free_port()
        self.config = directory / f"worker-{names.token}.toml"
        self.log = directory / f"worker-{names.token}.log"
        self.config.write_text(
            f"""
[database]
url = "{PG_URL}/{self.database}?sslmode=disable"
[amqp]
url = "{names.amqp_url}"
events_exchange = "{names.events_exchange}"
events_queue = "{names.events_exchange}"
revocations_exchange = "{names.revocations_exchange}"
notices_exchange = "{names.notices_exchange}"
dead_letter_exchange = "{names.dead_exchange}"
dead_letter_queue = "{names.dead_exchange}"
[limits]
hooks = {json.dumps(hooks)}
max_sessions = {max_sessions}
[http]
listen = "127.0.0.1:{self.port}"
[api]
listen = "127.0.0.1:{self.api_port}"
{extra}"""
        )
        self.process: subprocess.Popen[bytes] | None = None

    def command(self, *args: str) -> str:
        result = subprocess.run(
            [str(self.binary), "--config", str(self.config), *args],
            capture_output=True,
            env={**os.environ, "NO_COLOR": "1"},
            timeout=60,
        )
        if result.returncode != 0:
            pytest.fail(f"session-guard {' '.join(args)} failed: {result.stderr.decode()}")
        return result.stdout.decode()

    def start(self) -> None:
        self.command("migrate")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "--config", str(self.config), "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NO_COLOR": "1"},
            )
        wait_until("the worker to be ready", self.ready, timeout=60)

    def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"the worker exited: {self.log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health/ready", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def token(self, name: str, apps: str, scopes: str = "sessions:read,sessions:revoke") -> str:
        """A new API token (``tokens create``), as an app's operator makes it."""
        return self.command("tokens", "create", name, "--apps", apps, "--scopes", scopes).strip()

    def sessions(self, user_id: Any) -> list[dict[str, Any]]:
        """The worker's log of the user's sessions in this app, ended ones too."""
        out = self.command("sessions", "--user", str(user_id), "--app", self.names.app, "--all", "--json")
        return list(json.loads(out))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def drop_database(self) -> None:
        subprocess.run(
            ["psql", PG_URL + "/postgres", "-q", "-c", f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'],
            check=True,
            capture_output=True,
        )


@pytest.fixture
def worker(worker_bin: Path, names: Names, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Starts a worker for this test's names: ``worker(hooks=[...], extra=...)``."""
    started: list[Worker] = []

    def start(hooks: list[str] | None = None, extra: str = "", max_sessions: int = 1) -> Worker:
        """``extra``: more TOML for the worker's configuration, e.g. rules."""
        w = Worker(worker_bin, names, hooks or ["rules", "user_overrides"], tmp_path, extra, max_sessions)
        started.append(w)
        w.start()
        return w

    yield start
    for w in started:
        w.stop()
        print(f"--- worker log\n{w.log.read_text()[-6000:]}")
        w.drop_database()


class Listener:
    """``manage.py session_guard_listen`` in a process of its own."""

    def __init__(self, names: Names, engine: str, directory: Path) -> None:
        self.log = directory / f"listener-{uuid.uuid4().hex[:6]}.log"
        env = {
            **os.environ,
            **names.env(),
            "SG_TEST_SESSION_ENGINE": engine,
            "DJANGO_SETTINGS_MODULE": "testproject.settings",
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        }
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(TESTS / "manage.py"), "session_guard_listen"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        wait_until("the listener to listen", lambda: self.output().count("listening on") >= 1, timeout=30)

    def output(self) -> str:
        if self.process.poll() is not None:
            pytest.fail(f"the listener exited with {self.process.returncode}: {self.log.read_text()}")
        return self.log.read_text()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                pytest.fail(f"the listener did not stop on SIGTERM: {self.log.read_text()}")
        return self.process.returncode


@pytest.fixture
def listener(names: Names, settings: Any, tmp_path: Path) -> Iterator[Callable[[], Listener]]:
    """Starts the listener with this test's names and session engine; at
    the end sends SIGTERM and checks that it exits 0."""
    started: list[Listener] = []

    def start() -> Listener:
        lst = Listener(names, settings.SESSION_ENGINE, tmp_path)
        started.append(lst)
        return lst

    yield start
    for lst in started:
        code = lst.stop()
        print(f"--- listener log\n{lst.log.read_text()}")
        assert code == 0, f"the listener exited with {code} on SIGTERM: {lst.log.read_text()}"


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


class PrivateBroker:
    """A RabbitMQ node of the test's own (``scripts/rabbitmq-node``), for a
    test whose broker goes away: the shared one, which other tests use at
    the same time, is never stopped."""

    SCRIPT = REPO / "scripts" / "rabbitmq-node"

    def __init__(self, directory: Path) -> None:
        self.directory = directory / "rabbitmq-node"
        self.port = free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2f"

    def _run(self, *args: str) -> None:
        result = subprocess.run([str(self.SCRIPT), *args], capture_output=True, text=True, timeout=180)
        if result.returncode != 0:
            pytest.fail(f"scripts/rabbitmq-node {' '.join(args)}: {result.stdout}{result.stderr}")

    def start(self) -> None:
        """Starts the node (again, after ``stop``, with its durable queues)
        and waits until it accepts connections (5-10 s)."""
        self._run("start", str(self.directory), str(self.port))

    def stop(self) -> None:
        """Stops the node, keeping its data: an outage."""
        self._run("stop", str(self.directory))

    def kill(self) -> None:
        subprocess.run([str(self.SCRIPT), "kill", str(self.directory)], capture_output=True, timeout=60)


@pytest.fixture
def private_broker(names: Names, settings: Any, tmp_path: Path) -> Iterator[PrivateBroker]:
    """A node of the test's own, in force for the test's names, worker,
    listener and publisher. Request it before ``worker`` and ``listener``,
    so it outlives them; killed and removed at the end, also after a failure."""
    node = PrivateBroker(tmp_path)
    try:
        node.start()
        names.amqp_url = node.url
        settings.SESSION_GUARD_AMQP_URL = node.url
        yield node
    finally:
        node.kill()
