"""The PostgreSQL store against a real PostgreSQL server, with the real clock.

Covers the schema and its migrations (re-applying is a no-op, two processes
migrating one fresh database at once apply it once; the tables, triggers,
functions and view exist), what ``commit`` writes and ``load_room`` reads back
(room row, epochs, snapshot, journal with secrets, last seen), that a batch is
one transaction (a failing write leaves nothing of it) and may be retried after
it committed without writing anything twice, the projections kept in step with
the journal (players with hashed tokens only, hosts and co-hosts with their
permissions, the primary host through migrations, leaves and kicks), snapshots
that only move forward and trim the journal to the retained tail, a new room
replacing an abandoned one of the same code, abandonment and deletion by last
activity, ``cleanup_old_rooms()``, the ``room_stats`` view, the activity
trigger, the connection log and presence; an unreachable database (every call
raises ``StoreError``), the connection string and what may be logged of it (a
malformed ``DATABASE_URL`` is a one-line configuration error, password unshown);
and the real server on PostgreSQL over TCP: a room survives a drain and a new
server, and ``/ready`` turns 503 while the database cannot be reached.

Each test gets a fresh migrated database (the ``database_url`` fixture). Every
wait is bounded with ``trio.fail_after``.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, LiteralString

import attrs
import orjson
import psycopg
import pytest
import trio
from psycopg import sql

from nexus_actors.actors import persistence
from nexus_actors.actors.room import hash_token
from nexus_actors.actors.supervisor import Server, serve
from nexus_actors.config import Config
from nexus_actors.errors import ConfigError, StoreError, StoreRejected
from nexus_actors.room.events import Event
from nexus_actors.room.permissions import CO_HOST, PRIMARY
from nexus_actors.store.base import (
    AppendEvent,
    LogConnection,
    PutPresence,
    PutRoom,
    PutSeatToken,
    PutSnapshot,
    RoomStatus,
    Write,
)
from nexus_actors.store.migrate import LOCK_KEY, migrate, migrations
from nexus_actors.store.postgres import KEEPALIVES, PostgresStore, conninfo, redact
from nexus_actors.testing import TestClient, query
from nexus_actors.testing.postgres import Databases, open_store, with_database
from nexus_actors.testing.processes import free_port, server_environment

pytestmark = pytest.mark.realclock

TEST_TIMEOUT = 20.0
"Seconds one test may take in all."
POOL_TIMEOUT = 5.0
"Seconds the store's pool waits for a connection before a call fails (``PostgresStore``)."
CODE = "ABCD"
T0 = 1_700_000_000_123
"A wall-clock time in ms with a millisecond part, for round trips."
TABLES = ("rooms", "hosts", "players", "game_states", "room_events", "connection_events",
          "schema_migrations", "room_leases", "cluster_settings")


# Helpers ------------------------------------------------------------------------------


async def rows(url: str, statement: LiteralString | sql.Composed,
               params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on its own connection; its rows."""
    def run() -> list[tuple[Any, ...]]:
        with psycopg.connect(url, autocommit=True) as conn:
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description is not None else []

    return await trio.to_thread.run_sync(run)


async def dump(url: str) -> dict[str, list[str]]:
    """Every row of every table, as text, sorted."""
    found = {}
    for table in TABLES:
        statement = sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier(table))
        found[table] = sorted(row[0] for row in await rows(url, statement))
    return found


def now_ms() -> int:
    return int(time.time() * 1000)


def event(sequence: int, name: str, data: dict[str, Any], *, actor: str | None = "h",
          event_id: str | None = None, secret: dict[str, Any] | None = None) -> Event:
    return Event(sequence=sequence, name=name, data=data,
                 event_id=event_id or f"e{sequence}", actor_id=actor,
                 timestamp=T0 + sequence, secret=secret)


def append(sequence: int, name: str, data: dict[str, Any], *, code: str = CODE,
           **options: Any) -> AppendEvent:
    return AppendEvent(code=code, event=event(sequence, name, data, **options))


def chat(sequence: int, text: str = "hi", *, code: str = CODE) -> AppendEvent:
    return append(sequence, "chat/message", {"message": {"id": f"m{sequence}", "text": text}},
                  code=code)


def join(sequence: int, member_id: str, *, role: str = "player", token: str | None = None,
         code: str = CODE) -> AppendEvent:
    token = token or f"token-of-{member_id}"
    return append(sequence, "session/join",
                  {"player": {"id": member_id, "name": member_id.upper(), "role": role}},
                  code=code, actor=member_id, event_id=f"join-{member_id}",
                  secret={"tokenHash": hash_token(token)})


def room(code: str = CODE, *, status: RoomStatus = "active", at: int | None = None,
         created: bool = False, host_id: str | None = None,
         epochs: tuple[tuple[int, int], ...] = ((1, 1),)) -> PutRoom:
    return PutRoom(code=code, status=status, last_activity=now_ms() if at is None else at,
                   epochs=epochs, host_id=host_id, created=created)


def snapshot(sequence: int, *, code: str = CODE) -> PutSnapshot:
    body = {"code": code, "sequence": sequence, "state": {"chat": [f"upto {sequence}"]}}
    return PutSnapshot(code=code, sequence=sequence, snapshot=orjson.dumps(body))


def new_room(code: str = CODE, host: str = "h") -> list[Write]:
    """A created room whose first seat (``host``) is its primary host, as a room writes it."""
    return [room(code, created=True), join(1, host, role="host", code=code)]


async def players(url: str, code: str = CODE) -> dict[str, tuple[str, bool]]:
    """``id -> (name, connected)``."""
    found = await rows(url, "SELECT id, name, connected FROM players WHERE room_code = %s",
                       (code,))
    return {r[0]: (r[1], r[2]) for r in found}


async def hosts(url: str, code: str = CODE) -> dict[str, tuple[bool, dict[str, bool]]]:
    """``user_id -> (is_primary, permissions)``."""
    found = await rows(url, "SELECT user_id, is_primary, permissions FROM hosts"
                            " WHERE room_code = %s", (code,))
    return {r[0]: (r[1], r[2]) for r in found}


async def primary_host(url: str, code: str = CODE) -> str | None:
    [(host_id,)] = await rows(url, "SELECT primary_host_id FROM rooms WHERE code = %s", (code,))
    return host_id  # type: ignore[no-any-return]


async def journal_sequences(url: str, code: str = CODE) -> list[int]:
    found = await rows(url, "SELECT server_sequence FROM room_events WHERE room_code = %s"
                            " ORDER BY server_sequence", (code,))
    return [r[0] for r in found]


# Migrations ---------------------------------------------------------------------------


async def test_migrating_a_migrated_database_is_a_no_op(database_url: str) -> None:
    before = await dump(database_url)
    assert await trio.to_thread.run_sync(migrate, database_url) == []
    assert await dump(database_url) == before
    recorded = await rows(database_url, "SELECT version, name FROM schema_migrations"
                                        " ORDER BY version")
    assert recorded == [(m.version, m.name) for m in migrations()]


@asynccontextmanager
async def fresh_unmigrated_database(databases: Databases) -> AsyncIterator[str]:
    """A new empty database (no template: nothing migrated), dropped after the block."""
    name = f"{databases.prefix}_bare_{secrets.token_hex(3)}"
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    await rows(databases.admin, create)
    try:
        yield with_database(databases.admin, name)
    finally:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        with trio.CancelScope(shield=True):
            await rows(databases.admin, drop)


async def waiting_for_lock(url: str) -> int:
    found = await rows(url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                            " AND NOT granted AND database = (SELECT oid FROM pg_database"
                            " WHERE datname = current_database())")
    return int(found[0][0])


async def test_two_processes_migrating_a_fresh_database_at_once_apply_it_once(
        postgres_databases: Databases, tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with fresh_unmigrated_database(postgres_databases) as url:
            env = server_environment(DATABASE_URL=url, LOG_LEVEL="warning")
            outputs = [tmp_path / "first.out", tmp_path / "second.out"]
            processes: list[trio.Process] = []
            # Hold the migration lock until both processes wait for it, so they do race.
            holder = await trio.to_thread.run_sync(
                lambda: psycopg.connect(url, autocommit=True))
            try:
                await trio.to_thread.run_sync(
                    holder.execute, "SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
                for output in outputs:
                    with output.open("wb") as out:
                        processes.append(await trio.lowlevel.open_process(
                            [sys.executable, "-m", "nexus_actors", "migrate"], env=env,
                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT))
                # Polling is the only way to see other processes block on the lock.
                while await waiting_for_lock(url) < 2:
                    assert all(p.poll() is None for p in processes), "a migrate exited early"
                    await trio.sleep(0.02)
                await trio.to_thread.run_sync(
                    holder.execute, "SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
                codes = [await p.wait() for p in processes]
            finally:
                holder.close()
                for process in processes:
                    if process.returncode is None:
                        process.kill()
                        with trio.CancelScope(shield=True):
                            await process.wait()
            said = sorted(o.read_text().strip().rsplit(": ", 1)[-1] for o in outputs)
            assert codes == [0, 0], said
            assert said == [", ".join(f"{m.version:03d}" for m in migrations()),
                            "none (up to date)"]
            recorded = await rows(url, "SELECT version FROM schema_migrations ORDER BY version")
            assert recorded == [(m.version,) for m in migrations()]
            assert await trio.to_thread.run_sync(migrate, url) == []


async def test_schema_has_its_tables_triggers_functions_and_view(database_url: str) -> None:
    tables = await rows(database_url, "SELECT tablename FROM pg_tables"
                                      " WHERE schemaname = 'public'")
    assert {t[0] for t in tables} == set(TABLES)
    triggers = await rows(database_url, "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
    assert {t[0] for t in triggers} == {"update_room_activity_on_events",
                                        "update_room_activity_on_game_state"}
    functions = await rows(database_url, "SELECT proname FROM pg_proc p JOIN pg_namespace n"
                                         " ON n.oid = p.pronamespace WHERE nspname = 'public'")
    assert {f[0] for f in functions} == {"update_room_activity", "cleanup_old_rooms",
                                         "cleanup_disconnected_players", "journal_conflict"}
    views = await rows(database_url, "SELECT viewname FROM pg_views WHERE schemaname = 'public'")
    assert views == [("room_stats",)]


# Commit and load ----------------------------------------------------------------------


async def test_what_a_batch_writes_load_room_reads_back(database_url: str) -> None:
    at = now_ms() - 1234
    state = {"code": CODE, "sequence": 3, "state": {"scenes": {"s1": {"name": "Cave"}}}}
    written = [
        join(1, "h", role="host", token="host-token"),
        append(2, "scene/create", {"scene": {"id": "s1", "name": "Cave", "version": 1}}),
        join(3, "ana", token="ana-token"),
    ]
    async with open_store(database_url) as store:
        assert await store.load_room(CODE) is None
        await store.commit([room(created=True), *written,
                            PutSnapshot(code=CODE, sequence=3, snapshot=orjson.dumps(state)),
                            PutPresence(code=CODE, member_id="ana", connected=False, at=T0 + 99),
                            room(at=at, host_id="h", epochs=((1, 1), (2, 3)))])
        record = await store.load_room(CODE)
    assert record is not None
    assert record.status == "active"
    assert abs(record.last_activity - at) <= 1
    assert record.epochs == ((1, 1), (2, 3))
    assert record.snapshot is not None
    assert orjson.loads(record.snapshot) == state
    assert list(record.journal) == [w.event for w in written]
    assert record.journal[2].secret == {"tokenHash": hash_token("ana-token")}
    assert dict(record.last_seen) == {"h": T0 + 1, "ana": T0 + 99}


async def test_abandoned_room_loads_without_its_journal_or_snapshot(database_url: str) -> None:
    async with open_store(database_url) as store:
        await store.commit([*new_room(), snapshot(1), room(status="abandoned")])
        record = await store.load_room(CODE)
    assert record is not None
    assert (record.status, record.snapshot, list(record.journal)) == ("abandoned", None, [])


# One transaction per batch ----------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    pytest.param(chat(1, code="ZZZZ"), id="event-for-a-room-with-no-row"),
    pytest.param(append(4, "chat/message", {"message": {}}, event_id="e2"),
                 id="duplicate-event-id-at-another-sequence"),
])
async def test_a_batch_with_a_failing_write_leaves_nothing_behind(
        database_url: str, bad: AppendEvent) -> None:
    async with open_store(database_url) as store:
        await store.commit([*new_room(), chat(2)])
        before = await dump(database_url)
        batch: list[Write] = [
            chat(3), room("WXYZ", created=True), join(10, "x", code="WXYZ"), snapshot(3),
            PutPresence(code=CODE, member_id="h", connected=False, at=T0 + 50),
            LogConnection(code=CODE, user_id="h", kind="disconnect", at=T0 + 50), bad]
        with pytest.raises(StoreError):
            await store.commit(batch)
        assert await dump(database_url) == before
        assert await store.load_room("WXYZ") is None


async def test_a_different_event_at_a_taken_sequence_is_refused_not_dropped(
        database_url: str) -> None:
    async with open_store(database_url) as store:
        await store.commit([*new_room(), chat(2, "first")])
        with pytest.raises(StoreRejected, match="different event at sequence 2"):
            await store.commit([append(2, "chat/message", {"message": {"text": "other"}},
                                       event_id="other")])
        record = await store.load_room(CODE)
    assert record is not None
    kept = [e for e in record.journal if e.sequence == 2]
    assert len(kept) == 1
    assert kept[0].event_id != "other"
    assert kept[0].data["message"]["text"] == "first"


async def test_a_batch_after_a_ping_is_committed_for_every_other_connection(
        database_url: str) -> None:
    # The persistence actor pings an idle store on the connection it commits with: the
    # ping must not leave a transaction open that the next batch would only nest in.
    async with open_store(database_url) as store, open_store(database_url) as other:
        await store.ping()
        await store.commit(new_room())
        assert await other.load_room(CODE) is not None
        await store.ping()
        await store.commit([chat(2)])
        record = await other.load_room(CODE)
        assert record is not None
        assert [e.sequence for e in record.journal] == [1, 2]


async def test_retrying_a_committed_batch_writes_nothing_twice(database_url: str) -> None:
    batch: list[Write] = [
        *new_room(), join(2, "ana"), chat(3), chat(4),
        append(5, "session/co-host-added", {"coHostId": "ana", "permissions": CO_HOST.to_json()}),
        chat(6), snapshot(6),
        PutPresence(code=CODE, member_id="ana", connected=False, at=T0 + 77)]
    async with open_store(database_url, journal_retain=3) as store:
        await store.commit(batch)
        once = await store.load_room(CODE)
        await store.commit(batch)  # as after an error raised once the first had committed
        twice = await store.load_room(CODE)
    assert once is not None
    assert twice is not None
    # Only the activity time moves (the database's clock, bumped by the trigger).
    assert attrs.evolve(twice, last_activity=once.last_activity) == once
    assert [e.sequence for e in twice.journal] == [4, 5, 6]
    assert await journal_sequences(database_url) == [4, 5, 6]
    [(snapshot_sequence,)] = await rows(database_url, "SELECT server_sequence FROM game_states")
    assert snapshot_sequence == 6
    assert await players(database_url) == {"h": ("H", True), "ana": ("ANA", False)}
    assert await hosts(database_url) == {"h": (True, PRIMARY.to_json()),
                                         "ana": (False, CO_HOST.to_json())}


# Projections ------------------------------------------------------------------------------


async def test_joining_stores_the_token_hash_and_never_the_token(database_url: str) -> None:
    token = f"resume-{secrets.token_urlsafe(16)}"
    async with open_store(database_url) as store:
        await store.commit([*new_room(), join(2, "ana", token=token)])
    stored = await rows(database_url, "SELECT token_hash FROM players WHERE id = 'ana'")
    assert stored == [(hash_token(token),)]
    assert await players(database_url) == {"h": ("H", True), "ana": ("ANA", True)}
    everything = orjson.dumps(await dump(database_url)).decode()
    assert hash_token(token) in everything
    assert token not in everything


async def test_first_seat_as_host_becomes_the_primary_host(database_url: str) -> None:
    async with open_store(database_url) as store:
        await store.commit([*new_room(), join(2, "ana")])
    assert await hosts(database_url) == {"h": (True, PRIMARY.to_json())}
    assert await primary_host(database_url) == "h"


async def test_co_hosts_follow_added_and_removed_events(database_url: str) -> None:
    def added(sequence: int, member_id: str) -> AppendEvent:
        return append(sequence, "session/co-host-added",
                      {"coHostId": member_id, "permissions": CO_HOST.to_json()})

    async with open_store(database_url) as store:
        await store.commit([*new_room(), join(2, "ana"), join(3, "bob"),
                            added(4, "ana"), added(5, "bob")])
        assert await hosts(database_url) == {"h": (True, PRIMARY.to_json()),
                                             "ana": (False, CO_HOST.to_json()),
                                             "bob": (False, CO_HOST.to_json())}
        await store.commit([append(6, "session/co-host-removed", {"coHostId": "ana"})])
    assert await hosts(database_url) == {"h": (True, PRIMARY.to_json()),
                                         "bob": (False, CO_HOST.to_json())}
    assert set(await players(database_url)) == {"h", "ana", "bob"}


async def test_host_migration_moves_the_primary_host(database_url: str) -> None:
    async with open_store(database_url) as store:
        await store.commit([
            *new_room(), join(2, "ana"),
            append(3, "session/co-host-added", {"coHostId": "ana",
                                                "permissions": CO_HOST.to_json()}),
            append(4, "session/host-migrated", {"newHostId": "ana", "previousHostId": "h",
                                                "manual": False})])
    assert await hosts(database_url) == {"ana": (True, PRIMARY.to_json())}
    assert await primary_host(database_url) == "ana"
    assert set(await players(database_url)) == {"h", "ana"}  # the old host is a player now


async def test_leaving_and_being_kicked_remove_the_seat_and_its_host_role(
        database_url: str) -> None:
    async with open_store(database_url) as store:
        await store.commit([
            *new_room(), join(2, "ana"), join(3, "bob"),
            append(4, "session/co-host-added", {"coHostId": "ana",
                                                "permissions": CO_HOST.to_json()})])
        await store.commit([
            append(5, "session/leave", {"uuid": "ana", "reason": "left"}, actor="ana"),
            append(6, "session/kicked", {"playerId": "bob", "by": "h"})])
    assert set(await players(database_url)) == {"h"}
    assert await hosts(database_url) == {"h": (True, PRIMARY.to_json())}


async def test_a_join_and_leave_in_one_batch_leave_no_seat(database_url: str) -> None:
    async with open_store(database_url) as store:
        await store.commit([*new_room(), join(2, "ana"),
                            append(3, "session/leave", {"uuid": "ana", "reason": "left"})])
        record = await store.load_room(CODE)
    assert set(await players(database_url)) == {"h"}
    assert record is not None
    assert [e.name for e in record.journal] == ["session/join", "session/join", "session/leave"]


async def test_primary_host_leaving_with_its_successor_in_one_batch(database_url: str) -> None:
    async with open_store(database_url) as store:
        await store.commit([*new_room(), join(2, "ana")])
        await store.commit([
            append(3, "session/leave", {"uuid": "h", "reason": "left"}),
            append(4, "session/host-migrated", {"newHostId": "ana", "previousHostId": "h",
                                                "manual": False})])
    assert set(await players(database_url)) == {"ana"}
    assert await hosts(database_url) == {"ana": (True, PRIMARY.to_json())}
    assert await primary_host(database_url) == "ana"


# Snapshots and the journal ----------------------------------------------------------------


async def test_snapshots_only_move_forward(database_url: str) -> None:
    async with open_store(database_url) as store:
        await store.commit([*new_room(), chat(2), chat(3), snapshot(2)])
        await store.commit([snapshot(3)])
        await store.commit([snapshot(2)])  # older: ignored
        record = await store.load_room(CODE)
    assert record is not None
    assert record.snapshot is not None
    assert orjson.loads(record.snapshot)["sequence"] == 3
    assert await rows(database_url, "SELECT server_sequence, version FROM game_states") == [
        (3, 2)]


async def test_a_snapshot_trims_the_journal_to_the_retained_tail(database_url: str) -> None:
    async with open_store(database_url, journal_retain=2) as store:
        await store.commit([*new_room(), *(chat(n) for n in range(2, 9)), snapshot(6)])
        record = await store.load_room(CODE)
        assert record is not None
        # Kept: the last journal_retain events the snapshot covers, and every later one.
        assert [e.sequence for e in record.journal] == [5, 6, 7, 8]
        await store.commit([chat(9), snapshot(9)])
        record = await store.load_room(CODE)
    assert record is not None
    assert [e.sequence for e in record.journal] == [8, 9]


# Room rows --------------------------------------------------------------------------------


async def test_creating_a_room_over_an_abandoned_one_replaces_it(database_url: str) -> None:
    async with open_store(database_url) as store:
        await store.commit([*new_room(), join(2, "ana"), chat(3), snapshot(3),
                            LogConnection(code=CODE, user_id="ana", kind="connect", at=T0)])
        await store.commit([room(status="abandoned")])
        await store.commit(new_room(host="zed"))
        record = await store.load_room(CODE)
    assert record is not None
    assert (record.status, record.snapshot) == ("active", None)
    assert [(e.sequence, e.event_id) for e in record.journal] == [(1, "join-zed")]
    assert set(await players(database_url)) == {"zed"}
    assert await hosts(database_url) == {"zed": (True, PRIMARY.to_json())}
    assert await rows(database_url, "SELECT count(*) FROM connection_events") == [(0,)]


async def test_idle_rooms_are_abandoned_then_deleted_by_last_activity(database_url: str) -> None:
    now = now_ms()
    hour = 3_600_000
    async with open_store(database_url) as store:
        for code in ("OLDH", "NEWH", "ACTV"):
            await store.commit(new_room(code))
        await store.commit([room("OLDH", status="hibernating", at=now - 2 * hour),
                            room("NEWH", status="hibernating", at=now - 1000),
                            room("ACTV", at=now - 2 * hour)])
        assert await store.abandon_idle(now - hour) == ["OLDH"]
        assert await store.abandon_idle(now - hour) == []
        statuses = dict(await rows(database_url, "SELECT code, status FROM rooms"))
        assert statuses == {"OLDH": "abandoned", "NEWH": "hibernating", "ACTV": "active"}

        assert await store.delete_abandoned(now - 3 * hour) == 0
        assert await store.delete_abandoned(now - hour) == 1
        assert await store.load_room("OLDH") is None
    assert await rows(database_url, "SELECT count(*) FROM room_events"
                                    " WHERE room_code = 'OLDH'") == [(0,)]
    assert await rows(database_url, "SELECT count(*) FROM players"
                                    " WHERE room_code = 'OLDH'") == [(0,)]


async def test_cleanup_functions_delete_only_what_is_old_enough(database_url: str) -> None:
    now = now_ms()
    hour = 3_600_000
    async with open_store(database_url) as store:
        for code in ("GONE", "KEEP", "HIBR"):
            await store.commit(new_room(code))
        await store.commit([
            PutPresence(code="KEEP", member_id="h", connected=False, at=now - 30 * hour),
            room("GONE", status="abandoned", at=now - 25 * hour),
            room("KEEP", status="abandoned", at=now - hour),
            room("HIBR", status="hibernating", at=now - 48 * hour)])
    assert await rows(database_url, "SELECT cleanup_old_rooms(24)") == [(1,)]
    assert sorted(await rows(database_url, "SELECT code FROM rooms")) == [("HIBR",), ("KEEP",)]
    assert await rows(database_url, "SELECT cleanup_disconnected_players(24)") == [(1,)]
    left = await rows(database_url, "SELECT room_code, id FROM players ORDER BY room_code")
    assert left == [("HIBR", "h")]


async def test_room_stats_counts_rooms_by_status_and_connected_players(
        database_url: str) -> None:
    async with open_store(database_url) as store:
        for code in ("AAAA", "BBBB", "CCCC"):
            await store.commit([*new_room(code), join(2, "ana", code=code)])
        await store.commit([
            PutPresence(code="AAAA", member_id="ana", connected=False, at=now_ms()),
            room("CCCC", status="hibernating")])
        read = await store.room_stats()  # what /api/stats and /metrics show
    stats = await rows(database_url, "SELECT status, room_count, total_players FROM room_stats")
    assert sorted(stats) == [("active", 2, 3), ("hibernating", 1, 2)]
    assert [(s.status, s.rooms, s.players_connected) for s in read] == sorted(stats)
    assert all(s.avg_age_seconds is not None and s.avg_age_seconds >= 0 for s in read)


async def test_journaling_an_event_marks_the_room_active_now(database_url: str) -> None:
    long_ago = now_ms() - 3_600_000
    async with open_store(database_url) as store:
        await store.commit(new_room())
        await store.commit([room(at=long_ago)])
        record = await store.load_room(CODE)
        assert record is not None
        assert abs(record.last_activity - long_ago) <= 1
        await store.commit([chat(2)])
        record = await store.load_room(CODE)
    assert record is not None
    assert record.last_activity > long_ago + 1_800_000  # now(), by the database's clock


async def test_activity_is_marked_at_most_every_ten_seconds(database_url: str) -> None:
    # A busy room does not rewrite its row for every event (it would bloat the table).
    recent = now_ms() - 5_000
    async with open_store(database_url) as store:
        await store.commit(new_room())
        await store.commit([room(at=recent)])
        await store.commit([chat(2), chat(3)])
        record = await store.load_room(CODE)
    assert record is not None
    assert abs(record.last_activity - recent) <= 1


# Presence and the connection log ----------------------------------------------------------


async def test_presence_updates_the_seat_and_its_last_seen(database_url: str) -> None:
    async with open_store(database_url) as store:
        await store.commit([*new_room(), join(2, "ana")])
        await store.commit([PutPresence(code=CODE, member_id="ana", connected=False,
                                        at=T0 + 500)])
        assert await players(database_url) == {"h": ("H", True), "ana": ("ANA", False)}
        await store.commit([PutPresence(code=CODE, member_id="ana", connected=True,
                                        at=T0 + 900)])
        record = await store.load_room(CODE)
    assert await players(database_url) == {"h": ("H", True), "ana": ("ANA", True)}
    assert record is not None
    assert record.last_seen["ana"] == T0 + 900


async def test_a_rotated_token_is_loaded_with_the_one_before_and_never_stored_plain(
        database_url: str) -> None:
    async with open_store(database_url) as store:
        await store.commit([*new_room(), join(2, "ana")])
        before = await store.load_room(CODE)
        rotate = PutSeatToken(code=CODE, member_id="ana", token_hash=hash_token("second"),
                              previous_hash=hash_token("token-of-ana"))
        await store.commit([rotate])
        await store.commit([rotate])  # a retried batch changes nothing
        # A seat that is gone is no error (it left in a batch committed before).
        await store.commit([PutSeatToken(code=CODE, member_id="gone", token_hash="x",
                                         previous_hash="y")])
        after = await store.load_room(CODE)
    assert before is not None
    assert before.tokens == {}
    assert after is not None
    assert after.tokens == {"ana": (hash_token("second"), hash_token("token-of-ana"))}
    stored = await rows(database_url, "SELECT token_hash, previous_token_hash FROM players"
                                      " WHERE room_code = %s AND id = 'ana'", (CODE,))
    assert stored == [(hash_token("second"), hash_token("token-of-ana"))]
    assert "second" not in repr(await dump(database_url))  # hashes are hex


async def test_connection_log_lands_and_unknown_rooms_are_skipped(database_url: str) -> None:
    async with open_store(database_url) as store:
        await store.commit([
            *new_room(),
            LogConnection(code=CODE, user_id="h", kind="connect", at=T0 + 10),
            LogConnection(code="NONE", user_id="x", kind="connect", at=T0 + 11),
            LogConnection(code=CODE, user_id="h", kind="disconnect", at=T0 + 20,
                          metadata={"close": 1006}),
            chat(2)])
        assert await store.load_room(CODE) is not None
    logged = await rows(database_url, "SELECT room_code, user_id, event_type, metadata,"
                                      " (extract(epoch FROM timestamp) * 1000)::bigint"
                                      " FROM connection_events ORDER BY id")
    assert logged == [(CODE, "h", "connect", None, T0 + 10),
                      (CODE, "h", "disconnect", {"close": 1006}, T0 + 20)]


# An unreachable database, and the connection string ---------------------------------------


async def test_every_call_on_an_unreachable_database_raises_store_error() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    errors: list[str] = []

    async def call(operation: Any) -> None:
        with pytest.raises(StoreError) as caught:
            await operation()
        errors.append(caught.value.message)

    async with open_store(url, pool_max=3) as store:
        # Commits and pings (the persistence actor's own connection) fail at once, so
        # /ready reports an outage and the retries reconnect without delay.
        started = time.monotonic()
        with trio.fail_after(3):
            await call(store.ping)
            await call(lambda: store.commit([chat(1)]))
        assert time.monotonic() - started < 3
        # Loads go through the pool, which waits out its timeout.
        with trio.fail_after(POOL_TIMEOUT + 5):
            await call(lambda: store.load_room(CODE))
    assert len(errors) == 3
    assert all(message.startswith("database unavailable") for message in errors)


def test_conninfo_adds_keepalives_and_ssl_but_keeps_the_urls_own_settings() -> None:
    plain = psycopg.conninfo.conninfo_to_dict(conninfo("postgresql://u@db.example.com/app"))
    assert {k: plain[k] for k in KEEPALIVES} == KEEPALIVES
    assert "sslmode" not in plain
    assert (plain["host"], plain["dbname"], plain["user"]) == ("db.example.com", "app", "u")

    secure = psycopg.conninfo.conninfo_to_dict(
        conninfo("postgresql://u@db.example.com/app", ssl=True))
    assert secure["sslmode"] == "require"

    own = psycopg.conninfo.conninfo_to_dict(conninfo(
        "postgresql://u@db.example.com/app?sslmode=verify-full&connect_timeout=2", ssl=True))
    assert (own["sslmode"], own["connect_timeout"]) == ("verify-full", "2")


@pytest.mark.parametrize("url", [
    "postgresql://admin:s3cr3t-pw@db.example.com:5433/app?sslmode=require",
    "postgres://admin:s3cr3t-pw@db.example.com/app",
    "host=db.example.com user=admin password=s3cr3t-pw dbname=app",
    "postgresql://admin@db.example.com/app?password=s3cr3t-pw",
    "postgresql://admin:s3cr3t-pw@[db.example.com/app",  # unparsable
])
def test_redacted_url_never_shows_the_password(url: str) -> None:
    shown = redact(url)
    assert "s3cr3t" not in shown
    if "[" not in url:
        assert "host=db.example.com" in shown


def test_unparsable_url_is_a_config_error_that_never_shows_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        conninfo("postgresql://admin:s3cr3t-pw@[db.example.com/app")
    assert "s3cr3t" not in str(caught.value)


def test_migrate_with_an_unparsable_url_exits_2_without_showing_the_password() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nexus_actors", "migrate"], capture_output=True, text=True,
        env=server_environment(DATABASE_URL="postgresql://admin:s3cr3t-pw@[db.example.com/app"),
        timeout=TEST_TIMEOUT, check=False)
    assert done.returncode == 2
    assert "s3cr3t" not in done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        "nexus-actors: DATABASE_URL is not a valid PostgreSQL connection string"]


# The real server on PostgreSQL ------------------------------------------------------------


class Live:
    """A server on an ephemeral TCP port and WebSocket clients for it."""

    def __init__(self, server: Server, nursery: trio.Nursery) -> None:
        self.server = server
        self.nursery = nursery
        [self.port] = server.ports

    async def connect(self, target: str) -> TestClient:
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        return await TestClient.open(stream, target, self.nursery)

    async def seated(self, target: str, first: str) -> TestClient:
        client = await self.connect(target)
        frame = await client.next("event")
        assert frame["data"]["name"] == first, frame
        return client


@asynccontextmanager
async def live_server(store: PostgresStore, **overrides: Any) -> AsyncIterator[Live]:
    """``serve`` on 127.0.0.1 with ``store`` for the block; drained after."""
    config = Config(host="127.0.0.1", port=0, **overrides)
    listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(
        await trio.open_tcp_listeners(0, host="127.0.0.1"))
    stopped = trio.Event()

    async def run(*, task_status: trio.TaskStatus[Server]) -> None:
        try:
            await serve(config, store=store, listeners=listeners, handle_signals=False,
                        task_status=task_status)
        finally:
            stopped.set()

    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(run)
        try:
            yield Live(server, nursery)
        finally:
            with trio.CancelScope(shield=True):
                server.shutdown()
                with trio.fail_after(TEST_TIMEOUT):
                    await stopped.wait()
            nursery.cancel_scope.cancel()


async def acked(client: TestClient, name: str, data: dict[str, Any]) -> int:
    """Send a durable event; its ``serverSequence`` once the ack says it is committed."""
    event_id = await client.send_event(name, data)
    ack = (await client.until("event-ack", eventId=event_id))["data"]
    assert ack["duplicate"] is False
    sequence: int = ack["serverSequence"]
    return sequence


async def http_status(port: int, path: str) -> int:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        reply = b""
        while chunk := await stream.receive_some():
            reply += chunk
    return int(reply.split(b" ", 2)[1])


async def test_a_room_survives_a_drain_and_a_new_server_on_postgresql(
        database_url: str) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with open_store(database_url) as store, live_server(store) as live:
            host = await live.seated(query(host="", name="GM"), "session/created")
            await host.next("event-cursor")
            ana = await live.seated(query(join=host.room, name="Ana"), "session/joined")
            await acked(host, "session/add-co-host", {"playerId": ana.uuid})
            await acked(host, "scene/create", {"scene": {"id": "s1", "name": "Cave"}})
            last = await acked(host, "chat/message", {"text": "before the restart"})
            code, epoch = host.room, host.session["epoch"]

            live.server.shutdown()
            for client in (host, ana):
                assert (await client.until("backoff"))["data"]["reason"] == "server-restart"
                assert await client.wait_closed() == 1012

        assert await rows(database_url, "SELECT status FROM rooms") == [("hibernating",)]
        async with open_store(database_url) as store, live_server(store) as live:
            again = await live.seated(query(reconnect=code, token=host.token,
                                            lastSeenSequence=last), "session/reconnected")
            cursor = await again.next("event-cursor")
            assert cursor["data"] == {"mode": "resume", "sequence": last, "replayThrough": last}
            session = again.session
            assert (session["uuid"], session["sequence"], session["epoch"]) == (
                host.uuid, last, epoch + 1)  # every load from the store begins an epoch
            assert (session["hostId"], session["coHostIds"]) == (host.uuid, [ana.uuid])
            assert set(session["state"]["scenes"]) == {"s1"}
            assert [m["text"] for m in session["state"]["chat"]] == ["before the restart"]
            assert await acked(again, "chat/message", {"text": "after"}) == last + 1

    assert await hosts(database_url, code) == {host.uuid: (True, PRIMARY.to_json()),
                                               ana.uuid: (False, CO_HOST.to_json())}
    assert await journal_sequences(database_url, code) == list(range(1, last + 2))


async def test_ready_turns_503_while_the_database_is_unreachable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The persistence actor pings the store after this long idle (default 5 s).
    monkeypatch.setattr(persistence, "PING_INTERVAL", 0.5)
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    with trio.fail_after(TEST_TIMEOUT):
        async with open_store(url) as store, live_server(store) as live:
            assert await http_status(live.port, "/ready") == 200
            assert await http_status(live.port, "/health") == 200
            # Polling is the only way to watch an HTTP route change.
            while (status := await http_status(live.port, "/ready")) != 503:
                assert status == 200
                await trio.sleep(0.05)
            # No more pings (each waits out the pool's timeout), so the drain is quick.
            monkeypatch.setattr(persistence, "PING_INTERVAL", 600.0)
            assert live.server.health.store_error is not None
            assert live.server.health.store_error.startswith("database unavailable")
