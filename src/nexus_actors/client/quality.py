"""Connection quality: the server's ``ping`` reports and the client's own heartbeats.

The server pings every connection at the WebSocket level (the client's WebSocket
layer answers with a pong) and then reports the round trip in a ``ping`` frame.
The client also sends one ``heartbeat`` right after each (re)connect, so the
application has a measurement at once instead of after the server's first
interval; the grades are the server's (``protocol.outbound.quality_of``).
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson

from ..protocol.outbound import quality_of
from .events import ConnectionQuality

DISCONNECTED = ConnectionQuality(latency=None, status="disconnected")


def from_ping(data: dict[str, Any]) -> ConnectionQuality:
    """A server ``ping`` frame's report."""
    latency = float(data["latency"])
    status = data.get("quality")
    if status not in ("excellent", "good", "fair", "poor"):
        status = quality_of(latency)
    return ConnectionQuality(latency=latency, status=status)


@attrs.define
class Probe:
    """Client heartbeats in flight: ``id`` → when it was sent (trio time)."""

    _sent: dict[int, float] = attrs.Factory(dict)
    _next_id: int = 0

    def ping(self, now: float) -> bytes:
        """A ``heartbeat`` frame to send now."""
        self._next_id += 1
        self._sent[self._next_id] = now
        return orjson.dumps({"type": "heartbeat", "data": {"kind": "ping", "id": self._next_id}})

    def pong(self, data: dict[str, Any], now: float) -> ConnectionQuality | None:
        """The answer to one of our heartbeats, as a quality report (``None``: not ours)."""
        ping_id = data.get("id")
        sent = self._sent.pop(ping_id, None) if isinstance(ping_id, int) else None
        if sent is None:
            return None
        latency = round((now - sent) * 1000.0, 1)
        return ConnectionQuality(latency=latency, status=quality_of(latency))

    def forget(self) -> None:
        """The connection is gone: answers to earlier heartbeats will never come."""
        self._sent.clear()
