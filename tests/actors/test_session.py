"""Opening sessions: create, join, resume, and the frames that start each one.

Covers the connect parameters and their refusals (bad-request, room-exists,
room-not-found, room-full, invalid-token, each with its close code), resuming
a seat with its secret token (same member, same role, superseding an older
connection), and the ``event-cursor`` that tells a client whether it gets a
fresh baseline or a replay of exactly the events it missed.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio.testing

from nexus_actors.protocol.connect import CODE_ALPHABET
from nexus_actors.room import events as ev
from nexus_actors.room.state import RoomState
from nexus_actors.testing import TestClient, TestServer, open_server, query

# Helpers -------------------------------------------------------------------


async def refused(server: TestServer, target: str) -> tuple[str, int | None]:
    """Connect to ``target`` and return the refusal's error code and close code."""
    client = await server.connect(target)
    error = await client.next("error")
    return error["data"]["code"], await client.wait_closed()


async def chat(client: TestClient, text: str) -> dict[str, Any]:
    """Send a chat message and wait for its ``event-ack`` (it is durable after that)."""
    event_id = await client.send_event("chat/message", {"text": text})
    return await client.until("event-ack", eventId=event_id)


async def barrier(client: TestClient) -> None:
    """A round trip through the room: every frame the room owed ``client`` is now sent."""
    event_id = await client.send_event("token/move", {"tokenId": "no-such-token",
                                                      "position": {"x": 0, "y": 0}})
    await client.until("error", eventId=event_id)


def replayed(state: dict[str, Any], sequence: int, frames: list[dict[str, Any]]) -> dict[str, Any]:
    """What a client gets by applying journaled event frames to the state it had."""
    room = RoomState(code="TEST", sequence=sequence, scenes=state["scenes"],
                     active_scene_id=state["activeSceneId"], tokens=state["tokens"],
                     characters=state["characters"], initiative=state["initiative"],
                     chat=state["chat"])
    for frame in frames:
        data = {k: v for k, v in frame["data"].items() if k != "name"}
        ev.apply(room, ev.Event(sequence=frame["serverSequence"], name=frame["data"]["name"],
                                data=data, event_id=frame["eventId"], actor_id=frame["actorId"],
                                timestamp=frame["timestamp"]), chat_history=1000)
    return room.public()


# Creating and joining ---------------------------------------------------------


async def test_create_picks_a_code_and_sends_a_full_session_frame(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        session = host.session
        assert session["name"] == "session/created"
        assert len(session["roomCode"]) == 4
        assert set(session["roomCode"]) <= set(CODE_ALPHABET)
        assert session["hostId"] == session["uuid"]
        assert session["coHostIds"] == []
        assert session["players"] == [{"id": session["uuid"], "name": "GM", "role": "host",
                                       "connected": True}]
        assert session["sequence"] == 1
        assert set(session["state"]) == {"scenes", "activeSceneId", "tokens", "characters",
                                         "initiative", "chat"}
        assert len(session["token"]) >= 32


async def test_host_1_also_lets_the_server_pick_distinct_codes(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        first = await server.create("GM", code="1")
        second = await server.create("GM")
        for client in (first, second):
            assert len(client.room) == 4
            assert set(client.room) <= set(CODE_ALPHABET)
        assert first.room != second.room


async def test_host_with_a_code_uses_it_and_accepts_lowercase(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM", code="k7px")
        assert host.room == "K7PX"
        player = await server.join("k7px", "Ana")
        assert player.room == "K7PX"
        assert player.session["hostId"] == host.uuid


async def test_host_with_a_taken_code_is_refused_with_room_exists(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM", code="K7PX")
        assert await refused(server, query(host="K7PX", name="Thief")) == ("room-exists", 4409)
        player = await server.join("K7PX", "Ana")
        assert player.session["hostId"] == host.uuid
        assert [p["name"] for p in player.session["players"]] == ["GM", "Ana"]


async def test_join_sees_the_host_and_host_sees_the_join(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        player = await server.join(host.room, "Ana")
        assert player.session["name"] == "session/joined"
        assert player.session["hostId"] == host.uuid
        assert [p["name"] for p in player.session["players"]] == ["GM", "Ana"]
        joined = await host.until("event", "session/join")
        assert joined["data"]["player"] == {"id": player.uuid, "name": "Ana", "role": "player"}
        assert joined["serverSequence"] == 2


async def test_join_unknown_room_is_refused_with_a_code(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        client = await server.connect(query(join="ZZZZ", name="Ana"))
        error = await client.next("error")
        assert error["data"]["code"] == "room-not-found"
        assert await client.wait_closed() == 4404


async def test_full_room_refuses_the_next_joiner(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(max_players=2) as server:
        host = await server.create("GM")
        await server.join(host.room, "Ana")
        assert await refused(server, query(join=host.room, name="Bo")) == ("room-full", 4429)
        await chat(host, "sync")
        assert [e["data"]["player"]["name"] for e in host.events("session/join")] == ["Ana"]


async def test_a_dropped_member_still_holds_a_seat_in_a_full_room(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(max_players=2) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        ana.drop()
        await host.until("event", "session/disconnected", uuid=ana.uuid)
        assert await refused(server, query(join=host.room, name="Bo")) == ("room-full", 4429)
        back = await server.resume(ana)
        assert back.uuid == ana.uuid


@pytest.mark.parametrize("params", [
    pytest.param({"name": "Ana"}, id="no-mode"),
    pytest.param({"host": "", "join": "K7PX", "name": "Ana"}, id="two-modes"),
    pytest.param({"host": "", "name": ""}, id="empty-name"),
    pytest.param({"host": ""}, id="missing-name"),
    pytest.param({"join": "K7PX", "name": "   "}, id="blank-name"),
    pytest.param({"host": "", "name": "x" * 51}, id="name-too-long"),
    pytest.param({"join": "K7P", "name": "Ana"}, id="short-code"),
    pytest.param({"join": "K7-X", "name": "Ana"}, id="code-not-alphanumeric"),
    pytest.param({"host": "IO01", "name": "Ana"}, id="code-outside-alphabet"),
])
async def test_bad_connect_parameters_are_refused_with_bad_request(
        autojump_clock: trio.testing.MockClock, params: dict[str, str]) -> None:
    async with open_server() as server:
        await server.create("GM", code="K7PX")
        assert await refused(server, query(**params)) == ("bad-request", 4400)


async def test_a_name_of_fifty_characters_is_accepted(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("x" * 50)
        assert host.session["players"][0]["name"] == "x" * 50


async def test_new_sessions_start_from_a_baseline_cursor(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        player = await server.join(host.room, "Ana")
        assert host.frames[1]["data"] == {"mode": "baseline", "sequence": 1, "replayThrough": 1}
        assert player.frames[1]["type"] == "event-cursor"
        assert player.frames[1]["data"] == {"mode": "baseline", "sequence": 2,
                                            "replayThrough": 2}
        assert player.session["sequence"] == 2


async def test_tokens_are_long_unique_and_shown_only_to_their_owner(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        players = [await server.join(host.room, f"P{i}") for i in range(4)]
        clients = [host, *players]
        await chat(host, "sync")
        tokens = [c.token for c in clients]
        assert len(set(tokens)) == len(tokens)
        assert all(len(token) >= 32 for token in tokens)
        assert not set(tokens) & {c.uuid for c in clients}
        for client in clients:
            seen = repr(client.frames)
            assert [t for t in tokens if t in seen] == [client.token]


# Resuming a seat ---------------------------------------------------------------


async def test_reconnect_takes_back_the_same_seat_and_tells_the_others(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        ana.drop()
        await host.until("event", "session/disconnected", uuid=ana.uuid)
        back = await server.resume(ana, last_seen=ana.last_sequence())
        assert back.session["name"] == "session/reconnected"
        assert back.uuid == ana.uuid
        assert back.session["hostId"] == host.uuid
        assert {"id": ana.uuid, "name": "Ana", "role": "player",
                "connected": True} in back.session["players"]
        connected = await host.until("event", "session/connected")
        assert connected["data"]["uuid"] == ana.uuid
        assert "serverSequence" not in connected


async def test_a_host_reconnecting_within_grace_is_still_host(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=15) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        host.drop()
        await ana.until("event", "session/disconnected", uuid=host.uuid)
        back = await server.resume(host, last_seen=host.last_sequence())
        assert back.uuid == host.uuid
        assert back.session["hostId"] == host.uuid
        assert back.session["players"][0]["role"] == "host"
        await ana.until("event", "session/connected", uuid=host.uuid)
        scene = await back.send_event("scene/create", {"scene": {"name": "Cave"}})
        assert (await back.until("event-ack", eventId=scene))["data"]["duplicate"] is False


@pytest.mark.parametrize("token", [
    pytest.param("0" * 48, id="wrong-token"),
    pytest.param(None, id="missing-token"),
    pytest.param("", id="empty-token"),
    pytest.param("x" * 500, id="overlong-token"),
])
async def test_reconnect_without_the_right_token_is_refused_and_the_seat_is_untouched(
        autojump_clock: trio.testing.MockClock, token: str | None) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        target = query(reconnect=host.room, token=token, lastSeenSequence=0)
        assert await refused(server, target) == ("invalid-token", 4401)
        await chat(ana, "still here")  # her connection was not touched
        ana.drop()
        await host.until("event", "session/disconnected", uuid=ana.uuid)
        back = await server.resume(ana)
        assert back.uuid == ana.uuid
        await host.until("event", "session/connected", uuid=ana.uuid)
        assert len(host.events("session/connected")) == 1  # none for the refused attempt


async def test_a_member_id_is_not_a_token(autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        host.drop()
        await ana.until("event", "session/disconnected", uuid=host.uuid)
        for member_id in (host.uuid, ana.uuid):
            target = query(reconnect=host.room, token=member_id)
            assert await refused(server, target) == ("invalid-token", 4401)
        back = await server.resume(host)
        assert back.session["hostId"] == host.uuid


async def test_a_second_connection_with_the_same_token_supersedes_the_first(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        again = await server.resume(ana, last_seen=ana.last_sequence())
        error = await ana.until("error")
        assert error["data"]["code"] == "superseded"
        assert await ana.wait_closed() == 4000
        assert again.uuid == ana.uuid
        said = await chat(again, "new phone")
        heard = await host.until("event", "chat/message")
        assert heard["serverSequence"] == said["data"]["serverSequence"]
        assert heard["actorId"] == ana.uuid
        # The seat never stopped being connected: no presence notice either way.
        assert host.events("session/disconnected") == []
        assert host.events("session/connected") == []
        players = (await server.join(host.room, "Bo")).session["players"]
        assert {"id": ana.uuid, "name": "Ana", "role": "player", "connected": True} in players


# Token rotation ------------------------------------------------------------------


async def resumed_with(server: TestServer, code: str, token: str) -> TestClient:
    """A connection that took back the seat of ``token`` (its session frame read)."""
    client = await server.connect(query(reconnect=code, token=token))
    assert (await client.next("event"))["data"]["name"] == "session/reconnected"
    return client


async def rotated(client: TestClient) -> str:
    """The token of the ``session/token`` notice ``client`` gets after resuming."""
    notice = await client.until("event", "session/token")
    assert set(notice) == {"type", "data", "timestamp"}  # a notice, not a journaled event
    assert set(notice["data"]) == {"name", "token"}
    return str(notice["data"]["token"])


async def test_each_resume_rotates_the_token_and_retires_the_one_before(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        first = ana.token
        ana.drop()
        back = await server.resume(ana)
        assert back.session["token"] == first  # the session frame echoes what was presented
        second = await rotated(back)
        assert second != first
        assert len(second) >= 32
        back.drop()
        again = await server.resume(back)  # with the new token
        third = await rotated(again)
        assert len({first, second, third}) == 3
        again.drop()
        target = query(reconnect=host.room, token=first)
        assert await refused(server, target) == ("invalid-token", 4401)
        assert second not in repr(host.frames)
        assert third not in repr(host.frames)


async def test_the_presented_token_still_resumes_until_the_new_one_is_used(
        autojump_clock: trio.testing.MockClock) -> None:
    # The connection may drop before the new token arrives: the old one must still work.
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        first = ana.token
        server.store.pause()  # the rotation is not durable: no notice yet
        back = await server.resume(ana)
        await barrier(back)
        assert back.events("session/token") == []
        back.drop()
        server.store.resume()
        again = await server.resume(ana)  # ana's client only ever had the first token
        newest = await rotated(again)
        again.drop()
        (await resumed_with(server, host.room, newest)).drop()
        assert await refused(server, query(reconnect=host.room, token=first)) == (
            "invalid-token", 4401)


async def test_a_superseded_connection_never_gets_the_token_of_its_successor(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        server.store.pause()
        old = await server.resume(ana)
        await barrier(old)
        new = await server.resume(ana)  # supersedes old before its rotation is durable
        server.store.resume()
        newest = await rotated(new)
        assert await old.wait_closed() == 4000
        assert old.events("session/token") == []
        assert newest != ana.token


async def test_a_rotated_token_survives_a_restart_and_a_kill(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        first = ana.token
        back = await server.resume(ana)
        second = await rotated(back)
        await server.restart()
        third = await rotated(await resumed_with(server, host.room, second))
        await server.kill()  # the third token was durable before it was sent
        await server.start()
        await rotated(await resumed_with(server, host.room, third))
        for stale in (first, second):
            assert await refused(server, query(reconnect=host.room, token=stale)) == (
                "invalid-token", 4401)


# Replay on resume ------------------------------------------------------------


async def test_resume_replays_exactly_the_missed_events_in_order(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")              # seq 2
        own = (await chat(ana, "mine"))["data"]               # seq 3, acknowledged
        scene = await host.send_event("scene/create", {"scene": {"id": "s1", "name": "Cave"}})
        await ana.until("event", "scene/create")              # seq 4
        ana.drop()
        await host.until("event", "session/disconnected", uuid=ana.uuid)
        await chat(host, "while away 1")                      # seq 5
        await chat(host, "while away 2")                      # seq 6
        back = await server.resume(ana, last_seen=2)
        cursor = await back.next("event-cursor")
        assert cursor["data"] == {"mode": "resume", "sequence": 2, "replayThrough": 6}
        replay = [await back.next("event") for _ in range(4)]
        assert [f["serverSequence"] for f in replay] == [3, 4, 5, 6]
        assert [f["data"]["name"] for f in replay] == ["chat/message", "scene/create",
                                                      "chat/message", "chat/message"]
        assert (replay[0]["eventId"], replay[0]["actorId"]) == (own["eventId"], ana.uuid)
        assert (replay[1]["eventId"], replay[1]["actorId"]) == (scene, host.uuid)
        assert [f["data"]["message"]["text"] for f in replay[2:]] == ["while away 1",
                                                                     "while away 2"]
        await host.send_event("chat/message", {"text": "live"})
        live = await back.next("event")
        assert (live["serverSequence"], live["data"]["message"]["text"]) == (7, "live")


async def test_resume_from_the_latest_sequence_replays_nothing(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await chat(host, "hello")
        await ana.until("event", "chat/message")
        back = await server.resume(ana, last_seen=ana.last_sequence())
        cursor = await back.next("event-cursor")
        assert cursor["data"] == {"mode": "resume", "sequence": 3, "replayThrough": 3}
        await host.send_event("chat/message", {"text": "next"})
        assert (await back.next("event"))["serverSequence"] == 4


@pytest.mark.parametrize("last_seen", [
    pytest.param(None, id="no-last-seen"),
    pytest.param(1, id="older-than-the-journal"),
    pytest.param(99, id="ahead-of-the-server"),
])
async def test_resume_falls_back_to_a_baseline(
        autojump_clock: trio.testing.MockClock, last_seen: int | None) -> None:
    async with open_server(journal_retain=3) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")             # seq 2
        for i in range(5):
            await chat(host, f"m{i}")                         # seq 3..7; journal keeps 5..7
        ana.drop()
        await host.until("event", "session/disconnected", uuid=ana.uuid)
        back = await server.resume(ana, last_seen=last_seen)
        assert back.session["sequence"] == 7
        assert [m["text"] for m in back.session["state"]["chat"]] == [f"m{i}" for i in range(5)]
        cursor = await back.next("event-cursor")
        assert cursor["data"] == {"mode": "baseline", "sequence": 7, "replayThrough": 7}
        await host.send_event("chat/message", {"text": "live"})
        assert (await back.next("event"))["serverSequence"] == 8


async def test_resume_just_inside_the_retained_journal_still_replays(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(journal_retain=3) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        for i in range(5):
            await chat(host, f"m{i}")                         # journal keeps 5..7
        back = await server.resume(ana, last_seen=4)
        cursor = await back.next("event-cursor")
        assert cursor["data"] == {"mode": "resume", "sequence": 4, "replayThrough": 7}
        assert [(await back.next("event"))["serverSequence"] for _ in range(3)] == [5, 6, 7]


async def test_reconnected_state_is_the_old_state_plus_the_replay(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        old_state, old_sequence = ana.session["state"], ana.session["sequence"]
        ana.drop()
        await host.until("event", "session/disconnected", uuid=ana.uuid)
        await host.send_event("scene/create", {"scene": {"id": "s1", "name": "Cave"}})
        await host.send_event("scene/activate", {"sceneId": "s1"})
        await host.send_event("token/create", {"token": {
            "id": "t1", "sceneId": "s1", "position": {"x": 1, "y": 2}}})
        await host.send_event("token/move", {"tokenId": "t1", "position": {"x": 5, "y": 6}})
        await chat(host, "done")
        back = await server.resume(ana, last_seen=old_sequence)
        cursor = await back.next("event-cursor")
        replay = [await back.next("event")
                  for _ in range(cursor["data"]["replayThrough"] - old_sequence)]
        fresh = await server.join(host.room, "Bo")
        assert back.session["state"] == fresh.session["state"]
        assert replayed(old_state, old_sequence, replay) == back.session["state"]
        assert back.session["state"]["tokens"]["t1"]["position"] == {"x": 5, "y": 6}


async def test_a_dropped_member_keeps_the_seat_and_shows_as_disconnected(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        ana.drop()
        gone = await host.until("event", "session/disconnected")
        assert gone["data"]["uuid"] == ana.uuid
        assert "serverSequence" not in gone
        bo = await server.join(host.room, "Bo")
        assert bo.session["players"] == [
            {"id": host.uuid, "name": "GM", "role": "host", "connected": True},
            {"id": ana.uuid, "name": "Ana", "role": "player", "connected": False},
            {"id": bo.uuid, "name": "Bo", "role": "player", "connected": True},
        ]
        assert "session/disconnected" not in [e.name for e in server.store.journal(host.room)]


# A seat is handed out only once it is durable -----------------------------


async def test_a_new_seat_is_welcomed_only_once_its_join_is_committed(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        server.store.pause()
        ana = await server.connect(query(join=host.room, name="Ana"))
        joined = await host.until("event", "session/join")  # others see the join at once
        with trio.move_on_after(5):
            await ana.next()
        assert ana.frames == []  # no token before the seat would survive a crash
        server.store.resume()
        welcome = await ana.next("event")
        assert welcome["data"]["name"] == "session/joined"
        assert welcome["data"]["uuid"] == joined["data"]["player"]["id"]
        assert (await ana.next("event-cursor"))["data"]["mode"] == "baseline"
        await server.running.flush()
        assert any(e.name == "session/join" and e.data["player"]["id"] == welcome["data"]["uuid"]
                   for e in server.store.journal(host.room))


async def test_a_join_the_room_cannot_answer_in_time_gets_unavailable(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(handshake_timeout=3) as server:
        server.store.pause()  # the room cannot even load
        client = await server.connect(query(join="ABCD", name="Ana"))
        error = await client.next("error")
        assert error["data"]["code"] == "unavailable"
        hint = await client.next("backoff")
        assert hint["data"]["reason"] == "unavailable"
        assert await client.wait_closed() == 1013
        server.store.resume()
