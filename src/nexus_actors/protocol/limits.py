"""Pure rate limiting: a token bucket driven by the caller's clock."""

from __future__ import annotations

import attrs


@attrs.define
class TokenBucket:
    """Allows ``rate`` events per second on average and ``burst`` at once.

    Time is passed in (``trio.current_time()`` in the server), so tests and the
    simulation control it.
    """

    rate: float
    "Tokens added per second."
    burst: float
    "Bucket size."
    tokens: float = attrs.field(default=-1.0)
    "Tokens available now; starts full."
    updated: float = 0.0
    "When ``tokens`` was last brought up to date."

    def __attrs_post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def take(self, now: float) -> bool:
        """Take one token if there is one."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def retry_after(self) -> float:
        """Seconds until one token is available again."""
        return max(0.0, (1.0 - self.tokens) / self.rate)
