"""Gives each request to ``/rotate/...`` the next of the benchmark's
logged-in sessions as its session cookie, in strict turn across gunicorn's
worker processes.

The load generators cannot do this themselves: oha picks each request's URL
at random, so with random picks some sessions would come round again within
milliseconds, and the package may treat a session's quick repeats
differently (coalescing them). In strict turn, a session comes round every
``sessions / rate`` seconds.

The turn is a counter in a file shared by the processes (mmap), taken under
an flock: a few microseconds per request, the same with and without the
package. The benchmark reads the same counter to learn how many requests the
server handled.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase

PREFIX = "/rotate/"


class RotateSessions:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response
        with open(os.environ["SG_BENCH_SESSIONS"]) as lines:
            # "session_key username" per line; the key is all this needs.
            self.keys = [line.split()[0] for line in lines if line.strip()]
        self.fd = os.open(os.environ["SG_BENCH_COUNTER"], os.O_RDWR)
        self.counter = mmap.mmap(self.fd, 8)

    def next_turn(self) -> int:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            turn = int.from_bytes(self.counter[:8], "little")
            self.counter[:8] = (turn + 1).to_bytes(8, "little")
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        return turn

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.path_info.startswith(PREFIX):
            key = self.keys[self.next_turn() % len(self.keys)]
            request.COOKIES = {settings.SESSION_COOKIE_NAME: key}
        return self.get_response(request)
