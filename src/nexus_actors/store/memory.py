"""A trio-native in-memory store that behaves like the PostgreSQL one.

Commits are atomic, journals are trimmed to ``journal_retain`` events per room,
and faults can be injected: latency per commit, a pause (commits wait until
resumed), failures before applying a batch and failures after applying it
(the batch is durable but the caller sees an error). The deterministic tests
and the simulation use it; nothing here touches the wall clock.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Mapping, Sequence

import attrs
import orjson
import trio

from ..errors import StoreError, StoreRejected
from ..room.events import Event
from .base import (
    AppendEvent,
    CheckLease,
    Claim,
    Claimed,
    HeldElsewhere,
    LogConnection,
    PutPresence,
    PutRoom,
    PutSeatToken,
    ReleaseLease,
    RoomRecord,
    RoomStats,
    RoomStatus,
    Write,
)


@attrs.define(kw_only=True)
class _Row:
    status: RoomStatus
    last_activity: int
    epochs: tuple[tuple[int, int], ...]
    host_id: str | None = None
    snapshot: bytes | None = None
    snapshot_sequence: int = 0
    last_seen: dict[str, int] = attrs.Factory(dict)
    tokens: dict[str, tuple[str, str]] = attrs.Factory(dict)
    connected: set[str] = attrs.Factory(set)
    journal: deque[tuple[int, str, bytes]] = attrs.Factory(deque)
    "``(serverSequence, eventId, JSON)``: stored serialized, as a database would."
    event_ids: set[str] = attrs.Factory(set)


@attrs.define(kw_only=True)
class _Lease:
    owner: str
    url: str | None
    fence: int
    expires: float
    "Trio time (the database's clock, here)."


class MemoryStore:
    """In-memory :class:`~nexus_actors.store.Store` with fault injection."""

    def __init__(self, *, journal_retain: int = 1000, latency: float = 0.0) -> None:
        self.journal_retain = journal_retain
        self.latency = latency
        "Seconds each commit takes (``trio.sleep``, so MockClock controls it)."
        self._rooms: dict[str, _Row] = {}
        self._resumed: trio.Event | None = None
        self._fail_before = 0
        self._fail_after = 0
        self._refused: dict[str, int] = {}
        self.commits = 0
        "Batches committed so far."
        self.writes = 0
        "Writes committed so far."
        self.rejections: list[str] = []
        "Why each batch the store refused was refused (injected refusals included)."
        self.connection_events: list[LogConnection] = []
        "Connection lifecycle records, as ``connection_events`` would hold them."
        self.leases: dict[str, _Lease] = {}
        "Room code → its lease, as ``room_leases`` would hold it."
        self.fences = 0
        "The last fence handed out (``room_lease_fence``)."
        self.fenced: list[str] = []
        "Rooms whose writes a commit left out because their fence was stale, in order."
        self._secret = secrets.token_hex(32)

    # Fault injection -----------------------------------------------------

    def pause(self) -> None:
        """Hold every commit and load until :meth:`resume`."""
        if self._resumed is None:
            self._resumed = trio.Event()

    def resume(self) -> None:
        if self._resumed is not None:
            self._resumed.set()
            self._resumed = None

    def fail_next(self, count: int = 1, *, after_applying: bool = False) -> None:
        """Make the next ``count`` commits fail, before or after the batch is applied."""
        if after_applying:
            self._fail_after += count
        else:
            self._fail_before += count

    def refuse(self, code: str, times: int = 1) -> None:
        """Refuse the next ``times`` batches that write to room ``code`` (as a database
        refuses writes it cannot take)."""
        self._refused[code] = times

    def steal(self, code: str, node: str, url: str | None, ttl: float) -> int:
        """Give room ``code``'s lease to ``node`` now, as if its holder had been paused past
        its expiry and ``node`` had claimed it (even while commits are paused); its fence."""
        self.fences += 1
        self.leases[code] = _Lease(owner=node, url=url, fence=self.fences,
                                   expires=trio.current_time() + ttl)
        return self.fences

    @property
    def healthy(self) -> bool:
        """Not paused, and no injected failure or refusal still to come."""
        return (self._resumed is None and not self._fail_before and not self._fail_after
                and not any(self._refused.values()))

    async def _gate(self) -> None:
        await trio.lowlevel.checkpoint()
        while self._resumed is not None:
            await self._resumed.wait()
        if self.latency:
            await trio.sleep(self.latency)

    # Store protocol ------------------------------------------------------

    async def load_room(self, code: str) -> RoomRecord | None:
        await self._gate()
        row = self._rooms.get(code)
        if row is None:
            return None
        return RoomRecord(code=code, status=row.status, last_activity=row.last_activity,
                          epochs=row.epochs, snapshot=row.snapshot,
                          journal=[_decode(entry) for entry in row.journal],
                          last_seen=dict(row.last_seen), tokens=dict(row.tokens),
                          connected=frozenset(row.connected))

    async def commit(self, writes: Sequence[Write], *,
                     fences: Mapping[str, int] | None = None) -> frozenset[str]:
        await self._gate()
        if self._fail_before:
            self._fail_before -= 1
            raise StoreError("injected failure before commit")
        fenced = frozenset(code for code, fence in (fences or {}).items()
                           if (lease := self.leases.get(code)) is None or lease.fence != fence)
        kept = [w for w in writes if w.code not in fenced] if fenced else writes
        try:
            self._apply(kept)
        except StoreRejected as exc:
            self.rejections.append(exc.message)
            raise
        self.fenced.extend(sorted(fenced))
        self.commits += 1
        self.writes += len(kept)
        if self._fail_after:
            self._fail_after -= 1
            raise StoreError("injected failure after commit")
        return fenced

    async def claim(self, code: str, node: str, url: str | None, ttl: float) -> Claim:
        await self._gate()
        now = trio.current_time()
        lease = self.leases.get(code)
        if lease is not None and lease.owner != node and lease.expires > now:
            return HeldElsewhere(owner=lease.owner, url=lease.url,
                                 remaining=lease.expires - now)
        self.fences += 1
        self.leases[code] = _Lease(owner=node, url=url, fence=self.fences, expires=now + ttl)
        return Claimed(fence=self.fences, takeover=lease is not None and lease.owner != node,
                       previous=lease.fence if lease is not None else None)

    async def renew(self, node: str, leases: Mapping[str, int], ttl: float) -> set[str]:
        await self._gate()
        if self._fail_before:
            raise StoreError("injected failure")
        now = trio.current_time()
        kept = set()
        for code, fence in leases.items():
            lease = self.leases.get(code)
            if lease is not None and lease.owner == node and lease.fence == fence:
                lease.expires = now + ttl
                kept.add(code)
        return kept

    async def relay_secret(self) -> str:
        return self._secret

    def _apply(self, writes: Sequence[Write]) -> None:
        # Check the whole batch first so a bad one changes nothing (one transaction).
        for code in {write.code for write in writes} & self._refused.keys():
            self._refused[code] -= 1
            if not self._refused[code]:
                del self._refused[code]
            raise StoreRejected(f"room {code}: refused (injected)")
        next_sequence: dict[str, int] = {}
        done: set[int] = set()
        new_ids: dict[str, set[str]] = {}
        exists: set[str] = set()
        fresh: set[str] = set()
        statuses: dict[str, RoomStatus] = {}  # as this batch leaves each room so far
        for write in writes:
            row = None if write.code in fresh else self._rooms.get(write.code)
            if isinstance(write, PutRoom):
                exists.add(write.code)
                status = statuses.get(write.code, row.status if row is not None else None)
                if write.created and status in (None, "abandoned"):
                    fresh.add(write.code)
                    next_sequence.pop(write.code, None)
                statuses[write.code] = write.status
                continue
            if isinstance(write, LogConnection | ReleaseLease | CheckLease):
                continue  # analytics and leases: no room row needed
            if row is None and write.code not in exists:
                raise StoreRejected(f"room {write.code} has no row")
            if isinstance(write, AppendEvent):
                if write.code not in next_sequence and _committed(row, write.event, write.code):
                    done.add(id(write))  # a retried batch: this part is already durable
                    continue
                expected = next_sequence.get(write.code)
                if expected is None and row is not None and row.journal:
                    expected = row.journal[-1][0] + 1
                if expected is not None and write.event.sequence != expected:
                    raise StoreRejected(f"room {write.code}: event {write.event.sequence} "
                                     f"does not follow {expected - 1}")
                next_sequence[write.code] = write.event.sequence + 1
                ids = new_ids.setdefault(write.code, set())
                if write.event.event_id in ids or (
                        row is not None and write.event.event_id in row.event_ids):
                    raise StoreRejected(f"room {write.code}: duplicate eventId")
                ids.add(write.event.event_id)
        touched: set[str] = set()
        for write in writes:
            if id(write) in done:
                continue
            if isinstance(write, LogConnection):
                self.connection_events.append(write)
                continue
            if isinstance(write, CheckLease):
                continue
            if isinstance(write, ReleaseLease):
                lease = self.leases.get(write.code)
                if lease is not None and lease.fence == write.fence:
                    del self.leases[write.code]
                continue
            row = self._rooms.get(write.code)
            if isinstance(write, PutRoom):
                if row is None or (write.created and row.status == "abandoned"):
                    row = self._rooms[write.code] = _Row(
                        status=write.status, last_activity=write.last_activity,
                        epochs=write.epochs, host_id=write.host_id)
                else:
                    row.status = write.status
                    row.last_activity = write.last_activity
                    row.epochs = write.epochs
                    row.host_id = write.host_id
            elif isinstance(write, AppendEvent):
                assert row is not None
                event = write.event
                row.journal.append((event.sequence, event.event_id,
                                    orjson.dumps(event.to_json())))
                row.event_ids.add(write.event.event_id)
            elif isinstance(write, PutPresence):
                assert row is not None
                row.last_seen[write.member_id] = write.at
                if write.connected:
                    row.connected.add(write.member_id)
                else:
                    row.connected.discard(write.member_id)
            elif isinstance(write, PutSeatToken):
                assert row is not None
                row.tokens[write.member_id] = (write.token_hash, write.previous_hash)
            else:
                assert row is not None
                row.snapshot = write.snapshot
                row.snapshot_sequence = write.sequence
            touched.add(write.code)
        for code in touched:
            row = self._rooms[code]
            # Keep the retained tail, but never drop an event the snapshot does not cover.
            last = row.journal[-1][0] if row.journal else 0
            keep_after = min(row.snapshot_sequence, last - self.journal_retain)
            while row.journal and row.journal[0][0] <= keep_after:
                row.event_ids.discard(row.journal.popleft()[1])

    async def abandon_idle(self, before: int) -> list[str]:
        await self._gate()
        codes = [code for code, row in self._rooms.items()
                 if row.status == "hibernating" and row.last_activity < before]
        for code in codes:
            self._rooms[code].status = "abandoned"
        return codes

    async def delete_abandoned(self, before: int) -> int:
        await self._gate()
        codes = [code for code, row in self._rooms.items()
                 if row.status == "abandoned" and row.last_activity < before]
        for code in codes:
            del self._rooms[code]
        return len(codes)

    async def ping(self) -> None:
        await self._gate()
        if self._fail_before:
            raise StoreError("injected failure")

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    # Inspection (tests) --------------------------------------------------

    def journal(self, code: str) -> list[Event]:
        row = self._rooms.get(code)
        return [_decode(entry) for entry in row.journal] if row else []

    def snapshot_sequence(self, code: str) -> int | None:
        """The ``serverSequence`` of the room's snapshot (``None``: no snapshot)."""
        row = self._rooms.get(code)
        return row.snapshot_sequence if row is not None and row.snapshot is not None else None

    def last_seen(self, code: str) -> dict[str, int]:
        row = self._rooms.get(code)
        return dict(row.last_seen) if row else {}

    async def room_stats(self) -> list[RoomStats]:
        await self._gate()
        rooms: dict[RoomStatus, list[_Row]] = {}
        for row in self._rooms.values():
            rooms.setdefault(row.status, []).append(row)
        return [RoomStats(status=status, rooms=len(rows), avg_age_seconds=None,
                          players_connected=sum(len(r.connected) for r in rows))
                for status, rows in sorted(rooms.items())]

    def status(self, code: str) -> RoomStatus | None:
        row = self._rooms.get(code)
        return row.status if row else None

    def codes(self) -> list[str]:
        return list(self._rooms)


def _committed(row: _Row | None, event: Event, code: str) -> bool:
    """Whether ``event`` is already in the journal (a batch retried after it committed)."""
    if row is None or not row.journal or event.sequence > row.journal[-1][0]:
        return False
    first = row.journal[0][0]
    if event.sequence < first:
        return event.event_id not in row.event_ids  # committed, then trimmed
    existing_id = row.journal[event.sequence - first][1]
    if existing_id != event.event_id:
        raise StoreRejected(f"room {code}: sequence {event.sequence} is taken by another event")
    return True


def _decode(entry: tuple[int, str, bytes]) -> Event:
    return Event.from_json(orjson.loads(entry[2]))
