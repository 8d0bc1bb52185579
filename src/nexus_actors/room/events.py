"""Durable events: validated and authorized by :func:`plan`, applied by :func:`apply`.

The room actor turns a client request into one or more *normalized* events
with :func:`plan` (which checks permissions, ids, versions and shapes, fills
in server-chosen ids and the resulting versions, and never mutates), gives
each a ``serverSequence``, and applies it with :func:`apply`. ``apply`` takes
only normalized events and never fails on them: the store's journal holds
exactly these, so restoring a room is ``snapshot`` + ``apply`` of the tail,
and clients that keep a copy of the state apply the same events.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from ..errors import Code, NexusError
from ..protocol import inbound as msg
from ..protocol.inbound import MAX_ID_LENGTH
from ..protocol.wire import Wire, encode
from .hosts import successor
from .permissions import CO_HOST, Permissions
from .state import RoomState, Seat

MAX_SCENE_NAME: Final = 200


@attrs.frozen(kw_only=True)
class Event:
    """One durable, sequenced room event (a journal entry)."""

    sequence: int
    "Gap-free per-room ``serverSequence``."
    name: str
    data: dict[str, Any]
    "Public payload, broadcast as ``data`` alongside ``name``."
    event_id: str
    "Client idempotency key (server-generated for server events)."
    actor_id: str | None
    "Member whose request caused it; ``None`` for the server itself."
    timestamp: int
    "Wall-clock milliseconds when the server applied it."
    secret: dict[str, Any] | None = None
    "Stored with the event, never sent (a new seat's token hash)."

    def wire(self) -> Wire:
        data = {"name": self.name}
        data.update(self.data)
        return encode("event", data, self.timestamp, eventId=self.event_id,
                      serverSequence=self.sequence, actorId=self.actor_id)

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "sequence": self.sequence, "name": self.name, "data": self.data,
            "eventId": self.event_id, "actorId": self.actor_id, "timestamp": self.timestamp,
        }
        if self.secret is not None:
            record["secret"] = self.secret
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Event:
        return cls(sequence=record["sequence"], name=record["name"], data=record["data"],
                   event_id=record["eventId"], actor_id=record["actorId"],
                   timestamp=record["timestamp"], secret=record.get("secret"))


@attrs.frozen(kw_only=True)
class Planned:
    """A normalized event before it has a sequence number."""

    name: str
    data: dict[str, Any]
    secret: dict[str, Any] | None = None


class Rejection(NexusError):
    """A request the room refuses; nothing is applied or broadcast."""

    default_code = Code.INVALID


@attrs.frozen(kw_only=True)
class Context:
    """What :func:`plan` needs to know beyond the state."""

    actor_id: str
    "The member making the request."
    connected_since: Mapping[str, float]
    "Connected members and when their current connection began."
    new_id: Callable[[], str]
    "Generates ids for entities a client created without one."
    timestamp: int
    max_chat_length: int


# Validation helpers -------------------------------------------------------


MAX_ROUND = 2**53 - 1
"Largest initiative round: exact in every JSON number implementation (JavaScript's too)."


def _invalid(message: str) -> Rejection:
    return Rejection(message, code=Code.INVALID)


def _forbidden(message: str) -> Rejection:
    return Rejection(message, code=Code.FORBIDDEN)


def _not_found(kind: str, entity_id: str) -> Rejection:
    return Rejection(f"{kind} {entity_id[:MAX_ID_LENGTH]!r} does not exist", code=Code.NOT_FOUND)


def _id(value: Any, what: str) -> str:
    if type(value) is not str or not 0 < len(value) <= MAX_ID_LENGTH:
        raise _invalid(f"{what} must be a string of 1 to {MAX_ID_LENGTH} characters")
    return value


def _position(value: Any, what: str = "position") -> dict[str, float]:
    if type(value) is not dict or value.keys() != {"x", "y"}:
        raise _invalid(f"{what} must be an object {{x, y}}")
    out = {}
    for axis in ("x", "y"):
        number = value[axis]
        if type(number) not in (int, float) or not math.isfinite(number):
            raise _invalid(f"{what}.{axis} must be a finite number")
        out[axis] = float(number)
    return out


def _require(permissions: Permissions, flag: str, action: str) -> None:
    if not getattr(permissions, flag):
        raise _forbidden(f"{action} needs the {_camel_flag(flag)} permission")


def _camel_flag(flag: str) -> str:
    head, *rest = flag.split("_")
    return head + "".join(part.title() for part in rest)


def _check_version(entity: dict[str, Any], requested: int | None) -> int:
    """The entity's next version, or a ``version-conflict`` rejection."""
    current: int = entity["version"]
    if requested is not None and requested != current:
        raise Rejection(f"version {requested} is not the current version {current}",
                        code=Code.VERSION_CONFLICT, currentVersion=current, current=entity)
    return current + 1


def _entity(table: dict[str, dict[str, Any]], kind: str, entity_id: str) -> dict[str, Any]:
    entity = table.get(entity_id)
    if entity is None:
        raise _not_found(kind, entity_id)
    return entity


def _new_entity(body: dict[str, Any], kind: str, table: dict[str, dict[str, Any]],
                ctx: Context) -> dict[str, Any]:
    if "version" in body:
        raise _invalid(f"{kind}.version is set by the server")
    entity = dict(body)
    entity["id"] = _id(body["id"], f"{kind}.id") if "id" in body else ctx.new_id()
    if entity["id"] in table:
        raise Rejection(f"{kind} {entity['id']!r} already exists", code=Code.ENTITY_EXISTS)
    entity["version"] = 1
    return entity


def _changes(changes: dict[str, Any], kind: str) -> dict[str, Any]:
    if not changes:
        raise _invalid("changes must not be empty")
    for key in ("id", "version"):
        if key in changes:
            raise _invalid(f"{kind}.{key} cannot be changed")
    return dict(changes)


def _with_update(data: dict[str, Any], update_id: str | None) -> dict[str, Any]:
    if update_id is not None:
        data["updateId"] = _id(update_id, "updateId")
    return data


# Planning ----------------------------------------------------------------

Planner = Callable[[RoomState, Any, Context], list[Planned]]


def _scene_create(state: RoomState, p: msg.SceneCreate, ctx: Context) -> list[Planned]:
    _require(state.permissions_of(ctx.actor_id), "can_edit_scenes", "scene/create")
    name = p.scene.get("name")
    if type(name) is not str or not 0 < len(name) <= MAX_SCENE_NAME:
        raise _invalid(f"scene.name must be a string of 1 to {MAX_SCENE_NAME} characters")
    scene = _new_entity(p.scene, "scene", state.scenes, ctx)
    return [Planned(name="scene/create", data={"scene": scene})]


def _scene_update(state: RoomState, p: msg.SceneUpdate, ctx: Context) -> list[Planned]:
    _require(state.permissions_of(ctx.actor_id), "can_edit_scenes", "scene/update")
    scene = _entity(state.scenes, "scene", p.scene_id)
    changes = _changes(p.changes, "scene")
    if "name" in changes and (type(changes["name"]) is not str
                              or not 0 < len(changes["name"]) <= MAX_SCENE_NAME):
        raise _invalid(f"scene.name must be a string of 1 to {MAX_SCENE_NAME} characters")
    version = _check_version(scene, p.version)
    data = {"sceneId": p.scene_id, "changes": changes, "version": version}
    return [Planned(name="scene/update", data=_with_update(data, p.update_id))]


def _scene_delete(state: RoomState, p: msg.SceneDelete, ctx: Context) -> list[Planned]:
    _require(state.permissions_of(ctx.actor_id), "can_edit_scenes", "scene/delete")
    scene = _entity(state.scenes, "scene", p.scene_id)
    _check_version(scene, p.version)
    return [Planned(name="scene/delete", data=_with_update({"sceneId": p.scene_id}, p.update_id))]


def _scene_activate(state: RoomState, p: msg.SceneActivate, ctx: Context) -> list[Planned]:
    _require(state.permissions_of(ctx.actor_id), "can_edit_scenes", "scene/activate")
    _entity(state.scenes, "scene", p.scene_id)
    return [Planned(name="scene/activate", data={"sceneId": p.scene_id})]


def _token_create(state: RoomState, p: msg.TokenCreate, ctx: Context) -> list[Planned]:
    token = _new_entity(p.token, "token", state.tokens, ctx)
    scene_id = _id(p.token.get("sceneId"), "token.sceneId")
    _entity(state.scenes, "scene", scene_id)
    token["position"] = _position(p.token.get("position"), "token.position")
    return [Planned(name="token/create", data={"token": token})]


def _token_move(state: RoomState, p: msg.TokenMove, ctx: Context) -> list[Planned]:
    token = _entity(state.tokens, "token", p.token_id)
    if p.scene_id is not None and p.scene_id != token["sceneId"]:
        raise _invalid("token/move cannot change sceneId; use token/update")
    version = _check_version(token, p.version)
    data = {"tokenId": p.token_id, "position": p.position.to_json(), "version": version}
    return [Planned(name="token/move", data=_with_update(data, p.update_id))]


def _token_update(state: RoomState, p: msg.TokenUpdate, ctx: Context) -> list[Planned]:
    token = _entity(state.tokens, "token", p.token_id)
    changes = _changes(p.changes, "token")
    if "sceneId" in changes:
        _entity(state.scenes, "scene", _id(changes["sceneId"], "token.sceneId"))
    if "position" in changes:
        changes["position"] = _position(changes["position"], "token.position")
    version = _check_version(token, p.version)
    data = {"tokenId": p.token_id, "changes": changes, "version": version}
    return [Planned(name="token/update", data=_with_update(data, p.update_id))]


def _token_delete(state: RoomState, p: msg.TokenDelete, ctx: Context) -> list[Planned]:
    token = _entity(state.tokens, "token", p.token_id)
    _check_version(token, p.version)
    return [Planned(name="token/delete", data=_with_update({"tokenId": p.token_id}, p.update_id))]


def _character_create(state: RoomState, p: msg.CharacterCreate, ctx: Context) -> list[Planned]:
    if "name" in p.character and type(p.character["name"]) is not str:
        raise _invalid("character.name must be a string")
    character = _new_entity(p.character, "character", state.characters, ctx)
    return [Planned(name="character/create", data={"character": character})]


def _character_update(state: RoomState, p: msg.CharacterUpdate, ctx: Context) -> list[Planned]:
    character = _entity(state.characters, "character", p.character_id)
    changes = _changes(p.changes, "character")
    if "name" in changes and type(changes["name"]) is not str:
        raise _invalid("character.name must be a string")
    version = _check_version(character, p.version)
    data = {"characterId": p.character_id, "changes": changes, "version": version}
    return [Planned(name="character/update", data=_with_update(data, p.update_id))]


def _character_delete(state: RoomState, p: msg.CharacterDelete, ctx: Context) -> list[Planned]:
    character = _entity(state.characters, "character", p.character_id)
    _check_version(character, p.version)
    data = _with_update({"characterId": p.character_id}, p.update_id)
    return [Planned(name="character/delete", data=data)]


def _initiative_set(state: RoomState, p: msg.InitiativeSet, ctx: Context) -> list[Planned]:
    _require(state.permissions_of(ctx.actor_id), "can_control_initiative", "initiative/set")
    if p.round < 0 or p.turn < 0:
        raise _invalid("round and turn must not be negative")
    if p.round > MAX_ROUND:
        raise _invalid(f"round must be at most {MAX_ROUND}")
    if p.order and p.turn >= len(p.order):
        raise _invalid("turn must index into order")
    version = _check_version(state.initiative, p.version)
    data = {"order": p.order, "round": p.round, "turn": p.turn, "version": version}
    return [Planned(name="initiative/set", data=_with_update(data, p.update_id))]


def _initiative_next(state: RoomState, p: msg.InitiativeNext, ctx: Context) -> list[Planned]:
    _require(state.permissions_of(ctx.actor_id), "can_control_initiative", "initiative/next")
    order = state.initiative["order"]
    if not order:
        raise _invalid("initiative order is empty")
    version = _check_version(state.initiative, p.version)
    turn = state.initiative["turn"] + 1
    round_ = state.initiative["round"]
    if turn >= len(order):
        if round_ >= MAX_ROUND:
            raise _invalid(f"the round counter is at its maximum ({MAX_ROUND})")
        turn, round_ = 0, round_ + 1
    data = {"round": round_, "turn": turn, "version": version}
    return [Planned(name="initiative/next", data=_with_update(data, p.update_id))]


def _chat_message(state: RoomState, p: msg.ChatMessage, ctx: Context) -> list[Planned]:
    text = p.text.strip()
    if not text:
        raise _invalid("chat text must not be empty")
    if len(text) > ctx.max_chat_length:
        raise _invalid(f"chat text is longer than {ctx.max_chat_length} characters")
    seat = state.seats[ctx.actor_id]
    message = {"id": ctx.new_id(), "userId": seat.id, "userName": seat.name, "text": text,
               "timestamp": ctx.timestamp}
    return [Planned(name="chat/message", data={"message": message})]


def _member(state: RoomState, member_id: str) -> Seat:
    seat = state.seats.get(member_id)
    if seat is None:
        raise Rejection(f"member {member_id[:MAX_ID_LENGTH]!r} is not in this room",
                        code=Code.NOT_FOUND)
    return seat


def _transfer_host(state: RoomState, p: msg.TransferHost, ctx: Context) -> list[Planned]:
    _require(state.permissions_of(ctx.actor_id), "can_transfer_host", "session/transfer-host")
    _member(state, p.new_host_id)
    if p.new_host_id == state.host_id:
        raise _invalid("that member is already the primary host")
    if p.new_host_id not in ctx.connected_since:
        raise Rejection("the new host must be connected", code=Code.NOT_CONNECTED)
    return [migrated(state, p.new_host_id, manual=True)]


def migrated(state: RoomState, new_host_id: str, *, manual: bool) -> Planned:
    """The ``session/host-migrated`` event making ``new_host_id`` primary host."""
    return Planned(name="session/host-migrated",
                   data={"newHostId": new_host_id, "previousHostId": state.host_id,
                         "manual": manual})


def _add_co_host(state: RoomState, p: msg.AddCoHost, ctx: Context) -> list[Planned]:
    if ctx.actor_id != state.host_id:
        raise _forbidden("only the primary host may add co-hosts")
    _member(state, p.player_id)
    if p.player_id == state.host_id or p.player_id in state.co_host_permissions:
        raise _invalid("that member is already a host")
    return [Planned(name="session/co-host-added",
                    data={"coHostId": p.player_id, "permissions": CO_HOST.to_json()})]


def _remove_co_host(state: RoomState, p: msg.RemoveCoHost, ctx: Context) -> list[Planned]:
    if ctx.actor_id != state.host_id:
        raise _forbidden("only the primary host may remove co-hosts")
    _member(state, p.player_id)
    if p.player_id not in state.co_host_permissions:
        raise _invalid("that member is not a co-host")
    return [Planned(name="session/co-host-removed", data={"coHostId": p.player_id})]


def _kick(state: RoomState, p: msg.Kick, ctx: Context) -> list[Planned]:
    _require(state.permissions_of(ctx.actor_id), "can_manage_players", "session/kick")
    _member(state, p.player_id)
    if p.player_id == ctx.actor_id:
        raise _invalid("use session/leave to leave")
    if p.player_id == state.host_id:
        raise _forbidden("the primary host cannot be kicked")
    return [Planned(name="session/kicked", data={"playerId": p.player_id, "by": ctx.actor_id})]


def _leave(state: RoomState, p: msg.Leave, ctx: Context) -> list[Planned]:
    return seat_given_up(state, ctx.actor_id, "left", ctx.connected_since)


def seat_given_up(state: RoomState, member_id: str, reason: str,
                  connected_since: Mapping[str, float]) -> list[Planned]:
    """``session/leave`` and, when the primary host leaves, its immediate replacement."""
    planned = [Planned(name="session/leave", data={"uuid": member_id, "reason": reason})]
    if member_id == state.host_id:
        others = {k: v for k, v in connected_since.items() if k != member_id}
        heir = successor(state, others, leaving=member_id, allow_disconnected=True)
        if heir is not None:
            planned.append(Planned(name="session/host-migrated",
                                   data={"newHostId": heir, "previousHostId": member_id,
                                         "manual": False}))
    return planned


def joined(seat: Seat, state: RoomState) -> Planned:
    """The ``session/join`` event for a new seat (the first seat becomes primary host)."""
    role = "host" if state.host_id is None else "player"
    return Planned(name="session/join",
                   data={"player": {"id": seat.id, "name": seat.name, "role": role}},
                   secret={"tokenHash": seat.token_hash})


_PLANNERS: Final[dict[type[Any], Planner]] = {
    msg.SceneCreate: _scene_create,
    msg.SceneUpdate: _scene_update,
    msg.SceneDelete: _scene_delete,
    msg.SceneActivate: _scene_activate,
    msg.TokenCreate: _token_create,
    msg.TokenMove: _token_move,
    msg.TokenUpdate: _token_update,
    msg.TokenDelete: _token_delete,
    msg.CharacterCreate: _character_create,
    msg.CharacterUpdate: _character_update,
    msg.CharacterDelete: _character_delete,
    msg.InitiativeSet: _initiative_set,
    msg.InitiativeNext: _initiative_next,
    msg.ChatMessage: _chat_message,
    msg.TransferHost: _transfer_host,
    msg.AddCoHost: _add_co_host,
    msg.RemoveCoHost: _remove_co_host,
    msg.Kick: _kick,
    msg.Leave: _leave,
}


def plan(state: RoomState, payload: msg.DurablePayload, ctx: Context) -> list[Planned]:
    """Validate and authorize a request; raise :class:`Rejection` or return what to apply."""
    return _PLANNERS[type(payload)](state, payload, ctx)


def update_id_of(payload: msg.DurablePayload) -> str | None:
    """The ``updateId`` of an optimistic update, if the payload carries one."""
    return getattr(payload, "update_id", None)


def current_of(state: RoomState, payload: msg.DurablePayload) -> tuple[int | None, Any]:
    """The current version and value of the entity a rejected update targeted."""
    for attr, table in (("token_id", state.tokens), ("scene_id", state.scenes),
                        ("character_id", state.characters)):
        entity_id = getattr(payload, attr, None)
        if entity_id is not None:
            entity = table.get(entity_id)
            return (entity["version"], entity) if entity is not None else (None, None)
    if isinstance(payload, msg.InitiativeSet | msg.InitiativeNext):
        return state.initiative["version"], state.initiative
    return None, None


# Applying ----------------------------------------------------------------

Applier = Callable[[RoomState, dict[str, Any], int], None]


def _merge(entity: dict[str, Any], data: dict[str, Any]) -> None:
    entity.update(data["changes"])
    entity["version"] = data["version"]


def _apply_scene_delete(state: RoomState, data: dict[str, Any], _: int) -> None:
    scene_id = data["sceneId"]
    del state.scenes[scene_id]
    for token_id in [t for t, token in state.tokens.items() if token["sceneId"] == scene_id]:
        del state.tokens[token_id]
    if state.active_scene_id == scene_id:
        state.active_scene_id = None


def _apply_token_move(state: RoomState, data: dict[str, Any], _: int) -> None:
    token = state.tokens[data["tokenId"]]
    token["position"] = dict(data["position"])
    token["version"] = data["version"]


def _apply_initiative(state: RoomState, data: dict[str, Any], _: int) -> None:
    for key in ("order", "round", "turn", "version"):
        if key in data:
            state.initiative[key] = data[key]


def _apply_chat(state: RoomState, data: dict[str, Any], chat_history: int) -> None:
    state.chat.append(dict(data["message"]))
    if len(state.chat) > chat_history:
        del state.chat[: len(state.chat) - chat_history]


def _apply_join(state: RoomState, data: dict[str, Any], secret: dict[str, Any] | None) -> None:
    player = data["player"]
    token_hash = (secret or {}).get("tokenHash", "")
    state.seats[player["id"]] = Seat(id=player["id"], name=player["name"], token_hash=token_hash)
    if state.host_id is None:
        state.host_id = player["id"]


def _remove_seat(state: RoomState, member_id: str) -> None:
    state.seats.pop(member_id, None)
    if member_id in state.co_host_permissions:
        del state.co_host_permissions[member_id]
        state.co_host_ids.remove(member_id)
    if state.host_id == member_id:
        state.host_id = None


def _apply_migrated(state: RoomState, data: dict[str, Any], _: int) -> None:
    new_host = data["newHostId"]
    if new_host in state.co_host_permissions:
        del state.co_host_permissions[new_host]
        state.co_host_ids.remove(new_host)
    state.host_id = new_host


def _apply_co_host_added(state: RoomState, data: dict[str, Any], _: int) -> None:
    member_id = data["coHostId"]
    state.co_host_ids.append(member_id)
    state.co_host_permissions[member_id] = Permissions.from_json(data["permissions"])


def _apply_co_host_removed(state: RoomState, data: dict[str, Any], _: int) -> None:
    member_id = data["coHostId"]
    state.co_host_ids.remove(member_id)
    del state.co_host_permissions[member_id]


def _noop(state: RoomState, data: dict[str, Any], _: int) -> None:
    return None


_APPLIERS: Final[dict[str, Applier]] = {
    "scene/create": lambda s, d, _: s.scenes.__setitem__(d["scene"]["id"], dict(d["scene"])),
    "scene/update": lambda s, d, _: _merge(s.scenes[d["sceneId"]], d),
    "scene/delete": _apply_scene_delete,
    "scene/activate": lambda s, d, _: setattr(s, "active_scene_id", d["sceneId"]),
    "token/create": lambda s, d, _: s.tokens.__setitem__(
        d["token"]["id"], {**d["token"], "position": dict(d["token"]["position"])}),
    "token/move": _apply_token_move,
    "token/update": lambda s, d, _: _merge(s.tokens[d["tokenId"]], d),
    "token/delete": lambda s, d, _: s.tokens.__delitem__(d["tokenId"]),
    "character/create": lambda s, d, _: s.characters.__setitem__(
        d["character"]["id"], dict(d["character"])),
    "character/update": lambda s, d, _: _merge(s.characters[d["characterId"]], d),
    "character/delete": lambda s, d, _: s.characters.__delitem__(d["characterId"]),
    "initiative/set": _apply_initiative,
    "initiative/next": _apply_initiative,
    "chat/message": _apply_chat,
    "session/leave": lambda s, d, _: _remove_seat(s, d["uuid"]),
    "session/kicked": lambda s, d, _: _remove_seat(s, d["playerId"]),
    "session/host-migrated": _apply_migrated,
    "session/co-host-added": _apply_co_host_added,
    "session/co-host-removed": _apply_co_host_removed,
    "session/hibernated": _noop,
}


DURABLE_EVENT_NAMES: Final = frozenset(_APPLIERS) | {"session/join"}
"Every event name that can appear in the journal."


def apply(state: RoomState, event: Event, *, chat_history: int) -> None:
    """Apply one normalized event. Events must be applied in ``serverSequence`` order."""
    if event.sequence != state.sequence + 1:
        raise ValueError(f"event {event.sequence} applied after {state.sequence}")
    if event.name == "session/join":
        _apply_join(state, event.data, event.secret)
    else:
        _APPLIERS[event.name](state, event.data, chat_history)
    state.sequence = event.sequence
