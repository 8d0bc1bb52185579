"""The in-memory store: atomic commits, journal retention, duplicates, and injected faults."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from nexus_actors.errors import StoreError
from nexus_actors.room.events import Event
from nexus_actors.store import AppendEvent, MemoryStore, PutPresence, PutRoom, PutSnapshot, Write
from nexus_actors.store.base import RoomStatus

CODE = "K7PX"


def event(sequence: int, event_id: str | None = None) -> Event:
    return Event(sequence=sequence, name="chat/message", data={"message": {"n": sequence}},
                 event_id=event_id or f"e{sequence}", actor_id="m1", timestamp=sequence)


def append(*sequences: int, code: str = CODE) -> list[Write]:
    return [AppendEvent(code=code, event=event(n)) for n in sequences]


def put_room(code: str = CODE, *, status: RoomStatus = "active", last_activity: int = 0,
             created: bool = False) -> PutRoom:
    return PutRoom(code=code, status=status, last_activity=last_activity, epochs=((1, 1),),
                   created=created)


def snapshot(sequence: int, code: str = CODE) -> PutSnapshot:
    return PutSnapshot(code=code, sequence=sequence, snapshot=b'{"sequence": %d}' % sequence)


def sequences(store: MemoryStore, code: str = CODE) -> list[int]:
    return [e.sequence for e in store.journal(code)]


async def new_room(store: MemoryStore, *events: int) -> None:
    await store.commit([put_room(created=True), *append(*events)])


async def test_an_unknown_room_loads_as_none() -> None:
    assert await MemoryStore().load_room("ZZZZ") is None


async def test_load_room_returns_the_snapshot_and_the_journal_in_order() -> None:
    store = MemoryStore()
    await new_room(store, 1, 2)
    await store.commit([*append(3, 4), snapshot(3)])
    record = await store.load_room(CODE)
    assert record is not None
    assert record.code == CODE
    assert record.status == "active"
    assert record.epochs == ((1, 1),)
    assert record.snapshot == b'{"sequence": 3}'
    assert [e.sequence for e in record.journal] == [1, 2, 3, 4]
    assert record.journal[0] == event(1)


async def test_a_room_without_a_snapshot_loads_its_whole_journal() -> None:
    store = MemoryStore()
    await new_room(store, 1, 2, 3)
    record = await store.load_room(CODE)
    assert record is not None
    assert record.snapshot is None
    assert [e.sequence for e in record.journal] == [1, 2, 3]


async def test_put_room_updates_status_activity_and_epochs() -> None:
    store = MemoryStore()
    await new_room(store, 1)
    await store.commit([PutRoom(code=CODE, status="hibernating", last_activity=99,
                                epochs=((1, 1), (2, 2)))])
    record = await store.load_room(CODE)
    assert record is not None
    assert (record.status, record.last_activity, record.epochs) == (
        "hibernating", 99, ((1, 1), (2, 2)))
    assert [e.sequence for e in record.journal] == [1]


async def test_a_batch_with_a_gap_in_sequences_changes_nothing() -> None:
    store = MemoryStore()
    await new_room(store, 1)
    with pytest.raises(StoreError):
        await store.commit([*append(2, 4), snapshot(2),
                            PutRoom(code=CODE, status="hibernating", last_activity=5,
                                    epochs=((1, 1),))])
    assert sequences(store) == [1]
    assert store.status(CODE) == "active"
    record = await store.load_room(CODE)
    assert record is not None
    assert record.snapshot is None
    assert store.commits == 1


async def test_sequences_must_continue_the_stored_journal() -> None:
    store = MemoryStore()
    await new_room(store, 1, 2)
    with pytest.raises(StoreError):
        await store.commit(append(4))
    with pytest.raises(StoreError, match="taken by another event"):
        await store.commit([AppendEvent(code=CODE, event=event(2, "other"))])
    await store.commit(append(3))
    assert sequences(store) == [1, 2, 3]


async def test_a_retried_batch_skips_what_it_already_committed() -> None:
    store = MemoryStore()
    await new_room(store, 1, 2)
    await store.commit([*append(2, 3), snapshot(3)])
    await store.commit([put_room(created=True), *append(1, 2, 3, 4)])
    assert sequences(store) == [1, 2, 3, 4]
    assert [e.event_id for e in store.journal(CODE)] == ["e1", "e2", "e3", "e4"]


async def test_a_failing_room_in_a_batch_blocks_every_room_in_it() -> None:
    store = MemoryStore()
    await new_room(store, 1)
    with pytest.raises(StoreError):
        await store.commit([*append(2), *append(1, code="NOPE")])
    assert sequences(store) == [1]


async def test_writes_to_a_room_without_a_row_are_refused() -> None:
    store = MemoryStore()
    with pytest.raises(StoreError):
        await store.commit(append(1))
    with pytest.raises(StoreError):
        await store.commit([snapshot(1)])
    assert store.codes() == []


async def test_a_duplicate_event_id_is_refused() -> None:
    store = MemoryStore()
    await new_room(store, 1)
    with pytest.raises(StoreError, match="duplicate"):
        await store.commit([AppendEvent(code=CODE, event=event(2, "e1"))])
    with pytest.raises(StoreError, match="duplicate"):
        await store.commit([AppendEvent(code=CODE, event=event(2, "x")),
                            AppendEvent(code=CODE, event=event(3, "x"))])
    assert sequences(store) == [1]


async def test_the_same_event_id_in_another_room_is_fine() -> None:
    store = MemoryStore()
    await new_room(store, 1)
    await store.commit([put_room("ABCD", created=True), *append(1, code="ABCD")])
    assert sequences(store, "ABCD") == [1]


async def test_without_a_snapshot_no_event_is_dropped() -> None:
    store = MemoryStore(journal_retain=3)
    await new_room(store, *range(1, 11))
    assert sequences(store) == list(range(1, 11))


async def test_events_after_the_snapshot_are_kept_beyond_the_retention() -> None:
    store = MemoryStore(journal_retain=3)
    await new_room(store, *range(1, 11))
    await store.commit([snapshot(5)])
    assert sequences(store) == [6, 7, 8, 9, 10]


async def test_the_journal_keeps_at_least_journal_retain_events() -> None:
    store = MemoryStore(journal_retain=3)
    await new_room(store, *range(1, 11))
    await store.commit([snapshot(10)])
    assert sequences(store) == [8, 9, 10]
    await store.commit(append(11))
    assert sequences(store) == [9, 10, 11]


async def test_a_trimmed_journal_still_loads_with_its_snapshot() -> None:
    store = MemoryStore(journal_retain=2)
    await new_room(store, 1, 2, 3, 4)
    await store.commit([*append(5), snapshot(5)])
    record = await store.load_room(CODE)
    assert record is not None
    assert record.snapshot == b'{"sequence": 5}'
    assert [e.sequence for e in record.journal] == [4, 5]


async def test_pause_holds_commits_until_resume() -> None:
    store = MemoryStore()
    await new_room(store, 1)
    store.pause()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.commit, append(2))
        await trio.testing.wait_all_tasks_blocked()
        assert sequences(store) == [1]
        store.resume()
    assert sequences(store) == [1, 2]


async def test_pause_holds_loads_too() -> None:
    store = MemoryStore()
    await new_room(store, 1)
    store.pause()
    loaded: list[object] = []

    async def load() -> None:
        loaded.append(await store.load_room(CODE))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(load)
        await trio.testing.wait_all_tasks_blocked()
        assert loaded == []
        store.resume()
    assert len(loaded) == 1


async def test_fail_next_before_applying_leaves_nothing_behind() -> None:
    store = MemoryStore()
    await new_room(store, 1)
    store.fail_next(2)
    for _ in range(2):
        with pytest.raises(StoreError):
            await store.commit(append(2))
    assert sequences(store) == [1]
    await store.commit(append(2))
    assert sequences(store) == [1, 2]


async def test_fail_next_after_applying_keeps_the_batch_but_reports_failure() -> None:
    store = MemoryStore()
    await new_room(store, 1)
    store.fail_next(after_applying=True)
    with pytest.raises(StoreError):
        await store.commit(append(2))
    assert sequences(store) == [1, 2]
    await store.commit(append(2))  # the retry finds it committed: nothing written twice
    await store.commit(append(3))
    assert sequences(store) == [1, 2, 3]


async def test_abandon_idle_marks_only_rooms_hibernating_since_before() -> None:
    store = MemoryStore()
    await store.commit([
        put_room("AAAA", status="hibernating", last_activity=100, created=True),
        put_room("BBBB", status="hibernating", last_activity=500, created=True),
        put_room("CCCC", status="active", last_activity=100, created=True),
    ])
    assert await store.abandon_idle(200) == ["AAAA"]
    assert [store.status(c) for c in ("AAAA", "BBBB", "CCCC")] == [
        "abandoned", "hibernating", "active"]
    assert await store.abandon_idle(200) == []


async def test_an_abandoned_code_can_be_created_afresh() -> None:
    store = MemoryStore()
    await store.commit([put_room(status="hibernating", last_activity=0, created=True),
                        *append(1, 2)])
    await store.abandon_idle(1)
    await store.commit([put_room(created=True), *append(1)])
    record = await store.load_room(CODE)
    assert record is not None
    assert record.status == "active"
    assert [e.sequence for e in record.journal] == [1]


async def test_creating_a_live_code_again_keeps_its_journal() -> None:
    store = MemoryStore()
    await new_room(store, 1, 2)
    await store.commit([put_room(created=True), *append(3)])
    assert sequences(store) == [1, 2, 3]


async def test_counters_track_committed_batches_and_writes() -> None:
    store = MemoryStore()
    await new_room(store, 1, 2)
    await store.commit(append(3))
    assert (store.commits, store.writes) == (2, 4)


async def test_delete_abandoned_removes_only_rooms_abandoned_before_the_cutoff() -> None:
    store = MemoryStore()
    await store.commit([
        put_room("AAAA", status="abandoned", last_activity=100, created=True),
        put_room("BBBB", status="abandoned", last_activity=500, created=True),
        put_room("CCCC", status="hibernating", last_activity=100, created=True),
    ])
    assert await store.delete_abandoned(200) == 1
    assert sorted(store.codes()) == ["BBBB", "CCCC"]


async def test_room_stats_count_rooms_by_status_and_connected_seats() -> None:
    store = MemoryStore()
    await store.commit([put_room("AAAA", created=True), put_room("BBBB", created=True),
                        PutPresence(code="AAAA", member_id="m1", connected=True, at=1),
                        PutPresence(code="AAAA", member_id="m2", connected=True, at=1),
                        PutPresence(code="BBBB", member_id="m3", connected=True, at=1)])
    await store.commit([PutPresence(code="AAAA", member_id="m2", connected=False, at=2),
                        put_room("BBBB", status="hibernating")])
    stats = await store.room_stats()
    assert [(s.status, s.rooms, s.players_connected) for s in stats] == [
        ("active", 1, 1), ("hibernating", 1, 1)]
