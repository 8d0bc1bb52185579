"""Optimistic updates: shown at once over the server's state, settled by its answer.

The replica holds only what the server applied. Pending updates are a layer
on top: the state the application sees is the replica with each pending
update's changes merged into its entity, in the order they were made. Nothing
has to be undone: confirming an update or rolling it back just removes it
from the layer (a confirmed one is in the replica by then).

A rejection carries the entity as the server has it now; until the replica
has caught up with that version (events still in flight), the layer shows
the server's value instead of the replica's older one: the rollback is
rebased on the server's current value, never on a stale copy.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from ..room.state import RoomState

TABLES: Final = {"token": "tokens", "scene": "scenes", "character": "characters"}
"Entity kind → ``RoomState`` attribute (and ``state`` key) holding it."


@attrs.frozen(kw_only=True)
class Pending:
    """One optimistic update waiting for ``update-confirmed`` or ``update-rejected``."""

    update_id: str
    event_id: str
    name: str
    table: str
    "``tokens``, ``scenes`` or ``characters``."
    entity_id: str
    changes: dict[str, Any]
    "Fields merged into the entity while the update is pending."
    version: int
    "The version the entity will have once the server applies the update."
    deadline: float
    "Trio time after which it is rolled back if the server has not answered."


@attrs.define
class Updates:
    """Pending optimistic updates, in the order they were made."""

    _pending: dict[str, Pending] = attrs.Factory(dict)
    _rebased: dict[tuple[str, str], dict[str, Any]] = attrs.Factory(dict)
    "``(table, id)`` → the server's current entity from a rejection, until the replica has it."

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, pending: Pending) -> None:
        self._pending[pending.update_id] = pending

    def settle(self, update_id: str) -> Pending | None:
        """The update was answered (confirmed or refused): stop showing it."""
        return self._pending.pop(update_id, None)

    def reject(self, update_id: str, current: Any) -> Pending | None:
        """Refused; ``current`` (the server's entity, or ``None``) is shown until the
        replica reaches its version."""
        pending = self._pending.pop(update_id, None)
        if pending is not None and isinstance(current, dict) and isinstance(
                current.get("version"), int):
            self._rebased[(pending.table, pending.entity_id)] = current
        return pending

    def expire(self, now: float) -> list[Pending]:
        """Updates whose deadline has passed, no longer shown."""
        late = [p for p in self._pending.values() if p.deadline <= now]
        for pending in late:
            del self._pending[pending.update_id]
        return late

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self._pending.values()), default=None)

    def forget_rebased(self) -> None:
        """The replica was replaced by a baseline: it is current, nothing to rebase on."""
        self._rebased.clear()

    def prune(self, state: RoomState) -> None:
        """Drop rebased values the replica has caught up with (or whose entity is gone)."""
        for key, current in list(self._rebased.items()):
            table, entity_id = key
            entity = getattr(state, table).get(entity_id)
            if entity is None or entity["version"] >= current["version"]:
                del self._rebased[key]

    # The state as shown -----------------------------------------------------------

    def entity(self, state: RoomState, table: str, entity_id: str) -> dict[str, Any] | None:
        """One entity as the application should see it."""
        entity: dict[str, Any] | None = getattr(state, table).get(entity_id)
        if entity is None:
            return None
        rebased = self._rebased.get((table, entity_id))
        if rebased is not None and rebased["version"] > entity["version"]:
            entity = rebased
        for pending in self._pending.values():
            if pending.table == table and pending.entity_id == entity_id:
                entity = {**entity, **pending.changes, "version": pending.version}
        return entity

    def view(self, state: RoomState) -> dict[str, Any]:
        """The public state (``scenes``, ``tokens``, ...) with pending updates shown."""
        public = state.public()
        touched = {(p.table, p.entity_id) for p in self._pending.values()} | set(self._rebased)
        if not touched:
            return public
        shown = dict(public)
        for table in {table for table, _ in touched}:
            rows = dict(getattr(state, table))
            for kind, entity_id in touched:
                if kind == table and entity_id in rows:
                    entity = self.entity(state, table, entity_id)
                    assert entity is not None
                    rows[entity_id] = entity
            shown[table] = rows
        return shown
