"""The client over real TCP sockets against ``nexus_actors.serve``, with the real clock.

The default opener (``trio.open_tcp_stream`` from the URL) is used throughout; the
restart test runs the server twice on the same port with one ``MemoryStore``, as a
process restart would, and the client finds it again by itself. Every test is
bounded by ``trio.fail_after``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import trio
from client_support import Recorder, deterministic, record, server_room

from nexus_actors import Config, Server, serve
from nexus_actors.client import (
    EventAcked,
    Options,
    Reconnected,
    Reconnecting,
    RoomEvent,
    UpdateConfirmed,
    UpdateRolledBack,
    connect,
)
from nexus_actors.store.memory import MemoryStore

pytestmark = pytest.mark.realclock

TEST_TIMEOUT = 20.0
"Seconds one test may take in all (generous: CI machines are slow)."


class RealServer:
    """``serve`` on 127.0.0.1, stopped and started again on the same port and store."""

    def __init__(self, nursery: trio.Nursery, **overrides: Any) -> None:
        self.nursery = nursery
        self.overrides = {"restart_retry_ms": 200, **overrides}
        self.store = MemoryStore()
        self.port = 0
        self.server: Server | None = None
        self._stopped = trio.Event()

    async def start(self) -> None:
        config = Config(host="127.0.0.1", port=self.port, **self.overrides)
        self._stopped = trio.Event()
        stopped = self._stopped

        async def run(*, task_status: trio.TaskStatus[Server]) -> None:
            try:
                await serve(config, store=self.store, handle_signals=False,
                            task_status=task_status)
            finally:
                stopped.set()

        self.server = await self.nursery.start(run)
        [self.port] = self.server.ports

    async def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            await self._stopped.wait()
            self.server = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def matches(self, *recorders: Recorder) -> None:
        assert self.server is not None
        for recorder in recorders:
            session = recorder.session
            expected = server_room(await self.server.inspect(session.room_code))
            assert session.room.client_view() == expected
            assert session.state == expected["state"]


class CuttableOpener:
    """TCP connections to the server that a test can cut (the socket closed under them)."""

    def __init__(self, live: RealServer) -> None:
        self.live = live
        self.streams: list[trio.SocketStream] = []

    async def __call__(self) -> trio.abc.Stream:
        stream = await trio.open_tcp_stream("127.0.0.1", self.live.port)
        self.streams.append(stream)
        return stream

    def cut(self) -> None:
        self.streams[-1].socket.close()


async def test_create_join_and_events_over_tcp() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            live = RealServer(nursery)
            await live.start()
            async with connect(live.url, name="GM", role="host", **deterministic(1)) as gm, \
                    connect(live.url.removesuffix("/ws"), room=gm.room_code, name="Ana",
                            **deterministic(2)) as ana:
                gm_events, ana_events = record(nursery, gm), record(nursery, ana)
                scene = await gm.create_scene("Cave", grid=5)
                made = await gm.create_token(scene.entity_id, 2, 3, label="Rook")
                await ana_events.wait_for(RoomEvent, lambda e: e.name == "token/create")
                moved = await ana.move_token(made.entity_id, 4, 3)
                await ana.chat("over tcp")
                await gm_events.wait_for(RoomEvent, lambda e: e.name == "chat/message")
                confirmed = await ana_events.wait_for(UpdateConfirmed)
                assert confirmed.update_id == moved.update_id
                await gm.flush()
                await ana.flush()
                await gm_events.until(lambda: gm.sequence == ana.sequence)
                await live.matches(gm_events, ana_events)
                assert gm.state["tokens"][made.entity_id]["position"] == {"x": 4.0, "y": 3.0}
            await live.stop()


async def test_a_server_restart_is_survived_by_itself() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            live = RealServer(nursery)
            await live.start()
            async with connect(live.url, name="GM", role="host", **deterministic(1)) as gm, \
                    connect(live.url, room=gm.room_code, name="Ana",
                            **deterministic(2)) as ana:
                gm_events, ana_events = record(nursery, gm), record(nursery, ana)
                scene = await gm.create_scene("Cave")
                await gm_events.wait_for(EventAcked, lambda e: e.event_id == scene.event_id)
                await ana_events.wait_for(RoomEvent, lambda e: e.name == "scene/create")

                await live.stop()
                await live.start()  # the same port, the same store: a restarted process
                for events in (gm_events, ana_events):
                    assert (await events.wait_for(Reconnecting)).reason == "1012"
                    assert (await events.wait_for(Reconnected)).mode == "resume"
                assert gm.epoch == ana.epoch == 2

                said = await ana.chat("after the restart")
                await gm_events.wait_for(RoomEvent, lambda e: e.event_id == said.event_id)
                await ana.flush()
                await ana_events.until(lambda: ana.sequence == gm.sequence)
                await live.matches(gm_events, ana_events)
            await live.stop()


async def test_a_cut_tcp_connection_during_a_burst_loses_and_doubles_nothing() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            live = RealServer(nursery)
            await live.start()
            opener = CuttableOpener(live)
            async with connect(live.url, name="GM", role="host", **deterministic(1)) as gm, \
                    connect(live.url, room=gm.room_code, name="Ana", opener=opener,
                            options=Options(update_timeout=15.0),
                            **deterministic(2)) as ana:
                gm_events, ana_events = record(nursery, gm), record(nursery, ana)
                scene = await gm.create_scene("Cave")
                made = await gm.create_token(scene.entity_id, 0, 0)
                await ana_events.wait_for(RoomEvent, lambda e: e.name == "token/create")

                moves = []
                for step in range(1, 31):
                    moves.append(await ana.move_token(made.entity_id, step, 0))
                    if step == 10:
                        opener.cut()
                await ana_events.wait_for(Reconnected)

                def outcomes() -> Counter[str]:
                    return Counter(e.update_id for e in ana_events.events
                                   if isinstance(e, UpdateConfirmed | UpdateRolledBack))

                await ana_events.until(lambda: sum(outcomes().values()) >= len(moves))
                assert outcomes() == Counter({m.update_id: 1 for m in moves})
                assert not ana_events.of(UpdateRolledBack)  # nobody else moved it
                journal = Counter(e.event_id for e in live.store.journal(gm.room_code))
                assert [journal[m.event_id] for m in moves] == [1] * len(moves)
                await gm_events.until(lambda: gm.sequence == ana.sequence)
                await live.matches(gm_events, ana_events)
                assert ana.state["tokens"][made.entity_id]["position"] == {"x": 30.0, "y": 0.0}
            await live.stop()
