"""The PostgreSQL store: psycopg's sync API in worker threads, one transaction per batch.

psycopg's async API needs asyncio and does not run under Trio, so every call
goes through ``trio.to_thread.run_sync`` with a :class:`trio.CapacityLimiter`
sized like the connection pool. The persistence actor commits one batch at a
time: the batch's statements go out in pipeline mode (one round trip for the
lot) inside one transaction, in the order the rooms wrote them, so the
``rooms``, ``hosts`` and ``players`` tables move in step with the journal.

A retried batch is harmless: journal rows conflict on ``(room_code,
server_sequence)`` and are skipped, snapshots only move forward, and the
projections are idempotent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, LiteralString, TypeVar

import orjson
import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from ..errors import ConfigError, StoreError, StoreRejected
from ..room.events import Event
from ..room.permissions import PRIMARY
from .base import (
    AppendEvent,
    Claim,
    Claimed,
    HeldElsewhere,
    LogConnection,
    PutPresence,
    PutRoom,
    PutSeatToken,
    PutSnapshot,
    ReleaseLease,
    RoomRecord,
    RoomStats,
    RoomStatus,
    Write,
)

log = logging.getLogger("nexus_actors.store")

T = TypeVar("T")

KEEPALIVES = {
    "keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "3",
    "keepalives_count": "3", "tcp_user_timeout": "15000", "connect_timeout": "5",
}
"""Socket settings so a vanished database is noticed in seconds, not at the kernel's
default of hours (a URL's own values win)."""

_PRIMARY = orjson.dumps(PRIMARY.to_json()).decode()


def conninfo(url: str, *, ssl: bool = False) -> str:
    """The connection string to use: the URL plus keepalives (and ``sslmode=require``)."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        # Not psycopg's message: it quotes the whole URL, password included.
        raise ConfigError("DATABASE_URL is not a valid PostgreSQL connection string") from None
    extra = {key: value for key, value in KEEPALIVES.items() if key not in params}
    if ssl and "sslmode" not in params:
        extra["sslmode"] = "require"
    return make_conninfo(url, **extra)


def redact(url: str) -> str:
    """The URL as it may be logged: no password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable database URL>"
    params.pop("password", None)
    shown = ", ".join(f"{key}={value}" for key, value in sorted(params.items())
                      if key in ("host", "port", "dbname", "user", "sslmode"))
    return shown or "local defaults"


class PostgresStore:
    """:class:`~nexus_actors.store.Store` on PostgreSQL."""

    def __init__(self, url: str, *, pool_max: int = 10, journal_retain: int = 1000,
                 ssl: bool = False, stuck_transaction: float = 15.0) -> None:
        self.journal_retain = journal_retain
        self.stuck_transaction = stuck_transaction
        """Seconds PostgreSQL lets the writer's transaction sit idle before it ends the
        session (``NEXUS_LEASE_TTL``): a process paused in the middle of a commit would
        otherwise keep its rooms' leases locked, and no other process could take them."""
        self._conninfo = conninfo(url, ssl=ssl)
        self._pool = ConnectionPool(
            self._conninfo, min_size=1, max_size=pool_max, open=False, timeout=5.0,
            check=ConnectionPool.check_connection, name="nexus-actors",
            # Its reconnect delay doubles without bound until this; a short one means a
            # fresh attempt (starting at 1 s) soon after the database returns.
            reconnect_timeout=5.0,
        )
        self._limiter = trio.CapacityLimiter(pool_max)
        # Commits (one batch at a time, from the persistence actor) use a connection of
        # their own: a failure shows at once and the next retry reconnects at once,
        # where the pool would wait out its timeout and back off its own reconnects.
        self._writer: psycopg.Connection[Any] | None = None
        self._writer_limiter = trio.CapacityLimiter(1)

    async def open(self) -> None:
        await trio.to_thread.run_sync(self._pool.open)

    async def aclose(self) -> None:
        def close() -> None:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self._pool.close()

        await trio.to_thread.run_sync(close)

    async def _run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``fn`` with a pooled connection, in a worker thread."""
        def call() -> T:
            with _errors():
                try:
                    with self._pool.connection() as conn:
                        return fn(conn)
                except PoolTimeout as exc:
                    raise StoreError("database unavailable: no connection") from exc

        return await trio.to_thread.run_sync(call, limiter=self._limiter)

    async def _write(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``fn`` with the writer connection (reconnected after any failure)."""
        def call() -> T:
            with _errors():
                conn = self._writer
                if conn is None or conn.closed or conn.broken:
                    # Autocommit: each batch is its own explicit transaction. Without it,
                    # a ping (SELECT 1) would open an implicit transaction that every
                    # later batch only nested in as a savepoint, never committed.
                    conn = self._writer = psycopg.connect(self._conninfo, autocommit=True)
                    conn.execute("SELECT set_config('idle_in_transaction_session_timeout',"
                                 " %s, false)", (f"{int(self.stuck_transaction * 1000)}ms",))
                try:
                    return fn(conn)
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    conn.close()
                    self._writer = None
                    raise

        return await trio.to_thread.run_sync(call, limiter=self._writer_limiter)

    # Store protocol ------------------------------------------------------

    async def ping(self) -> None:
        await self._write(lambda conn: conn.execute("SELECT 1").fetchone())

    async def load_room(self, code: str) -> RoomRecord | None:
        return await self._run(lambda conn: _load_room(conn, code))

    async def commit(self, writes: Sequence[Write], *,
                     fences: Mapping[str, int] | None = None) -> frozenset[str]:
        retain = self.journal_retain
        return await self._write(lambda conn: _commit_fenced(conn, writes, fences or {},
                                                             retain))

    async def claim(self, code: str, node: str, url: str | None, ttl: float) -> Claim:
        return await self._run(lambda conn: _claim(conn, code, node, url, ttl))

    async def renew(self, node: str, leases: Mapping[str, int], ttl: float) -> set[str]:
        codes, fences = list(leases), list(leases.values())

        def run(conn: psycopg.Connection[Any]) -> set[str]:
            with conn.transaction():
                conn.execute(_LOCK_TIMEOUT)
                rows = conn.execute(_RENEW, (ttl, codes, fences, node)).fetchall()
            return {row[0] for row in rows}

        return await self._run(run)

    async def relay_secret(self) -> str:
        def run(conn: psycopg.Connection[Any]) -> str:
            row = conn.execute(
                "SELECT value FROM cluster_settings WHERE name = 'relay_secret'").fetchone()
            if row is None:
                raise StoreRejected("cluster_settings has no relay_secret: migrate first")
            return str(row[0])

        return await self._run(run)

    async def abandon_idle(self, before: int) -> list[str]:
        def run(conn: psycopg.Connection[Any]) -> list[str]:
            with conn.transaction():
                rows = conn.execute(
                    "UPDATE rooms SET status = 'abandoned'"
                    " WHERE status = 'hibernating' AND last_activity < to_timestamp(%s / 1000.0)"
                    " RETURNING code", (before,)).fetchall()
            return [row[0] for row in rows]

        return await self._run(run)

    async def delete_abandoned(self, before: int) -> int:
        def run(conn: psycopg.Connection[Any]) -> int:
            with conn.transaction():
                cursor = conn.execute(
                    "DELETE FROM rooms WHERE status = 'abandoned'"
                    " AND last_activity < to_timestamp(%s / 1000.0)", (before,))
            return cursor.rowcount

        return await self._run(run)

    async def room_stats(self) -> list[RoomStats]:
        def run(conn: psycopg.Connection[Any]) -> list[RoomStats]:
            rows = conn.execute(
                "SELECT status, room_count, avg_age_seconds, total_players FROM room_stats"
                " ORDER BY status").fetchall()
            return [RoomStats(status=row[0], rooms=int(row[1]),
                              avg_age_seconds=None if row[2] is None else float(row[2]),
                              players_connected=int(row[3])) for row in rows]

        return await self._run(run)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


_REFUSALS = (psycopg.IntegrityError, psycopg.DataError, psycopg.ProgrammingError,
             psycopg.NotSupportedError)
"Errors about the writes themselves: retrying the same batch would fail the same way."


@contextmanager
def _errors() -> Iterator[None]:
    """psycopg's errors as :class:`StoreRejected` (the writes) or :class:`StoreError`."""
    try:
        yield
    except _REFUSALS as exc:
        raise StoreRejected(f"database refused the writes: {_one_line(exc)}") from exc
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise StoreError(f"database unavailable: {_one_line(exc)}") from exc
    except psycopg.Error as exc:
        raise StoreError(f"database error: {_one_line(exc)}") from exc


# Reads ----------------------------------------------------------------------


def _load_room(conn: psycopg.Connection[Any], code: str) -> RoomRecord | None:
    row = conn.execute(
        "SELECT status, (extract(epoch FROM last_activity) * 1000)::bigint, epochs::text"
        " FROM rooms WHERE code = %s", (code,)).fetchone()
    if row is None:
        return None
    status: RoomStatus = row[0]
    epochs = tuple((int(e), int(s)) for e, s in orjson.loads(row[2]))
    if status == "abandoned":
        return RoomRecord(code=code, status=status, last_activity=row[1], epochs=epochs,
                          snapshot=None, journal=[])
    snapshot_row = conn.execute(
        "SELECT state_data::text FROM game_states WHERE room_code = %s", (code,)).fetchone()
    events = [
        Event(sequence=r[0], name=r[1], data=orjson.loads(r[2]), event_id=r[3], actor_id=r[4],
              timestamp=r[5], secret=orjson.loads(r[6]) if r[6] is not None else None)
        for r in conn.execute(
            "SELECT server_sequence, name, payload::text, event_id, actor_id,"
            " (extract(epoch FROM created_at) * 1000)::bigint, secret::text"
            " FROM room_events WHERE room_code = %s ORDER BY server_sequence", (code,))
    ]
    last_seen: dict[str, int] = {}
    tokens: dict[str, tuple[str, str]] = {}
    connected: set[str] = set()
    for member_id, seen, token_hash, previous_hash, is_connected in conn.execute(
            "SELECT id, (extract(epoch FROM last_seen) * 1000)::bigint, token_hash,"
            " previous_token_hash, connected FROM players WHERE room_code = %s", (code,)):
        last_seen[member_id] = seen
        if previous_hash is not None:
            tokens[member_id] = (token_hash, previous_hash)
        if is_connected:
            connected.add(member_id)
    return RoomRecord(
        code=code, status=status, last_activity=row[1],
        epochs=epochs,
        snapshot=snapshot_row[0].encode() if snapshot_row is not None else None,
        journal=events, last_seen=last_seen, tokens=tokens, connected=frozenset(connected))


# Leases ---------------------------------------------------------------------

_LEASE_OF: LiteralString = (
    "SELECT owner, owner_url, extract(epoch FROM expires_at - clock_timestamp())::float8,"
    " fence FROM room_leases WHERE room_code = %s FOR UPDATE")
_LEASE_INSERT: LiteralString = (
    "INSERT INTO room_leases (room_code, owner, owner_url, fence, expires_at)"
    " VALUES (%s, %s, %s, nextval('room_lease_fence'),"
    " clock_timestamp() + %s * interval '1 second')"
    " ON CONFLICT (room_code) DO NOTHING RETURNING fence")
_LEASE_TAKE: LiteralString = (
    "UPDATE room_leases SET owner = %s, owner_url = %s, fence = nextval('room_lease_fence'),"
    " expires_at = clock_timestamp() + %s * interval '1 second'"
    " WHERE room_code = %s RETURNING fence")
_RENEW: LiteralString = (
    "UPDATE room_leases SET expires_at = clock_timestamp() + %s * interval '1 second'"
    " WHERE room_code IN (SELECT l.room_code FROM room_leases l"
    " JOIN unnest(%s::text[], %s::bigint[]) AS u(code, fence)"
    " ON l.room_code = u.code AND l.fence = u.fence WHERE l.owner = %s"
    " ORDER BY l.room_code FOR UPDATE OF l)"
    " RETURNING room_code")
_LEASE_LOCK: LiteralString = (
    "SELECT 1 FROM room_leases WHERE room_code = ANY(%s) ORDER BY room_code FOR SHARE")
_FENCED: LiteralString = (
    "SELECT u.code FROM unnest(%s::text[], %s::bigint[]) AS u(code, fence)"
    " WHERE NOT EXISTS (SELECT 1 FROM room_leases l"
    " WHERE l.room_code = u.code AND l.fence = u.fence)")
_RELEASE: LiteralString = "DELETE FROM room_leases WHERE room_code = %s AND fence = %s"


_LOCK_TIMEOUT: LiteralString = "SELECT set_config('lock_timeout', '2s', true)"
"""Claims and renewals wait at most this for a lease row another transaction holds (a
paused process in the middle of a commit): then they fail and are tried again later."""


def _claim(conn: psycopg.Connection[Any], code: str, node: str, url: str | None,
           ttl: float) -> Claim:
    """One transaction: the lease row locked, then taken or reported. Two processes
    claiming at once are serialized by the row lock (or the primary key, for a room
    nobody has held): exactly one gets the lease."""
    for _ in range(3):
        with conn.transaction():
            conn.execute(_LOCK_TIMEOUT)
            held = conn.execute(_LEASE_OF, (code,)).fetchone()
            if held is None:
                row = conn.execute(_LEASE_INSERT, (code, node, url, ttl)).fetchone()
                if row is not None:
                    return Claimed(fence=int(row[0]), takeover=False, previous=None)
                continue  # another process inserted it first: read what it holds
            owner, owner_url, remaining, previous = held
            if owner != node and remaining > 0:
                return HeldElsewhere(owner=owner, url=owner_url, remaining=float(remaining))
            row = conn.execute(_LEASE_TAKE, (node, url, ttl, code)).fetchone()
            assert row is not None
            return Claimed(fence=int(row[0]), takeover=owner != node, previous=int(previous))
    raise StoreError(f"room {code}: its lease kept changing while it was claimed")


# Writes ---------------------------------------------------------------------

_ROOM_UPSERT: LiteralString = (
    "INSERT INTO rooms (code, status, primary_host_id, epochs, last_activity)"
    " VALUES (%s, %s, %s, %s::jsonb, to_timestamp(%s / 1000.0))"
    " ON CONFLICT (code) DO UPDATE SET status = EXCLUDED.status,"
    " primary_host_id = EXCLUDED.primary_host_id, epochs = EXCLUDED.epochs,"
    " last_activity = EXCLUDED.last_activity")
_EVENT_INSERT: LiteralString = (
    "INSERT INTO room_events"
    " (room_code, server_sequence, event_id, actor_id, name, payload, secret, created_at)"
    " SELECT r, s, e, a, n, p::jsonb, x::jsonb, to_timestamp(t / 1000.0)"
    " FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[],"
    " %s::text[], %s::bigint[]) AS u(r, s, e, a, n, p, x, t)"
    " ON CONFLICT (room_code, server_sequence) DO UPDATE SET event_id ="
    " CASE WHEN room_events.event_id = EXCLUDED.event_id THEN room_events.event_id"
    " ELSE journal_conflict(room_events.room_code, room_events.server_sequence) END")
_SNAPSHOT_UPSERT: LiteralString = (
    "INSERT INTO game_states (room_code, state_data, server_sequence)"
    " VALUES (%s, %s::jsonb, %s)"
    " ON CONFLICT (room_code) DO UPDATE SET state_data = EXCLUDED.state_data,"
    " server_sequence = EXCLUDED.server_sequence, version = game_states.version + 1,"
    " updated_at = now() WHERE game_states.server_sequence <= EXCLUDED.server_sequence")
_TRIM: LiteralString = (
    "DELETE FROM room_events WHERE room_code = %s AND server_sequence <= %s")
_PRESENCE: LiteralString = (
    "UPDATE players SET connected = %s, last_seen = to_timestamp(%s / 1000.0)"
    " WHERE room_code = %s AND id = %s")
_SEAT_TOKEN: LiteralString = (
    "UPDATE players SET token_hash = %s, previous_token_hash = %s"
    " WHERE room_code = %s AND id = %s")
_CONNECTION_EVENT: LiteralString = (
    "INSERT INTO connection_events (room_code, user_id, event_type, timestamp, metadata)"
    " SELECT %s, %s, %s, to_timestamp(%s / 1000.0), %s::jsonb"
    " WHERE EXISTS (SELECT 1 FROM rooms WHERE code = %s)")
_ADD_PLAYER: LiteralString = (
    "INSERT INTO players (room_code, id, name, token_hash, connected, joined_at, last_seen)"
    " VALUES (%s, %s, %s, %s, true, to_timestamp(%s / 1000.0), to_timestamp(%s / 1000.0))"
    " ON CONFLICT (room_code, id) DO NOTHING")
_REMOVE_PLAYER: LiteralString = "DELETE FROM players WHERE room_code = %s AND id = %s"
_REMOVE_HOST: LiteralString = "DELETE FROM hosts WHERE room_code = %s AND user_id = %s"
_SET_HOST: LiteralString = (
    "INSERT INTO hosts (room_code, user_id, permissions, is_primary)"
    " VALUES (%s, %s, %s::jsonb, %s)"
    " ON CONFLICT (room_code, user_id) DO UPDATE SET permissions = EXCLUDED.permissions,"
    " is_primary = EXCLUDED.is_primary")
_DROP_PRIMARY: LiteralString = (
    "DELETE FROM hosts WHERE room_code = %s AND is_primary AND user_id <> %s")
_SET_PRIMARY: LiteralString = "UPDATE rooms SET primary_host_id = %s WHERE code = %s"
_DELETE_ABANDONED: LiteralString = "DELETE FROM rooms WHERE code = %s AND status = 'abandoned'"


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


class _Fenced(Exception):
    """Rolls a batch back: these rooms' fences are stale."""

    def __init__(self, codes: frozenset[str]) -> None:
        super().__init__(", ".join(sorted(codes)))
        self.codes = codes


def _commit_fenced(conn: psycopg.Connection[Any], writes: Sequence[Write],
                   fences: Mapping[str, int], retain: int) -> frozenset[str]:
    """Commit ``writes`` except those of rooms whose fence is stale; the stale rooms.

    The lease check is the batch's first statement and its result is read last, so the
    batch is still one round trip: when some room turns out to be fenced (rare: a lost
    lease), the transaction is rolled back and the batch committed again without it.
    """
    fenced: frozenset[str] = frozenset()
    while True:
        live = {code: fence for code, fence in fences.items() if code not in fenced}
        try:
            _commit(conn, [w for w in writes if w.code not in fenced], live, retain)
            return fenced
        except _Fenced as exc:
            fenced |= exc.codes
        except _REFUSALS:
            # A fenced room's writes may clash with its new owner's (the same sequence
            # number): the fence decides, not the clash.
            stale = _stale(conn, live)
            if not stale:
                raise
            fenced |= stale


def _stale(conn: psycopg.Connection[Any], fences: Mapping[str, int]) -> frozenset[str]:
    """The rooms of ``fences`` whose lease has another fence now (or none)."""
    if not fences:
        return frozenset()
    codes = list(fences)
    rows = conn.execute(_FENCED, (codes, [fences[code] for code in codes])).fetchall()
    return frozenset(row[0] for row in rows)


def _commit(conn: psycopg.Connection[Any], writes: Sequence[Write], fences: Mapping[str, int],
            retain: int) -> None:
    """One transaction: every write in order, but the batch's journal rows in ONE insert.

    It begins by locking the leases of the rooms in ``fences`` (so no process can claim
    one until this commits) and checking their fences; :class:`_Fenced` rolls it back
    if one is stale. The journal rows go in last, together, after the rooms they belong
    to exist, and the journal is trimmed after them; the projections and other writes
    keep their order.
    """
    events: list[AppendEvent] = []
    trims: list[tuple[str, int]] = []
    with conn.transaction(), conn.pipeline():
        check = conn.cursor()
        if fences:
            codes = list(fences)
            conn.execute(_LEASE_LOCK, (codes,))
            check.execute(_FENCED, (codes, [fences[code] for code in codes]))
        cursor = conn.cursor()
        for write in writes:
            if isinstance(write, AppendEvent):
                events.append(write)
                _project(cursor, write.code, write.event)
            elif isinstance(write, PutRoom):
                if write.created:
                    cursor.execute(_DELETE_ABANDONED, (write.code,))
                cursor.execute(_ROOM_UPSERT, (
                    write.code, write.status, write.host_id,
                    _json([list(epoch) for epoch in write.epochs]), write.last_activity))
            elif isinstance(write, PutSnapshot):
                cursor.execute(_SNAPSHOT_UPSERT, (
                    write.code, write.snapshot.decode(), write.sequence))
                trims.append((write.code, write.sequence - retain))
            elif isinstance(write, PutPresence):
                cursor.execute(_PRESENCE, (write.connected, write.at, write.code,
                                           write.member_id))
            elif isinstance(write, PutSeatToken):
                cursor.execute(_SEAT_TOKEN, (write.token_hash, write.previous_hash,
                                             write.code, write.member_id))
            elif isinstance(write, LogConnection):
                cursor.execute(_CONNECTION_EVENT, (
                    write.code, write.user_id, write.kind, write.at, _json(write.metadata),
                    write.code))
        if events:
            cursor.execute(_EVENT_INSERT, (
                [w.code for w in events], [w.event.sequence for w in events],
                [w.event.event_id for w in events], [w.event.actor_id for w in events],
                [w.event.name for w in events], [_json(w.event.data) for w in events],
                [_json(w.event.secret) for w in events], [w.event.timestamp for w in events]))
        for code, through in trims:
            cursor.execute(_TRIM, (code, through))
        for write in writes:  # after the check, which must see the leases still there
            if isinstance(write, ReleaseLease):
                cursor.execute(_RELEASE, (write.code, write.fence))
        if fences:
            stale = frozenset(row[0] for row in check.fetchall())
            if stale:
                raise _Fenced(stale)


def _project(cursor: psycopg.Cursor[Any], code: str, event: Event) -> None:
    """Keep ``players``, ``hosts`` and ``rooms.primary_host_id`` in step with an event."""
    data = event.data
    name = event.name
    if name == "session/join":
        player = data["player"]
        token_hash = (event.secret or {}).get("tokenHash", "")
        cursor.execute(_ADD_PLAYER, (code, player["id"], player["name"], token_hash,
                                     event.timestamp, event.timestamp))
        if player.get("role") == "host":
            cursor.execute(_SET_HOST, (code, player["id"], _PRIMARY, True))
            cursor.execute(_SET_PRIMARY, (player["id"], code))
    elif name in ("session/leave", "session/kicked"):
        member_id = data["uuid"] if name == "session/leave" else data["playerId"]
        cursor.execute(_REMOVE_PLAYER, (code, member_id))
        cursor.execute(_REMOVE_HOST, (code, member_id))
    elif name == "session/host-migrated":
        cursor.execute(_SET_HOST, (code, data["newHostId"], _PRIMARY, True))
        cursor.execute(_DROP_PRIMARY, (code, data["newHostId"]))
        cursor.execute(_SET_PRIMARY, (data["newHostId"], code))
    elif name == "session/co-host-added":
        cursor.execute(_SET_HOST, (code, data["coHostId"], _json(data["permissions"]), False))
    elif name == "session/co-host-removed":
        cursor.execute(_REMOVE_HOST, (code, data["coHostId"]))
