"""The persistence actor: group commit of every room's writes, then acknowledgements.

Rooms hand it :class:`Intent` objects with ``send_nowait`` (a full queue is the
room's signal to refuse durable events with ``overloaded``). It collects
intents for up to ``persist_flush_interval`` or ``persist_batch`` of them (not
waiting at all when intents queued while the previous batch committed: under
load batches form on their own), commits them in one store transaction, and
tells each room how far its intents are durable with a
:class:`~nexus_actors.actors.messages.Committed`
notice. Each intent carries the fence of its room's lease, and the store checks
the fences in the same transaction: the writes of a room whose lease another
process has taken are left out, and that room is told
(:class:`~nexus_actors.actors.messages.LeaseLost`) and stops; its later intents
are dropped. A commit that fails because the store is unreachable is retried
with backoff, in order, until it succeeds: a confirmation may wait, but
nothing queued is dropped or reordered. A commit the store *refuses* (the
writes themselves are wrong: retrying cannot help) is split by room; the
writes of a room the store still refuses are dropped, that room is told
(:class:`~nexus_actors.actors.messages.WritesRejected`) and restarts from the
store, and every later intent of that room incarnation is dropped too. The
other rooms never notice.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence

import attrs
import trio

from ..config import Config
from ..errors import StoreError, StoreRejected
from ..metrics import Metrics
from ..store.base import Store, Write
from .health import Health
from .messages import Committed, LeaseLost, RoomMsg, WritesRejected

log = logging.getLogger("nexus_actors.persistence")


@attrs.frozen(kw_only=True)
class Intent:
    write: Write
    notify: trio.MemorySendChannel[RoomMsg] | None = None
    "The room's mailbox, told when this intent is durable."
    mark: int = 0
    "The room's running intent number, reported back in ``Committed``."
    owner: object | None = None
    "The room incarnation that wrote it; ``None`` for best-effort records."
    fence: int | None = None
    "The fence of the lease its room held when it wrote it (checked at commit)."


@attrs.frozen(kw_only=True)
class Flush:
    """A barrier: ``done`` is set once every intent queued before it is durable."""

    done: trio.Event


PersistMsg = Intent | Flush

RETRY_FIRST = 0.05
RETRY_MAX = 2.0
PING_INTERVAL = 5.0
"Seconds without a commit after which the store is pinged, so /ready notices an outage."


def _failed(health: Health, metrics: Metrics, exc: StoreError) -> None:
    metrics.store_errors += 1
    if health.store_ok:
        health.store_ok = False
        health.outage_since = trio.current_time()
        log.warning("store outage began: %s", exc.message)
    health.store_error = exc.message


def _recovered(health: Health, metrics: Metrics) -> None:
    if not health.store_ok:
        since = health.outage_since or trio.current_time()
        lasted = trio.current_time() - since
        metrics.outage_seconds += lasted
        log.warning("store outage ended after %.1fs", lasted)
        health.store_ok = True
        health.store_error = None
        health.outage_since = None


async def _commit_with_retry(store: Store, intents: Sequence[Intent], health: Health,
                             metrics: Metrics) -> frozenset[str]:
    """Commit, retrying while the store is unreachable; the rooms fenced out of it.
    :class:`StoreRejected` goes up."""
    writes = [i.write for i in intents]
    fences = {i.write.code: i.fence for i in intents if i.fence is not None}
    delay = RETRY_FIRST
    began = trio.current_time()
    while True:
        try:
            fenced = await store.commit(writes, fences=fences)
        except StoreRejected:
            _recovered(health, metrics)  # it answered
            raise
        except StoreError as exc:
            _failed(health, metrics, exc)
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
            continue
        _recovered(health, metrics)
        metrics.commits += 1
        metrics.fenced += len(fenced)
        metrics.batch_size.observe(len(writes))
        metrics.commit_seconds.observe(trio.current_time() - began)
        for code in sorted(fenced):
            log.warning("room %s: writes refused, its lease belongs to another process now",
                        code)
        return fenced


def _owners(intents: Sequence[Intent], codes: frozenset[str]) -> set[object]:
    return {i.owner for i in intents if i.owner is not None and i.write.code in codes}


def _by_fence(intents: list[Intent]) -> list[list[Intent]]:
    """``intents`` cut where a room appears with another fence (a room restarted between
    two of its writes): each part is committed with one fence per room."""
    parts: list[list[Intent]] = [[]]
    fences: dict[str, int] = {}
    for intent in intents:
        fence = intent.fence
        if fence is not None and fences.setdefault(intent.write.code, fence) != fence:
            parts.append([])
            fences = {intent.write.code: fence}
        parts[-1].append(intent)
    return parts


async def _commit(store: Store, intents: list[Intent], health: Health,
                  metrics: Metrics) -> tuple[set[object], set[object]]:
    """Commit ``intents``; the owners whose writes the store refused (their writes lost),
    and those it fenced out (their lease is another process's)."""
    try:
        return set(), _owners(intents, await _commit_with_retry(store, intents, health,
                                                               metrics))
    except StoreRejected as exc:
        log.error("the store refused a batch of %d writes (%s); committing it room by room",
                  len(intents), exc.message)
    groups: dict[int, list[Intent]] = {}
    owners: dict[int, object | None] = {}
    for intent in intents:
        key = id(intent.owner)
        groups.setdefault(key, []).append(intent)
        owners[key] = intent.owner
    refused: set[object] = set()
    lost: set[object] = set()
    for key, group in groups.items():
        try:
            lost |= _owners(group, await _commit_with_retry(store, group, health, metrics))
        except StoreRejected as exc:
            owner = owners[key]
            code = group[0].write.code
            log.error("the store refused room %s's writes (%s); the room restarts",
                      code, exc.message)
            if owner is not None:
                refused.add(owner)
    return refused, lost


async def _ping(store: Store, health: Health, metrics: Metrics) -> None:
    try:
        await store.ping()
    except StoreError as exc:
        _failed(health, metrics, exc)
    else:
        _recovered(health, metrics)


async def run_persistence(
    store: Store,
    inbox: trio.MemoryReceiveChannel[PersistMsg],
    config: Config,
    health: Health,
    metrics: Metrics,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until ``inbox`` is closed and drained."""
    unsent: dict[trio.MemorySendChannel[RoomMsg], int] = {}
    refused: weakref.WeakSet[object] = weakref.WeakSet()
    """Room incarnations whose writes the store refused or fenced out: their later intents
    are dropped."""
    fenced: weakref.WeakSet[object] = weakref.WeakSet()
    "Room incarnations fenced out (told ``LeaseLost`` rather than ``WritesRejected``)."
    tell: dict[trio.MemorySendChannel[RoomMsg], RoomMsg] = {}
    task_status.started()
    with inbox:
        while True:
            batch: list[PersistMsg] = []
            # Intents that queued while the last batch committed go at once; a lone intent
            # reaching an idle actor waits up to the flush interval for company.
            waiting = inbox.statistics().current_buffer_used > 0
            try:
                wait = (config.persist_flush_interval or 0.001) if unsent else PING_INTERVAL
                with trio.move_on_after(wait):
                    batch.append(await inbox.receive())
            except trio.EndOfChannel:
                if not unsent:
                    return
                _notify(unsent)
                await trio.sleep(config.persist_flush_interval or 0.001)
                continue
            if not batch and not unsent:
                await _ping(store, health, metrics)  # idle: is the store still there?
            _notify(unsent)
            if not batch:
                continue
            await _fill(inbox, batch, config, linger=not waiting)
            intents = [m for m in batch if isinstance(m, Intent)
                       and (m.owner is None or m.owner not in refused)]
            for part in _by_fence(intents) if intents else []:
                rejected, lost = await _commit(store, part, health, metrics)
                for owner in rejected | lost:
                    refused.add(owner)
                for owner in lost:
                    fenced.add(owner)
            for m in batch:
                if not isinstance(m, Intent):
                    m.done.set()
                elif m.notify is None:
                    continue
                elif m.owner is not None and m.owner in fenced and m.fence is not None:
                    tell[m.notify] = LeaseLost(fence=m.fence)
                    unsent.pop(m.notify, None)
                elif m.owner is not None and m.owner in refused:
                    previous = tell.get(m.notify)
                    mark = previous.mark if isinstance(previous, WritesRejected) else 0
                    tell[m.notify] = WritesRejected(mark=max(mark, m.mark))
                    unsent.pop(m.notify, None)
                else:
                    unsent[m.notify] = max(m.mark, unsent.get(m.notify, 0))
            _deliver(tell)
            _notify(unsent)


async def _fill(inbox: trio.MemoryReceiveChannel[PersistMsg], batch: list[PersistMsg],
                config: Config, *, linger: bool) -> None:
    """Add what is queued to ``batch``; with ``linger``, wait up to the flush interval for
    more (group commit: under load batches form while the previous one commits)."""
    deadline = trio.current_time() + (config.persist_flush_interval if linger else 0.0)
    while len(batch) < config.persist_batch:
        try:
            batch.append(inbox.receive_nowait())
            continue
        except trio.WouldBlock:
            pass
        except trio.EndOfChannel:
            return
        if isinstance(batch[-1], Flush) or trio.current_time() >= deadline:
            return
        with trio.move_on_at(deadline):
            try:
                batch.append(await inbox.receive())
            except trio.EndOfChannel:
                return


def _deliver(tell: dict[trio.MemorySendChannel[RoomMsg], RoomMsg]) -> None:
    for room, message in list(tell.items()):
        try:
            room.send_nowait(message)
        except trio.WouldBlock:
            continue
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        del tell[room]


def _notify(unsent: dict[trio.MemorySendChannel[RoomMsg], int]) -> None:
    """Tell rooms what is durable, never blocking: a full mailbox is retried next round."""
    for room, mark in list(unsent.items()):
        try:
            room.send_nowait(Committed(mark=mark))
        except trio.WouldBlock:
            continue
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        del unsent[room]
