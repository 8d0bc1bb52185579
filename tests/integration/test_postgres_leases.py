"""Room leases on a real PostgreSQL server: who owns a room, and fencing.

A claim takes a free or expired lease with a new, larger fence, or says who
holds it; the holder may claim again (a restarted room of the same process);
many claims at once from separate connections give the lease to exactly one;
renewal keeps only the leases whose fence is still the holder's; a commit
leaves out, in the same transaction, the writes of a room whose fence is stale
(and commits the others); releasing needs the current fence. The database's
clock decides expiry: a lease claimed for 0 seconds has expired by the next
statement.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
import trio

from nexus_actors.errors import StoreError
from nexus_actors.room.events import Event
from nexus_actors.store.base import (
    AppendEvent,
    Claimed,
    HeldElsewhere,
    PutRoom,
    ReleaseLease,
    Write,
)
from nexus_actors.store.postgres import PostgresStore
from nexus_actors.testing.postgres import open_store

pytestmark = pytest.mark.realclock

TIMEOUT = 20.0
"Seconds one test may take in all."
TTL = 30.0
"A lease that does not expire during a test."


def created(code: str) -> list[Write]:
    return [PutRoom(code=code, status="active", last_activity=1_700_000_000_000,
                    epochs=((1, 1),), created=True)]


def chat(code: str, sequence: int) -> AppendEvent:
    return AppendEvent(code=code, event=Event(
        sequence=sequence, name="chat/message",
        data={"message": {"id": f"m{sequence}", "text": "hi"}}, event_id=f"{code}-{sequence}",
        actor_id="h", timestamp=1_700_000_000_000 + sequence))


async def claimed(store: PostgresStore, code: str, node: str, url: str | None,
                  ttl: float) -> Claimed:
    """``store.claim(...)``, which must take the lease."""
    claim = await store.claim(code, node, url, ttl)
    assert isinstance(claim, Claimed)
    return claim


async def lease_row(url: str, code: str) -> tuple[Any, ...] | None:
    def run() -> tuple[Any, ...] | None:
        with psycopg.connect(url) as conn:
            return conn.execute("SELECT owner, owner_url, fence FROM room_leases"
                                " WHERE room_code = %s", (code,)).fetchone()

    return await trio.to_thread.run_sync(run)


async def test_a_claim_takes_a_free_lease_or_says_who_holds_it(database_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_store(database_url) as store:
            first = await claimed(store, "ABCD", "node-a", "ws://a:5000", TTL)
            assert not first.takeover
            assert await lease_row(database_url, "ABCD") == ("node-a", "ws://a:5000",
                                                             first.fence)
            held = await store.claim("ABCD", "node-b", "ws://b:5000", TTL)
            assert isinstance(held, HeldElsewhere)
            assert (held.owner, held.url) == ("node-a", "ws://a:5000")
            assert TTL - 5 < held.remaining <= TTL
            again = await claimed(store, "ABCD", "node-a", "ws://a:5000", TTL)  # its own
            assert again.fence > first.fence
            assert not again.takeover
            assert (first.previous, again.previous) == (None, first.fence)


async def test_an_expired_lease_is_taken_over_with_a_larger_fence(database_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_store(database_url) as store:
            first = await claimed(store, "ABCD", "node-a", "ws://a:5000", 0.0)  # expired at once
            taken = await claimed(store, "ABCD", "node-b", "ws://b:5000", TTL)
            assert taken.takeover
            assert taken.previous == first.fence
            assert taken.fence > first.fence
            assert await lease_row(database_url, "ABCD") == ("node-b", "ws://b:5000",
                                                             taken.fence)
            # Fences grow across rooms and releases too: one sequence for every claim.
            await store.commit([ReleaseLease(code="ABCD", fence=taken.fence)])
            assert await lease_row(database_url, "ABCD") is None
            after = await claimed(store, "ABCD", "node-c", None, TTL)
            assert after.fence > taken.fence


async def test_many_claims_at_once_give_the_lease_to_exactly_one(database_url: str) -> None:
    claimants = 8
    results: list[object] = []
    barrier = threading.Barrier(claimants)

    def claim(index: int) -> None:
        async def run() -> object:
            async with open_store(database_url, pool_max=1) as store:
                barrier.wait()
                return await store.claim("RACE", f"node-{index}", None, TTL)

        results.append(trio.run(run))

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for index in range(claimants):
                nursery.start_soon(trio.to_thread.run_sync, claim, index)
    winners = [r for r in results if isinstance(r, Claimed)]
    assert len(winners) == 1
    owner = (await lease_row(database_url, "RACE") or ("",))[0]
    assert all(isinstance(r, HeldElsewhere) and r.owner == owner for r in results
               if r is not winners[0])


async def test_renewal_keeps_only_the_leases_still_held(database_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_store(database_url) as store:
            kept = await claimed(store, "KEEP", "node-a", None, TTL)
            lost = await claimed(store, "LOST", "node-a", None, 0.0)
            await claimed(store, "LOST", "node-b", None, TTL)
            held = await store.renew("node-a", {"KEEP": kept.fence, "LOST": lost.fence,
                                                "NONE": 12345}, TTL)
            assert held == {"KEEP"}
            assert await store.renew("node-b", {"KEEP": kept.fence}, TTL) == set()
            # A renewed lease that had expired, unclaimed since, is held again.
            late = await claimed(store, "LATE", "node-a", None, 0.0)
            assert await store.renew("node-a", {"LATE": late.fence}, TTL) == {"LATE"}
            assert isinstance(await store.claim("LATE", "node-b", None, TTL), HeldElsewhere)


async def test_a_commit_leaves_out_the_writes_of_a_fenced_room_and_keeps_the_rest(
        database_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_store(database_url) as store:
            mine = await claimed(store, "MINE", "node-a", None, TTL)
            gone = await claimed(store, "GONE", "node-a", None, 0.0)
            assert await store.commit([*created("MINE"), *created("GONE")],
                                      fences={"MINE": mine.fence, "GONE": gone.fence}) \
                == frozenset()
            taken = await claimed(store, "GONE", "node-b", None, TTL)  # node-a's lease is lost
            fenced = await store.commit(
                [chat("MINE", 1), chat("GONE", 1), chat("MINE", 2)],
                fences={"MINE": mine.fence, "GONE": gone.fence})
            assert fenced == frozenset({"GONE"})
            mine_record = await store.load_room("MINE")
            gone_record = await store.load_room("GONE")
            assert mine_record is not None
            assert gone_record is not None
            assert [e.sequence for e in mine_record.journal] == [1, 2]
            assert list(gone_record.journal) == []
            # The new owner writes with its own fence; the old one's release does nothing.
            assert await store.commit([chat("GONE", 1), ReleaseLease(code="GONE",
                                                                     fence=gone.fence)],
                                      fences={"GONE": taken.fence}) == frozenset()
            assert await lease_row(database_url, "GONE") == ("node-b", None, taken.fence)
            # A room with no lease at all is fenced too.
            assert await store.commit([chat("MINE", 3)], fences={"MINE": 999_999}) \
                == frozenset({"MINE"})


async def test_a_release_in_the_batch_that_writes_last_still_commits_the_writes(
        database_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_store(database_url) as store:
            lease = await claimed(store, "DONE", "node-a", None, TTL)
            fenced = await store.commit(
                [*created("DONE"), chat("DONE", 1), ReleaseLease(code="DONE", fence=lease.fence)],
                fences={"DONE": lease.fence})
            assert fenced == frozenset()
            record = await store.load_room("DONE")
            assert record is not None
            assert len(record.journal) == 1
            assert await lease_row(database_url, "DONE") is None


async def test_every_process_reads_the_same_relay_secret(database_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_store(database_url) as first, open_store(database_url) as second:
            secret = await first.relay_secret()
            assert len(secret) >= 32
            assert await second.relay_secret() == secret


def begin_and_stop(conn: psycopg.Connection[Any]) -> None:
    """What a process stopped in the middle of a commit leaves: a transaction that locked
    its room's lease, and nothing more."""
    conn.execute("BEGIN")
    conn.execute("SELECT 1 FROM room_leases WHERE room_code = 'STUK' FOR SHARE")


async def test_a_process_paused_in_a_commit_holds_its_leases_only_until_postgres_ends_it(
        database_url: str) -> None:
    # A commit locks its rooms' leases first; a process stopped right then (SIGSTOP)
    # would keep them locked, and no other process could claim its rooms. PostgreSQL
    # ends a transaction left idle for the lease's lifetime (here 1 s).
    with trio.fail_after(TIMEOUT):
        async with open_store(database_url, stuck_transaction=1.0) as paused, \
                open_store(database_url) as other:
            lease = await claimed(paused, "STUK", "node-a", None, 0.0)
            await paused._write(begin_and_stop)
            taken = await claimed(other, "STUK", "node-b", None, TTL)  # once the session ends
            assert taken.takeover
            # When the paused process wakes, its connection is gone (the persistence
            # actor retries a failed commit); on a new one, its writes are fenced.
            with pytest.raises(StoreError, match="idle-in-transaction"):
                await paused.commit(created("STUK"), fences={"STUK": lease.fence})
            assert await paused.commit(created("STUK"), fences={"STUK": lease.fence}) \
                == frozenset({"STUK"})


async def test_a_claim_blocked_by_a_stuck_commit_fails_fast_instead_of_waiting(
        database_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_store(database_url, stuck_transaction=60.0) as paused, \
                open_store(database_url) as other:
            await claimed(paused, "STUK", "node-a", None, 0.0)
            await paused._write(begin_and_stop)
            with pytest.raises(StoreError, match="lock timeout"):
                await other.claim("STUK", "node-b", None, TTL)  # within 2 s


async def test_a_fenced_rooms_writes_clashing_with_its_new_owners_are_fenced_not_refused(
        database_url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_store(database_url) as store:
            old = await claimed(store, "MOVE", "node-a", None, 0.0)
            await store.commit(created("MOVE"), fences={"MOVE": old.fence})
            new = await claimed(store, "MOVE", "node-b", None, TTL)
            await store.commit([chat("MOVE", 1)], fences={"MOVE": new.fence})
            # The old owner, awake again, writes its own event 1: the same sequence.
            clash = AppendEvent(code="MOVE", event=Event(
                sequence=1, name="chat/message",
                data={"message": {"id": "late", "text": "late"}}, event_id="late",
                actor_id="h", timestamp=1_700_000_000_001))
            assert await store.commit([clash], fences={"MOVE": old.fence}) \
                == frozenset({"MOVE"})
            record = await store.load_room("MOVE")
            assert record is not None
            assert [e.event_id for e in record.journal] == ["MOVE-1"]
