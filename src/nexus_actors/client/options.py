"""Every timing and bound of a client session, in one immutable object."""

from __future__ import annotations

import attrs

from .backoff import Backoff


@attrs.frozen(kw_only=True)
class Options:
    """How a session behaves. The defaults suit a server started without configuration."""

    backoff: Backoff = attrs.Factory(Backoff)
    "Reconnection: exponential backoff with full jitter (1 s base, 30 s cap, 5 attempts)."
    outbox_limit: int = 256
    "Durable events waiting for the server's answer at most; beyond it sends raise OutboxFull."
    update_timeout: float = 5.0
    "Seconds an optimistic update may wait for its answer before it is rolled back."
    max_held: int = 1000
    "Events that may wait behind a gap in ``serverSequence``; beyond it the session resumes."
    gap_timeout: float = 10.0
    "Seconds a gap in ``serverSequence`` may stay open before the session resumes."
    idle_timeout: float = 40.0
    "Seconds without a byte from the server before the connection counts as dead (the "
    "server's heartbeat interval plus its timeout)."
    connect_timeout: float = 10.0
    "Seconds to open a connection and be seated."
    close_timeout: float = 2.0
    "Seconds to finish a closing handshake before the connection is dropped."
    event_buffer: int = 10_000
    "Events kept for the application to read; past it they are dropped (EventsLagged)."
    cursor_hz: float = 20.0
    "Cursor updates sent per second at most (the latest position wins)."
    send_rate: float = 50.0
    "Messages per second sent on average (below the server's rate limit of 60)."
    send_burst: int = 100
    "Messages sent at once at most (below the server's burst of 120)."
    chat_history: int = 100
    "Chat messages the room keeps (the server's NEXUS_CHAT_HISTORY)."
    compress: bool = True
    "Offer permessage-deflate."

    def __attrs_post_init__(self) -> None:
        for name in ("outbox_limit", "max_held", "event_buffer", "send_burst"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("update_timeout", "gap_timeout", "idle_timeout", "connect_timeout",
                     "cursor_hz", "send_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
