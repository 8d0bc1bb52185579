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

from .permissions import CO_HOST, NONE, PRIMARY, Permissions

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

    # What clients see ----------------------------------------------------

    @classmethod
    def from_session(cls, data: dict[str, Any]) -> RoomState:
        """The room as a session frame's ``data`` describes it (no token hashes: clients
        never see them; co-hosts with the default permissions, which is all v1 grants)."""
        public = data["state"]
        return cls(
            code=data["roomCode"], sequence=data["sequence"],
            scenes={k: dict(v) for k, v in public["scenes"].items()},
            active_scene_id=public["activeSceneId"],
            tokens={k: {**v, "position": dict(v["position"])}
                    for k, v in public["tokens"].items()},
            characters={k: dict(v) for k, v in public["characters"].items()},
            initiative=dict(public["initiative"]), chat=[dict(m) for m in public["chat"]],
            seats={p["id"]: Seat(id=p["id"], name=p["name"], token_hash="")
                   for p in data["players"]},
            host_id=data["hostId"], co_host_ids=list(data["coHostIds"]),
            co_host_permissions=dict.fromkeys(data["coHostIds"], CO_HOST),
        )

    def client_view(self) -> dict[str, Any]:
        """Everything a client can know of the room, for comparing two copies."""
        return {"sequence": self.sequence, "state": self.public(),
                "seats": [(s.id, s.name) for s in self.seats.values()],
                "hostId": self.host_id, "coHostIds": list(self.co_host_ids)}

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

