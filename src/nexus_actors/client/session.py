"""The application's side of a session: what it knows, and everything it can send.

A :class:`Session` is made by :func:`~nexus_actors.client.connect`. Its
properties read the session's copy of the room; its sends queue durable events
in the outbox (or optimistic updates, shown at once) and hand them to the
current connection. Nothing here waits on the network.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

import attrs
import trio

from ..room.state import RoomState
from .events import ClientEvent, ConnectionQuality, Cursor, Member
from .runner import Runner

S = TypeVar("S", bound="Sent")


@attrs.frozen(kw_only=True)
class Sent:
    """A durable event queued: its id (``ack`` and ``refused`` events carry it)."""

    event_id: str


@attrs.frozen(kw_only=True)
class Created(Sent):
    """A create queued: the new scene, token or character id."""

    entity_id: str


@attrs.frozen(kw_only=True)
class UpdateSent(Sent):
    """An optimistic update queued: ``applied``, ``confirmed`` and ``rolled-back`` carry
    its ``update_id``."""

    update_id: str


class Session:
    """One seat in one room, kept across connections. Made by :func:`connect`."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._core = runner.core
        self.options = runner.options

    # What the session knows -------------------------------------------------------------

    @property
    def room_code(self) -> str:
        assert self._core.room_code is not None
        return self._core.room_code

    @property
    def member_id(self) -> str:
        """This seat's public id (``uuid`` on the wire)."""
        assert self._core.member_id is not None
        return self._core.member_id

    @property
    def token(self) -> str:
        """The seat's secret resume token (the latest one the server gave)."""
        assert self._core.token is not None
        return self._core.token

    @property
    def room(self) -> RoomState:
        """The room exactly as the server applied it through :attr:`sequence` (read only)."""
        replica = self._core.replica
        assert replica is not None
        return replica.state

    @property
    def sequence(self) -> int:
        return self.room.sequence

    @property
    def epoch(self) -> int:
        replica = self._core.replica
        assert replica is not None
        return replica.epoch

    @property
    def state(self) -> dict[str, Any]:
        """The table to draw (``scenes``, ``activeSceneId``, ``tokens``, ``characters``,
        ``initiative``, ``chat``): the room with pending optimistic updates shown."""
        return self._core.updates.view(self.room)

    @property
    def members(self) -> list[Member]:
        replica = self._core.replica
        assert replica is not None
        return replica.members()

    @property
    def host_id(self) -> str | None:
        return self.room.host_id

    @property
    def co_host_ids(self) -> list[str]:
        return list(self.room.co_host_ids)

    @property
    def cursors(self) -> dict[str, Cursor]:
        """Other members' cursors by member id."""
        replica = self._core.replica
        return dict(replica.cursors) if replica is not None else {}

    @property
    def quality(self) -> ConnectionQuality:
        return self._core.quality

    @property
    def connected(self) -> bool:
        """Seated on a live connection now."""
        return self._core.seated

    @property
    def ended(self) -> bool:
        return self._core.ended

    @property
    def unanswered(self) -> int:
        """Durable events sent (or waiting to be sent) without an answer yet."""
        return len(self._core.outbox)

    def events(self) -> AsyncIterator[ClientEvent]:
        """Everything that happens, in order (one reader). Ends when the session ends;
        raises :class:`~nexus_actors.client.errors.EventsLagged` if it fell behind."""
        return self._runner.feed

    def event_batches(self) -> AsyncIterator[list[ClientEvent]]:
        """The same events as :meth:`events`, as lists of everything that arrived since the
        last step (never empty): a reader of busy rooms wakes once per burst, not once
        per event."""
        return self._runner.feed.batches()

    # Sending ---------------------------------------------------------------------------

    async def send_event(self, name: str, data: dict[str, Any] | None = None) -> Sent:
        """Any durable event of protocol v1: ``name`` and its fields."""
        entry = self._core.send(name, dict(data or {}))
        return await self._sent(Sent(event_id=entry.event_id))

    async def _sent(self, sent: S) -> S:
        self._runner.pump()
        await trio.lowlevel.checkpoint()
        return sent

    async def _update(self, name: str, kind: str, entity_id: str, fields: dict[str, Any],
                      changes: dict[str, Any], force: bool) -> UpdateSent:
        entry = self._core.update(name, kind, entity_id, fields, changes, force=force,
                                  now=trio.current_time())
        assert entry.update_id is not None
        return await self._sent(UpdateSent(event_id=entry.event_id, update_id=entry.update_id))

    async def move_token(self, token_id: str, x: float, y: float, *,
                         force: bool = False) -> UpdateSent:
        """Move a token, optimistically: shown at once, confirmed or rolled back later.
        Based on the version shown (a conflict rolls back) unless ``force``."""
        position = {"x": float(x), "y": float(y)}
        return await self._update("token/move", "token", token_id, {"position": position},
                                  {"position": position}, force)

    async def update_token(self, token_id: str, changes: dict[str, Any], *,
                           force: bool = False) -> UpdateSent:
        shown = dict(changes)
        if "position" in shown:
            shown["position"] = {k: float(v) for k, v in shown["position"].items()}
        return await self._update("token/update", "token", token_id, {"changes": changes},
                                  shown, force)

    async def update_scene(self, scene_id: str, changes: dict[str, Any], *,
                           force: bool = False) -> UpdateSent:
        return await self._update("scene/update", "scene", scene_id, {"changes": changes},
                                  dict(changes), force)

    async def update_character(self, character_id: str, changes: dict[str, Any], *,
                               force: bool = False) -> UpdateSent:
        return await self._update("character/update", "character", character_id,
                                  {"changes": changes}, dict(changes), force)

    async def _create(self, name: str, key: str, entity: dict[str, Any],
                      entity_id: str | None) -> Created:
        entity = {**entity, "id": entity_id or self._core.new_id()}
        entry = self._core.send(name, {key: entity})
        return await self._sent(Created(event_id=entry.event_id, entity_id=entity["id"]))

    async def create_scene(self, name: str, *, scene_id: str | None = None,
                           **fields: Any) -> Created:
        return await self._create("scene/create", "scene", {**fields, "name": name}, scene_id)

    async def create_token(self, scene_id: str, x: float, y: float, *,
                           token_id: str | None = None, **fields: Any) -> Created:
        token = {**fields, "sceneId": scene_id, "position": {"x": x, "y": y}}
        return await self._create("token/create", "token", token, token_id)

    async def create_character(self, *, character_id: str | None = None,
                               **fields: Any) -> Created:
        return await self._create("character/create", "character", fields, character_id)

    async def _delete(self, name: str, key: str, entity_id: str, version: int | None) -> Sent:
        data: dict[str, Any] = {key: entity_id}
        if version is not None:
            data["version"] = version
        return await self.send_event(name, data)

    async def delete_scene(self, scene_id: str, *, version: int | None = None) -> Sent:
        return await self._delete("scene/delete", "sceneId", scene_id, version)

    async def delete_token(self, token_id: str, *, version: int | None = None) -> Sent:
        return await self._delete("token/delete", "tokenId", token_id, version)

    async def delete_character(self, character_id: str, *,
                               version: int | None = None) -> Sent:
        return await self._delete("character/delete", "characterId", character_id, version)

    async def activate_scene(self, scene_id: str) -> Sent:
        return await self.send_event("scene/activate", {"sceneId": scene_id})

    async def set_initiative(self, order: list[Any], round: int = 0, turn: int = 0) -> Sent:
        return await self.send_event("initiative/set",
                                     {"order": order, "round": round, "turn": turn})

    async def next_turn(self) -> Sent:
        return await self.send_event("initiative/next", {})

    async def chat(self, text: str) -> Sent:
        return await self.send_event("chat/message", {"text": text})

    async def transfer_host(self, member_id: str) -> Sent:
        return await self.send_event("session/transfer-host", {"newHostId": member_id})

    async def add_co_host(self, member_id: str) -> Sent:
        return await self.send_event("session/add-co-host", {"playerId": member_id})

    async def remove_co_host(self, member_id: str) -> Sent:
        return await self.send_event("session/remove-co-host", {"playerId": member_id})

    async def kick(self, member_id: str) -> Sent:
        return await self.send_event("session/kick", {"playerId": member_id})

    async def update_cursor(self, scene_id: str, x: float, y: float) -> None:
        """Report this member's pointer (ephemeral: at most ``cursor_hz`` a second are sent,
        the latest position wins)."""
        self._core.cursor(scene_id, x, y)
        self._runner.cursor_moved()
        await trio.lowlevel.checkpoint()

    async def leave(self) -> None:
        """Give up the seat (its token stops working) and wait until the server closes."""
        await self.send_event("session/leave", {})
        await self._runner.done.wait()

    async def flush(self) -> None:
        """Wait until every durable event sent so far has been answered (or the session
        has ended)."""
        while len(self._core.outbox) and not self._core.ended:
            await self._runner.changed.wait()
        await trio.lowlevel.checkpoint()

    async def wait_ended(self) -> None:
        """Wait until the session has ended (left, kicked, gave up reconnecting)."""
        await self._runner.done.wait()
