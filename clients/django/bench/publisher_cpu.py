"""The publisher thread's CPU per event, at fixed rates per process.

    clients/django/.venv/bin/python clients/django/bench/publisher_cpu.py [--rates 20,100,500] [--seconds 10]

One process, the package's own publisher (default settings), the real
broker: events are handed over at each rate, as a process serving that many
authenticated requests a second would hand them over (every request
published: each event names another session), and the thread's CPU time is
read before and after (``Publisher.stats().cpu_seconds``). A queue bound to
an exchange of the run's own takes the events; both are deleted at the end.

This isolates the thread request_cost.py measures inside gunicorn, where the
rates are per server, not per process: here the rate is exactly the
process's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

import django
import pika
from django.conf import settings

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="20,100,500", help="events per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument("--runs", type=int, default=3, help="runs per rate (the median is printed)")
    parser.add_argument("--amqp-url", default=AMQP_URL)
    args = parser.parse_args()

    exchange = f"sgbench.{uuid.uuid4().hex[:10]}.events"
    settings.configure(
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "session_guard_django"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        SESSION_GUARD_APP="bench",
        SESSION_GUARD_AMQP_URL=args.amqp_url,
        SESSION_GUARD_EVENTS_EXCHANGE=exchange,
        USE_TZ=True,
    )
    django.setup()
    from session_guard_django import coalesce, conf, publisher
    from session_guard_django.buffer import Event

    connection = pika.BlockingConnection(pika.URLParameters(args.amqp_url))
    channel = connection.channel()
    channel.exchange_declare(exchange, "topic", auto_delete=True)
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, exchange, "#")
    sender = publisher.get()
    assert sender is not None
    try:
        print(f"{'events/s':>9}  {'publisher CPU per event (us), median':>38}  runs")
        for rate in (float(r) for r in args.rates.split(",")):
            per_event = []
            for _ in range(args.runs):
                before = sender.stats()
                count = int(rate * args.seconds)
                start = time.monotonic()
                for i in range(count):
                    pause = start + i / rate - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    sender.publish(Event(
                        kind="request", session_id=uuid.uuid4().hex, user_id=str(i % 1000),
                        occurred_at=time.time(), ip="203.0.113.7",
                        user_agent="Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0",
                    ))
                if not sender.flush(30):
                    raise SystemExit("error: the broker did not confirm every event within 30 s")
                after = sender.stats()
                published = after.published - before.published
                if published != count:
                    raise SystemExit(f"error: {published} of {count} events confirmed")
                per_event.append((after.cpu_seconds - before.cpu_seconds) / published * 1e6)
            runs = ", ".join(f"{v:.0f}" for v in per_event)
            print(f"{rate:9g}  {statistics.median(per_event):38.0f}  {runs}", flush=True)
    finally:
        sender.close(timeout=5)
        channel.exchange_delete(exchange)
        connection.close()
        # The request table the publisher mapped (coalesce.py), named after
        # this run's exchange.
        table = coalesce.table_path("bench", args.amqp_url, exchange, conf.get().recent_sessions)
        if os.path.exists(table):
            os.remove(table)


if __name__ == "__main__":
    main()
