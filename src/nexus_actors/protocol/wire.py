"""Outgoing frames, encoded once and shared by every recipient.

A server frame is one JSON object ``{"type", "data", "timestamp", ...}``. The
room encodes a broadcast once into a :class:`Wire`; every recipient's outbox
holds the same object, and its WebSocket framing (an unmasked text frame, the
same bytes for everyone when the frame is sent uncompressed) is built at most
once, lazily. Nothing here does I/O.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

_OP_TEXT_FIN = 0x81


def text_frame_header(length: int) -> bytes:
    """Header of an unmasked, final text frame carrying ``length`` payload bytes (RFC 6455)."""
    if length < 126:
        return bytes((_OP_TEXT_FIN, length))
    if length < 65536:
        return struct.pack("!BBH", _OP_TEXT_FIN, 126, length)
    return struct.pack("!BBQ", _OP_TEXT_FIN, 127, length)


class Wire:
    """One encoded server frame: its JSON ``payload`` and, lazily, its WebSocket ``frame``."""

    __slots__ = ("_frame", "kind", "label", "payload")

    def __init__(self, payload: bytes, kind: str = "", label: str = "") -> None:
        self.payload = payload
        "UTF-8 JSON text of the frame."
        self.kind = kind
        "The frame's ``type`` (for logs and metrics)."
        self.label = label
        "An ``error``'s code or a ``backoff``'s reason (for metrics)."
        self._frame: bytes | None = None

    @property
    def frame(self) -> bytes:
        """The complete uncompressed WebSocket frame, built once."""
        frame = self._frame
        if frame is None:
            frame = self._frame = text_frame_header(len(self.payload)) + self.payload
        return frame

    def __len__(self) -> int:
        return len(self.payload)

    def __repr__(self) -> str:
        return f"Wire({self.payload[:80]!r}{'...' if len(self.payload) > 80 else ''})"


def encode(kind: str, data: Any, timestamp: int, **extra: Any) -> Wire:
    """Encode ``{"type": kind, "data": data, "timestamp": timestamp, **extra}``."""
    message: dict[str, Any] = {"type": kind, "data": data}
    message.update(extra)
    message["timestamp"] = timestamp
    return Wire(orjson.dumps(message), kind)


def decode(payload: bytes | str) -> Any:
    """Parse a server frame (for clients and tests)."""
    return orjson.loads(payload)
