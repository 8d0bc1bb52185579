"""Scale-out: three real server processes on one real PostgreSQL, behind a real HAProxy.

Clients are ``nexus_actors.client`` sessions over loopback TCP, through HAProxy
(``deploy/haproxy/haproxy.cfg``, rendered for these ports) unless a test
connects one to a given process on purpose. Leases last 3 s here, so failover
is quick. Covered: rooms spread over the processes, and members of one room on
different processes (relayed) see each other's moves; ``kill -9`` of a process
under load, its rooms back on the others within the lease's lifetime plus 2 s,
every acknowledged move in the database exactly once; a process paused
(SIGSTOP) past its leases, its room taken over, then woken (SIGCONT): its
stale write is fenced out and it stops the room, and the client's move lands
once on the new owner; a rolling restart of all three with SIGTERM under load,
nothing lost and no client giving up; two processes racing to create one room,
exactly one winning.

Skipped without Debian's ``haproxy`` (``.ci/run`` installs it when it can).
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import psycopg
import pytest
import trio

from nexus_actors.client import (
    Backoff,
    ClientEvent,
    EventAcked,
    Options,
    Reconnected,
    ReconnectionFailed,
    Refused,
    RoomEvent,
    Session,
    SessionEnded,
    UpdateConfirmed,
    connect,
)
from nexus_actors.testing.cluster import Cluster, haproxy_path, open_cluster
from nexus_actors.testing.processes import scrape

pytestmark = [
    pytest.mark.realclock,
    pytest.mark.skipif(haproxy_path() is None,
                       reason="needs Debian's haproxy (apt-get install haproxy)"),
]

TTL = 3.0
"Seconds a lease lasts in these tests."
SETTINGS = {"NEXUS_LEASE_TTL": str(TTL), "NEXUS_DRAIN_SPREAD": "0.5",
            "NEXUS_DRAIN_TIMEOUT": "8"}
TEST_TIMEOUT = 120.0
"Seconds one test may take in all."
MOVE_EVERY = 0.1
"Seconds between one player's moves under load."
OPTIONS = Options(backoff=Backoff(max_attempts=8))
"Clients as an application would configure them, a little more patient than the default."


@asynccontextmanager
async def cluster(database_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    with trio.fail_after(TEST_TIMEOUT):
        async with open_cluster(database_url, tmp_path / "cluster", settings=SETTINGS) as c:
            yield c


def fetch(url: str, statement: Any, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(statement, params).fetchall()


async def query(url: str, statement: Any, *params: Any) -> list[tuple[Any, ...]]:
    return await trio.to_thread.run_sync(fetch, url, statement, params)


async def owner_of(c: Cluster, code: str) -> int:
    """The index of the process that holds ``code``'s lease."""
    [(owner_url,)] = await query(c.database_url,
                                 "SELECT owner_url FROM room_leases WHERE room_code = %s", code)
    return next(s.index for s in c.servers if s.url == owner_url)


async def journal_ids(c: Cluster) -> list[str]:
    return [row[0] for row in await query(c.database_url,
                                          "SELECT event_id FROM room_events")]


@attrs.define(eq=False)
class Player:
    """A session and everything it heard."""

    session: Session
    events: list[tuple[float, ClientEvent]] = attrs.Factory(list)
    moves: int = 0
    arrived: trio.Event = attrs.Factory(trio.Event)

    async def listen(self) -> None:
        async for batch in self.session.event_batches():
            now = trio.current_time()
            self.events.extend((now, event) for event in batch)
            self.arrived.set()
            self.arrived = trio.Event()

    def of(self, kind: type[Any]) -> list[tuple[float, Any]]:
        return [(when, event) for when, event in self.events if isinstance(event, kind)]

    @property
    def acked(self) -> set[str]:
        """Event ids the server acknowledged (committed)."""
        return ({e.event_id for _, e in self.of(EventAcked)}
                | {e.event_id for _, e in self.of(UpdateConfirmed)})

    async def until(self, condition: Any, what: str) -> None:
        """Wait (30 s at most) until ``condition()`` holds after an event arrived."""
        with trio.fail_after(30):
            while not condition():
                await self.arrived.wait()

    async def move_on(self, token_id: str, stop: trio.Event) -> None:
        """Move its token every MOVE_EVERY seconds until ``stop``."""
        while not stop.is_set():
            self.moves += 1
            await self.session.move_token(token_id, self.moves % 50, 1, force=True)
            with trio.move_on_after(MOVE_EVERY):
                await stop.wait()


@asynccontextmanager
async def seated(url: str, nursery: trio.Nursery, **seat: Any) -> AsyncIterator[Player]:
    async with connect(url, options=OPTIONS, **seat) as session:
        player = Player(session)
        nursery.start_soon(player.listen)
        yield player


@asynccontextmanager
async def rooms_under_load(c: Cluster, rooms: int) -> AsyncIterator[list[Player]]:
    """``rooms`` rooms of two players each, through HAProxy, every player moving its own
    token; the load stops when the block ends, then every session flushes."""
    stop = trio.Event()
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        players: list[Player] = []
        for index in range(rooms):
            gm = await stack.enter_async_context(seated(c.url, nursery, name=f"GM{index}",
                                                        role="host"))
            scene = await gm.session.create_scene("Map")
            for seat in (0, 1):
                await gm.session.create_token(scene.entity_id, seat, 0, token_id=f"t{seat}")
            await gm.session.flush()
            ana = await stack.enter_async_context(seated(c.url, nursery,
                                                         room=gm.session.room_code, name="Ana"))
            players += [gm, ana]
            for seat, player in enumerate((gm, ana)):
                nursery.start_soon(player.move_on, f"t{seat}", stop)
        yield players
        stop.set()
        with trio.fail_after(30):
            for player in players:
                await player.session.flush()
        # Leaving closes every session (their listeners end with them), then the nursery.


async def assert_every_ack_once(c: Cluster, players: list[Player]) -> None:
    journal = await journal_ids(c)
    assert len(journal) == len(set(journal))
    acked = set().union(*(p.acked for p in players))
    assert acked <= set(journal)
    for player in players:
        assert not player.of(ReconnectionFailed), player.events
        assert not player.of(SessionEnded)
        assert player.session.unanswered == 0  # every move it made was answered


# Spread and relays --------------------------------------------------------------------------


async def test_rooms_spread_and_members_on_different_processes_see_each_others_moves(
        database_url: str, tmp_path: Path) -> None:
    async with cluster(database_url, tmp_path) as c, trio.open_nursery() as nursery:
        codes = []
        for index in range(6):  # no code: HAProxy goes round robin
            async with connect(c.url, name=f"GM{index}", role="host") as gm:
                codes.append(gm.room_code)
        owners = {await owner_of(c, code) for code in codes}
        assert len(owners) >= 2

        async with seated(c.url, nursery, name="GM", role="host") as gm:
            code = gm.session.room_code
            home = await owner_of(c, code)
            others = [s for s in c.servers if s.index != home]
            scene = await gm.session.create_scene("Map")
            await gm.session.create_token(scene.entity_id, 0, 0, token_id="rook")
            await gm.session.flush()
            async with seated(c.url, nursery, room=code, name="Ana") as ana, \
                    seated(others[0].url, nursery, room=code, name="Bo") as bo, \
                    seated(others[1].url, nursery, room=code, name="Cy") as cy:
                await bo.session.move_token("rook", 3, 4)
                await bo.session.flush()
                for player in (gm, ana, cy):
                    await player.until(
                        lambda p=player: p.session.state["tokens"]["rook"]["position"]
                        == {"x": 3.0, "y": 4.0}, "Bo's move")
                await gm.session.move_token("rook", 7, 7)
                await gm.session.flush()
                for player in (bo, cy):
                    await player.until(
                        lambda p=player: p.session.state["tokens"]["rook"]["position"]
                        == {"x": 7.0, "y": 7.0}, "GM's move")
                assert [m.name for m in cy.session.members] == ["GM", "Ana", "Bo", "Cy"]
        assert await owner_of(c, code) == home  # relays never moved the room


async def test_a_room_created_where_its_creator_landed_moves_to_its_codes_process(
        database_url: str, tmp_path: Path) -> None:
    async with cluster(database_url, tmp_path) as c, trio.open_nursery() as nursery:
        # Round robin puts new rooms on every process; most are not where HAProxy sends
        # their code's joins. Those move once their players arrive, and then nothing is
        # relayed any more.
        async with AsyncExitStack() as stack:
            players = []
            for index in range(3):
                gm = await stack.enter_async_context(
                    seated(c.url, nursery, name=f"GM{index}", role="host"))
                players.append(gm)
                for name in ("Ana", "Bo"):
                    players.append(await stack.enter_async_context(seated(
                        c.url, nursery, room=gm.session.room_code, name=name)))
            for player in players:
                await player.session.chat("hello")
            with trio.fail_after(30):
                # Other processes' metrics: polling is the only way to watch them.
                while not all(p.session.connected for p in players) \
                        or await relays_open(c):  # noqa: ASYNC110
                    await trio.sleep(0.2)
            for player in players:
                await player.session.chat("after")
                await player.session.flush()
            assert await relays_open(c) == 0
        moved = sum([(await scrape(s.port)).get("nexus_room_handoffs_total", 0)
                     for s in c.servers])
        assert moved <= 3


# Failover -----------------------------------------------------------------------------------


async def test_kill_9_under_load_moves_its_rooms_within_the_lease_and_loses_nothing(
        database_url: str, tmp_path: Path) -> None:
    async with cluster(database_url, tmp_path) as c:
        async with rooms_under_load(c, rooms=6) as players:
            await trio.sleep(1.0)  # under load
            by_owner: dict[int, list[str]] = {}
            for gm in players[::2]:
                code = gm.session.room_code
                by_owner.setdefault(await owner_of(c, code), []).append(code)
            victim = max(by_owner, key=lambda i: len(by_owner[i]))
            killed_at = trio.current_time()
            await c.servers[victim].kill()
            moved = [p for p in players if p.session.room_code in by_owner[victim]]
            for player in moved:
                await player.until(lambda p=player: any(
                    when > killed_at for when, _ in p.of(Reconnected)), "a reconnection")
            resumed = [min(when for when, _ in p.of(Reconnected) if when > killed_at)
                       for p in moved]
            assert max(resumed) - killed_at <= TTL + 2.0
            for code in by_owner[victim]:
                assert await owner_of(c, code) != victim
            await trio.sleep(1.0)  # and the load goes on there
        await assert_every_ack_once(c, players)


async def test_a_process_paused_past_its_lease_is_fenced_when_it_wakes(
        database_url: str, tmp_path: Path) -> None:
    async with cluster(database_url, tmp_path) as c, trio.open_nursery() as nursery:
        async with seated(c.url, nursery, name="GM", role="host") as gm:
            code = gm.session.room_code
            paused = c.servers[await owner_of(c, code)]
            other = next(s for s in c.servers if s is not paused)
            async with seated(paused.url, nursery, room=code, name="Cy") as cy:
                await cy.session.chat("before")
                await cy.session.flush()
                paused.signal(signal.SIGSTOP)
                await trio.sleep(TTL + 1.0)
                async with seated(other.url, nursery, room=code, name="Dee") as dee:
                    assert await owner_of(c, code) == other.index  # taken over
                    await dee.session.chat("on the new owner")
                    await dee.session.flush()
                    said = await cy.session.chat("while paused")  # waits in the socket
                    paused.signal(signal.SIGCONT)
                    await cy.until(lambda: said.event_id in cy.acked, "the ack")
                    await dee.until(lambda: any(
                        isinstance(e, RoomEvent) and e.event_id == said.event_id
                        for _, e in dee.events), "Cy's message")
        metrics = await scrape(paused.port)
        assert metrics.get("nexus_fenced_writes_total", 0) >= 1
        journal = await journal_ids(c)
        assert journal.count(said.event_id) == 1
        assert await owner_of(c, code) == other.index


async def test_a_rolling_restart_under_load_loses_nothing_and_no_client_gives_up(
        database_url: str, tmp_path: Path) -> None:
    async with cluster(database_url, tmp_path) as c:
        async with rooms_under_load(c, rooms=6) as players:
            await trio.sleep(1.0)
            for server in c.servers:
                assert await server.drain() == 0
                await server.start()
                await c.until_up({0, 1, 2})
            await trio.sleep(1.0)
        await assert_every_ack_once(c, players)
        reconnected = sum(len(p.of(Reconnected)) for p in players)
        assert reconnected >= len(players)  # every room was sent away at least once


async def test_two_processes_racing_to_create_one_room_give_it_to_exactly_one(
        database_url: str, tmp_path: Path) -> None:
    async with cluster(database_url, tmp_path) as c:
        outcomes: list[str] = []

        async def create(index: int) -> None:
            try:
                async with connect(c.servers[index].url, room="RACE", name=f"GM{index}",
                                   role="host"):
                    outcomes.append("created")
            except Refused as refused:
                outcomes.append(refused.code)

        async with trio.open_nursery() as nursery:
            for index in (0, 1):
                nursery.start_soon(create, index)
        assert sorted(outcomes) == ["created", "room-exists"]
        rows = await query(c.database_url, "SELECT owner FROM room_leases"
                                           " WHERE room_code = 'RACE'")
        assert len(rows) == 1


async def relays_open(c: Cluster) -> float:
    return sum([(await scrape(s.port)).get("nexus_relays_open", 0) for s in c.servers])
