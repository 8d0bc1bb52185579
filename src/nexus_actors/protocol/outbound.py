"""Builders for the server's own frames (everything but room events)."""

from __future__ import annotations

import random
from typing import Any, Literal

from ..errors import Code
from .wire import Wire, encode

Quality = Literal["excellent", "good", "fair", "poor"]


def quality_of(latency_ms: float) -> Quality:
    """The seed plan's thresholds: < 100 ms excellent, < 200 good, < 400 fair, else poor."""
    if latency_ms < 100:
        return "excellent"
    if latency_ms < 200:
        return "good"
    if latency_ms < 400:
        return "fair"
    return "poor"


def error(code: Code, message: str, timestamp: int, *, event_id: str | None = None,
          **detail: Any) -> Wire:
    data: dict[str, Any] = {"code": str(code), "message": message}
    if event_id is not None:
        data["eventId"] = event_id
    data.update(detail)
    wire = encode("error", data, timestamp)
    wire.label = data["code"]
    return wire


def backoff(reason: str, retry_after_ms: int, timestamp: int) -> Wire:
    wire = encode("backoff", {"retryAfterMs": retry_after_ms, "reason": reason}, timestamp)
    wire.label = reason
    return wire


def jitter(base_ms: int, rng: random.Random) -> int:
    """``base_ms`` spread over [0.5, 1.5) of itself, so clients sent away together do not
    all come back at the same instant."""
    return int(base_ms * rng.uniform(0.5, 1.5))


def after_lease(remaining_s: float, base_ms: int, rng: random.Random) -> int:
    """A hint to come back once a lease with ``remaining_s`` to run may have expired (its
    owner is unreachable, or the room is moving), never before: the rest of the lease
    plus a jitter around half of ``base_ms``."""
    return max(int(remaining_s * 1000), 0) + jitter(base_ms // 2, rng)


def ping(latency_ms: float, timestamp: int) -> Wire:
    rounded = round(latency_ms, 1)
    return encode("ping", {"latency": rounded, "quality": quality_of(latency_ms)}, timestamp)


def heartbeat_pong(ping_id: Any, timestamp: int) -> Wire:
    return encode("heartbeat", {"kind": "pong", "id": ping_id}, timestamp)
