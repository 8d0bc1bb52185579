"""Client frames: every event name decodes to its typed payload; each bad input gets its code."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from nexus_actors.errors import Code, FrameError
from nexus_actors.protocol import inbound
from nexus_actors.protocol.inbound import EVENT_TYPES, EventFrame, Heartbeat, Position, decode

MINIMAL: dict[str, tuple[dict[str, Any], Any]] = {
    "scene/create": ({"scene": {"name": "Cave"}}, inbound.SceneCreate(scene={"name": "Cave"})),
    "scene/update": ({"sceneId": "s1", "changes": {"name": "Hall"}},
                     inbound.SceneUpdate(scene_id="s1", changes={"name": "Hall"})),
    "scene/delete": ({"sceneId": "s1"}, inbound.SceneDelete(scene_id="s1")),
    "scene/activate": ({"sceneId": "s1"}, inbound.SceneActivate(scene_id="s1")),
    "token/create": ({"token": {"sceneId": "s1"}}, inbound.TokenCreate(token={"sceneId": "s1"})),
    "token/move": ({"tokenId": "t1", "position": {"x": 1, "y": 2.5}},
                   inbound.TokenMove(token_id="t1", position=Position(x=1.0, y=2.5))),
    "token/update": ({"tokenId": "t1", "changes": {"label": "Orc"}},
                     inbound.TokenUpdate(token_id="t1", changes={"label": "Orc"})),
    "token/delete": ({"tokenId": "t1"}, inbound.TokenDelete(token_id="t1")),
    "character/create": ({"character": {}}, inbound.CharacterCreate(character={})),
    "character/update": ({"characterId": "c1", "changes": {"hp": 3}},
                         inbound.CharacterUpdate(character_id="c1", changes={"hp": 3})),
    "character/delete": ({"characterId": "c1"}, inbound.CharacterDelete(character_id="c1")),
    "initiative/set": ({"order": ["a", "b"], "round": 1, "turn": 0},
                       inbound.InitiativeSet(order=["a", "b"], round=1, turn=0)),
    "initiative/next": ({}, inbound.InitiativeNext()),
    "chat/message": ({"text": "hello"}, inbound.ChatMessage(text="hello")),
    "session/transfer-host": ({"newHostId": "m2"}, inbound.TransferHost(new_host_id="m2")),
    "session/add-co-host": ({"playerId": "m2"}, inbound.AddCoHost(player_id="m2")),
    "session/remove-co-host": ({"playerId": "m2"}, inbound.RemoveCoHost(player_id="m2")),
    "session/kick": ({"playerId": "m2"}, inbound.Kick(player_id="m2")),
    "session/leave": ({}, inbound.Leave()),
    "cursor/update": ({"sceneId": "s1", "position": {"x": 0, "y": -4}},
                      inbound.CursorUpdate(scene_id="s1", position=Position(x=0.0, y=-4.0))),
}


def frame(name: str, body: dict[str, Any] | None = None, **envelope: Any) -> bytes:
    return orjson.dumps({"type": "event", "data": {"name": name, **(body or {})}, **envelope})


def refused(raw: bytes | str) -> FrameError:
    with pytest.raises(FrameError) as caught:
        decode(raw)
    return caught.value


def test_every_client_event_name_has_a_minimal_case() -> None:
    assert set(MINIMAL) == set(EVENT_TYPES)


@pytest.mark.parametrize("name", sorted(MINIMAL))
def test_each_event_decodes_to_its_typed_payload(name: str) -> None:
    body, expected = MINIMAL[name]
    message = decode(frame(name, body, eventId="e-1", clientSequence=7, timestamp=123))
    assert message == EventFrame(name=name, payload=expected,
                                 event_id="e-1", client_sequence=7)
    assert type(message.payload) is EVENT_TYPES[name]


def test_optional_update_id_and_version_are_read_from_camel_case() -> None:
    message = decode(frame("token/move", {"tokenId": "t1", "position": {"x": 0, "y": 0},
                                          "sceneId": "s1", "updateId": "u1", "version": 4},
                           eventId="e"))
    assert isinstance(message, EventFrame)
    assert message.payload == inbound.TokenMove(token_id="t1", position=Position(x=0, y=0),
                                                scene_id="s1", update_id="u1", version=4)


def test_decode_accepts_text_as_well_as_bytes() -> None:
    message = decode(frame("chat/message", {"text": "hi"}, eventId="e").decode())
    assert isinstance(message, EventFrame)
    assert message.payload == inbound.ChatMessage(text="hi")


def test_cursor_update_is_ephemeral_and_needs_no_event_id() -> None:
    message = decode(frame("cursor/update", {"sceneId": "s", "position": {"x": 1, "y": 2}}))
    assert isinstance(message, EventFrame)
    assert message.event_id is None
    assert not message.durable


def test_durable_events_are_marked_durable() -> None:
    message = decode(frame("token/delete", {"tokenId": "t"}, eventId="e"))
    assert isinstance(message, EventFrame)
    assert message.durable


def test_heartbeat_ping_is_decoded_with_its_id() -> None:
    raw = orjson.dumps({"type": "heartbeat", "data": {"kind": "ping", "id": {"n": 1}}})
    assert decode(raw) == Heartbeat(id={"n": 1})


@pytest.mark.parametrize("data", [None, [], {"kind": "pong", "id": 1},
                                  {"kind": "ping", "id": 1, "extra": True}])
def test_malformed_heartbeat_is_an_invalid_field(data: Any) -> None:
    error = refused(orjson.dumps({"type": "heartbeat", "data": data}))
    assert error.code == Code.INVALID_FIELD


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"{'type': 'event'}", b"\xff\xfe",
                                 b'{"type": "event",}'])
def test_text_that_is_not_json_is_invalid_json(raw: bytes) -> None:
    assert refused(raw).code == Code.INVALID_JSON


@pytest.mark.parametrize("raw", [b"[]", b'"event"', b"42", b"null", b"{}", b'{"type": 5}',
                                 b'{"type": null, "data": {}}', b'{"data": {"name": "x"}}'])
def test_a_non_object_or_a_frame_without_a_string_type_is_invalid_frame(raw: bytes) -> None:
    assert refused(raw).code == Code.INVALID_FRAME


def test_an_unknown_frame_type_is_unknown_type_and_echoes_the_event_id() -> None:
    error = refused(orjson.dumps({"type": "teleport", "data": {}, "eventId": "e-9"}))
    assert error.code == Code.UNKNOWN_TYPE
    assert error.event_id == "e-9"
    assert "teleport" in error.message


def test_an_unknown_event_name_is_unknown_event_and_echoes_the_event_id() -> None:
    error = refused(frame("token/teleport", {"tokenId": "t"}, eventId="e-9"))
    assert error.code == Code.UNKNOWN_EVENT
    assert error.event_id == "e-9"
    assert "token/teleport" in error.message


@pytest.mark.parametrize(("name", "body", "where", "why"), [
    ("token/move", {"tokenId": "t", "position": {"x": "1", "y": 2}}, "data.position.x",
     "expected a number"),
    ("token/move", {"tokenId": "t", "position": {"x": 1, "y": True}}, "data.position.y",
     "expected a number"),
    ("token/move", {"tokenId": "t", "position": [1, 2]}, "data.position", "expected an object"),
    ("token/move", {"tokenId": "t", "position": {"x": 1}}, "data.position.y",
     "required field missing"),
    ("token/move", {"tokenId": "t", "position": {"x": 1, "y": 2, "z": 3}}, "data.position",
     "unexpected field 'z'"),
    ("token/move", {"position": {"x": 1, "y": 2}}, "data.tokenId", "required field missing"),
    ("token/move", {"tokenId": 7, "position": {"x": 1, "y": 2}}, "data.tokenId",
     "expected a string"),
    ("token/move", {"tokenId": "t", "position": {"x": 1, "y": 2}, "sceneId": 3},
     "data.sceneId", "expected a string"),
    ("scene/update", {"sceneId": "s", "changes": {}, "version": True}, "data.version",
     "expected an integer"),
    ("scene/update", {"sceneId": "s", "changes": {}, "version": "2"}, "data.version",
     "expected an integer"),
    ("scene/update", {"sceneId": "s", "changes": {}, "version": 2.0}, "data.version",
     "expected an integer"),
    ("scene/update", {"sceneId": "s", "changes": ["name"]}, "data.changes",
     "expected an object"),
    ("scene/update", {"sceneId": "s", "changes": {}, "updateId": 5}, "data.updateId",
     "expected a string"),
    ("scene/create", {"scene": "Cave"}, "data.scene", "expected an object"),
    ("initiative/set", {"order": {}, "round": 0, "turn": 0}, "data.order", "expected an array"),
    ("initiative/set", {"order": [], "round": "1", "turn": 0}, "data.round",
     "expected an integer"),
    ("initiative/set", {"order": [], "round": 1, "turn": False}, "data.turn",
     "expected an integer"),
    ("chat/message", {"text": None}, "data.text", "expected a string"),
    ("chat/message", {"text": "hi", "color": "red"}, "data", "unexpected field 'color'"),
    ("session/leave", {"reason": "bye"}, "data", "unexpected field 'reason'"),
    ("session/kick", {}, "data.playerId", "required field missing"),
    ("session/transfer-host", {"newHostId": ["m"]}, "data.newHostId", "expected a string"),
    ("cursor/update", {"sceneId": "s", "position": {"x": 1, "y": None}}, "data.position.y",
     "expected a number"),
    ("cursor/update", {"position": {"x": 1, "y": 1}}, "data.sceneId", "required field missing"),
])
def test_wrong_fields_are_invalid_field_naming_the_camel_case_path(
        name: str, body: dict[str, Any], where: str, why: str) -> None:
    error = refused(frame(name, body, eventId="e-5"))
    assert error.code == Code.INVALID_FIELD
    assert error.message == f"{name}: {where}: {why}"
    assert error.event_id == "e-5"


def test_wrong_fields_without_an_event_id_are_still_reported_as_invalid_field() -> None:
    error = refused(frame("token/move", {"tokenId": "t", "position": {"x": "1", "y": 2}}))
    assert error.code == Code.INVALID_FIELD
    assert error.event_id is None


@pytest.mark.parametrize("envelope", [
    {"extra": 1},
    {"clientSequence": -1},
    {"clientSequence": True},
    {"clientSequence": "3"},
    {"timestamp": "now"},
    {"timestamp": False},
])
def test_bad_envelope_fields_are_invalid_field_and_echo_the_event_id(
        envelope: dict[str, Any]) -> None:
    error = refused(frame("chat/message", {"text": "hi"}, eventId="e-2", **envelope))
    assert error.code == Code.INVALID_FIELD
    assert error.event_id == "e-2"


@pytest.mark.parametrize("event_id", ["", "x" * 65, 5, True, ["e"]])
def test_an_event_id_that_is_not_a_short_string_is_invalid_field(event_id: Any) -> None:
    error = refused(frame("chat/message", {"text": "hi"}, eventId=event_id))
    assert error.code == Code.INVALID_FIELD
    assert "eventId" in error.message
    assert error.event_id is None


def test_an_event_id_of_64_characters_is_accepted() -> None:
    message = decode(frame("chat/message", {"text": "hi"}, eventId="x" * 64))
    assert isinstance(message, EventFrame)
    assert message.event_id == "x" * 64


@pytest.mark.parametrize("data", [None, "scene/create", [], {"name": 3}, {"sceneId": "s"}])
def test_event_data_must_be_an_object_with_a_string_name(data: Any) -> None:
    error = refused(orjson.dumps({"type": "event", "data": data, "eventId": "e-3"}))
    assert error.code == Code.INVALID_FIELD
    assert error.event_id == "e-3"


@pytest.mark.parametrize("name", sorted(set(MINIMAL) - {"cursor/update"}))
def test_a_durable_event_without_an_event_id_is_missing_event_id(name: str) -> None:
    error = refused(frame(name, MINIMAL[name][0]))
    assert error.code == Code.MISSING_EVENT_ID
    assert name in error.message


scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=16,
)
field_names = st.sampled_from(["tokenId", "sceneId", "position", "changes", "version",
                               "updateId", "scene", "token", "character", "characterId",
                               "order", "round", "turn", "text", "newHostId", "playerId", "x"])
event_like = st.fixed_dictionaries(
    {"type": st.just("event"),
     "data": st.builds(lambda name, body: {"name": name, **body},
                       st.sampled_from(sorted(EVENT_TYPES)),
                       st.dictionaries(field_names, json_values, max_size=5))},
    optional={"eventId": json_values | st.text(min_size=1, max_size=8),
              "clientSequence": json_values, "timestamp": json_values},
)


def decodes_or_refuses(raw: bytes) -> None:
    refusal: FrameError | None = None
    try:
        message = decode(raw)
    except FrameError as error:
        refusal = error
    else:
        assert isinstance(message, EventFrame | Heartbeat)
    if refusal is not None:
        assert isinstance(refusal.code, Code)
        assert refusal.message


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_frame_error(raw: bytes) -> None:
    decodes_or_refuses(raw)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_arbitrary_json_decodes_or_raises_frame_error(value: Any) -> None:
    decodes_or_refuses(orjson.dumps(value))


@settings(max_examples=200, deadline=None)
@given(event_like)
def test_event_shaped_json_decodes_or_raises_frame_error(value: dict[str, Any]) -> None:
    decodes_or_refuses(orjson.dumps(value))
