"""Remote cursors, coalesced per tick: the latest position of each member, sent once per tick.

Each cursor is encoded once when it changes; a tick's ``cursors`` frame is
assembled from those encoded fragments. Members who did not move share one
frame; a member who moved gets the same list without its own cursor.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import orjson

from ..protocol.wire import Wire


def _frame(fragments: Iterable[bytes], removed: bytes, timestamp: int) -> Wire:
    payload = b"".join((
        b'{"type":"cursors","data":{"cursors":[', b",".join(fragments), b'],"removed":',
        removed, b'},"timestamp":', str(timestamp).encode(), b"}",
    ))
    return Wire(payload, "cursors")


class CursorBoard:
    """Latest cursor per member, what changed since the last tick, and who left."""

    def __init__(self) -> None:
        self._latest: dict[str, bytes] = {}
        self._changed: dict[str, bytes] = {}
        self._removed: set[str] = set()

    @property
    def pending(self) -> bool:
        return bool(self._changed or self._removed)

    def update(self, member_id: str, name: str, scene_id: str, x: float, y: float) -> None:
        fragment = orjson.dumps({"userId": member_id, "userName": name, "sceneId": scene_id,
                                 "position": {"x": x, "y": y}})
        self._latest[member_id] = fragment
        self._changed[member_id] = fragment
        self._removed.discard(member_id)

    def remove(self, member_id: str) -> None:
        """Forget a member's cursor; the next tick lists it in ``removed``."""
        if self._latest.pop(member_id, None) is not None:
            self._changed.pop(member_id, None)
            self._removed.add(member_id)

    def flush(self, recipients: Iterable[str], timestamp: int) -> Iterator[tuple[str, Wire]]:
        """One ``cursors`` frame per recipient that has something to see; resets the tick."""
        changed, self._changed = self._changed, {}
        removed_ids, self._removed = sorted(self._removed), set()
        removed = orjson.dumps(removed_ids)
        shared: Wire | None = None
        for member_id in recipients:
            if member_id in changed:
                others = [f for m, f in changed.items() if m != member_id]
                if others or removed_ids:
                    yield member_id, _frame(others, removed, timestamp)
            else:
                if shared is None:
                    shared = _frame(changed.values(), removed, timestamp)
                yield member_id, shared

    def baseline(self, member_id: str, timestamp: int) -> Wire | None:
        """Every current cursor but ``member_id``'s, for a member who just arrived."""
        others = [f for m, f in self._latest.items() if m != member_id]
        return _frame(others, b"[]", timestamp) if others else None
