"""Latency percentiles: over a list of samples, or over a histogram that keeps counts.

A run of minutes at the target load takes millions of samples; a
:class:`Histogram` keeps one count per 0.1 ms instead (the report's own
resolution), so memory stays bounded however long the run, and its
percentiles are those of the samples rounded to 0.1 ms.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

QUANTILES = (50, 95, 99)
RESOLUTION = 10
"Buckets per millisecond."


def rank(count: int, q: float) -> int:
    """The 0-based nearest rank of the ``q``-th percentile (0-100) among ``count`` samples
    (the rule of ``scripts/bench``)."""
    last = count - 1
    return min(last, max(0, round(q / 100 * last)))


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """count, p50, p95, p99 and max of latencies in milliseconds (``None`` without any)."""
    if not values:
        return {"count": 0, **dict.fromkeys(f"p{q}" for q in QUANTILES), "max": None}
    ordered = sorted(values)
    return {"count": len(ordered),
            **{f"p{q}": round(ordered[rank(len(ordered), q)], 1) for q in QUANTILES},
            "max": round(ordered[-1], 1)}


@attrs.define
class Histogram:
    """Latencies in milliseconds, counted per 0.1 ms."""

    counts: Counter[int] = attrs.Factory(Counter)
    "Bucket (tenths of a millisecond) → samples."
    count: int = 0

    def add(self, milliseconds: float) -> None:
        self.counts[max(0, round(milliseconds * RESOLUTION))] += 1
        self.count += 1

    def extend(self, values: Iterable[float]) -> None:
        for value in values:
            self.add(value)

    def summary(self) -> dict[str, Any]:
        """As :func:`summarize` over the samples rounded to 0.1 ms."""
        if not self.count:
            return summarize([])
        wanted = {q: rank(self.count, q) for q in QUANTILES}
        found: dict[int, float] = {}
        seen = 0
        buckets = sorted(self.counts)
        for bucket in buckets:
            seen += self.counts[bucket]
            for q, position in wanted.items():
                if q not in found and position < seen:
                    found[q] = bucket / RESOLUTION
        return {"count": self.count, **{f"p{q}": found[q] for q in QUANTILES},
                "max": buckets[-1] / RESOLUTION}
