"""The benchmark's comparison point: a middleware that publishes each
request's event itself, on the request thread, waiting for the broker's
confirm (the straightforward way, and what SessionGuardMiddleware avoids).
Not part of the package."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import pika
from django.http import HttpRequest, HttpResponseBase

_channel: Any = None


def _get_channel() -> Any:
    global _channel
    if _channel is None:
        connection = pika.BlockingConnection(pika.URLParameters(os.environ["SG_TEST_AMQP_URL"]))
        _channel = connection.channel()
        _channel.confirm_delivery()
    return _channel


class SyncPublishMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        user = request.user
        if user.is_authenticated:
            body = json.dumps(
                {
                    "type": "request",
                    "app": os.environ["SG_TEST_APP"],
                    "session_id": request.session.session_key,
                    "user_id": str(user.pk),
                    "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            )
            _get_channel().basic_publish(
                os.environ["SG_TEST_EVENTS_EXCHANGE"],
                f"request.{os.environ['SG_TEST_APP']}",
                body,
                pika.BasicProperties(content_type="application/json", delivery_mode=2),
            )
        return self.get_response(request)
