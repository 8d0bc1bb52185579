"""When to reconnect: exponential backoff with full jitter, server hints, close codes."""

from __future__ import annotations

import random
from typing import Final

import attrs

TERMINAL_CLOSE_CODES: Final = {
    1000: "left",
    4000: "superseded",
    4001: "kicked",
    4400: "bad-request",
    4401: "invalid-token",
    4404: "room-not-found",
    4409: "room-exists",
    4429: "room-full",
}
"Close codes after which a client must not reconnect by itself (protocol v1, section 13)."

ABNORMAL_CLOSURE: Final = 1006
"What a connection that ended without a close frame reports."


def may_retry(close_code: int) -> bool:
    """Whether a connection closed with ``close_code`` should be resumed automatically."""
    return close_code not in TERMINAL_CLOSE_CODES


@attrs.frozen(kw_only=True)
class Backoff:
    """How long to wait before each reconnection attempt, and how many to make."""

    base: float = 1.0
    "Seconds: the ceiling of the first attempt's wait."
    cap: float = 30.0
    "Seconds: the ceiling never grows past this."
    max_attempts: int = 5
    "Attempts after one lost connection before giving up (``reconnection-failed``)."

    def ceiling(self, attempt: int) -> float:
        """The longest wait before attempt ``attempt`` (1, 2, ...): ``base * 2**(n-1)``,
        at most ``cap``."""
        return min(self.cap, self.base * 2.0 ** min(attempt - 1, 64))

    def delay(self, attempt: int, rng: random.Random, *, hint: float = 0.0) -> float:
        """Full jitter (a uniform wait up to the ceiling), but never less than ``hint``:
        the ``retryAfterMs`` the server asked for, in seconds."""
        return max(hint, rng.uniform(0.0, self.ceiling(attempt)))
