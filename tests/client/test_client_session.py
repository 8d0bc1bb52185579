"""Session behaviours beyond the main scenarios, against the real server in the harness:
host management, leaving, a superseded seat, an overloaded store, a silent connection,
and the first connection's retries."""

from __future__ import annotations

from collections import Counter

import pytest
import trio
import trio.testing
from client_support import URL, HarnessOpener, deterministic, gm_seat, record, server_room

from nexus_actors.client import (
    Backoff,
    ConnectFailed,
    EventAcked,
    EventRefused,
    Options,
    PresenceChanged,
    Reconnected,
    Reconnecting,
    ReconnectionFailed,
    RoomEvent,
    ServerError,
    SessionEnded,
    connect,
)
from nexus_actors.testing import open_server


async def test_hosts_are_managed_and_refusals_reported(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server, trio.open_nursery() as nursery:
        opener = HarnessOpener(server)
        async with connect(URL, name="GM", role="host", opener=opener,
                           **deterministic(1)) as gm, \
                connect(URL, room=gm.room_code, name="Ana", opener=opener,
                        **deterministic(2)) as ana, \
                connect(URL, room=gm.room_code, name="Bo", opener=opener,
                        **deterministic(3)) as bo:
            gm_events, ana_events = record(nursery, gm), record(nursery, ana)
            bo_events = record(nursery, bo)
            refused = await ana.create_scene("Not yours")
            no = await ana_events.wait_for(EventRefused)
            assert (no.event_id, no.code) == (refused.event_id, "forbidden")

            await gm.add_co_host(ana.member_id)
            added = await bo_events.wait_for(RoomEvent,
                                             lambda e: e.name == "session/co-host-added")
            assert added.data["coHostId"] == ana.member_id
            assert bo.co_host_ids == [ana.member_id]
            assert [m.role for m in bo.members] == ["host", "co-host", "player"]
            scene = await ana.create_scene("Now allowed")
            await ana_events.wait_for(EventAcked, lambda e: e.event_id == scene.event_id)

            await gm.transfer_host(bo.member_id)
            moved = await ana_events.wait_for(RoomEvent,
                                              lambda e: e.name == "session/host-migrated")
            assert moved.data == {"newHostId": bo.member_id, "previousHostId": gm.member_id,
                                  "manual": True}
            await gm_events.wait_for(RoomEvent, lambda e: e.name == "session/host-migrated")
            for session in (gm, ana, bo):
                assert session.host_id == bo.member_id
            await bo.remove_co_host(ana.member_id)
            await gm_events.wait_for(RoomEvent, lambda e: e.name == "session/co-host-removed")
            assert gm.co_host_ids == []
            await bo.flush()
            await ana_events.until(lambda: ana.sequence == bo.sequence)
            expected = server_room(await server.running.inspect(gm.room_code))
            for session in (gm, ana, bo):
                assert session.room.client_view() == expected


async def test_leaving_gives_up_the_seat_and_does_not_reconnect(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server, trio.open_nursery() as nursery:
        opener = HarnessOpener(server)
        async with gm_seat(opener, nursery) as (gm, gm_events):
            ana_opener = HarnessOpener(server)
            async with connect(URL, room=gm.room_code, name="Ana", opener=ana_opener,
                               **deterministic(2)) as ana:
                ana_events = record(nursery, ana)
                await ana.leave()
                ended = await ana_events.wait_for(SessionEnded)
                assert (ended.close_code, ended.reason) == (1000, "left")
                left = await gm_events.wait_for(RoomEvent, lambda e: e.name == "session/leave")
                assert left.data == {"uuid": ana.member_id, "reason": "left"}
                assert [m.name for m in gm.members] == ["GM"]
                await trio.sleep(60)
                assert len(ana_opener.calls) == 1


async def test_a_seat_taken_elsewhere_ends_the_session_without_a_fight(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server, trio.open_nursery() as nursery:
        opener = HarnessOpener(server)
        async with connect(URL, name="GM", role="host", opener=opener,
                           **deterministic(1)) as first:
            events = record(nursery, first)
            async with connect(URL, room=first.room_code, token=first.token, opener=opener,
                               **deterministic(2)) as second:
                ended = await events.wait_for(SessionEnded)
                assert (ended.close_code, ended.reason) == (4000, "superseded")
                await trio.sleep(60)
                assert len(opener.calls) == 2  # the first tab did not take the seat back
                assert second.connected
                assert second.member_id == first.member_id


async def test_events_refused_for_an_overloaded_store_are_sent_again_and_applied_once(
        autojump_clock: trio.testing.MockClock) -> None:
    # One write per batch: while the store is paused the first batch waits on it and
    # the queue of 16 fills behind it.
    async with open_server(persist_queue=16, persist_batch=1, overload_retry_ms=500) as server, \
            trio.open_nursery() as nursery:
        opener = HarnessOpener(server)
        async with gm_seat(opener, nursery) as (gm, events):
            server.store.pause()
            sent = [await gm.chat(f"line {n}") for n in range(30)]
            await trio.sleep(5)  # a five-second outage: the resends are refused again
            refusals = server.running.listener.metrics.errors["overloaded"]
            assert refusals > len(sent) - 16  # some were refused, more than once
            server.store.resume()
            with trio.fail_after(60):
                await gm.flush()
            await events.wait_for(EventAcked, count=len(sent))
            journal = Counter(e.event_id for e in server.store.journal(gm.room_code))
            assert [journal[s.event_id] for s in sent] == [1] * len(sent)
            texts = [m["text"] for m in gm.room.chat]
            assert sorted(texts) == sorted(f"line {n}" for n in range(30))
            assert gm.room.client_view() == server_room(
                await server.running.inspect(gm.room_code))


class Freezable(trio.abc.Stream):
    """A stream whose reads can be made to hang while it stays open (a silent network)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.frozen = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.frozen:
            await trio.sleep_forever()
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_connection_that_falls_silent_is_replaced(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(heartbeat_interval=1000.0) as server, \
            trio.open_nursery() as nursery:
        streams: list[Freezable] = []

        async def opener() -> trio.abc.Stream:
            streams.append(Freezable(server.listener.connect()))
            return streams[-1]

        async with gm_seat(opener, nursery, options=Options(idle_timeout=5.0)) as (gm, events):
            streams[-1].frozen = True
            frozen_at = trio.current_time()
            attempt = await events.wait_for(Reconnecting)
            assert attempt.reason == "idle"
            assert events.when(attempt) - frozen_at == pytest.approx(5.0, abs=0.1)
            await events.wait_for(Reconnected)
            said = await gm.chat("still here")
            await events.wait_for(EventAcked, lambda e: e.event_id == said.event_id)


async def test_a_connection_that_keeps_hearing_from_the_server_outlives_the_idle_timeout(
        autojump_clock: trio.testing.MockClock) -> None:
    # The server's heartbeat (every 2 s) is all the traffic there is; the idle timeout (5 s)
    # must count from the last of it, not from the connection's start.
    async with open_server(heartbeat_interval=2.0) as server, trio.open_nursery() as nursery:
        opener = HarnessOpener(server)
        async with gm_seat(opener, nursery, options=Options(idle_timeout=5.0)) as (gm, events):
            await trio.sleep(60.0)
            assert events.of(Reconnecting) == []
            assert len(opener.calls) == 1
            said = await gm.chat("still here")
            await events.wait_for(EventAcked, lambda e: e.event_id == said.event_id)


async def test_the_first_connection_is_retried_until_the_server_answers(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        calls: list[float] = []

        async def late_opener() -> trio.abc.Stream:
            calls.append(trio.current_time())
            if len(calls) < 3:
                raise OSError("connection refused")
            return server.listener.connect()

        async with connect(URL, name="GM", role="host", opener=late_opener,
                           **deterministic(1)) as gm:
            assert len(calls) == 3
            assert gm.members[0].name == "GM"

        async def dead_opener() -> trio.abc.Stream:
            calls.append(trio.current_time())
            raise OSError("connection refused")

        calls.clear()
        options = Options(backoff=Backoff(max_attempts=2))
        with pytest.raises(ConnectFailed) as failed:
            async with connect(URL, name="GM", role="host", opener=dead_opener,
                               options=options):
                pass
        assert failed.value.code == "connect-failed"
        assert len(calls) == 3


async def test_a_burst_beyond_the_servers_rate_limit_is_paced_not_refused(
        autojump_clock: trio.testing.MockClock) -> None:
    # The server allows 60 messages a second with bursts of 120; the client sends at
    # most 50 a second after a burst of 100, so none of 200 events is dropped.
    async with open_server() as server, trio.open_nursery() as nursery:
        opener = HarnessOpener(server)
        async with gm_seat(opener, nursery) as (gm, events):
            began = trio.current_time()
            sent = [await gm.chat(f"line {n}") for n in range(200)]
            with trio.fail_after(60):
                await gm.flush()
            assert trio.current_time() - began >= (200 - 100) / 50
            await events.wait_for(EventAcked, count=len(sent))
            assert not events.of(ServerError)
            assert server.running.listener.metrics.errors["rate-limited"] == 0
            journal = Counter(e.event_id for e in server.store.journal(gm.room_code))
            assert [journal[s.event_id] for s in sent] == [1] * len(sent)


async def test_a_seat_given_up_while_away_ends_reconnecting_at_the_first_refusal(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server, trio.open_nursery() as nursery:
        opener = HarnessOpener(server)
        async with gm_seat(opener, nursery) as (gm, gm_events):
            ana_opener = HarnessOpener(server)
            async with connect(URL, room=gm.room_code, name="Ana", opener=ana_opener,
                               **deterministic(2)) as ana:
                ana_events = record(nursery, ana)
                ana_opener.cut()
                await gm_events.wait_for(PresenceChanged, lambda e: not e.connected)
                await gm.kick(ana.member_id)  # while Ana waits to reconnect
                failed = await ana_events.wait_for(ReconnectionFailed)
                assert (failed.attempts, failed.code) == (1, "invalid-token")
                await trio.sleep(60)
                assert len(ana_opener.calls) == 2
                assert ana.ended


async def test_leaving_the_block_first_writes_everything_already_sent(
        autojump_clock: trio.testing.MockClock) -> None:
    # More than the pacing burst: part of it is still queued when the block ends.
    async with open_server() as server:
        opener = HarnessOpener(server)
        async with connect(URL, name="GM", role="host", opener=opener,
                           **deterministic(1)) as gm:
            code = gm.room_code
            for n in range(130):
                await gm.chat(f"line {n}")
        await server.running.flush()
        texts = [e.data["message"]["text"] for e in server.store.journal(code)
                 if e.name == "chat/message"]
        assert texts == [f"line {n}" for n in range(130)]
