"""One error tree whose ``code`` strings are the wire protocol's error codes.

Every refusal the server sends to a client (an ``error`` frame, an
``update-rejected`` reason, a close with a code) names one of the
:class:`Code` values below. They are part of protocol v1: never rename one.
"""

from __future__ import annotations

import enum
from typing import Any


class Code(enum.StrEnum):
    """Stable error codes shared by exceptions, ``error`` frames and docs."""

    # Frames that cannot be understood.
    INVALID_JSON = "invalid-json"
    INVALID_FRAME = "invalid-frame"
    UNKNOWN_TYPE = "unknown-type"
    UNKNOWN_EVENT = "unknown-event"
    INVALID_FIELD = "invalid-field"
    MISSING_EVENT_ID = "missing-event-id"
    BINARY_FRAME = "binary-frame"
    FRAME_TOO_LARGE = "frame-too-large"
    RATE_LIMITED = "rate-limited"
    # Connect parameters and seats.
    BAD_REQUEST = "bad-request"
    ROOM_NOT_FOUND = "room-not-found"
    ROOM_EXISTS = "room-exists"
    ROOM_FULL = "room-full"
    INVALID_TOKEN = "invalid-token"
    SUPERSEDED = "superseded"
    # Room rules.
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not-found"
    VERSION_CONFLICT = "version-conflict"
    ENTITY_EXISTS = "entity-exists"
    INVALID = "invalid"
    NOT_CONNECTED = "not-connected"
    STATE_TOO_LARGE = "state-too-large"
    # The server itself.
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal-error"


class NexusError(Exception):
    """Base of every error the server reports with a stable code."""

    default_code: Code = Code.INTERNAL

    def __init__(self, message: str, *, code: Code | None = None, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.code: Code = code if code is not None else self.default_code
        self.detail: dict[str, Any] = detail


class ConfigError(NexusError):
    """A setting has a value the server cannot start with."""

    default_code = Code.BAD_REQUEST


class FrameError(NexusError):
    """An inbound frame is malformed; the connection stays open."""

    default_code = Code.INVALID_FRAME

    def __init__(
        self,
        message: str,
        *,
        code: Code | None = None,
        event_id: str | None = None,
        **detail: Any,
    ) -> None:
        super().__init__(message, code=code, **detail)
        self.event_id = event_id


class Refusal(NexusError):
    """A connect request the server refuses; the connection is closed after."""

    default_code = Code.BAD_REQUEST


class StoreError(NexusError):
    """The store could not do what was asked (it is unreachable); the caller may retry."""

    default_code = Code.UNAVAILABLE


class StoreRejected(StoreError):
    """The store refused the writes themselves (a conflict, bad data): retrying cannot help."""
