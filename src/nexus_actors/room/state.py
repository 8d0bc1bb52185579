"""The durable state of one room: the table, its seats and its hosts.

Everything here is plain data that round-trips through JSON. It is changed
only by :func:`nexus_actors.room.events.apply`, on the server, when a room is
restored from the store, and in clients that keep a copy; a seat's token hashes
also change when its member resumes (:meth:`Seat.rotate`, not an event).
"""

from __future__ import annotations

import hmac
from typing import Any, Literal

import attrs

from .permissions import NONE, PRIMARY, Permissions

Role = Literal["host", "co-host", "player"]


@attrs.define(kw_only=True)
class Seat:
    """A member's seat: kept across disconnects until they leave, are kicked or the room ends."""

    id: str
    "Public member id (``uuid`` on the wire)."
    name: str
    token_hash: str
    "SHA-256 of the member's newest resume token; the token itself is never stored."
    previous_hash: str = ""
    """SHA-256 of the token the member presented at its last resume, still accepted until
    it presents the newest (``""``: none). See :meth:`rotate`."""

    def accepts(self, digest: str) -> bool:
        """Whether a token hashing to ``digest`` resumes this seat (constant time)."""
        current = hmac.compare_digest(self.token_hash, digest)
        previous = hmac.compare_digest(self.previous_hash, digest) and bool(self.previous_hash)
        return current or previous

    def rotate(self, presented: str, newest: str) -> None:
        """After a resume with the token hashing to ``presented``: ``newest`` is sent next.

        Both stay valid until the member resumes with ``newest``: if the connection drops
        before ``newest`` arrives, the member still holds ``presented``.
        """
        self.previous_hash = presented
        self.token_hash = newest


@attrs.define(kw_only=True)
class RoomState:
    """The authoritative room state owned by one room actor."""

    code: str
    sequence: int = 0
    "``serverSequence`` of the last applied durable event (0: none yet)."
    scenes: dict[str, dict[str, Any]] = attrs.Factory(dict)
    active_scene_id: str | None = None
    tokens: dict[str, dict[str, Any]] = attrs.Factory(dict)
    characters: dict[str, dict[str, Any]] = attrs.Factory(dict)
    initiative: dict[str, Any] = attrs.Factory(
        lambda: {"order": [], "round": 0, "turn": 0, "version": 1})
    chat: list[dict[str, Any]] = attrs.Factory(list)
    seats: dict[str, Seat] = attrs.Factory(dict)
    "Seats in the order members were added."
    host_id: str | None = None
    "The primary host; ``None`` only while the room has no seats."
    co_host_ids: list[str] = attrs.Factory(list)
    "Co-hosts in the order they were added (promotion order)."
    co_host_permissions: dict[str, Permissions] = attrs.Factory(dict)

    # Views -------------------------------------------------------------

    def role_of(self, member_id: str) -> Role:
        if member_id == self.host_id:
            return "host"
        if member_id in self.co_host_permissions:
            return "co-host"
        return "player"

    def permissions_of(self, member_id: str) -> Permissions:
        if member_id == self.host_id:
            return PRIMARY
        return self.co_host_permissions.get(member_id, NONE)

    def public(self) -> dict[str, Any]:
        """The table as clients see it (the ``state`` of session frames)."""
        return {
            "scenes": self.scenes,
            "activeSceneId": self.active_scene_id,
            "tokens": self.tokens,
            "characters": self.characters,
            "initiative": self.initiative,
            "chat": self.chat,
        }

    def player(self, member_id: str, connected: bool) -> dict[str, Any]:
        seat = self.seats[member_id]
        return {"id": seat.id, "name": seat.name, "role": self.role_of(seat.id),
                "connected": connected}

    # Snapshots ---------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to restore the room, tokens hashed (for the store only)."""
        return {
            "code": self.code,
            "sequence": self.sequence,
            "state": self.public(),
            "seats": [{"id": s.id, "name": s.name, "tokenHash": s.token_hash,
                       **({"previousTokenHash": s.previous_hash} if s.previous_hash else {})}
                      for s in self.seats.values()],
            "hostId": self.host_id,
            "coHosts": [
                {"id": member_id, "permissions": self.co_host_permissions[member_id].to_json()}
                for member_id in self.co_host_ids
            ],
        }

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, Any]) -> RoomState:
        state = snapshot["state"]
        co_hosts = snapshot.get("coHosts", [])
        return cls(
            code=snapshot["code"],
            sequence=snapshot["sequence"],
            scenes=state["scenes"],
            active_scene_id=state["activeSceneId"],
            tokens=state["tokens"],
            characters=state["characters"],
            initiative=state["initiative"],
            chat=state["chat"],
            seats={s["id"]: Seat(id=s["id"], name=s["name"], token_hash=s["tokenHash"],
                                 previous_hash=s.get("previousTokenHash", ""))
                   for s in snapshot["seats"]},
            host_id=snapshot["hostId"],
            co_host_ids=[c["id"] for c in co_hosts],
            co_host_permissions={c["id"]: Permissions.from_json(c["permissions"])
                                 for c in co_hosts},
        )

