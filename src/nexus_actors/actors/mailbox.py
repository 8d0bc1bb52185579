"""A mailbox that keeps only the latest value per sender: for remote cursors.

A room sends at most one round of ``cursors`` frames per tick and only ever
needs each member's latest position, so connection readers do not queue every
``cursor/update`` into the room's mailbox (waking the room each time). They
:meth:`CursorMailbox.put` the latest position here, and only the first put
after the room took the previous round asks the caller to nudge the room. The
room :meth:`CursorMailbox.take`s everything at its tick and ignores connections
that are no longer seated. Like a memory channel, it is shared by senders and
one receiver and never blocks.
"""

from __future__ import annotations

Cursor = tuple[str, float, float]
"``(sceneId, x, y)``"


class CursorMailbox:
    __slots__ = ("_armed", "_latest")

    def __init__(self) -> None:
        self._latest: dict[int, Cursor] = {}
        self._armed = False

    def put(self, peer_id: int, scene_id: str, x: float, y: float) -> bool:
        """Keep this connection's latest cursor; ``True``: nudge the room (first since a take)."""
        self._latest[peer_id] = (scene_id, x, y)
        if self._armed:
            return False
        self._armed = True
        return True

    def take(self) -> dict[int, Cursor]:
        """Everything put since the last take, by connection id."""
        latest, self._latest = self._latest, {}
        self._armed = False
        return latest
