"""``nexus-actors client``: parsing commands, finding members and tokens, describing events,
and the REPL itself driven by scripted lines against the in-memory server (MockClock)."""

from __future__ import annotations

import argparse
import io
import os
import random
import re
from datetime import UTC
from typing import Any

import pytest
import trio

from nexus_actors.client import (
    ConnectionQuality,
    CursorsMoved,
    EventAcked,
    EventRefused,
    Member,
    PresenceChanged,
    Reconnected,
    Reconnecting,
    ReconnectionFailed,
    RoomEvent,
    Session,
    SessionEnded,
    UpdateRolledBack,
    connect,
)
from nexus_actors.terminal import (
    ActivateScene,
    Chat,
    CommandError,
    CreateScene,
    CreateToken,
    Directory,
    FdLines,
    MemberRequest,
    Move,
    Quit,
    Repl,
    Show,
    add_arguments,
    describe,
    find,
    format_members,
    format_state,
    parse_command,
    stamp,
    target,
    when,
)
from nexus_actors.testing import open_server

# Parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "command"), [
    ("hello there", Chat(text="hello there")),
    ("  /chat  spaced words ", Chat(text="spaced words")),
    ("/scene The Dark Cave", CreateScene(name="The Dark Cave")),
    ("/activate cave", ActivateScene(scene="cave")),
    ("/move t1 3 4", Move(token="t1", x=3.0, y=4.0)),
    ("/MOVE t1 -2.5 1e1", Move(token="t1", x=-2.5, y=10.0)),
    ('/move "Big Rook" 1 2', Move(token="Big Rook", x=1.0, y=2.0)),
    ("/token Cave 1 2", CreateToken(scene="Cave", x=1.0, y=2.0)),
    ("/token Cave 1 2 Rook", CreateToken(scene="Cave", x=1.0, y=2.0, label="Rook")),
    ("/transfer Ana", MemberRequest(action="transfer", member="Ana")),
    ("/cohost 1a2b", MemberRequest(action="cohost", member="1a2b")),
    ("/kick Bo", MemberRequest(action="kick", member="Bo")),
    ("/who", Show(what="who")),
    ("/state", Show(what="state")),
    ("/help", Show(what="help")),
    ("/quit", Quit(leave=False)),
    ("/exit", Quit(leave=False)),
    ("/leave", Quit(leave=True)),
])
def test_parse_command(line: str, command: object) -> None:
    assert parse_command(line) == command


@pytest.mark.parametrize("line", ["", "   ", "\n"])
def test_a_blank_line_is_no_command(line: str) -> None:
    assert parse_command(line) is None


@pytest.mark.parametrize(("line", "message"), [
    ("/fly away", "unknown command /fly"),
    ("/move t1 3", "usage: /move TOKEN X Y"),
    ("/move t1 3 4 5", "usage: /move TOKEN X Y"),
    ("/move t1 three 4", "X must be a number, not 'three'"),
    ("/move t1 3 nan", "Y must be a finite number"),
    ("/move t1 3 inf", "Y must be a finite number"),
    ("/token Cave 1", "usage: /token SCENE X Y [LABEL]"),
    ("/chat", "usage: /chat TEXT"),
    ("/scene", "usage: /scene NAME"),
    ("/kick", "usage: /kick MEMBER"),
    ('/kick "Ana', "No closing quotation"),
])
def test_bad_commands_say_what_is_wrong(line: str, message: str) -> None:
    with pytest.raises(CommandError, match=re.escape(message)):
        parse_command(line)


# Finding members, scenes and tokens --------------------------------------------------------

PEOPLE = [("1a2b3c4d-0000", "Ana"), ("1a9f0000-0000", "Bo"), ("77770000-0000", "ana2"),
          ("88880000-0000", "1a")]


@pytest.mark.parametrize(("query", "found"), [
    ("Ana", "1a2b3c4d-0000"),
    ("ana", "1a2b3c4d-0000"),
    ("BO", "1a9f0000-0000"),
    ("1a2", "1a2b3c4d-0000"),
    ("7", "77770000-0000"),
    ("1a", "88880000-0000"),  # a name wins over an id prefix
    ("1a9f0000-0000", "1a9f0000-0000"),
])
def test_find_by_name_or_id_prefix(query: str, found: str) -> None:
    assert find(PEOPLE, query, "member") == found


def test_find_refuses_what_matches_nothing_or_several() -> None:
    with pytest.raises(CommandError, match="no member matches 'Cy'"):
        find(PEOPLE, "Cy", "member")
    with pytest.raises(CommandError, match=r"'1a' matches several tokens: A \(1a2b3c4d\), "
                                           r"B \(1a9f0000\)"):
        find([("1a2b3c4d-0000", "A"), ("1a9f0000-0000", "B")], "1a", "token")


# Describing events --------------------------------------------------------------------------

GM, ANA = "48b34d17-aaaa", "1880bfa7-bbbb"


def names() -> Directory:
    return Directory(members={GM: "GM", ANA: "Ana"}, scenes={"s1": "Cave"},
                     tokens={"t1": "Rook"})


def room_event(name: str, data: dict[str, Any], actor: str | None = ANA) -> RoomEvent:
    return RoomEvent(name=name, data=data, sequence=5, event_id="e5", actor_id=actor,
                     timestamp=1_767_225_601_000, mine=False, replayed=False)


@pytest.mark.parametrize(("event", "line"), [
    (room_event("token/move", {"tokenId": "t1", "position": {"x": 3.0, "y": 4.5}}),
     "Ana moved Rook to (3, 4.5)"),
    (room_event("token/create", {"token": {"id": "t2-uuid-long", "sceneId": "s1",
                                           "position": {"x": 1.0, "y": 2.0}, "version": 1}},
                actor=GM),
     "GM created token t2-uuid- (t2-uuid-) in Cave at (1, 2)"),
    (room_event("token/create", {"token": {"id": "t3", "sceneId": "s1", "label": "Imp",
                                           "position": {"x": 0.0, "y": 0.0}}}),
     "Ana created token Imp (t3) in Cave at (0, 0)"),
    (room_event("token/update", {"tokenId": "t1", "changes": {"hp": 3, "label": "R"}}),
     "Ana changed hp, label of token Rook"),
    (room_event("token/delete", {"tokenId": "t1"}), "Ana deleted token Rook"),
    (room_event("scene/create", {"scene": {"id": "s2", "name": "Hall"}}, actor=GM),
     "GM created scene Hall (s2)"),
    (room_event("scene/activate", {"sceneId": "s1"}, actor=GM), "GM activated scene Cave"),
    (room_event("scene/delete", {"sceneId": "s1"}, actor=GM), "GM deleted scene Cave"),
    (room_event("chat/message", {"message": {"userName": "Ana", "text": "hi all"}}),
     "Ana: hi all"),
    (room_event("session/join", {"player": {"id": "c", "name": "Cy", "role": "player"}}),
     "Cy joined as player"),
    (room_event("session/leave", {"uuid": ANA, "reason": "left"}), "Ana left"),
    (room_event("session/kicked", {"playerId": ANA, "by": GM}, actor=GM),
     "Ana was kicked by GM"),
    (room_event("session/host-migrated", {"newHostId": ANA, "previousHostId": GM,
                                          "manual": True}, actor=GM),
     "Ana is now the host (by transfer; was GM)"),
    (room_event("session/host-migrated", {"newHostId": ANA, "previousHostId": GM,
                                          "manual": False}, actor=None),
     "Ana is now the host (automatically; was GM)"),
    (room_event("session/co-host-added", {"coHostId": ANA, "permissions": {}}, actor=GM),
     "Ana is now a co-host"),
    (room_event("session/co-host-removed", {"coHostId": ANA}, actor=GM),
     "Ana is no longer a co-host"),
    (room_event("session/hibernated", {"reconnectWindow": 600000}, actor=None),
     "the room went to sleep (nobody was connected)"),
    (room_event("initiative/next", {"round": 2, "turn": 1, "version": 3}, actor=GM),
     "GM set the initiative: round 2, turn 1"),
    (room_event("character/create", {"character": {"id": "c1", "name": "Zed"}}),
     "Ana: character/create Zed"),
    (PresenceChanged(member_id=ANA, connected=False), "Ana disconnected"),
    (PresenceChanged(member_id="99990000-unknown", connected=True), "99990000 is back"),
    (ConnectionQuality(latency=23.4, status="good"), "quality good 23 ms"),
    (Reconnecting(attempt=2, next_attempt_in=1.43, reason="dropped"),
     "reconnecting (attempt 2, in 1.4 s): dropped"),
    (Reconnected(attempt=1, mode="resume", replayed=3),
     "reconnected (3 missed events replayed)"),
    (Reconnected(attempt=1, mode="baseline", replayed=0),
     "reconnected (the room's state was replaced by the server's)"),
    (ReconnectionFailed(attempts=5, code="attempts-exhausted", message="no connection"),
     "reconnection failed after 5 attempts: attempts-exhausted: no connection"),
    (SessionEnded(close_code=4001, reason="kicked"), "session ended: kicked (4001)"),
    (EventRefused(event_id="e", name="session/kick", code="forbidden", message="no",
                  detail={}),
     "refused session/kick: forbidden: no"),
    (UpdateRolledBack(update_id="u", event_id="e", entity_id="t1",
                      reason="version-conflict", current_version=3, current=None),
     "change of Rook rolled back: version-conflict"),
])
def test_describe(event: Any, line: str) -> None:
    assert describe(event, names()) == line


@pytest.mark.parametrize("event", [
    CursorsMoved(cursors=(), removed=()),
    EventAcked(event_id="e", sequence=1, duplicate=False),
    ConnectionQuality(latency=None, status="disconnected"),
])
def test_busy_or_redundant_events_are_not_shown(event: Any) -> None:
    assert describe(event, names()) is None


def test_lines_are_stamped_with_the_server_time_of_journaled_events() -> None:
    event = room_event("chat/message", {"message": {"userName": "Ana", "text": "x"}})
    assert when(event, 5.0) == 1_767_225_601.0
    assert when(PresenceChanged(member_id=ANA, connected=True), 5.0) == 5.0
    assert stamp("Ana: x", 1_767_225_601.0, UTC) == "[00:00:01] Ana: x"


def test_directory_keeps_names_after_they_are_gone() -> None:
    directory = Directory()
    state = {"scenes": {"s1": {"id": "s1", "name": "Cave"}},
             "tokens": {"t1": {"id": "t1", "label": "Rook"}, "t2": {"id": "t2abcdefgh"}}}
    directory.learn([Member(id=ANA, name="Ana", role="player", connected=True)], state)
    directory.learn([], {"scenes": {}, "tokens": {}})
    assert (directory.member(ANA), directory.scene("s1"), directory.token("t1"),
            directory.token("t2")) == ("Ana", "Cave", "Rook", "t2abcdef")
    assert directory.member(None) == "the server"


def test_who_and_state_listings() -> None:
    members = [Member(id=ANA, name="Ana", role="player", connected=False),
               Member(id=GM, name="GM", role="host", connected=True)]
    assert format_members(members, GM) == ["* GM (host, 48b34d17) connected",
                                           "  Ana (player, 1880bfa7) disconnected"]
    state = {"activeSceneId": "s1",
             "scenes": {"s1": {"id": "s1", "name": "Cave"}, "s2": {"id": "s2", "name": "Hall"}},
             "tokens": {"t1": {"id": "t1", "label": "Rook", "sceneId": "s1",
                               "position": {"x": 3.0, "y": 4.0}, "version": 2}}}
    assert format_state(state, members, room_code="K7PX", sequence=9) == [
        "room K7PX at sequence 9: host GM",
        "scene Cave (s1) (active)",
        "  token Rook (t1) at (3, 4) v2",
        "scene Hall (s2)",
    ]


# The command line ---------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_command_line_seats() -> None:
    assert target(parse("ws://h", "--host", "--name", "GM")) == {
        "room": None, "name": "GM", "role": "host"}
    assert target(parse("ws://h", "--host", "K7PX", "--name", "GM")) == {
        "room": "K7PX", "name": "GM", "role": "host"}
    assert target(parse("ws://h", "--join", "K7PX", "--name", "Ana")) == {
        "room": "K7PX", "name": "Ana"}
    assert target(parse("ws://h", "--join", "K7PX", "--token", "tok")) == {
        "room": "K7PX", "token": "tok"}
    with pytest.raises(ValueError, match="--name is needed"):
        target(parse("ws://h", "--join", "K7PX"))
    with pytest.raises(ValueError, match="give the room with --join"):
        target(parse("ws://h", "--host", "--token", "tok"))


async def test_lines_from_a_descriptor_split_on_newlines_until_the_end() -> None:
    read, write = os.pipe()
    try:
        os.write(write, "/move t1 3 4\nhéllo\nlast without newline".encode())
        os.close(write)
        lines = FdLines(read)
        with trio.fail_after(10):
            assert [await lines.readline() for _ in range(4)] == [
                "/move t1 3 4", "héllo", "last without newline", None]
    finally:
        os.close(read)


# The REPL against the in-memory server ------------------------------------------------------


class Screen(io.StringIO):
    """What the REPL printed; a test can wait for a line to appear."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = trio.Event()

    def write(self, text: str) -> int:
        self._changed.set()
        return super().write(text)

    async def shows(self, text: str) -> None:
        while text not in self.getvalue():
            self._changed = trio.Event()
            await self._changed.wait()


class Keyboard:
    """Lines typed into the REPL by the test."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[str | None](16)

    async def readline(self) -> str | None:
        return await self.receive.receive()

    async def type(self, *lines: str | None) -> None:
        for line in lines:
            await self.send.send(line)


def repl(session: Session, screen: Screen) -> Repl:
    return Repl(session, screen, clock=lambda: 0.0, tz=UTC)


async def test_the_repl_plays_a_room_from_typed_lines(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        async def opener() -> trio.abc.Stream:
            return server.listener.connect()

        with trio.fail_after(60):
            async with connect("ws://test", name="GM", role="host", opener=opener,
                               rng=random.Random(1)) as gm, \
                    connect("ws://test", room=gm.room_code, name="Ana", opener=opener,
                            rng=random.Random(2)) as ana, \
                    trio.open_nursery() as nursery:
                gm_screen, ana_screen = Screen(), Screen()
                gm_keys, ana_keys = Keyboard(), Keyboard()
                statuses: dict[str, int] = {}

                async def run(name: str, repl: Repl, keys: Keyboard) -> None:
                    statuses[name] = await repl.run(keys)

                nursery.start_soon(run, "gm", repl(gm, gm_screen), gm_keys)
                nursery.start_soon(run, "ana", repl(ana, ana_screen), ana_keys)
                await gm_screen.shows(f"room {gm.room_code}: you are GM (host, ")
                await gm_screen.shows(f"--join {gm.room_code} --token {gm.token}")

                await gm_keys.type("/scene Cave", "/move Rook 1 1")
                await gm_screen.shows("GM created scene Cave")
                await gm_screen.shows("error: no token matches 'Rook'")
                await gm_keys.type("/token cave 1 2 Rook", "/activate Cave")
                await ana_screen.shows("GM created token Rook")
                await ana_screen.shows("GM activated scene Cave")

                await ana_keys.type("hello there", "/move rook 3 4", "/kick GM")
                await gm_screen.shows("Ana: hello there")
                await gm_screen.shows("Ana moved Rook to (3, 4)")
                await ana_screen.shows("refused session/kick: forbidden")

                await gm_keys.type("/cohost ana")
                await ana_screen.shows("Ana is now a co-host")
                await gm_screen.shows("Ana is now a co-host")
                await gm_keys.type("/who", "/state")
                await gm_screen.shows("  Ana (co-host, ")
                await gm_screen.shows("room " + gm.room_code + " at sequence")
                await gm_screen.shows("  token Rook (")
                await gm_keys.type(f"/transfer {ana.member_id[:6]}")
                await ana_screen.shows("Ana is now the host (by transfer; was GM)")
                await ana_keys.type("/kick GM")
                await gm_screen.shows("session ended: kicked (4001)")
                await ana_keys.type("/quit")
        assert statuses == {"gm": 1, "ana": 0}
        assert "[00:00:00] " in gm_screen.getvalue()
