"""What django-session-guard costs a request, measured from outside, as a
user of the package sees it.

    clients/django/.venv/bin/python clients/django/bench/request_cost.py \\
        [--pairs 6] [--seconds 12] [--rates 20,100,200,500] [--workers 2] \\
        [--sessions 3000] [--only cost|coalescing] [--output FILE.md]

Needs RabbitMQ and PostgreSQL on this machine (127.0.0.1; PostgreSQL's user
postgres with trust auth), ``rabbitmqctl`` with rights, ``psql``, ``oha``
(``cargo install oha --locked``), ``wrk`` (Debian: ``apt-get install wrk``),
the worker's release binary (target/release/session-guard, built if missing;
``--worker`` for another) and the package's virtualenv (``./run-tests``
makes it). About 20 minutes with the defaults.

The cost measurement ("cost"):

- gunicorn (sync worker class, ``--workers`` processes) serves the tests'
  Django project (tests/testproject: SQLite, database sessions) twice at
  once: "bare", the project without the package (neither in INSTALLED_APPS
  nor in MIDDLEWARE), and "package", with SessionGuardMiddleware and the
  package's default settings, publishing to the real broker;
- the real session-guard worker (the release binary built from this
  repository) consumes those events, on a PostgreSQL database, exchanges and
  queues of its own, all removed at the end (also on Ctrl-C or a failure);
- ``--sessions`` users are logged in up front with
  ``django.contrib.auth.login``, the package installed, so the worker knows
  every session from its login; then every session makes one request
  through each variant (the warm-up, which also checks that each one is
  logged in), and the worker drains;
- the timed request is ``GET /rotate/whoami``, a view that reads the user,
  over real HTTP: with oha at each fixed rate (latency-corrected, i.e.
  counted from when each request was due, so a server that falls behind is
  charged for the wait), and with wrk at full speed. oha picks URLs at
  random, so the sessions are not the load generators' to choose: the bench
  project's first middleware, the same in both variants, gives each request
  the next session in strict turn. A session thus comes round every
  ``sessions / rate`` seconds (at least 1.5 s at the highest fixed rate),
  where coalescing a session's quick repeats would save nothing;
- the variants alternate run by run, in pairs (bare then package, then
  package then bare in the next pair), so that the machine's noise hits
  both alike; after every run the bench waits until the worker has applied
  every event published;
- per run it counts the requests the server handled (the rotation's
  counter) and the events the worker applied (its /metrics), and reads from
  /proc the CPU time of the gunicorn workers, of the package's publisher
  thread in each (the thread named "sg-publisher"), of the worker, and of
  the broker and the database (RabbitMQ's server and every PostgreSQL
  process: the machine's own, so keep the machine otherwise quiet).

For each load it prints each variant's medians over pairs, and what the
package added: the median over pairs of package minus bare in the same pair,
also as a fraction of bare's mean and p99; at full speed, the throughput
ratio package / bare.

The coalescing measurement ("coalescing"): page-load-shaped traffic to the
package variant, each session with its own cookie: a page, then 5 requests
within the following second, then a pause of 10 to 60 s, again and again;
``--coalescing-rate`` requests per second in all. It prints how many events
the worker received per 1,000 requests.

Everything shares the machine's cores: gunicorn, the load generator, the
broker, the database, the worker, and whatever else runs there. At full
speed the package variant then also pays, in throughput, for the broker,
the worker and the database handling its events, which in production run on
machines of their own. ``--app-cpus 0`` confines gunicorn and the load
generators to CPU 0 in both variants (``taskset``), so that the broker, the
database and the worker have the other CPUs to themselves as they would
have their own machines, and the difference between the variants is what
the package costs the app. Compare figures of the same run, and mind the
spread between pairs it prints.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import importlib.metadata
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pika

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
REPO = HERE.parents[2]
AMQP_URL = os.environ.get("SG_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
PG_URL = os.environ.get("SG_TEST_PG_URL", "postgres://postgres@127.0.0.1:5432")

VARIANTS = ("bare", "package")
#: Least time between two requests of one session at the highest fixed
#: rate: the package is to coalesce a session's requests that come less
#: than 1 s apart, and the cost is measured where that saves nothing.
MIN_SPACING = 1.5
#: oha's connections: enough that the client never holds a fixed rate back.
#: gunicorn's sync workers serve one request each at a time; the others wait
#: in the listen backlog, and the latency correction counts that wait.
OHA_CONNECTIONS = 32
#: wrk's connections per gunicorn worker at full speed: one in service and
#: one waiting, so that a worker never idles between requests.
WRK_CONNECTIONS_PER_WORKER = 2
#: The worker has applied everything published when its counters stood
#: still this long and its queue is empty: longer than the publisher's
#: pause before it sends returned events again (1 s).
STILL = 1.5
#: A fixed-rate run below this fraction of its rate fell short: the server
#: could not keep up, and its latencies include the queue that built up.
SHORT = 0.95
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: The coalescing measurement's page loads: a page, ASSETS more requests
#: within the following second, then a pause drawn from PAUSE (seconds).
ASSETS = 5
PAUSE = (10.0, 60.0)
#: One page load and its pause, on average (seconds): what sizes the number
#: of sessions for a total rate.
CYCLE = 1.0 + sum(PAUSE) / 2

#: wrk prints its own summary; this adds one line of JSON with exact figures
#: (microseconds) instead of its rounded, unit-suffixed text.
WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "mean_us": %f, "p50_us": %d, "p99_us": %d, "errors": %d}\\n',
    summary.requests, summary.duration, latency.mean, latency:percentile(50),
    latency:percentile(99), e.connect + e.read + e.write + e.status + e.timeout))
end
"""


class BenchError(Exception):
    """The bench cannot go on, or its figures would be wrong."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def stat_fields(path: str) -> list[str]:
    """The fields of a /proc/.../stat file after the command name, which is
    in brackets and may hold spaces: [0] is field 3 (state)."""
    with open(path) as f:
        data = f.read()
    return data[data.rindex(")") + 2 :].split()


def cpu_seconds(stat_path: str) -> float:
    """utime + stime (fields 14 and 15) of a process or thread, in seconds."""
    fields = stat_fields(stat_path)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pinned(command: list[str], cpus: str | None) -> list[str]:
    """``command`` confined to ``cpus`` (taskset's list, e.g. "0"), if given."""
    return ["taskset", "-c", cpus, *command] if cpus else command


def service_tasks() -> list[int]:
    """Every thread of the broker's server and of PostgreSQL (see
    services_cpu)."""
    tasks = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
            if comm == "beam.smp":
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"\0rabbit\0boot" not in f.read():
                        continue
            elif comm != "postgres":
                continue
            tasks += [int(tid) for tid in os.listdir(f"/proc/{entry}/task")]
        except OSError:
            continue
    return tasks


class Isolation:
    """--isolate-services: the broker, PostgreSQL and the worker confined
    to the CPUs the app does not use, as if on machines of their own, and
    given back their CPUs at the end (also after a failure). New PostgreSQL
    backends inherit the postmaster's CPUs."""

    def __init__(self, app_cpus: str) -> None:
        app = set(parse_cpus(app_cpus))
        self.cpus = set(os.sched_getaffinity(0)) - app
        if not self.cpus:
            raise BenchError(f"--app-cpus {app_cpus} leaves no CPU for the services")
        #: Each thread's CPUs before, to give back.
        self.saved: dict[int, set[int]] = {}

    def confine(self, pids: Sequence[int]) -> None:
        for tid in service_tasks() + [t for pid in pids for t in map(int, os.listdir(f"/proc/{pid}/task"))]:
            try:
                self.saved.setdefault(tid, set(os.sched_getaffinity(tid)))
                os.sched_setaffinity(tid, self.cpus)
            except OSError:
                continue  # a thread that ended meanwhile

    def release(self) -> None:
        for tid, cpus in self.saved.items():
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                continue
        # Backends started meanwhile inherited the confinement: all CPUs back.
        for tid in service_tasks():
            try:
                os.sched_setaffinity(tid, os.sched_getaffinity(0) | self.cpus)
            except OSError:
                continue


def parse_cpus(text: str) -> list[int]:
    """taskset's list format: "0", "0,2", "0-3"."""
    cpus: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus += range(int(low), int(high or low) + 1)
    return cpus


def services_cpu() -> float:
    """CPU seconds the broker's server (RabbitMQ's beam.smp, not a
    rabbitmqctl) and PostgreSQL (every postgres process) have used so far."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
            if comm == "beam.smp":
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"\0rabbit\0boot" not in f.read():
                        continue
            elif comm != "postgres":
                continue
            total += cpu_seconds(f"/proc/{entry}/stat")
        except OSError:
            continue  # gone meanwhile
    return total


def answers_200(url: str) -> bool:
    """Whether `url` answers 200 within 2 s (a server still starting does not)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


class Log:
    """A child's log file, read as it grows: what the package's publisher
    and the worker warn about (a lost connection, a full buffer) is shown
    next to the run it happened in."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen = 0

    def new(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.seen)
                text = f.read()
        except OSError:
            return []
        self.seen += len(text)
        return text.decode(errors="replace").splitlines()


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM (each of ours shuts down cleanly on it), SIGKILL if it hangs."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ----- the worker ------------------------------------------------------------


@dataclass(frozen=True)
class Counters:
    """The worker's event counters (session_guard_events_total and
    session_guard_sessions_revoked_total)."""

    #: Events applied, by event type.
    applied: tuple[tuple[str, int], ...]
    #: Events not applied: requeued or dead-lettered.
    not_applied: int
    revoked: int

    def total(self) -> int:
        return sum(n for _, n in self.applied)

    def of(self, kind: str) -> int:
        return dict(self.applied).get(kind, 0)


class Worker:
    """The session-guard worker on a database, exchanges and queues of its own."""

    def __init__(self, binary: Path, token: str, directory: Path) -> None:
        self.binary = binary
        self.token = token
        self.database = f"sgbench_{token}"
        self.events_exchange = f"sgbench.{token}.events"
        self.revocations_exchange = f"sgbench.{token}.revocations"
        self.dead_letters = f"sgbench.{token}.dead"
        # The events queue and the dead-letter queue are named after their exchanges.
        self.queues = (self.events_exchange, self.dead_letters)
        self.port = free_port()
        self.log = Log(directory / "worker.log")
        self.config = directory / "worker.toml"
        # Plain PostgreSQL connections, as the repository's benchmark and
        # tests use: the worker's TLS is not what this bench measures.
        self.config.write_text(
            f"""
[database]
url = "{PG_URL}/{self.database}?sslmode=disable"
[amqp]
url = "{AMQP_URL}"
events_exchange = "{self.events_exchange}"
events_queue = "{self.events_exchange}"
revocations_exchange = "{self.revocations_exchange}"
dead_letter_exchange = "{self.dead_letters}"
dead_letter_queue = "{self.dead_letters}"
[http]
listen = "127.0.0.1:{self.port}"
[log]
level = "warn"
"""
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """`run` creates the database, applies the migrations and declares
        the exchanges and queues."""
        with open(self.log.path, "ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "--config", str(self.config), "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NO_COLOR": "1"},
                start_new_session=True,  # stopped by us, after gunicorn has flushed
            )
        wait_until("the worker to be ready", self.ready, timeout=60)

    def ready(self) -> bool:
        self.check_alive()
        return answers_200(f"http://127.0.0.1:{self.port}/health/ready")

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise BenchError(f"the worker exited:\n{tail(self.log.path)}")

    def counters(self) -> Counters:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        applied: dict[str, int] = {}
        not_applied = revoked = 0
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            labels = dict(re.findall(r'(\w+)="([^"]*)"', name))
            if name.startswith("session_guard_events_total{"):
                if labels["outcome"] == "applied":
                    applied[labels["type"]] = applied.get(labels["type"], 0) + int(float(value))
                else:
                    not_applied += int(float(value))
            elif name.startswith("session_guard_sessions_revoked_total"):
                revoked += int(float(value))
        return Counters(tuple(sorted(applied.items())), not_applied, revoked)

    def cpu(self) -> float:
        assert self.process is not None
        return cpu_seconds(f"/proc/{self.process.pid}/stat")

    def queue_depth(self) -> int:
        """Messages in the events queue, ready or delivered and not yet acked."""
        out = subprocess.run(
            ["rabbitmqctl", "list_queues", "--quiet", "--no-table-headers", "name", "messages"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
        for line in out.splitlines():
            name, _, count = line.rpartition("\t")
            if name == self.events_exchange:
                return int(count)
        raise BenchError(f"the queue {self.events_exchange} is gone")

    def drain(self) -> Counters:
        """Waits until the worker has applied everything published so far:
        its counters stood still for STILL seconds and its queue is empty."""
        deadline = time.monotonic() + 300
        last, since = self.counters(), time.monotonic()
        while True:
            time.sleep(0.1)
            self.check_alive()
            now = self.counters()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= STILL:
                if self.queue_depth() == 0:
                    return now
                since = time.monotonic()
            if time.monotonic() > deadline:
                raise BenchError(f"the worker did not drain its queue in 300 s:\n{tail(self.log.path)}")

    def stop(self) -> None:
        stop_process(self.process, timeout=40)

    def remove_everything(self) -> None:
        """Deletes the worker's queues, exchanges and database (it has stopped)."""
        try:
            connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            channel = connection.channel()
            for queue in self.queues:
                channel.queue_delete(queue)
            for exchange in (self.events_exchange, self.revocations_exchange, self.dead_letters):
                channel.exchange_delete(exchange)
            connection.close()
        except Exception as error:
            print(f"warning: could not delete the bench's queues and exchanges "
                  f"(sgbench.{self.token}.*): {error!r}", file=sys.stderr)
        dropped = subprocess.run(
            ["psql", f"{PG_URL}/postgres", "-q", "-c", f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'],
            capture_output=True, text=True,
        )
        if dropped.returncode != 0:
            print(f"warning: could not drop the database {self.database}: {dropped.stderr}", file=sys.stderr)


# ----- gunicorn --------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """One server's state before or after a run."""

    worker_pids: tuple[int, ...]
    #: Requests the rotation handed a session so far.
    requests: int
    #: CPU seconds of the gunicorn workers, all their threads.
    cpu: float
    #: CPU seconds of each publisher thread, by (pid, tid).
    publisher: dict[tuple[int, int], float]


class Server:
    """gunicorn serving the bench project in one variant."""

    def __init__(self, variant: str, env: dict[str, str], workers: int, directory: Path, cpus: str | None) -> None:
        self.variant = variant
        self.workers = workers
        #: The CPUs gunicorn is confined to (--app-cpus), or None.
        self.cpus = cpus
        self.port = free_port()
        self.counter = directory / f"{variant}.counter"
        self.counter.write_bytes(bytes(8))
        self.log = Log(directory / f"gunicorn-{variant}.log")
        self.env = {**env, "SG_BENCH_COUNTER": str(self.counter)}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log.path, "ab") as log:
            self.process = subprocess.Popen(
                pinned([sys.executable, "-m", "gunicorn", "--workers", str(self.workers),
                        "--worker-class", "sync", "--bind", f"127.0.0.1:{self.port}",
                        "--log-level", "warning", "django.core.wsgi:get_wsgi_application()"], self.cpus),
                cwd=HERE, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # stopped by us, before the worker
            )
        wait_until(f"gunicorn ({self.variant}) to answer", self.answers, timeout=60)

    def answers(self) -> bool:
        self.check_alive()
        return answers_200(f"http://127.0.0.1:{self.port}/pid")

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise BenchError(f"gunicorn ({self.variant}) exited:\n{tail(self.log.path)}")

    def worker_pids(self) -> tuple[int, ...]:
        """gunicorn's workers: the master's children."""
        assert self.process is not None
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    parent = int(stat_fields(f"/proc/{entry}/stat")[1])
                except (OSError, ValueError, IndexError):
                    continue  # gone meanwhile, or not a process
                if parent == self.process.pid:
                    pids.append(int(entry))
        return tuple(sorted(pids))

    def snapshot(self) -> Snapshot:
        self.check_alive()
        pids = self.worker_pids()
        publisher = {}
        for pid in pids:
            for tid in os.listdir(f"/proc/{pid}/task"):
                task = f"/proc/{pid}/task/{tid}"
                try:
                    with open(f"{task}/comm") as comm:
                        if comm.read().strip() == "sg-publisher":
                            publisher[(pid, int(tid))] = cpu_seconds(f"{task}/stat")
                except OSError:
                    continue  # a thread that ended meanwhile
        return Snapshot(
            worker_pids=pids,
            requests=int.from_bytes(self.counter.read_bytes()[:8], "little"),
            cpu=sum(cpu_seconds(f"/proc/{pid}/stat") for pid in pids),
            publisher=publisher,
        )

    def stop(self) -> None:
        # The package's workers flush their publishers at exit.
        stop_process(self.process, timeout=40)


# ----- load ------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """What the load generator saw."""

    rate: float
    mean_ms: float
    p50_ms: float
    p99_ms: float


def oha(oha_bin: str, url: str, rate: float, seconds: int, cpus: str | None) -> Load:
    """``rate`` requests per second for ``seconds``, latency-corrected; the
    requests in flight at the end are waited for (-w), not aborted."""
    out = subprocess.run(
        pinned([oha_bin, "--no-tui", "--output-format", "json", "-z", f"{seconds}s", "-w",
                "-q", f"{rate:g}", "--latency-correction", "-c", str(OHA_CONNECTIONS), url], cpus),
        capture_output=True, text=True, timeout=seconds + 300,
    )
    if out.returncode != 0:
        raise BenchError(f"oha failed: {out.stderr}")
    result = json.loads(out.stdout)
    if set(result["statusCodeDistribution"]) != {"200"} or result["errorDistribution"]:
        raise BenchError(f"oha saw failures: {result['statusCodeDistribution']} {result['errorDistribution']}")
    percentiles = result["latencyPercentiles"]
    return Load(
        rate=result["summary"]["requestsPerSec"],
        mean_ms=result["summary"]["average"] * 1000,
        p50_ms=percentiles["p50"] * 1000,
        p99_ms=percentiles["p99"] * 1000,
    )


def wrk(script: Path, url: str, seconds: int, connections: int, cpus: str | None) -> Load:
    """As many requests as the server takes, for ``seconds``."""
    out = subprocess.run(
        pinned(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url], cpus),
        capture_output=True, text=True, timeout=seconds + 300,
    )
    if out.returncode != 0:
        raise BenchError(f"wrk failed: {out.stderr}")
    summary = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
    if summary["errors"]:
        raise BenchError(f"wrk saw failures:\n{out.stdout}")
    return Load(
        rate=summary["requests"] / (summary["duration_us"] / 1e6),
        mean_ms=summary["mean_us"] / 1000,
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
    )


async def get(port: int, path: str, session_key: str) -> tuple[int, str]:
    """One GET with the session's cookie: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            # HTTP/1.0: the body comes as it is (not chunked), and the server
            # closes the connection after it.
            f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nCookie: sessionid={session_key}\r\n\r\n".encode()
        )
        response = await reader.read()
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode(errors="replace")


async def each_session_once(port: int, sessions: Sequence[tuple[str, str]], concurrency: int) -> None:
    """One request per session, ``concurrency`` at a time; each must be
    answered with its own user's name."""
    queue = list(sessions)

    async def client() -> None:
        while queue:
            key, username = queue.pop()
            status, body = await asyncio.wait_for(get(port, "/whoami", key), 60)
            if status != 200 or body != username:
                raise BenchError(f"session {key[:8]}...: expected 200 {username!r}, got {status} {body[:80]!r}")

    await asyncio.gather(*(client() for _ in range(concurrency)))


# ----- the cost measurement --------------------------------------------------


@dataclass(frozen=True)
class Run:
    load: str
    variant: str
    #: The fixed rate asked for; None at full speed.
    target: float | None
    client: Load
    #: Requests the server handled, and events the worker applied, during the run.
    requests: int
    events: int
    cpu_s: float
    publisher_cpu_s: float | None
    worker_cpu_s: float
    #: The broker's and the database's CPU time (see services_cpu).
    services_cpu_s: float

    @property
    def short(self) -> bool:
        return self.target is not None and self.client.rate < SHORT * self.target

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_s / self.requests * 1000

    @property
    def publisher_ms_per_event(self) -> float | None:
        if self.publisher_cpu_s is None or not self.events:
            return None
        return self.publisher_cpu_s / self.events * 1000

    @property
    def worker_ms_per_event(self) -> float | None:
        return self.worker_cpu_s / self.events * 1000 if self.events else None

    @property
    def services_ms_per_event(self) -> float | None:
        return self.services_cpu_s / self.events * 1000 if self.events else None

    @property
    def events_per_1000(self) -> float:
        return self.events / self.requests * 1000


def measure(server: Server, worker: Worker, load: str, target: float | None, drive: Callable[[], Load]) -> Run:
    """One run: the load, then the worker's drain, with the counts and CPU
    times around both (the publisher finishes its last round after the load)."""
    before, counted, worker_cpu, services = server.snapshot(), worker.counters(), worker.cpu(), services_cpu()
    client = drive()
    drained = worker.drain()
    after = server.snapshot()
    services = services_cpu() - services
    if after.worker_pids != before.worker_pids:
        raise BenchError(f"gunicorn ({server.variant}) replaced a worker during the run:\n{tail(server.log.path)}")
    if drained.not_applied != counted.not_applied or drained.revoked != counted.revoked:
        raise BenchError(f"the worker requeued, dead-lettered or revoked something: {counted} -> {drained}")
    events = drained.total() - counted.total()
    publisher_cpu = None
    if server.variant == "package":
        if len(after.publisher) != server.workers:
            raise BenchError(f"expected {server.workers} sg-publisher threads, found {len(after.publisher)}")
        publisher_cpu = sum(cpu - before.publisher.get(key, 0.0) for key, cpu in after.publisher.items())
    elif events:
        raise BenchError(f"{events} events published while only the bare variant ran")
    return Run(
        load=load, variant=server.variant, target=target, client=client,
        requests=after.requests - before.requests, events=events,
        cpu_s=after.cpu - before.cpu, publisher_cpu_s=publisher_cpu,
        worker_cpu_s=worker.cpu() - worker_cpu, services_cpu_s=services,
    )


def print_new_log_lines(*processes: Server | Worker) -> None:
    for process in processes:
        for line in process.log.new():
            print(f"    {process.log.path.name}: {line}")


def cost(servers: dict[str, Server], worker: Worker, args: argparse.Namespace,
         oha_bin: str, wrk_script: Path) -> list[Run]:
    loads: list[tuple[str, float | None]] = [(f"{r:g}/s", r) for r in args.rates] + [("full", None)]
    connections = WRK_CONNECTIONS_PER_WORKER * args.workers
    runs = []
    for pair in range(args.pairs):
        # Bare first in even pairs, package first in odd ones: neither
        # always runs right after the other.
        order = VARIANTS if pair % 2 == 0 else VARIANTS[::-1]
        for load, rate in loads:
            for variant in order:
                url = f"http://127.0.0.1:{servers[variant].port}/rotate/whoami"

                def drive() -> Load:
                    if rate is None:
                        return wrk(wrk_script, url, args.seconds, connections, args.app_cpus)
                    return oha(oha_bin, url, rate, args.seconds, args.app_cpus)

                run = measure(servers[variant], worker, load, rate, drive)
                runs.append(run)
                print_new_log_lines(servers[variant], worker)
                print(f"pair {pair + 1}/{args.pairs}  {load:>6} {variant:8}"
                      f"{run.client.rate:8.1f} req/s  mean {run.client.mean_ms:7.2f}  "
                      f"p50 {run.client.p50_ms:7.2f}  p99 {run.client.p99_ms:7.2f} ms  "
                      f"{run.requests:6} requests {run.events:6} events ({run.events_per_1000:4.0f}/1k)  "
                      f"CPU {run.cpu_ms_per_request:.2f} ms/request"
                      + (f", publisher {run.publisher_ms_per_event:.2f} ms/event"
                         if run.publisher_ms_per_event is not None else "")
                      + f"  load average {os.getloadavg()[0]:.1f}",
                      flush=True)
    return runs


# ----- the coalescing measurement --------------------------------------------


@dataclass(frozen=True)
class Coalescing:
    sessions: int
    seconds: float
    requests: int
    events: int
    by_type: tuple[tuple[str, int], ...]


async def page_loads(port: int, sessions: Sequence[tuple[str, str]], seconds: float, rng: random.Random) -> int:
    """Each session: a page, ASSETS requests within the following second,
    a pause drawn from PAUSE, again until ``seconds`` have passed. Returns
    the requests made; every one must be answered with its user's name."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    made = 0

    async def request(key: str, username: str, delay: float = 0.0) -> None:
        nonlocal made
        await asyncio.sleep(delay)
        status, body = await asyncio.wait_for(get(port, "/whoami", key), 60)
        if status != 200 or body != username:
            raise BenchError(f"session {key[:8]}...: expected 200 {username!r}, got {status} {body[:80]!r}")
        made += 1

    async def visitor(key: str, username: str) -> None:
        # Sessions start at random points of a cycle, so the rate is about
        # steady from the start.
        await asyncio.sleep(min(rng.uniform(0, CYCLE), seconds))
        while loop.time() < end:
            await request(key, username)
            await asyncio.gather(*(request(key, username, rng.uniform(0, 1)) for _ in range(ASSETS)))
            await asyncio.sleep(min(rng.uniform(*PAUSE), max(0.0, end - loop.time())))

    await asyncio.gather(*(visitor(key, username) for key, username in sessions))
    return made


def coalescing(server: Server, worker: Worker, sessions: Sequence[tuple[str, str]], args: argparse.Namespace) -> Coalescing:
    count = round(args.coalescing_rate * CYCLE / (1 + ASSETS))
    if count > len(sessions):
        raise BenchError(f"--coalescing-rate {args.coalescing_rate:g} needs {count} sessions: raise --sessions")
    before = worker.counters()
    started = time.monotonic()
    # Seeded: the same traffic in every run of the bench.
    requests = asyncio.run(page_loads(server.port, sessions[:count], args.coalescing_seconds, random.Random(1)))
    elapsed = time.monotonic() - started
    after = worker.drain()
    if after.not_applied != before.not_applied or after.revoked != before.revoked:
        raise BenchError(f"the worker requeued, dead-lettered or revoked something: {before} -> {after}")
    by_type = tuple((kind, after.of(kind) - before.of(kind)) for kind, _ in after.applied)
    return Coalescing(count, elapsed, requests, after.total() - before.total(),
                      tuple((k, n) for k, n in by_type if n))


# ----- the report ------------------------------------------------------------


def table(headers: list[str], rows: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
                *("| " + " | ".join(row) + " |" for row in rows)]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows)]
    return ["  ".join(cell.rjust(w) if i > 1 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
            for row in (headers, *rows)]


def median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def ms(value: float | None, sign: bool = False) -> str:
    return "" if value is None else f"{value:+.2f}" if sign else f"{value:.2f}"


def percent(value: float | None) -> str:
    return "" if value is None else f" ({value:+.0%})"


def events_range(values: Sequence[float]) -> str:
    """Events per 1,000 requests over the runs: one figure if every run
    had the same, else the lowest and the highest."""
    low, high = round(min(values)), round(max(values))
    return f"{low}" if low == high else f"{low}-{high}"


def cost_report(runs: list[Run], args: argparse.Namespace, markdown: bool) -> list[str]:
    headers = ["load", "variant", "req/s", "mean ms", "p50 ms", "p99 ms",
               "CPU ms/req", "publisher CPU ms/event", "worker CPU ms/event",
               "broker+db CPU ms/event", "events/1k req"]
    rows = []
    notes = []
    for load in dict.fromkeys(run.load for run in runs):
        by = {v: [r for r in runs if r.load == load and r.variant == v] for v in VARIANTS}
        pairs = list(zip(by["bare"], by["package"]))
        for variant, rs in by.items():
            short = sum(r.short for r in rs)
            rows.append([
                load if variant == "bare" else "", variant,
                f"{median([r.client.rate for r in rs]):.1f}" + ("*" if short else ""),
                ms(median([r.client.mean_ms for r in rs])),
                ms(median([r.client.p50_ms for r in rs])),
                ms(median([r.client.p99_ms for r in rs])),
                ms(median([r.cpu_ms_per_request for r in rs])),
                ms(median([r.publisher_ms_per_event for r in rs])),
                ms(median([r.worker_ms_per_event for r in rs])),
                ms(median([r.services_ms_per_event for r in rs])),
                events_range([r.events_per_1000 for r in rs]),
            ])
            if short:
                notes.append(f"{load} {variant}, marked *: below {SHORT:.0%} of the rate asked in {short} of {len(rs)} "
                             "runs: the server could not keep up, and latencies include the queue that built up.")
        full = by["bare"][0].target is None
        rows.append([
            "", "added",
            f"x{median([p.client.rate / b.client.rate for b, p in pairs]):.2f}" if full else "",
            ms(median([p.client.mean_ms - b.client.mean_ms for b, p in pairs]), sign=True)
            + percent(median([(p.client.mean_ms - b.client.mean_ms) / b.client.mean_ms for b, p in pairs])),
            ms(median([p.client.p50_ms - b.client.p50_ms for b, p in pairs]), sign=True),
            ms(median([p.client.p99_ms - b.client.p99_ms for b, p in pairs]), sign=True)
            + percent(median([(p.client.p99_ms - b.client.p99_ms) / b.client.p99_ms for b, p in pairs])),
            ms(median([p.cpu_ms_per_request - b.cpu_ms_per_request for b, p in pairs]), sign=True),
            "", "", "", "",
        ])
        per_pair = ", ".join(f"{p.client.mean_ms - b.client.mean_ms:+.2f}" for b, p in pairs)
        line = f"{load}: added mean per pair (ms): {per_pair}"
        if full:
            ratios = ", ".join(f"{p.client.rate / b.client.rate:.2f}" for b, p in pairs)
            spacing = args.sessions / max(r.client.rate for r in runs if r.load == load)
            line += f"; throughput ratio per pair: {ratios}; each session came round every {spacing:.1f} s or more"
            if spacing < MIN_SPACING:
                line += f" (less than {MIN_SPACING} s: raise --sessions)"
        notes.append(line)
    intro = [
        f"Medians over {args.pairs} pairs of {args.seconds} s runs per load and variant. "
        f"{args.sessions} sessions in strict turn: each came round every "
        f"{args.sessions / max(args.rates):.1f} s or more at the fixed rates. "
        "Latencies from oha (fixed rates, counted from when each request was due) or wrk (full speed). "
        "\"added\": the median over pairs of package minus bare in the same pair; in brackets, as a "
        "fraction of bare's mean or p99; at full speed, req/s is the throughput ratio package / bare. "
        "CPU ms/req: gunicorn's workers, all threads, per request the server handled. "
        "publisher CPU: the package's sg-publisher threads; worker CPU: the session-guard worker; "
        "broker+db CPU: RabbitMQ's server and every PostgreSQL process; all three per event the worker "
        "applied. events/1k req: events the worker applied per 1,000 "
        "requests the server handled (lowest-highest of the runs when they differ)."
        + (f" gunicorn and the load generators ran on CPU {args.app_cpus} only (--app-cpus), "
           + ("RabbitMQ, PostgreSQL and the worker on the others (--isolate-services)."
              if args.isolate_services else "the broker, the database and the worker wherever the system put them.")
           if args.app_cpus else ""),
        "",
    ]
    bullet = "- " if markdown else ""
    return [*intro, *table(headers, rows, markdown), "", *(bullet + n for n in notes)]


def coalescing_report(result: Coalescing) -> list[str]:
    types = ", ".join(f"{n} {kind}" for kind, n in result.by_type) or "none"
    return [
        f"Page loads ({ASSETS + 1} requests within about 1 s, then a pause of "
        f"{PAUSE[0]:.0f}-{PAUSE[1]:.0f} s) from {result.sessions} sessions for {result.seconds:.0f} s: "
        f"{result.requests} requests ({result.requests / result.seconds:.0f} req/s), "
        f"{result.events} events applied ({types}): "
        f"{result.events / result.requests * 1000:.0f} events per 1,000 requests.",
    ]


def environment(args: argparse.Namespace, oha_bin: str, package_env: dict[str, str]) -> list[str]:
    """What the figures were measured with."""

    def first_line(command: list[str], env: dict[str, str] | None = None) -> str:
        out = subprocess.run(command, capture_output=True, text=True, env=env)
        return (out.stdout or out.stderr).strip().splitlines()[0]

    version = importlib.metadata.version
    package_path = first_line(
        [sys.executable, "-c", "import session_guard_django as p, os; print(os.path.dirname(p.__file__))"], package_env)
    # Which version of the package, where git can tell.
    package = str(Path(package_path).parent)
    log = subprocess.run(["git", "-C", package, "log", "-1", "--format=%h %cI", "--", "."],
                         capture_output=True, text=True)
    changed = subprocess.run(["git", "-C", package, "status", "--porcelain", "--", "."],
                             capture_output=True, text=True).stdout.splitlines()
    source = (f"last commit {log.stdout.strip()}, {len(changed)} files changed since"
              if log.returncode == 0 else "not in a git checkout")
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return [
        f"Python {sys.version.split()[0]}, Django {version('django')}, gunicorn {version('gunicorn')} "
        f"(sync, {args.workers} workers), pika {version('pika')}; {first_line([oha_bin, '--version'])}, "
        f"{first_line(['wrk', '-v'])}; RabbitMQ {first_line(['rabbitmqctl', 'version'])}, PostgreSQL "
        f"{first_line(['psql', f'{PG_URL}/postgres', '-tAc', 'show server_version'])}; "
        f"{os.cpu_count()} CPUs, load average {load} at the start.",
        f"Package imported from {package_path} ({source}). "
        f"Worker: {args.worker}.",
    ]


# ----- main ------------------------------------------------------------------


def rates(text: str) -> list[float]:
    return [float(r) for r in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=6, help="pairs of runs (bare, package) per load")
    parser.add_argument("--seconds", type=int, default=12, help="length of each run")
    parser.add_argument("--rates", type=rates, default=[20.0, 100.0, 200.0, 500.0],
                        help="fixed rates for oha, requests per second, comma-separated (full speed with wrk follows)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes per variant")
    parser.add_argument("--sessions", type=int, default=3000, help="logged-in sessions the requests rotate over")
    parser.add_argument("--only", choices=["cost", "coalescing"], help="one measurement only")
    parser.add_argument("--coalescing-rate", type=float, default=150.0, help="requests per second in all")
    parser.add_argument("--coalescing-seconds", type=float, default=90.0)
    parser.add_argument("--worker", type=Path, default=REPO / "target" / "release" / "session-guard",
                        help="the session-guard binary (default: this repository's release build)")
    parser.add_argument("--app-cpus", metavar="LIST",
                        help="confine gunicorn and the load generators to these CPUs (taskset -c LIST, e.g. 0), "
                             "leaving the others to the broker, the database and the worker")
    parser.add_argument("--isolate-services", action="store_true",
                        help="with --app-cpus: also confine RabbitMQ's server, every PostgreSQL process and the "
                             "worker to the other CPUs for the run (their CPUs are given back at the end), as if "
                             "they ran on machines of their own. It changes the machine's shared services' CPU "
                             "affinity for the run: only on a machine of your own")
    parser.add_argument("--output", type=Path, help="also write the report here, in Markdown")
    args = parser.parse_args()

    if args.isolate_services and not args.app_cpus:
        parser.error("--isolate-services needs --app-cpus")
    if args.sessions < MIN_SPACING * max(args.rates):
        parser.error(f"--sessions must be at least {MIN_SPACING} x the highest rate, so that a session's "
                     f"requests come {MIN_SPACING} s apart or more")
    oha_bin = shutil.which("oha") or str(Path.home() / ".cargo" / "bin" / "oha")
    for tool in (oha_bin, "wrk", "rabbitmqctl", "psql", *(["taskset"] if args.app_cpus else [])):
        if shutil.which(tool) is None:
            raise SystemExit(f"error: {tool} is needed (see the docstring: --help)")
    if not args.worker.exists():
        subprocess.run(["cargo", "build", "--release", "--bin", "session-guard"], cwd=REPO, check=True)

    # Ctrl-C and SIGTERM both end in the cleanup below.
    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)

    token = uuid.uuid4().hex[:10]
    directory = Path(tempfile.mkdtemp(prefix="sg-django-bench-"))
    worker = Worker(args.worker, token, directory)
    sessions_file = directory / "sessions.txt"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), str(HERE), os.environ.get("PYTHONPATH")])),
        "DJANGO_SETTINGS_MODULE": "benchproject.settings",
        # The test project's SQLite file and caches live here.
        "SG_TEST_DIR": str(directory),
        "SG_TEST_AMQP_URL": AMQP_URL,
        "SG_TEST_APP": f"bench{token}",
        "SG_TEST_EVENTS_EXCHANGE": worker.events_exchange,
        "SG_TEST_REVOCATIONS_EXCHANGE": worker.revocations_exchange,
        "SG_BENCH_SESSIONS": str(sessions_file),
    }
    variant_env = {"bare": {**env, "SG_TEST_NO_MIDDLEWARE": "1"}, "package": env}
    servers = {v: Server(v, variant_env[v], args.workers, directory, args.app_cpus) for v in VARIANTS}
    report = environment(args, oha_bin, env)
    print("\n".join(report), flush=True)
    isolation = Isolation(args.app_cpus) if args.isolate_services else None
    # The package's processes share a request table in /dev/shm, named
    # after this run's exchange (coalesce.py): removed with the rest.
    tables = os.path.join("/dev/shm", f"session-guard-{os.getuid()}-*.recent")
    tables_before = set(glob.glob(tables))
    try:
        worker.start()
        if isolation is not None:
            assert worker.process is not None
            isolation.confine([worker.process.pid])
        print(f"logging in {args.sessions} users ...", flush=True)
        login = subprocess.run([sys.executable, "-m", "benchproject.login", str(args.sessions), str(sessions_file)],
                               cwd=HERE, env=env, capture_output=True, text=True)
        if login.returncode != 0:
            raise BenchError(f"logging in failed:\n{login.stdout}{login.stderr}")
        logins = worker.drain().of("login")
        if logins != args.sessions:
            raise BenchError(f"the worker applied {logins} logins, not {args.sessions}")
        sessions = [(key, username) for key, username in (line.split() for line in sessions_file.read_text().splitlines())]

        print("warm-up: every session once through each variant ...", flush=True)
        for server in servers.values():
            server.start()
            asyncio.run(each_session_once(server.port, sessions, 2 * args.workers))
            if len(server.worker_pids()) != args.workers:
                raise BenchError(f"gunicorn ({server.variant}) has {len(server.worker_pids())} workers, not {args.workers}")
        worker.drain()
        print_new_log_lines(*servers.values(), worker)

        if args.only != "coalescing":
            wrk_script = directory / "summary.lua"
            wrk_script.write_text(WRK_SCRIPT)
            runs = cost(servers, worker, args, oha_bin, wrk_script)
            report += ["", "## Per-request cost", "", *cost_report(runs, args, markdown=True)]
            print("\n" + "\n".join(cost_report(runs, args, markdown=False)), flush=True)
        if args.only != "cost":
            print(f"coalescing: page loads for {args.coalescing_seconds:g} s ...", flush=True)
            result = coalescing(servers["package"], worker, sessions, args)
            print_new_log_lines(servers["package"], worker)
            report += ["", "## Events per 1,000 requests, page-load traffic", "", *coalescing_report(result)]
            print("\n" + "\n".join(coalescing_report(result)), flush=True)
        report.append(f"\nLoad average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}.")
        print(report[-1].strip())
        if args.output:
            args.output.write_text("\n".join(report) + "\n")
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        sys.exit(130)
    finally:
        if isolation is not None:
            isolation.release()
        for server in servers.values():
            server.stop()
        worker.stop()
        worker.remove_everything()
        shutil.rmtree(directory, ignore_errors=True)
        for table in set(glob.glob(tables)) - tables_before:
            os.remove(table)


if __name__ == "__main__":
    main()
