"""Client frames: a closed union of typed messages, parsed and validated without I/O.

``decode(raw)`` turns one WebSocket text message into a :class:`Heartbeat` or
an :class:`EventFrame` whose ``payload`` is one of the event classes below,
or raises :class:`~nexus_actors.errors.FrameError` with a stable code and a
message naming the first field that is wrong. One cattrs converter does the
work: field names are camelCase on the wire, unknown fields are refused,
and primitive types are checked strictly (``"1"`` is not a number, ``true``
is not an integer).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final

import attrs
import cattrs
import orjson
from cattrs.gen import make_dict_structure_fn, override

from ..errors import Code, FrameError

MAX_ID_LENGTH: Final = 64
"Longest id (entity ids, event ids, update ids) accepted from a client."
MAX_DEPTH: Final = 64
"Deepest nesting of objects and arrays accepted in a client frame (orjson encodes 254)."


class _Invalid(ValueError):
    """A value of the wrong type or shape; the message is shown to the client."""


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _expect_str(value: Any, _: Any) -> str:
    if type(value) is not str:
        raise _Invalid("expected a string")
    return value


def _expect_int(value: Any, _: Any) -> int:
    if type(value) is not int:
        raise _Invalid("expected an integer")
    return value


def _expect_float(value: Any, _: Any) -> float:
    if type(value) is not float and type(value) is not int:
        raise _Invalid("expected a number")
    result = float(value)
    if not math.isfinite(result):
        raise _Invalid("expected a finite number")
    return result


def _expect_dict(value: Any, _: Any) -> dict[str, Any]:
    if type(value) is not dict:
        raise _Invalid("expected an object")
    return value


def _expect_list(value: Any, _: Any) -> list[Any]:
    if type(value) is not list:
        raise _Invalid("expected an array")
    return value


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(str, _expect_str)
    converter.register_structure_hook(int, _expect_int)
    converter.register_structure_hook(float, _expect_float)
    converter.register_structure_hook_func(lambda t: t == dict[str, Any], _expect_dict)
    converter.register_structure_hook_func(lambda t: t == list[Any], _expect_list)

    def attrs_hook(cls: type[Any]) -> Callable[[Any, Any], Any]:
        renames: dict[str, Any] = {
            field.name: override(rename=_camel(field.name))
            for field in attrs.fields(cls)
            if _camel(field.name) != field.name
        }
        inner = make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True, **renames)

        def structure(value: Any, kind: Any) -> Any:
            if type(value) is not dict:
                raise _Invalid("expected an object")
            return inner(value, kind)

        return structure

    converter.register_structure_hook_factory(attrs.has, attrs_hook)
    return converter


@attrs.frozen(kw_only=True)
class Position:
    x: float
    y: float

    def to_json(self) -> dict[str, float]:
        return {"x": self.x, "y": self.y}


# Durable events. ``update_id``/``version`` make an update optimistic and
# version-checked; absent ``version`` means last write wins.


@attrs.frozen(kw_only=True)
class SceneCreate:
    scene: dict[str, Any]


@attrs.frozen(kw_only=True)
class SceneUpdate:
    scene_id: str
    changes: dict[str, Any]
    update_id: str | None = None
    version: int | None = None


@attrs.frozen(kw_only=True)
class SceneDelete:
    scene_id: str
    update_id: str | None = None
    version: int | None = None


@attrs.frozen(kw_only=True)
class SceneActivate:
    scene_id: str


@attrs.frozen(kw_only=True)
class TokenCreate:
    token: dict[str, Any]


@attrs.frozen(kw_only=True)
class TokenMove:
    token_id: str
    position: Position
    scene_id: str | None = None
    update_id: str | None = None
    version: int | None = None


@attrs.frozen(kw_only=True)
class TokenUpdate:
    token_id: str
    changes: dict[str, Any]
    update_id: str | None = None
    version: int | None = None


@attrs.frozen(kw_only=True)
class TokenDelete:
    token_id: str
    update_id: str | None = None
    version: int | None = None


@attrs.frozen(kw_only=True)
class CharacterCreate:
    character: dict[str, Any]


@attrs.frozen(kw_only=True)
class CharacterUpdate:
    character_id: str
    changes: dict[str, Any]
    update_id: str | None = None
    version: int | None = None


@attrs.frozen(kw_only=True)
class CharacterDelete:
    character_id: str
    update_id: str | None = None
    version: int | None = None


@attrs.frozen(kw_only=True)
class InitiativeSet:
    order: list[Any]
    round: int
    turn: int
    update_id: str | None = None
    version: int | None = None


@attrs.frozen(kw_only=True)
class InitiativeNext:
    update_id: str | None = None
    version: int | None = None


@attrs.frozen(kw_only=True)
class ChatMessage:
    text: str


# Session requests: the same frame shape, handled by the room's host rules.


@attrs.frozen(kw_only=True)
class TransferHost:
    new_host_id: str


@attrs.frozen(kw_only=True)
class AddCoHost:
    player_id: str


@attrs.frozen(kw_only=True)
class RemoveCoHost:
    player_id: str


@attrs.frozen(kw_only=True)
class Kick:
    player_id: str


@attrs.frozen(kw_only=True)
class Leave:
    pass


# Ephemeral: never stored, coalesced per tick.


@attrs.frozen(kw_only=True)
class CursorUpdate:
    scene_id: str
    position: Position


DurablePayload = (
    SceneCreate | SceneUpdate | SceneDelete | SceneActivate
    | TokenCreate | TokenMove | TokenUpdate | TokenDelete
    | CharacterCreate | CharacterUpdate | CharacterDelete
    | InitiativeSet | InitiativeNext | ChatMessage
    | TransferHost | AddCoHost | RemoveCoHost | Kick | Leave
)
Payload = DurablePayload | CursorUpdate

EVENT_TYPES: Final[dict[str, type[Any]]] = {
    "scene/create": SceneCreate,
    "scene/update": SceneUpdate,
    "scene/delete": SceneDelete,
    "scene/activate": SceneActivate,
    "token/create": TokenCreate,
    "token/move": TokenMove,
    "token/update": TokenUpdate,
    "token/delete": TokenDelete,
    "character/create": CharacterCreate,
    "character/update": CharacterUpdate,
    "character/delete": CharacterDelete,
    "initiative/set": InitiativeSet,
    "initiative/next": InitiativeNext,
    "chat/message": ChatMessage,
    "session/transfer-host": TransferHost,
    "session/add-co-host": AddCoHost,
    "session/remove-co-host": RemoveCoHost,
    "session/kick": Kick,
    "session/leave": Leave,
    "cursor/update": CursorUpdate,
}
"Event names a client may send, and the payload class each one carries."


@attrs.frozen(kw_only=True)
class EventFrame:
    """``{"type": "event", "data": {"name", ...payload}, "eventId", "clientSequence"}``."""

    name: str
    payload: Payload
    event_id: str | None = None
    "Client-chosen idempotency key; required for durable events."
    client_sequence: int | None = None

    @property
    def durable(self) -> bool:
        return type(self.payload) is not CursorUpdate


@attrs.frozen(kw_only=True)
class Heartbeat:
    """``{"type": "heartbeat", "data": {"kind": "ping", "id": X}}``: answered with a pong."""

    id: Any


ClientMessage = EventFrame | Heartbeat

_converter: Final = _make_converter()
_ENVELOPE_KEYS: Final = frozenset({"type", "data", "eventId", "clientSequence", "timestamp"})
_structurers: Final[dict[str, Callable[[Any, Any], Any]]] = {
    name: _converter.get_structure_hook(cls) for name, cls in EVENT_TYPES.items()
}


def _field_error(exc: Exception, name: str, event_id: str | None) -> FrameError:
    def describe(inner: BaseException) -> str:
        if isinstance(inner, _Invalid):
            return str(inner)
        if isinstance(inner, KeyError):
            return "required field missing"
        if isinstance(inner, cattrs.ForbiddenExtraKeysError):
            return f"unexpected field {', '.join(repr(k) for k in sorted(inner.extra_fields))}"
        return "invalid value"

    lines = cattrs.transform_error(exc, path="data", format_exception=lambda e, _t: describe(e))
    first = lines[0] if lines else "data: invalid value"
    message, _, where = first.partition(" @ ")
    where = ".".join(_camel(part) for part in (where or "data").split("."))
    return FrameError(f"{name}: {where}: {message}", code=Code.INVALID_FIELD,
                      event_id=event_id)


def _too_deep(message: dict[str, Any]) -> bool:
    """Whether objects and arrays nest more than :data:`MAX_DEPTH` levels (no recursion)."""
    stack: list[tuple[Any, int]] = [(message, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = value.values() if type(value) is dict else value
        stack.extend((child, depth + 1) for child in children
                     if type(child) is dict or type(child) is list)
    return False


def decode(raw: bytes | str) -> ClientMessage:
    """Parse one client text message. Raises :class:`FrameError` with a stable code."""
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):  # valid JSON, too deep to parse
            raise FrameError(f"frame nests objects and arrays more than {MAX_DEPTH} levels "
                             "deep", code=Code.INVALID_FRAME) from None
        raise FrameError("frame is not valid JSON", code=Code.INVALID_JSON) from None
    if type(message) is not dict:
        raise FrameError("frame must be a JSON object", code=Code.INVALID_FRAME)
    if len(raw) > 2 * MAX_DEPTH and _too_deep(message):
        # Deeper values would be accepted here and then fail to encode when echoed,
        # broadcast or snapshotted.
        raise FrameError(f"frame nests objects and arrays more than {MAX_DEPTH} levels deep",
                         code=Code.INVALID_FRAME)
    kind = message.get("type")
    if type(kind) is not str:
        raise FrameError("frame needs a string 'type'", code=Code.INVALID_FRAME)
    event_id = message.get("eventId")
    if event_id is not None and (type(event_id) is not str
                                 or not 0 < len(event_id) <= MAX_ID_LENGTH):
        raise FrameError(f"eventId must be a string of 1 to {MAX_ID_LENGTH} characters",
                         code=Code.INVALID_FIELD)
    extra = message.keys() - _ENVELOPE_KEYS
    if extra:
        raise FrameError(f"unexpected field {', '.join(repr(k) for k in sorted(extra))}",
                         code=Code.INVALID_FIELD, event_id=event_id)
    data = message.get("data")
    if kind == "event":
        return _decode_event(data, message, event_id)
    if kind == "heartbeat":
        if type(data) is not dict or data.get("kind") != "ping" or data.keys() - {"kind", "id"}:
            raise FrameError("heartbeat data must be {kind: 'ping', id}", code=Code.INVALID_FIELD)
        return Heartbeat(id=data.get("id"))
    raise FrameError(f"unknown frame type {kind[:40]!r}", code=Code.UNKNOWN_TYPE,
                     event_id=event_id)


_CURSOR_KEYS: Final = frozenset({"name", "sceneId", "position"})
_POSITION_KEYS: Final = frozenset({"x", "y"})


def _fast_cursor(data: dict[str, Any]) -> CursorUpdate | None:
    """The hot path: a well-formed ``cursor/update`` without the converter (else ``None``)."""
    if data.keys() != _CURSOR_KEYS:
        return None
    scene_id, position = data["sceneId"], data["position"]
    if type(scene_id) is not str or type(position) is not dict or position.keys() != _POSITION_KEYS:
        return None
    x, y = position["x"], position["y"]
    if (type(x) is float or type(x) is int) and (type(y) is float or type(y) is int):
        x, y = float(x), float(y)
        if math.isfinite(x) and math.isfinite(y):
            return CursorUpdate(scene_id=scene_id, position=Position(x=x, y=y))
    return None


def _decode_event(data: Any, message: dict[str, Any], event_id: str | None) -> EventFrame:
    if type(data) is not dict:
        raise FrameError("event data must be an object", code=Code.INVALID_FIELD,
                         event_id=event_id)
    name = data.get("name")
    if type(name) is not str:
        raise FrameError("event data needs a string 'name'", code=Code.INVALID_FIELD,
                         event_id=event_id)
    structure = _structurers.get(name)
    if structure is None:
        raise FrameError(f"unknown event {name[:40]!r}", code=Code.UNKNOWN_EVENT,
                         event_id=event_id)
    client_sequence = message.get("clientSequence")
    if client_sequence is not None and (type(client_sequence) is not int or client_sequence < 0):
        raise FrameError("clientSequence must be a non-negative integer",
                         code=Code.INVALID_FIELD, event_id=event_id)
    timestamp = message.get("timestamp")
    if timestamp is not None and type(timestamp) not in (int, float):
        raise FrameError("timestamp must be a number", code=Code.INVALID_FIELD,
                         event_id=event_id)
    if name == "cursor/update":
        cursor = _fast_cursor(data)
        if cursor is not None:
            return EventFrame(name=name, payload=cursor, event_id=event_id,
                              client_sequence=client_sequence)
    body = dict(data)
    del body["name"]
    try:
        payload = structure(body, EVENT_TYPES[name])
    except Exception as exc:  # cattrs reports every failure as an exception group
        raise _field_error(exc, name, event_id) from None
    if name != "cursor/update" and event_id is None:
        raise FrameError(f"{name} is durable and needs an eventId", code=Code.MISSING_EVENT_ID)
    return EventFrame(name=name, payload=payload, event_id=event_id,
                      client_sequence=client_sequence)


