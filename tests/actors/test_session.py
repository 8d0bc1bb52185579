"""Opening sessions: create, join, resume, and the frames that start each one."""

from __future__ import annotations

import trio.testing

from nexus_actors.protocol.connect import CODE_ALPHABET
from nexus_actors.testing import open_server, query


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
