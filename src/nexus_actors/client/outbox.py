"""Durable events sent and not yet answered, kept to be sent again after a reconnect.

Each event gets a fresh ``eventId`` (the server's idempotency key) and the next
``clientSequence`` once, when it is first queued; a resend uses both again, so
the server applies it at most once. The outbox is bounded: when it is full a
new event is refused with :class:`~nexus_actors.client.errors.OutboxFull`,
never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import attrs
import orjson

from .errors import OutboxFull


@attrs.frozen(kw_only=True)
class Entry:
    """One durable event waiting for its ``event-ack``, ``update-rejected`` or ``error``."""

    event_id: str
    client_sequence: int
    name: str
    data: dict[str, Any]
    "The event's fields besides ``name``."
    update_id: str | None = None
    "Set for optimistic updates."

    def frame(self) -> bytes:
        """The client ``event`` frame, the same bytes every time it is sent."""
        return orjson.dumps({"type": "event", "data": {"name": self.name, **self.data},
                             "eventId": self.event_id, "clientSequence": self.client_sequence})


@attrs.define
class Outbox:
    """Unanswered durable events, oldest first."""

    limit: int
    "Most events waiting at once."
    new_id: Callable[[], str]
    "Fresh event ids (UUIDs)."
    _entries: dict[str, Entry] = attrs.Factory(dict)
    _sequence: int = 0

    def add(self, name: str, data: dict[str, Any], *, update_id: str | None = None) -> Entry:
        """Queue a new event; raises :class:`OutboxFull` when ``limit`` are waiting."""
        if len(self._entries) >= self.limit:
            raise OutboxFull(self.limit)
        self._sequence += 1
        entry = Entry(event_id=self.new_id(), client_sequence=self._sequence, name=name,
                      data=data, update_id=update_id)
        self._entries[entry.event_id] = entry
        return entry

    def settle(self, event_id: str) -> Entry | None:
        """The server answered ``event_id``: forget it (``None`` if it was not waiting)."""
        return self._entries.pop(event_id, None)

    def get(self, event_id: str) -> Entry | None:
        return self._entries.get(event_id)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._entries
