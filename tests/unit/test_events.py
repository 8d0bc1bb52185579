"""Room events: what each request plans, what applying it does, who may do it, and restore.

``plan`` validates and authorizes a request and returns normalized events;
``apply`` makes them happen. The Hypothesis test checks the property restoring
a room relies on: a snapshot taken at any point plus the journal after it gives
exactly the live state.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from nexus_actors.errors import Code
from nexus_actors.protocol import inbound as msg
from nexus_actors.protocol.inbound import Position
from nexus_actors.room import events as ev
from nexus_actors.room.events import Context, Event, Planned, Rejection
from nexus_actors.room.hosts import successor
from nexus_actors.room.permissions import CO_HOST, PRIMARY, Permissions
from nexus_actors.room.state import RoomState, Seat


class Room:
    """A room driven the way the room actor drives it: plan, sequence, apply."""

    def __init__(self, *, chat_history: int = 100, max_chat_length: int = 2000) -> None:
        self.state = RoomState(code="K7PX")
        self.connected: dict[str, float] = {}
        self.journal: list[Event] = []
        self.chat_history = chat_history
        self.max_chat_length = max_chat_length
        self._ids = itertools.count(1)
        self._clock = itertools.count(1)

    def new_id(self) -> str:
        return f"gen-{next(self._ids)}"

    def ctx(self, actor: str) -> Context:
        return Context(actor_id=actor, connected_since=dict(self.connected),
                       new_id=self.new_id, timestamp=1_000, max_chat_length=self.max_chat_length)

    def commit(self, planned: list[Planned], actor: str | None) -> list[Event]:
        events = []
        for item in planned:
            event = Event(sequence=self.state.sequence + 1, name=item.name, data=item.data,
                          event_id=self.new_id(), actor_id=actor, timestamp=1_000,
                          secret=item.secret)
            ev.apply(self.state, event, chat_history=self.chat_history)
            self.journal.append(event)
            events.append(event)
        return events

    def join(self, member_id: str, *, connected: bool = True) -> Event:
        seat = Seat(id=member_id, name=member_id.title(), token_hash=f"hash-{member_id}")
        (event,) = self.commit([ev.joined(seat, self.state)], member_id)
        if connected:
            self.connected[member_id] = float(next(self._clock))
        return event

    def plan(self, actor: str, payload: msg.DurablePayload) -> list[Planned]:
        return ev.plan(self.state, payload, self.ctx(actor))

    def do(self, actor: str, payload: msg.DurablePayload) -> list[Event]:
        return self.commit(self.plan(actor, payload), actor)

    def one(self, actor: str, payload: msg.DurablePayload) -> Event:
        (event,) = self.do(actor, payload)
        return event

    def refuse(self, actor: str, payload: msg.DurablePayload) -> Rejection:
        before = orjson.dumps(self.state.snapshot())
        with pytest.raises(Rejection) as caught:
            self.plan(actor, payload)
        assert orjson.dumps(self.state.snapshot()) == before
        return caught.value


@pytest.fixture
def room() -> Room:
    """Host ``gm``, co-host ``co``, players ``ana`` and ``bo``; scene s1 with token t1."""
    r = Room()
    for member_id in ("gm", "co", "ana", "bo"):
        r.join(member_id)
    r.do("gm", msg.AddCoHost(player_id="co"))
    r.do("gm", msg.SceneCreate(scene={"id": "s1", "name": "Cave"}))
    r.do("ana", msg.TokenCreate(token={"id": "t1", "sceneId": "s1",
                                       "position": {"x": 1, "y": 2}}))
    return r


# Scenes -------------------------------------------------------------------


def test_scene_create_starts_at_version_1(room: Room) -> None:
    event = room.one("gm", msg.SceneCreate(scene={"id": "s2", "name": "Hall", "grid": 5}))
    assert event.name == "scene/create"
    assert event.data == {"scene": {"id": "s2", "name": "Hall", "grid": 5, "version": 1}}
    assert room.state.scenes["s2"] == {"id": "s2", "name": "Hall", "grid": 5, "version": 1}


def test_scene_create_without_an_id_gets_a_server_id(room: Room) -> None:
    event = room.one("gm", msg.SceneCreate(scene={"name": "Hall"}))
    scene_id = event.data["scene"]["id"]
    assert scene_id.startswith("gen-")
    assert room.state.scenes[scene_id]["name"] == "Hall"


@pytest.mark.parametrize("scene", [{}, {"name": ""}, {"name": 5}, {"name": "x" * 201},
                                   {"name": "Hall", "version": 3}, {"id": "", "name": "Hall"},
                                   {"id": 7, "name": "Hall"}])
def test_scene_create_with_a_bad_scene_is_invalid(room: Room, scene: dict[str, Any]) -> None:
    assert room.refuse("gm", msg.SceneCreate(scene=scene)).code == Code.INVALID


def test_creating_an_existing_id_is_entity_exists(room: Room) -> None:
    assert room.refuse("gm", msg.SceneCreate(scene={"id": "s1", "name": "X"})).code \
        == Code.ENTITY_EXISTS
    token = {"id": "t1", "sceneId": "s1", "position": {"x": 0, "y": 0}}
    assert room.refuse("ana", msg.TokenCreate(token=token)).code == Code.ENTITY_EXISTS
    room.do("ana", msg.CharacterCreate(character={"id": "c1"}))
    assert room.refuse("bo", msg.CharacterCreate(character={"id": "c1"})).code \
        == Code.ENTITY_EXISTS


def test_scene_update_merges_changes_and_bumps_the_version(room: Room) -> None:
    event = room.one("gm", msg.SceneUpdate(scene_id="s1", changes={"name": "Lair", "dark": True},
                                           update_id="u1", version=1))
    assert event.data == {"sceneId": "s1", "changes": {"name": "Lair", "dark": True},
                          "version": 2, "updateId": "u1"}
    assert room.state.scenes["s1"] == {"id": "s1", "name": "Lair", "dark": True, "version": 2}


@pytest.mark.parametrize("changes", [{}, {"id": "s9"}, {"version": 7}, {"name": ""}])
def test_scene_update_with_bad_changes_is_invalid(room: Room, changes: dict[str, Any]) -> None:
    assert room.refuse("gm", msg.SceneUpdate(scene_id="s1", changes=changes)).code \
        == Code.INVALID


def test_an_update_id_that_is_too_long_is_invalid(room: Room) -> None:
    payload = msg.SceneUpdate(scene_id="s1", changes={"name": "x"}, update_id="u" * 65)
    assert room.refuse("gm", payload).code == Code.INVALID


def test_scene_delete_removes_its_tokens_and_clears_the_active_scene(room: Room) -> None:
    room.do("gm", msg.SceneCreate(scene={"id": "s2", "name": "Hall"}))
    room.do("ana", msg.TokenCreate(token={"id": "t2", "sceneId": "s2",
                                          "position": {"x": 0, "y": 0}}))
    room.do("gm", msg.SceneActivate(scene_id="s1"))
    event = room.one("gm", msg.SceneDelete(scene_id="s1", update_id="u"))
    assert event.data == {"sceneId": "s1", "updateId": "u"}
    assert set(room.state.scenes) == {"s2"}
    assert set(room.state.tokens) == {"t2"}
    assert room.state.active_scene_id is None


def test_deleting_an_inactive_scene_keeps_the_active_one(room: Room) -> None:
    room.do("gm", msg.SceneCreate(scene={"id": "s2", "name": "Hall"}))
    room.do("gm", msg.SceneActivate(scene_id="s1"))
    room.do("gm", msg.SceneDelete(scene_id="s2"))
    assert room.state.active_scene_id == "s1"


def test_scene_activate_sets_the_active_scene(room: Room) -> None:
    event = room.one("co", msg.SceneActivate(scene_id="s1"))
    assert event.data == {"sceneId": "s1"}
    assert room.state.active_scene_id == "s1"
    assert room.state.public()["activeSceneId"] == "s1"


# Tokens -------------------------------------------------------------------


def test_token_create_normalizes_the_position_to_numbers(room: Room) -> None:
    event = room.one("bo", msg.TokenCreate(token={"id": "t2", "sceneId": "s1", "label": "Orc",
                                                  "position": {"x": 3, "y": 4.5}}))
    expected = {"id": "t2", "sceneId": "s1", "label": "Orc",
                "position": {"x": 3.0, "y": 4.5}, "version": 1}
    assert event.data == {"token": expected}
    assert room.state.tokens["t2"] == expected


@pytest.mark.parametrize(("token", "code"), [
    ({"id": "t2", "position": {"x": 0, "y": 0}}, Code.INVALID),
    ({"id": "t2", "sceneId": "nowhere", "position": {"x": 0, "y": 0}}, Code.NOT_FOUND),
    ({"id": "t2", "sceneId": "s1"}, Code.INVALID),
    ({"id": "t2", "sceneId": "s1", "position": {"x": 0}}, Code.INVALID),
    ({"id": "t2", "sceneId": "s1", "position": {"x": "0", "y": 0}}, Code.INVALID),
    ({"id": "t2", "sceneId": "s1", "position": {"x": True, "y": 0}}, Code.INVALID),
    ({"id": "t2", "sceneId": "s1", "position": {"x": 0, "y": 0, "z": 0}}, Code.INVALID),
])
def test_token_create_checks_scene_and_position(room: Room, token: dict[str, Any],
                                                code: Code) -> None:
    assert room.refuse("ana", msg.TokenCreate(token=token)).code == code


def test_token_move_sets_the_position_and_bumps_the_version(room: Room) -> None:
    event = room.one("bo", msg.TokenMove(token_id="t1", position=Position(x=7, y=8),
                                         scene_id="s1", version=1, update_id="u"))
    assert event.data == {"tokenId": "t1", "position": {"x": 7, "y": 8}, "version": 2,
                          "updateId": "u"}
    assert room.state.tokens["t1"]["position"] == {"x": 7, "y": 8}
    assert room.state.tokens["t1"]["version"] == 2


def test_token_move_cannot_change_the_scene(room: Room) -> None:
    room.do("gm", msg.SceneCreate(scene={"id": "s2", "name": "Hall"}))
    payload = msg.TokenMove(token_id="t1", position=Position(x=0, y=0), scene_id="s2")
    assert room.refuse("ana", payload).code == Code.INVALID


def test_token_update_can_move_a_token_to_another_scene(room: Room) -> None:
    room.do("gm", msg.SceneCreate(scene={"id": "s2", "name": "Hall"}))
    event = room.one("ana", msg.TokenUpdate(token_id="t1", changes={
        "sceneId": "s2", "position": {"x": 1, "y": 1}, "hp": 3}))
    assert event.data["changes"] == {"sceneId": "s2", "position": {"x": 1.0, "y": 1.0}, "hp": 3}
    assert room.state.tokens["t1"] == {"id": "t1", "sceneId": "s2", "hp": 3, "version": 2,
                                       "position": {"x": 1.0, "y": 1.0}}
    room.do("gm", msg.SceneDelete(scene_id="s1"))
    assert "t1" in room.state.tokens


@pytest.mark.parametrize(("changes", "code"), [
    ({"sceneId": "nowhere"}, Code.NOT_FOUND),
    ({"sceneId": 3}, Code.INVALID),
    ({"position": {"x": 1}}, Code.INVALID),
    ({"version": 5}, Code.INVALID),
    ({}, Code.INVALID),
])
def test_token_update_checks_its_changes(room: Room, changes: dict[str, Any],
                                         code: Code) -> None:
    assert room.refuse("ana", msg.TokenUpdate(token_id="t1", changes=changes)).code == code


def test_token_delete_removes_the_token(room: Room) -> None:
    event = room.one("bo", msg.TokenDelete(token_id="t1", version=1))
    assert event.data == {"tokenId": "t1"}
    assert room.state.tokens == {}


# Characters ---------------------------------------------------------------


def test_characters_are_created_updated_and_deleted(room: Room) -> None:
    created = room.one("ana", msg.CharacterCreate(character={"id": "c1", "name": "Vex"}))
    assert created.data == {"character": {"id": "c1", "name": "Vex", "version": 1}}
    updated = room.one("ana", msg.CharacterUpdate(character_id="c1", changes={"hp": 9},
                                                  version=1))
    assert updated.data == {"characterId": "c1", "changes": {"hp": 9}, "version": 2}
    assert room.state.characters["c1"] == {"id": "c1", "name": "Vex", "hp": 9, "version": 2}
    deleted = room.one("bo", msg.CharacterDelete(character_id="c1", update_id="u"))
    assert deleted.data == {"characterId": "c1", "updateId": "u"}
    assert room.state.characters == {}


def test_a_character_name_must_be_a_string(room: Room) -> None:
    assert room.refuse("ana", msg.CharacterCreate(character={"name": 4})).code == Code.INVALID


# Initiative ---------------------------------------------------------------


def test_initiative_set_replaces_order_round_and_turn(room: Room) -> None:
    event = room.one("co", msg.InitiativeSet(order=["ana", "bo"], round=1, turn=1, version=1))
    assert event.data == {"order": ["ana", "bo"], "round": 1, "turn": 1, "version": 2}
    assert room.state.initiative == {"order": ["ana", "bo"], "round": 1, "turn": 1,
                                     "version": 2}


@pytest.mark.parametrize(("order", "round_", "turn"), [(["a"], 0, 1), (["a"], -1, 0),
                                                       ([], 0, -1)])
def test_initiative_set_checks_round_and_turn(room: Room, order: list[Any], round_: int,
                                              turn: int) -> None:
    payload = msg.InitiativeSet(order=order, round=round_, turn=turn)
    assert room.refuse("gm", payload).code == Code.INVALID


def test_initiative_next_advances_the_turn_then_wraps_to_the_next_round(room: Room) -> None:
    room.do("gm", msg.InitiativeSet(order=["a", "b", "c"], round=1, turn=1))
    first = room.one("gm", msg.InitiativeNext())
    assert first.data == {"round": 1, "turn": 2, "version": 3}
    second = room.one("co", msg.InitiativeNext(version=3, update_id="u"))
    assert second.data == {"round": 2, "turn": 0, "version": 4, "updateId": "u"}
    assert room.state.initiative == {"order": ["a", "b", "c"], "round": 2, "turn": 0,
                                     "version": 4}


def test_initiative_next_with_an_empty_order_is_invalid(room: Room) -> None:
    assert room.refuse("gm", msg.InitiativeNext()).code == Code.INVALID


# Chat ---------------------------------------------------------------------


def test_chat_message_is_trimmed_and_signed_by_the_sender(room: Room) -> None:
    event = room.one("ana", msg.ChatMessage(text="  hello  "))
    message = event.data["message"]
    assert message["text"] == "hello"
    assert (message["userId"], message["userName"]) == ("ana", "Ana")
    assert message["timestamp"] == 1_000
    assert room.state.chat == [message]


@pytest.mark.parametrize("text", ["", "   \n ", "x" * 11])
def test_empty_or_too_long_chat_is_invalid(text: str) -> None:
    room = Room(max_chat_length=10)
    room.join("gm")
    assert room.refuse("gm", msg.ChatMessage(text=text)).code == Code.INVALID
    room.do("gm", msg.ChatMessage(text="x" * 10))


def test_chat_keeps_only_the_last_chat_history_messages() -> None:
    room = Room(chat_history=3)
    room.join("gm")
    for n in range(5):
        room.do("gm", msg.ChatMessage(text=f"m{n}"))
    assert [m["text"] for m in room.state.chat] == ["m2", "m3", "m4"]


def test_chat_history_zero_keeps_nothing() -> None:
    room = Room(chat_history=0)
    room.join("gm")
    room.do("gm", msg.ChatMessage(text="hi"))
    assert room.state.chat == []


# Permissions --------------------------------------------------------------

SCENE_AND_INITIATIVE: list[msg.DurablePayload] = [
    msg.SceneCreate(scene={"id": "s9", "name": "X"}),
    msg.SceneUpdate(scene_id="s1", changes={"name": "X"}),
    msg.SceneDelete(scene_id="s1"),
    msg.SceneActivate(scene_id="s1"),
    msg.InitiativeSet(order=["a"], round=0, turn=0),
]


@pytest.mark.parametrize("payload", SCENE_AND_INITIATIVE, ids=lambda p: type(p).__name__)
def test_a_player_may_not_edit_scenes_or_run_initiative(room: Room,
                                                        payload: msg.DurablePayload) -> None:
    error = room.refuse("ana", payload)
    assert error.code == Code.FORBIDDEN


def test_a_player_may_not_advance_initiative(room: Room) -> None:
    room.do("gm", msg.InitiativeSet(order=["a"], round=0, turn=0))
    assert room.refuse("ana", msg.InitiativeNext()).code == Code.FORBIDDEN
    assert "canControlInitiative" in room.refuse("bo", msg.InitiativeNext()).message


@pytest.mark.parametrize("payload", SCENE_AND_INITIATIVE, ids=lambda p: type(p).__name__)
def test_a_co_host_may_edit_scenes_and_run_initiative(room: Room,
                                                      payload: msg.DurablePayload) -> None:
    assert room.do("co", payload)


@pytest.mark.parametrize("payload", [
    msg.Kick(player_id="ana"),
    msg.TransferHost(new_host_id="ana"),
    msg.AddCoHost(player_id="ana"),
    msg.RemoveCoHost(player_id="co"),
], ids=lambda p: type(p).__name__)
def test_a_co_host_may_not_manage_players_or_hosts(room: Room,
                                                   payload: msg.DurablePayload) -> None:
    assert room.refuse("co", payload).code == Code.FORBIDDEN


@pytest.mark.parametrize("payload", [
    msg.Kick(player_id="bo"),
    msg.TransferHost(new_host_id="ana"),
    msg.AddCoHost(player_id="bo"),
    msg.RemoveCoHost(player_id="co"),
], ids=lambda p: type(p).__name__)
def test_a_player_may_not_manage_players_or_hosts(room: Room,
                                                  payload: msg.DurablePayload) -> None:
    assert room.refuse("ana", payload).code == Code.FORBIDDEN


def test_anyone_may_use_tokens_characters_and_chat(room: Room) -> None:
    room.do("bo", msg.TokenMove(token_id="t1", position=Position(x=0, y=0)))
    room.do("bo", msg.TokenUpdate(token_id="t1", changes={"hp": 1}))
    room.do("bo", msg.CharacterCreate(character={"id": "c"}))
    room.do("bo", msg.ChatMessage(text="hi"))
    room.do("bo", msg.TokenDelete(token_id="t1"))


def test_roles_and_permissions_are_reported_per_member(room: Room) -> None:
    assert [room.state.role_of(m) for m in ("gm", "co", "ana")] == ["host", "co-host", "player"]
    assert room.state.permissions_of("gm") == PRIMARY
    assert room.state.permissions_of("co") == CO_HOST
    assert room.state.permissions_of("ana") == Permissions()


# Versions -----------------------------------------------------------------


def test_a_stale_version_is_a_conflict_carrying_the_current_entity(room: Room) -> None:
    room.do("ana", msg.TokenMove(token_id="t1", position=Position(x=5, y=5)))
    error = room.refuse("bo", msg.TokenMove(token_id="t1", position=Position(x=9, y=9),
                                            version=1, update_id="u"))
    assert error.code == Code.VERSION_CONFLICT
    assert error.detail["currentVersion"] == 2
    assert error.detail["current"] == room.state.tokens["t1"]
    assert error.detail["current"]["position"] == {"x": 5, "y": 5}


@pytest.mark.parametrize("payload", [
    msg.SceneUpdate(scene_id="s1", changes={"name": "X"}, version=7),
    msg.SceneDelete(scene_id="s1", version=0),
    msg.TokenUpdate(token_id="t1", changes={"hp": 1}, version=2),
    msg.TokenDelete(token_id="t1", version=2),
    msg.InitiativeSet(order=[], round=0, turn=0, version=2),
], ids=lambda p: type(p).__name__)
def test_every_versioned_update_checks_the_version(room: Room,
                                                   payload: msg.DurablePayload) -> None:
    error = room.refuse("gm", payload)
    assert error.code == Code.VERSION_CONFLICT
    assert error.detail["currentVersion"] == 1


def test_without_a_version_the_last_write_wins(room: Room) -> None:
    room.do("ana", msg.TokenMove(token_id="t1", position=Position(x=5, y=5)))
    room.do("bo", msg.TokenMove(token_id="t1", position=Position(x=6, y=6)))
    assert room.state.tokens["t1"]["position"] == {"x": 6, "y": 6}
    assert room.state.tokens["t1"]["version"] == 3


def test_current_of_reports_what_a_rejected_update_targeted(room: Room) -> None:
    payload = msg.TokenMove(token_id="t1", position=Position(x=0, y=0))
    assert ev.current_of(room.state, payload) == (1, room.state.tokens["t1"])
    assert ev.current_of(room.state, msg.TokenDelete(token_id="zz")) == (None, None)
    assert ev.current_of(room.state, msg.InitiativeNext()) == (1, room.state.initiative)
    assert ev.update_id_of(msg.TokenDelete(token_id="t1", update_id="u")) == "u"
    assert ev.update_id_of(msg.ChatMessage(text="x")) is None


@pytest.mark.parametrize("payload", [
    msg.SceneUpdate(scene_id="zz", changes={"name": "X"}),
    msg.SceneDelete(scene_id="zz"),
    msg.SceneActivate(scene_id="zz"),
    msg.TokenMove(token_id="zz", position=Position(x=0, y=0)),
    msg.TokenUpdate(token_id="zz", changes={"hp": 1}),
    msg.TokenDelete(token_id="zz"),
    msg.CharacterUpdate(character_id="zz", changes={"hp": 1}),
    msg.CharacterDelete(character_id="zz"),
    msg.Kick(player_id="zz"),
    msg.TransferHost(new_host_id="zz"),
    msg.AddCoHost(player_id="zz"),
    msg.RemoveCoHost(player_id="zz"),
], ids=lambda p: type(p).__name__)
def test_a_missing_target_is_not_found(room: Room, payload: msg.DurablePayload) -> None:
    error = room.refuse("gm", payload)
    assert error.code == Code.NOT_FOUND
    assert "'zz'" in error.message


def test_events_must_be_applied_in_sequence(room: Room) -> None:
    event = Event(sequence=room.state.sequence + 2, name="session/hibernated", data={},
                  event_id="x", actor_id=None, timestamp=0)
    with pytest.raises(ValueError, match="applied after"):
        ev.apply(room.state, event, chat_history=100)


# Session ------------------------------------------------------------------


def test_the_first_seat_is_the_host_and_later_seats_are_players() -> None:
    room = Room()
    first = room.join("gm")
    second = room.join("ana")
    assert first.data == {"player": {"id": "gm", "name": "Gm", "role": "host"}}
    assert second.data == {"player": {"id": "ana", "name": "Ana", "role": "player"}}
    assert room.state.host_id == "gm"
    assert list(room.state.seats) == ["gm", "ana"]
    assert room.state.seats["ana"].token_hash == "hash-ana"


def test_a_join_event_never_broadcasts_the_token_hash() -> None:
    room = Room()
    event = room.join("gm")
    assert event.secret == {"tokenHash": "hash-gm"}
    assert b"hash-gm" not in event.wire().payload
    assert orjson.loads(event.wire().payload) == {
        "type": "event", "data": {"name": "session/join", **event.data},
        "eventId": event.event_id, "serverSequence": 1, "actorId": "gm", "timestamp": 1_000,
    }


def test_a_seat_accepts_its_newest_and_its_last_presented_token_only() -> None:
    seat = Seat(id="ana", name="Ana", token_hash="t1")

    def accepted() -> list[str]:
        return [token for token in ("", "t1", "t2", "t3", "t4") if seat.accepts(token)]

    assert accepted() == ["t1"]
    seat.rotate("t1", "t2")  # resumed with t1; t2 is sent next
    assert accepted() == ["t1", "t2"]
    seat.rotate("t1", "t3")  # t2 never arrived: resumed with t1 again
    assert accepted() == ["t1", "t3"]
    seat.rotate("t3", "t4")  # t3 arrived and was used: t1 is retired
    assert accepted() == ["t3", "t4"]


def test_a_snapshot_keeps_both_token_hashes_of_a_seat() -> None:
    room = Room()
    room.join("gm")
    room.state.seats["gm"].rotate("hash-gm", "hash-gm-2")
    restored = RoomState.from_snapshot(orjson.loads(orjson.dumps(room.state.snapshot())))
    assert restored.seats["gm"] == room.state.seats["gm"]


def test_event_json_round_trips_with_its_secret() -> None:
    event = Room().join("gm")
    assert Event.from_json(orjson.loads(orjson.dumps(event.to_json()))) == event


def test_a_player_leaving_gives_the_seat_up(room: Room) -> None:
    (event,) = room.do("ana", msg.Leave())
    assert event.data == {"uuid": "ana", "reason": "left"}
    assert "ana" not in room.state.seats
    assert room.state.host_id == "gm"


def test_a_co_host_leaving_stops_being_a_co_host(room: Room) -> None:
    room.do("co", msg.Leave())
    assert room.state.co_host_ids == []
    assert room.state.co_host_permissions == {}


def test_a_leaving_host_is_replaced_at_once_by_a_co_host(room: Room) -> None:
    leave, migrated = room.do("gm", msg.Leave())
    assert leave.data == {"uuid": "gm", "reason": "left"}
    assert migrated.name == "session/host-migrated"
    assert migrated.data == {"newHostId": "co", "previousHostId": "gm", "manual": False}
    assert room.state.host_id == "co"
    assert room.state.co_host_ids == []
    assert room.state.role_of("co") == "host"


def test_a_leaving_host_without_co_hosts_is_replaced_by_the_longest_connected() -> None:
    room = Room()
    room.join("gm")
    room.join("ana")
    room.join("bo")
    room.connected["bo"] = 0.5   # bo's connection is older than ana's
    _, migrated = room.do("gm", msg.Leave())
    assert migrated.data["newHostId"] == "bo"


def test_a_leaving_host_with_everyone_disconnected_still_hands_over() -> None:
    room = Room()
    room.join("gm")
    room.join("ana", connected=False)
    _, migrated = room.do("gm", msg.Leave())
    assert migrated.data["newHostId"] == "ana"
    assert room.state.host_id == "ana"


def test_the_last_member_leaving_leaves_no_host_and_the_next_joiner_hosts() -> None:
    room = Room()
    room.join("gm")
    assert [e.name for e in room.do("gm", msg.Leave())] == ["session/leave"]
    assert room.state.host_id is None
    assert room.join("ana").data["player"]["role"] == "host"
    assert room.state.host_id == "ana"


def test_kick_removes_the_seat_and_names_who_kicked(room: Room) -> None:
    event = room.one("gm", msg.Kick(player_id="co"))
    assert event.data == {"playerId": "co", "by": "gm"}
    assert "co" not in room.state.seats
    assert room.state.co_host_ids == []


def test_nobody_may_kick_themselves(room: Room) -> None:
    assert room.refuse("gm", msg.Kick(player_id="gm")).code == Code.INVALID


def test_the_primary_host_cannot_be_kicked(room: Room) -> None:
    room.state.co_host_permissions["co"] = Permissions(can_manage_players=True)
    assert room.refuse("co", msg.Kick(player_id="gm")).code == Code.FORBIDDEN
    assert room.do("co", msg.Kick(player_id="ana"))


def test_transfer_host_to_a_connected_member(room: Room) -> None:
    event = room.one("gm", msg.TransferHost(new_host_id="ana"))
    assert event.data == {"newHostId": "ana", "previousHostId": "gm", "manual": True}
    assert room.state.host_id == "ana"
    assert room.state.role_of("gm") == "player"
    assert room.refuse("gm", msg.SceneActivate(scene_id="s1")).code == Code.FORBIDDEN


def test_transfer_host_to_a_co_host_makes_it_primary_only(room: Room) -> None:
    room.do("gm", msg.TransferHost(new_host_id="co"))
    assert room.state.host_id == "co"
    assert room.state.co_host_ids == []
    assert room.state.permissions_of("co") == PRIMARY


def test_transfer_host_needs_a_connected_target(room: Room) -> None:
    del room.connected["ana"]
    assert room.refuse("gm", msg.TransferHost(new_host_id="ana")).code == Code.NOT_CONNECTED


def test_transfer_host_to_the_host_is_invalid(room: Room) -> None:
    assert room.refuse("gm", msg.TransferHost(new_host_id="gm")).code == Code.INVALID


def test_a_member_holding_can_transfer_host_may_transfer(room: Room) -> None:
    room.state.co_host_permissions["co"] = Permissions(can_transfer_host=True)
    event = room.one("co", msg.TransferHost(new_host_id="bo"))
    assert event.data["previousHostId"] == "gm"
    assert room.state.host_id == "bo"


def test_the_primary_host_adds_and_removes_co_hosts(room: Room) -> None:
    added = room.one("gm", msg.AddCoHost(player_id="ana"))
    assert added.data == {"coHostId": "ana", "permissions": CO_HOST.to_json()}
    assert room.state.co_host_ids == ["co", "ana"]
    assert room.state.permissions_of("ana") == CO_HOST
    removed = room.one("gm", msg.RemoveCoHost(player_id="co"))
    assert removed.data == {"coHostId": "co"}
    assert room.state.co_host_ids == ["ana"]
    assert room.state.role_of("co") == "player"


def test_adding_a_host_again_or_removing_a_player_is_invalid(room: Room) -> None:
    assert room.refuse("gm", msg.AddCoHost(player_id="co")).code == Code.INVALID
    assert room.refuse("gm", msg.AddCoHost(player_id="gm")).code == Code.INVALID
    assert room.refuse("gm", msg.RemoveCoHost(player_id="ana")).code == Code.INVALID


def test_automatic_migration_event_is_not_manual(room: Room) -> None:
    planned = ev.migrated(room.state, "co", manual=False)
    assert planned == Planned(name="session/host-migrated",
                              data={"newHostId": "co", "previousHostId": "gm", "manual": False})


def test_every_journaled_event_name_can_be_applied() -> None:
    table_events = {n for n in msg.EVENT_TYPES if n != "cursor/update"
                    and not n.startswith("session/")}
    server_events = {"session/join", "session/leave", "session/kicked", "session/hibernated",
                     "session/host-migrated", "session/co-host-added", "session/co-host-removed"}
    assert table_events | server_events == ev.DURABLE_EVENT_NAMES


# Restore == live ----------------------------------------------------------

Action = tuple[str, int, int, int, int]
KINDS: dict[str, int] = {
    "join": 3, "connect": 2, "auto-migrate": 1, "hibernate": 1,
    "scene/create": 4, "scene/update": 3, "scene/delete": 1, "scene/activate": 2,
    "token/create": 5, "token/move": 5, "token/update": 4, "token/delete": 2,
    "character/create": 3, "character/update": 3, "character/delete": 1,
    "initiative/set": 2, "initiative/next": 3, "chat/message": 3,
    "session/transfer-host": 1, "session/add-co-host": 2, "session/remove-co-host": 1,
    "session/kick": 1, "session/leave": 1,
}


def script_of(rng: random.Random, steps: int) -> list[Action]:
    kinds = rng.choices(list(KINDS), weights=list(KINDS.values()), k=steps)
    return [(kind, rng.randrange(8), rng.randrange(8), rng.randrange(-3, 13), rng.randrange(4))
            for kind in kinds]


def pick(items: Any, index: int) -> str:
    keys = list(items)
    return keys[index % len(keys)] if keys else "missing"


def version_of(entity: dict[str, Any] | None, mode: int) -> int | None:
    """``mode`` 0/1: no version, 2: the current version, 3: a stale one."""
    if entity is None or mode < 2:
        return None
    return int(entity["version"]) - (mode - 2)


def request(room: Room, kind: str, a: int, b: int, mode: int) -> msg.DurablePayload:
    s = room.state
    scene, token, character = pick(s.scenes, a), pick(s.tokens, a), pick(s.characters, a)
    extra: dict[str, Any] = {"note": {"n": b}} if mode == 1 else {}
    requests: dict[str, Any] = {
        "scene/create": lambda: msg.SceneCreate(
            scene={"name": f"Scene {a}", **extra, **({"id": f"s{a}"} if mode else {})}),
        "scene/update": lambda: msg.SceneUpdate(
            scene_id=scene, changes={"name": f"N{b}", **extra},
            version=version_of(s.scenes.get(scene), mode), update_id=f"u{b}"),
        "scene/delete": lambda: msg.SceneDelete(
            scene_id=scene, version=version_of(s.scenes.get(scene), mode)),
        "scene/activate": lambda: msg.SceneActivate(scene_id=scene),
        "token/create": lambda: msg.TokenCreate(token={
            "id": f"t{a}", "sceneId": scene, "position": {"x": b, "y": a / 2}, **extra}),
        "token/move": lambda: msg.TokenMove(
            token_id=token, position=Position(x=float(b), y=0.5),
            version=version_of(s.tokens.get(token), mode)),
        "token/update": lambda: msg.TokenUpdate(
            token_id=token, version=version_of(s.tokens.get(token), mode),
            changes=({"sceneId": pick(s.scenes, b)} if mode == 1
                     else {"position": {"x": a, "y": b}, "hp": b})),
        "token/delete": lambda: msg.TokenDelete(
            token_id=token, version=version_of(s.tokens.get(token), mode)),
        "character/create": lambda: msg.CharacterCreate(
            character={"name": f"C{b}", **extra, **({"id": f"c{a}"} if mode else {})}),
        "character/update": lambda: msg.CharacterUpdate(
            character_id=character, changes={"hp": b, **extra},
            version=version_of(s.characters.get(character), mode)),
        "character/delete": lambda: msg.CharacterDelete(
            character_id=character, version=version_of(s.characters.get(character), mode)),
        "initiative/set": lambda: msg.InitiativeSet(
            order=[pick(s.seats, i) for i in range(a % 4)], round=max(b, 0), turn=0,
            version=version_of(s.initiative, mode)),
        "initiative/next": lambda: msg.InitiativeNext(version=version_of(s.initiative, mode)),
        "chat/message": lambda: msg.ChatMessage(text=f"  hello {b} "),
        "session/transfer-host": lambda: msg.TransferHost(new_host_id=pick(s.seats, a)),
        "session/add-co-host": lambda: msg.AddCoHost(player_id=pick(s.seats, a)),
        "session/remove-co-host": lambda: msg.RemoveCoHost(player_id=pick(s.seats, a)),
        "session/kick": lambda: msg.Kick(player_id=pick(s.seats, a)),
        "session/leave": lambda: msg.Leave(),
    }
    payload: msg.DurablePayload = requests[kind]()
    return payload


def play(room: Room, action: Action, joined: itertools.count[int]) -> None:
    kind, who, a, b, mode = action
    state = room.state
    if kind == "join":
        if len(state.seats) < 5:
            room.join(f"m{next(joined)}", connected=mode != 0)
    elif kind == "connect":
        member_id = pick(state.seats, who)
        if member_id in room.connected:
            del room.connected[member_id]
        elif member_id in state.seats:
            room.connected[member_id] = float(b)
    elif kind == "auto-migrate":
        if state.host_id is not None and state.host_id not in room.connected:
            heir = successor(state, room.connected, leaving=state.host_id)
            if heir is not None:
                room.commit([ev.migrated(state, heir, manual=False)], None)
    elif kind == "hibernate":
        room.commit([Planned(name="session/hibernated", data={})], None)
    elif state.seats:
        actor = pick(state.seats, who)
        if who < 3 and state.host_id is not None:
            actor = state.host_id
        elif who == 3 and state.co_host_ids:
            actor = state.co_host_ids[0]
        try:
            planned = room.plan(actor, request(room, kind, a, b, mode))
        except Rejection:
            return
        room.commit(planned, actor)
        if kind in ("session/leave", "session/kick"):
            for member_id in list(room.connected):
                if member_id not in state.seats:
                    del room.connected[member_id]


def restored(snapshot: bytes, journal: list[Event], chat_history: int) -> RoomState:
    state = RoomState.from_snapshot(orjson.loads(snapshot))
    for event in journal:
        if event.sequence > state.sequence:
            stored = Event.from_json(orjson.loads(orjson.dumps(event.to_json())))
            ev.apply(state, stored, chat_history=chat_history)
    return state


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32), st.integers(10, 100), st.integers(0, 100))
def test_snapshot_plus_journal_restores_exactly_the_live_state(
        seed: int, steps: int, snapshot_at: int) -> None:
    script = script_of(random.Random(seed), steps)
    room = Room(chat_history=3)
    joined = itertools.count()
    room.join(f"m{next(joined)}")
    snapshot = orjson.dumps(room.state.snapshot())
    for step, action in enumerate(script):
        play(room, action, joined)
        if step == snapshot_at:
            snapshot = orjson.dumps(room.state.snapshot())
    assert [e.sequence for e in room.journal] == list(range(1, room.state.sequence + 1))
    for start in (orjson.dumps(RoomState(code="K7PX").snapshot()), snapshot):
        state = restored(start, room.journal, chat_history=3)
        assert state == room.state
        assert list(state.seats) == list(room.state.seats)
        assert orjson.dumps(state.snapshot()) == orjson.dumps(room.state.snapshot())
    assert room.state.host_id is None or room.state.host_id in room.state.seats
    assert set(room.state.co_host_ids) <= set(room.state.seats) - {room.state.host_id}
