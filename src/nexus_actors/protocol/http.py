"""Plain HTTP responses for the routes that share the WebSocket port (no I/O)."""

from __future__ import annotations

import email.utils
import http
from typing import Any

import orjson
from websockets.datastructures import Headers
from websockets.http11 import Response


def json_response(status: int, body: Any, *, extra: dict[str, str] | None = None) -> Response:
    payload = orjson.dumps(body)
    phrase = http.HTTPStatus(status).phrase
    headers = Headers([
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Connection", "close"),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(payload))),
        ("Cache-Control", "no-store"),
    ])
    for key, value in (extra or {}).items():
        headers[key] = value
    return Response(status, phrase, headers, payload)
