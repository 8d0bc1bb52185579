"""The client against the real server over in-memory streams, under the mock clock.

Each test runs ``nexus_actors.serve`` (through the harness) and one or more
``connect`` sessions whose connections come from :class:`HarnessOpener`, so
restarts, cut connections, store pauses and kicks happen at exact instants and
every timer (backoff, update timeouts, gap timeouts, heartbeats) runs in
virtual time.
"""

from __future__ import annotations

from collections import Counter

import pytest
import trio
import trio.testing
from client_support import (
    URL,
    HarnessOpener,
    Recorder,
    deterministic,
    gm_seat,
    record,
    server_room,
    two_seats,
)

from nexus_actors.client import (
    Backoff,
    ConnectionQuality,
    CursorsMoved,
    EventAcked,
    Options,
    OutboxFull,
    PresenceChanged,
    Reconnected,
    Reconnecting,
    ReconnectionFailed,
    Refused,
    RoomEvent,
    Session,
    SessionClosed,
    SessionEnded,
    TokenRotated,
    UpdateConfirmed,
    UpdateRolledBack,
    connect,
)
from nexus_actors.testing import TestServer, open_server
from nexus_actors.testing.streams import MemoryStream


async def matches_server(server: TestServer, *recorders: Recorder) -> None:
    """Every session's copy is the server's room, and shows no pending update."""
    for recorder in recorders:
        session = recorder.session
        expected = server_room(await server.running.inspect(session.room_code))
        assert session.room.client_view() == expected
        assert session.state == expected["state"]


async def table(session: Session, recorder: Recorder) -> tuple[str, str]:
    """A scene and a token on it, created by ``session`` and acknowledged."""
    scene = await session.create_scene("Cave")
    token = await session.create_token(scene.entity_id, 1, 1, label="Rook")
    await recorder.wait_for(EventAcked, lambda e: e.event_id == token.event_id)
    return scene.entity_id, token.entity_id


async def test_create_join_and_events_flow_both_ways(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server, trio.open_nursery() as nursery:
        opener = HarnessOpener(server)
        async with gm_seat(opener, nursery) as (gm, gm_events):
            assert gm.members[0].role == "host"
            assert gm.host_id == gm.member_id
            async with connect(URL, room=gm.room_code.lower(), name="Ana", opener=opener,
                               **deterministic(2)) as ana:
                ana_events = record(nursery, ana)
                assert ana.room_code == gm.room_code
                assert [(m.name, m.role, m.connected) for m in ana.members] == [
                    ("GM", "host", True), ("Ana", "player", True)]
                joined = await gm_events.wait_for(RoomEvent, lambda e: e.name == "session/join")
                assert joined.actor_id == ana.member_id
                assert not joined.mine

                scene_id, token_id = await table(gm, gm_events)
                created = await ana_events.wait_for(RoomEvent,
                                                    lambda e: e.name == "token/create")
                assert created.actor_id == gm.member_id
                assert not created.mine
                assert ana.state["tokens"][token_id]["position"] == {"x": 1.0, "y": 1.0}

                moved = await ana.move_token(token_id, 4, 3)
                said = await ana.chat("hello")
                seen = await gm_events.wait_for(RoomEvent, lambda e: e.name == "token/move")
                assert seen.actor_id == ana.member_id
                assert seen.data["position"] == {"x": 4.0, "y": 3.0}
                chat = await gm_events.wait_for(RoomEvent, lambda e: e.name == "chat/message")
                assert chat.data["message"]["text"] == "hello"
                assert chat.event_id == said.event_id
                confirmed = await ana_events.wait_for(UpdateConfirmed)
                assert confirmed.update_id == moved.update_id
                assert confirmed.version == 2
                mine = await ana_events.wait_for(RoomEvent, lambda e: e.name == "token/move")
                assert mine.mine

                await ana.update_cursor(scene_id, 10, 20)
                cursors = await gm_events.wait_for(CursorsMoved)
                assert [(c.user_id, c.x, c.y) for c in cursors.cursors] == [
                    (ana.member_id, 10.0, 20.0)]
                assert gm.cursors[ana.member_id].user_name == "Ana"

                await gm.flush()
                await ana.flush()
                assert gm.unanswered == ana.unanswered == 0
                await matches_server(server, gm_events, ana_events)
                assert gm.sequence == ana.sequence
            gone = await gm_events.wait_for(PresenceChanged)
            assert (gone.member_id, gone.connected) == (ana.member_id, False)
            assert [m.connected for m in gm.members] == [True, False]


async def test_server_restart_mid_session_resumes_by_itself(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server, trio.open_nursery() as nursery:
        opener = HarnessOpener(server)
        async with two_seats(opener, nursery) as (gm, gm_events, ana, ana_events):
            _, token_id = await table(gm, gm_events)
            await ana_events.wait_for(RoomEvent, lambda e: e.name == "token/create")
            assert gm.epoch == 1

            await server.restart()
            for events in (gm_events, ana_events):
                attempt = await events.wait_for(Reconnecting)
                assert attempt.reason == "1012"
                back = await events.wait_for(Reconnected)
                assert back.mode == "resume"
                drop = await events.wait_for(ConnectionQuality,
                                             lambda q: q.status == "disconnected")
                assert events.when(drop) <= events.when(back)
            assert gm.epoch == ana.epoch == 2

            await ana.move_token(token_id, 7, 7)
            await gm_events.wait_for(RoomEvent, lambda e: e.name == "token/move")
            await ana_events.wait_for(UpdateConfirmed)
            await matches_server(server, gm_events, ana_events)
            assert gm.state["tokens"][token_id]["position"] == {"x": 7.0, "y": 7.0}


async def test_a_cut_during_a_burst_of_moves_loses_and_doubles_nothing(
        autojump_clock: trio.testing.MockClock) -> None:
    options = Options(update_timeout=60.0)
    async with open_server() as server, trio.open_nursery() as nursery:
        opener = HarnessOpener(server)
        async with two_seats(opener, nursery, ana_options=options) as (
                gm, gm_events, ana, ana_events):
            _, token_id = await table(gm, gm_events)
            await ana_events.wait_for(RoomEvent, lambda e: e.name == "token/create")

            moves = []
            for step in range(1, 21):
                moves.append(await ana.move_token(token_id, step, step))
                if step == 8:
                    opener.cut()
                if step == 14:  # while Ana is away, GM moves the token too
                    await gm.move_token(token_id, 0, 0, force=True)
            await ana_events.wait_for(Reconnected)

            def outcomes() -> Counter[str]:
                return Counter(event.update_id for event in ana_events.events
                               if isinstance(event, UpdateConfirmed | UpdateRolledBack))

            await ana_events.until(lambda: sum(outcomes().values()) >= len(moves))
            await gm.flush()
            assert ana.unanswered == 0
            assert outcomes() == Counter({move.update_id: 1 for move in moves})
            confirmed = {e.event_id for e in ana_events.of(UpdateConfirmed)}
            rejected = {e.event_id for e in ana_events.of(UpdateRolledBack)}
            assert all(e.reason == "version-conflict" for e in ana_events.of(UpdateRolledBack))
            journal = Counter(event.event_id for event in server.store.journal(gm.room_code))
            assert all(journal[event_id] == 1 for event_id in confirmed)
            assert not any(journal[event_id] for event_id in rejected)
            assert max(journal.values()) == 1
            assert confirmed
            assert rejected
            await matches_server(server, gm_events, ana_events)


async def test_a_version_conflict_rolls_back_onto_the_current_value(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server, trio.open_nursery() as nursery:
        opener = HarnessOpener(server)
        async with two_seats(opener, nursery) as (gm, gm_events, ana, ana_events):
            _, token_id = await table(gm, gm_events)
            await ana_events.wait_for(RoomEvent, lambda e: e.name == "token/create")

            won = await ana.move_token(token_id, 4, 4)
            lost = await gm.move_token(token_id, 9, 9)  # also based on version 1
            assert gm.state["tokens"][token_id]["position"] == {"x": 9.0, "y": 9.0}
            rolled = await gm_events.wait_for(UpdateRolledBack)
            assert rolled.update_id == lost.update_id
            assert rolled.reason == "version-conflict"
            assert rolled.current_version == 2
            assert rolled.current is not None
            assert rolled.current["position"] == {"x": 4.0, "y": 4.0}
            # Rolled back onto the server's current value, not onto GM's old one.
            assert gm.state["tokens"][token_id]["position"] == {"x": 4.0, "y": 4.0}
            confirmed = await ana_events.wait_for(UpdateConfirmed)
            assert confirmed.update_id == won.update_id
            await gm_events.wait_for(RoomEvent, lambda e: e.name == "token/move")
            await matches_server(server, gm_events, ana_events)


async def test_an_unanswered_update_rolls_back_after_its_timeout(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server, trio.open_nursery() as nursery:
        opener = HarnessOpener(server)
        async with gm_seat(opener, nursery, options=Options(update_timeout=3.0)) as (gm, gm_events):
            _, token_id = await table(gm, gm_events)
            server.store.pause()  # the commit, and so the answer, waits
            sent_at = trio.current_time()
            moved = await gm.move_token(token_id, 5, 5)
            rolled = await gm_events.wait_for(UpdateRolledBack)
            assert (rolled.update_id, rolled.reason) == (moved.update_id, "timeout")
            assert gm_events.when(rolled) - sent_at == pytest.approx(3.0)
            assert gm.unanswered == 1  # still owed an answer: kept, not dropped
            server.store.resume()
            await gm.flush()
            assert not gm_events.of(UpdateConfirmed)  # one outcome per update
            await matches_server(server, gm_events)


async def test_the_servers_backoff_hint_is_honored(
        autojump_clock: trio.testing.MockClock) -> None:
    # The drain's hint is 10 to 30 s (20 s jittered by ±50 %); the client's own first
    # backoff is at most 1 s. Reconnecting sooner than 10 s would ignore the hint.
    async with open_server(restart_retry_ms=20_000) as server, trio.open_nursery() as nursery:
        opener = HarnessOpener(server)
        async with gm_seat(opener, nursery) as (_gm, events):
            await server.stop()
            attempt = await events.wait_for(Reconnecting)
            closed_at = events.when(attempt)
            assert 10.0 <= attempt.next_attempt_in < 30.0
            await server.start()
            await events.wait_for(Reconnected)
            assert len(opener.calls) == 2
            assert opener.calls[1] - closed_at >= 10.0
            assert opener.calls[1] - closed_at == pytest.approx(attempt.next_attempt_in)


async def test_a_kicked_member_does_not_reconnect(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server, trio.open_nursery() as nursery:
        opener = HarnessOpener(server)
        async with connect(URL, name="GM", role="host", opener=opener,
                           **deterministic(1)) as gm:
            ana_opener = HarnessOpener(server)
            async with connect(URL, room=gm.room_code, name="Ana", opener=ana_opener,
                               **deterministic(2)) as ana:
                ana_events = record(nursery, ana)
                await gm.kick(ana.member_id)
                ended = await ana_events.wait_for(SessionEnded)
                assert (ended.close_code, ended.reason) == (4001, "kicked")
                kicked = ana_events.of(RoomEvent)[-1]
                assert kicked.name == "session/kicked"
                assert kicked.data["playerId"] == ana.member_id
                assert ana.member_id not in ana.room.seats
                await trio.sleep(120)
                assert len(ana_opener.calls) == 1
                assert not ana_events.of(Reconnecting)
                assert ana.ended
                with pytest.raises(SessionClosed) as refused:
                    await ana.chat("still here?")
                assert refused.value.code == "session-closed"
            assert ana_events.ended


async def test_a_full_outbox_refuses_new_events_with_a_clear_error(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server, trio.open_nursery() as nursery:
        opener = HarnessOpener(server)
        async with gm_seat(opener, nursery, options=Options(outbox_limit=3)) as (gm, events):
            server.store.pause()  # nothing is acknowledged until the store commits
            sent = [await gm.chat(f"message {n}") for n in range(3)]
            with pytest.raises(OutboxFull) as full:
                await gm.chat("one too many")
            assert full.value.code == "outbox-full"
            assert full.value.limit == 3
            assert gm.unanswered == 3
            server.store.resume()
            await events.wait_for(EventAcked, count=3)
            assert {e.event_id for e in events.of(EventAcked)} == {s.event_id for s in sent}
            assert gm.unanswered == 0
            await gm.chat("room again")
            await gm.flush()
            texts = [e.data["message"]["text"] for e in server.store.journal(gm.room_code)
                     if e.name == "chat/message"]
            assert texts == ["message 0", "message 1", "message 2", "room again"]


async def test_a_gap_that_does_not_fill_makes_the_client_resume(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server, trio.open_nursery() as nursery:
        opener = HarnessOpener(server)
        async with two_seats(opener, nursery, gm_options=Options(gap_timeout=2.0)) as (
                gm, gm_events, ana, ana_events):
            server.store.pause()
            # GM's own event waits for its commit; Ana's later ones reach GM at once:
            # GM holds them behind the gap and cannot apply them.
            mine = await gm.chat("first")
            await ana_events.wait_for(RoomEvent, lambda e: e.event_id == mine.event_id)
            await ana.chat("second")
            await ana.chat("third")
            before = gm.sequence
            attempt = await gm_events.wait_for(Reconnecting)
            assert attempt.reason == "gap"
            assert attempt.next_attempt_in == 0.0
            back = await gm_events.wait_for(Reconnected)
            assert back.mode == "resume"
            assert back.replayed == 3
            assert gm.sequence == before + 3
            texts = [m["text"] for m in gm.room.chat]
            assert texts == ["first", "second", "third"]
            replayed = gm_events.of(RoomEvent)[-3:]
            assert all(e.replayed for e in replayed)
            assert replayed[0].event_id == mine.event_id
            assert replayed[0].mine
            server.store.resume()
            await gm.flush()
            await matches_server(server, gm_events)
            journal = Counter(event.event_id for event in server.store.journal(gm.room_code))
            assert journal[mine.event_id] == 1


async def test_reconnection_gives_up_after_max_attempts(
        autojump_clock: trio.testing.MockClock) -> None:
    options = Options(backoff=Backoff(base=1.0, cap=4.0, max_attempts=3))
    async with open_server() as server, trio.open_nursery() as nursery:
        opener = HarnessOpener(server)
        async with gm_seat(opener, nursery, options=options) as (gm, events):
            await gm.chat("kept")
            await server.stop()  # and it never comes back
            failed = await events.wait_for(ReconnectionFailed)
            assert failed.attempts == 3
            assert failed.code == "attempts-exhausted"
            assert [e.attempt for e in events.of(Reconnecting)] == [1, 2, 3]
            assert len(opener.calls) == 4
            assert isinstance(events.events[-1], ReconnectionFailed)
            assert gm.ended
            assert events.ended
            with pytest.raises(SessionClosed):
                await gm.chat("lost")


async def test_the_rotated_token_is_kept_and_the_old_one_retired(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server, trio.open_nursery() as nursery:
        opener = HarnessOpener(server)
        async with gm_seat(opener, nursery) as (gm, events):
            first = gm.token
            opener.cut()
            await events.wait_for(Reconnected)
            rotated = await events.wait_for(TokenRotated)
            assert gm.token == rotated.token != first
            opener.cut()  # the next resume presents the new token, retiring the first
            await events.wait_for(Reconnected, count=2)
            newest = (await events.wait_for(TokenRotated, count=2)).token
            assert gm.token == newest
            code = gm.room_code
        with pytest.raises(Refused) as refused:
            async with connect(URL, room=code, token=first, opener=opener):
                pass
        assert refused.value.code == "invalid-token"
        async with connect(URL, room=code, token=newest, opener=opener) as again:
            assert again.member_id == gm.member_id


async def test_a_seat_is_taken_back_with_its_token(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server, trio.open_nursery() as nursery:
        opener = HarnessOpener(server)
        async with gm_seat(opener, nursery) as (gm, gm_events):
            await table(gm, gm_events)
            code, member_id, token = gm.room_code, gm.member_id, gm.token
        async with connect(URL, room=code, token=token, opener=opener,
                           **deterministic(3)) as again:
            events = record(nursery, again)
            assert again.member_id == member_id
            assert again.host_id == member_id
            await matches_server(server, events)
        with pytest.raises(Refused) as refused:
            async with connect(URL, room=code, token="not-the-token", opener=opener):
                pass
        assert (refused.value.code, refused.value.close_code) == ("invalid-token", 4401)
        with pytest.raises(Refused) as missing:
            async with connect(URL, room="ZZZZ", name="Bo", opener=opener):
                pass
        assert missing.value.code == "room-not-found"


async def test_connection_quality_comes_from_the_servers_pings(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(heartbeat_interval=5.0) as server, trio.open_nursery() as nursery:
        opener = HarnessOpener(server)
        async with gm_seat(opener, nursery) as (gm, events):
            first = await events.wait_for(ConnectionQuality)  # the client's own heartbeat
            assert (first.latency, first.status) == (0.0, "excellent")
            stream = opener.streams[-1]
            assert isinstance(stream, MemoryStream)
            stream.lag(0.15)  # 300 ms round trips from now on
            poor = await events.wait_for(ConnectionQuality, lambda q: q.status == "fair")
            assert poor.latency == pytest.approx(300.0)
            assert gm.quality == poor
            opener.cut()
            gone = await events.wait_for(ConnectionQuality,
                                         lambda q: q.status == "disconnected")
            assert gone.latency is None
            reconnected = await events.wait_for(Reconnected)
            back = await events.wait_for(ConnectionQuality, lambda q: q.status == "excellent",
                                         count=2)
            # Measured at once on reconnecting, not at the server's next ping 5 s later.
            assert events.when(back) - events.when(reconnected) < 0.1
            assert gm.quality == back
