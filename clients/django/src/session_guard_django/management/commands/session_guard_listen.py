"""``manage.py session_guard_listen``: ends the sessions session-guard
revokes, and sends ``signals.new_device_login`` for its notices.

Run one or more per app (they share the app's queues, each message reaches
one of them). Stops cleanly on SIGTERM or SIGINT: the message in hand is
finished and acked, the ones the broker had sent ahead go back to the queue.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from session_guard_django.listener import Listener, ListenerError


class Command(BaseCommand):
    help = (
        "Consume revoke.<app> and end each revoked session through the session engine; consume "
        "the app's notices and send session_guard_django.signals.new_device_login for each."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--log-level",
            default="INFO",
            choices=["DEBUG", "INFO", "WARNING", "ERROR"],
            help="Level of the listener's own log lines on stderr (default INFO).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # The listener's lines go to stderr unless the project's LOGGING
        # already routes them somewhere.
        for name in ("session_guard_django", "session_guard_django.listener"):
            log = logging.getLogger(name)
            log.setLevel(options["log_level"])
        root = logging.getLogger("session_guard_django")
        if not root.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            root.addHandler(handler)

        # pika logs each failed connection attempt at ERROR, several lines
        # each; the listener says what happened itself, once per attempt.
        logging.getLogger("pika").setLevel(logging.CRITICAL)
        stop = threading.Event()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            logging.getLogger("session_guard_django").info(
                "session-guard: %s received, stopping", signal.Signals(signum).name
            )
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        try:
            listener = Listener(stop)
            listener.run()
        except ListenerError as error:
            raise CommandError(str(error)) from error
        logging.getLogger("session_guard_django").info(
            "session-guard: stopped after ending %d sessions and signalling %d notices",
            listener.revokes.ended,
            listener.notices.sent if listener.notices is not None else 0,
        )
