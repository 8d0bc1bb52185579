"""Process-wide health flags, each written by one owner and read by the HTTP routes."""

from __future__ import annotations

import attrs


@attrs.define(kw_only=True)
class Health:
    started_at: float
    "``trio.current_time()`` at start."
    draining: bool = False
    "Set by the supervisor when a drain begins."
    store_ok: bool = True
    "Cleared by the persistence actor while commits fail; set again after one succeeds."
    store_error: str | None = None
    "The last store error while ``store_ok`` is false."
    outage_since: float | None = None

    @property
    def ready(self) -> bool:
        return not self.draining and self.store_ok

    def why_not_ready(self) -> list[str]:
        reasons = []
        if self.draining:
            reasons.append("draining")
        if not self.store_ok:
            reasons.append(f"store unavailable: {self.store_error}")
        return reasons
