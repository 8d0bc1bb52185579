"""Remote cursors at the room level: coalesced per tick, never echoed, never stored.

A room sends at most one ``cursors`` frame per tick: a change after a quiet tick
goes out at once, changes within a tick wait for the next tick boundary. Covers
the coalescing of several updates into the latest position, no
member seeing its own cursor, the shared frame for members who did not move,
``removed`` after a disconnect or a leave, the baseline a joiner gets,
``userName``, the tick rate setting, and refusals of malformed updates.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio.testing

from nexus_actors.testing import TestClient, open_server


def _cursor(client: TestClient, name: str, x: float, y: float,
            scene: str = "s1") -> dict[str, Any]:
    return {"userId": client.uuid, "userName": name, "sceneId": scene,
            "position": {"x": x, "y": y}}


def _by_user(frame: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["userId"]: c for c in frame["data"]["cursors"]}


async def test_updates_within_a_tick_arrive_as_one_frame_with_the_latest_position(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await host.until("event", "session/join")
        await ana.cursor("s1", 0, 0)
        first = await host.next("cursors")  # a quiet room: out at once
        assert first["data"] == {"cursors": [_cursor(ana, "Ana", 0, 0)], "removed": []}
        for step in range(1, 6):
            await ana.cursor("s1", step, step * 10)
        frame = await host.next("cursors")  # within the tick: one frame, latest position
        assert frame["data"] == {"cursors": [_cursor(ana, "Ana", 5, 50)], "removed": []}
        await ana.cursor("s1", 7, 70)
        later = await host.next("cursors")  # nothing came in between
        assert later["data"]["cursors"] == [_cursor(ana, "Ana", 7, 70)]


async def test_members_never_receive_their_own_cursor(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bob = await server.join(host.room, "Bob")
        await ana.cursor("s1", 1, 1)
        await host.until("cursors")  # a tick went by: Ana alone moved, Ana got nothing
        await bob.until("cursors")
        await ana.cursor("s1", 2, 2)
        await bob.cursor("s1", 3, 3)
        assert (await ana.until("cursors"))["data"]["cursors"] == [_cursor(bob, "Bob", 3, 3)]
        assert (await bob.until("cursors"))["data"]["cursors"] == [_cursor(ana, "Ana", 2, 2)]
        assert len([f for f in ana.frames if f["type"] == "cursors"]) == 1
        for client in (ana, bob):
            seen = [c["userId"] for f in client.frames if f["type"] == "cursors"
                    for c in f["data"]["cursors"]]
            assert client.uuid not in seen


async def test_members_who_did_not_move_get_the_same_content(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bob = await server.join(host.room, "Bob")
        cara = await server.join(host.room, "Cara")
        await ana.cursor("s1", 0, 0)
        await host.until("cursors")  # the leading frame; the next two share a tick
        await ana.cursor("s1", 1, 2)
        await bob.cursor("s2", 3, 4)
        host_frame = await host.next("cursors")
        await cara.next("cursors")
        cara_frame = await cara.next("cursors")
        assert host_frame["data"] == cara_frame["data"]
        assert _by_user(host_frame) == {ana.uuid: _cursor(ana, "Ana", 1, 2),
                                        bob.uuid: _cursor(bob, "Bob", 3, 4, scene="s2")}
        assert host_frame["data"]["removed"] == []


async def test_a_disconnected_member_is_listed_as_removed_on_the_next_tick(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await ana.cursor("s1", 1, 1)
        await host.until("cursors")
        ana.drop()
        await host.until("event", "session/disconnected", uuid=ana.uuid)
        frame = await host.next("cursors")
        assert frame["data"] == {"cursors": [], "removed": [ana.uuid]}


async def test_a_member_who_leaves_is_listed_as_removed_on_the_next_tick(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bob = await server.join(host.room, "Bob")
        await ana.cursor("s1", 1, 1)
        await host.until("cursors")
        await bob.until("cursors")
        await ana.send_event("session/leave", {})
        for member in (host, bob):
            await member.until("event", "session/leave", uuid=ana.uuid)
            frame = await member.next("cursors")
            assert frame["data"] == {"cursors": [], "removed": [ana.uuid]}


async def test_a_joiner_gets_the_current_cursors_of_others(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await host.cursor("s1", 1, 1)
        await ana.cursor("s1", 2, 2)
        await ana.cursor("s1", 9, 9)
        await host.until("cursors")
        bob = await server.join(host.room, "Bob")
        frame = await bob.next("cursors")
        assert _by_user(frame) == {host.uuid: _cursor(host, "GM", 1, 1),
                                   ana.uuid: _cursor(ana, "Ana", 9, 9)}
        again = await server.resume(ana, last_seen=ana.last_sequence())
        assert _by_user(await again.until("cursors")) == {host.uuid: _cursor(host, "GM", 1, 1)}


async def test_cursors_never_reach_the_store(autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await ana.send_event("chat/message", {"text": "before"})
        await ana.until("event-ack")  # acked means committed: the journal is up to date
        before = server.store.journal(host.room)
        for step in range(3):
            await ana.cursor("s1", step, step)
            await host.until("cursors")
        await ana.send_event("chat/message", {"text": "after"})
        await ana.until("event-ack")
        journal = server.store.journal(host.room)
        assert journal[:len(before)] == before
        assert [e.name for e in journal[len(before):]] == ["chat/message"]
        assert journal[-1].sequence == before[-1].sequence + 1


@pytest.mark.parametrize("hz", [20.0, 4.0])
async def test_cursor_tick_rate_sets_the_spacing_between_frames(
        autojump_clock: trio.testing.MockClock, hz: float) -> None:
    async with open_server(cursor_tick_hz=hz) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await host.until("event", "session/join")
        sent = trio.current_time()
        await ana.cursor("s1", 0, 0)
        arrivals = []
        for step in range(1, 4):
            await host.next("cursors")
            arrivals.append(trio.current_time())
            await ana.cursor("s1", step, step)
            await ana.cursor("s1", step, -step)
        last = await host.next("cursors")
        arrivals.append(trio.current_time())
        assert last["data"]["cursors"] == [_cursor(ana, "Ana", 3, -3)]
        gaps = [b - a for a, b in itertools.pairwise([sent, *arrivals])]
        assert gaps == pytest.approx([0] + [1 / hz] * 3)  # the first at once, then per tick


@pytest.mark.parametrize("data", [
    {"sceneId": "s1"},
    {"position": {"x": 1, "y": 2}},
    {"sceneId": 7, "position": {"x": 1, "y": 2}},
    {"sceneId": "s1", "position": {"x": "1", "y": 2}},
    {"sceneId": "s1", "position": {"x": 1}},
    {"sceneId": "s1", "position": [1, 2]},
    {"sceneId": "s1", "position": {"x": 1, "y": 2}, "color": "red"},
])
async def test_invalid_cursor_updates_get_invalid_field_and_change_nothing(
        autojump_clock: trio.testing.MockClock, data: dict[str, Any]) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await host.until("event", "session/join")
        await ana.send_json({"type": "event", "data": {"name": "cursor/update", **data}})
        error = await ana.next("error")
        assert error["data"]["code"] == "invalid-field"
        await ana.cursor("s1", 4, 4)
        frame = await host.next("cursors")  # the bad update never became a cursor
        assert frame["data"]["cursors"] == [_cursor(ana, "Ana", 4, 4)]


async def test_a_superseded_connection_keeps_its_seat_cursor(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await ana.cursor("s1", 5, 5)
        first = await host.until("cursors")
        assert [c["userId"] for c in first["data"]["cursors"]] == [ana.uuid]
        again = await server.resume(ana, last_seen=ana.last_sequence())
        await again.cursor("s1", 6, 6)
        moved = await host.until("cursors")
        assert moved["data"]["removed"] == []  # never listed as gone: the seat stayed
        assert moved["data"]["cursors"][0]["position"] == {"x": 6.0, "y": 6.0}


async def test_a_cursor_sent_just_before_a_drop_never_comes_back(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await ana.cursor("s1", 1, 1)
        await host.until("cursors")  # a round just went out: the next cursor waits a tick
        await ana.cursor("s1", 2, 2)
        ana.drop()
        await host.until("event", "session/disconnected")
        bob = await server.join(host.room, "Bob")
        await bob.cursor("s1", 3, 3)
        later = await host.until("cursors")
        assert ana.uuid not in [c["userId"] for c in later["data"]["cursors"]]
        assert later["data"]["removed"] == [ana.uuid]
        with trio.move_on_after(1):
            while True:
                frame = await host.next("cursors")
                assert ana.uuid not in [c["userId"] for c in frame["data"]["cursors"]]
        assert bob.session["players"][1]["connected"] is False
