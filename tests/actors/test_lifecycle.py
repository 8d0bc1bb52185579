"""Room lifecycle and faults: hibernation, abandonment, crash containment, server restart
and store outages (paused, failing, and failing after applying a batch)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from nexus_actors.actors.messages import OpenSession, SessionResult
from nexus_actors.protocol.connect import JoinRoom
from nexus_actors.testing import TestClient, TestServer, open_server, query

GRACE = 5.0
TIMEOUT = 60.0


def scene(scene_id: str) -> dict[str, Any]:
    return {"scene": {"id": scene_id, "name": f"Scene {scene_id}"}}


async def acked(client: TestClient, scene_id: str) -> dict[str, Any]:
    """Create scene ``scene_id`` (eventId = the scene id) and wait for its ``event-ack``."""
    await client.send_event("scene/create", scene(scene_id), event_id=scene_id)
    return await client.until("event-ack", eventId=scene_id)


async def chatted(client: TestClient, event_id: str) -> dict[str, Any]:
    """Say ``event_id`` in chat (anyone may) and wait for the ``event-ack``."""
    await client.send_event("chat/message", {"text": event_id}, event_id=event_id)
    return await client.until("event-ack", eventId=event_id)


def journal_ids(server: TestServer, code: str) -> list[str]:
    return [event.event_id for event in server.store.journal(code)]


def roster(session: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(p["id"], p["name"], p["role"]) for p in session["players"]]


async def hibernated_room(server: TestServer) -> tuple[TestClient, int]:
    """A room with one scene whose only member left and which has hibernated."""
    host = await server.create("GM")
    await acked(host, "s1")
    await host.close()
    assert await host.wait_closed() == 1000
    await trio.sleep(GRACE + 1)
    return host, host.last_sequence()


# Hibernation -----------------------------------------------------------------


async def test_empty_room_hibernates_after_host_grace_and_its_actor_stops(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=GRACE, hibernation_timeout=TIMEOUT) as server:
        host = await server.create("GM")
        code = host.room
        await acked(host, "s1")
        await host.close()
        await host.wait_closed()
        await trio.sleep(GRACE - 1)
        assert code in await server.running.rooms()
        assert server.store.status(code) == "active"

        await trio.sleep(2)
        assert code not in await server.running.rooms()
        assert server.store.status(code) == "hibernating"
        last = server.store.journal(code)[-1]
        assert last.name == "session/hibernated"
        assert last.sequence == host.last_sequence() + 1
        assert last.data == {"reconnectWindow": int(TIMEOUT * 1000)}


async def test_resume_wakes_a_hibernating_room_with_state_and_sequence_intact(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=GRACE, hibernation_timeout=TIMEOUT) as server:
        host, seen = await hibernated_room(server)
        code = host.room
        await trio.sleep(TIMEOUT - GRACE - 10)  # still inside the reconnect window

        again = await server.resume(host, last_seen=seen)
        assert again.session["uuid"] == host.uuid
        assert again.session["hostId"] == host.uuid
        assert again.session["sequence"] == seen + 1
        assert set(again.session["state"]["scenes"]) == {"s1"}
        cursor = await again.next("event-cursor")
        assert cursor["data"] == {"mode": "resume", "sequence": seen, "replayThrough": seen + 1}
        replayed = await again.next("event")
        assert replayed["data"]["name"] == "session/hibernated"
        assert replayed["serverSequence"] == seen + 1

        await server.running.flush()
        assert server.store.status(code) == "active"
        assert code in await server.running.rooms()
        ack = await acked(again, "s2")
        assert ack["data"]["serverSequence"] == seen + 2


async def test_room_loaded_from_the_store_serves_only_once_its_new_epoch_is_durable(
        autojump_clock: trio.testing.MockClock) -> None:
    # Every load from the store begins an epoch (a room that woke in place and was then
    # killed looks cleanly hibernated); if it served before the epoch was recorded, a
    # kill would let the next load hand out the same epoch for different events.
    async with open_server(host_grace=GRACE, hibernation_timeout=TIMEOUT) as server:
        host, seen = await hibernated_room(server)
        server.store.fail_next(8)  # loads work, commits fail for about 7 s
        pending = await server.connect(query(reconnect=host.room, token=host.token,
                                             lastSeenSequence=seen, epoch=1))
        await trio.sleep(3)
        assert pending.events() == []

        await pending.until("event", "session/reconnected")
        assert pending.session["epoch"] == 2
        assert (await pending.next("event-cursor"))["data"]["mode"] == "resume"
        record = await server.store.load_room(host.room)
        assert record is not None
        assert record.status == "active"
        assert record.epochs[-1] == (2, seen + 2)  # after session/hibernated


async def test_kill_after_a_room_woke_in_place_still_begins_a_new_epoch(
        autojump_clock: trio.testing.MockClock) -> None:
    # The room woke before its hibernation was committed; the store then recorded it as
    # hibernating, and the server was killed before it heard the room was live again.
    # The store looks cleanly hibernated, yet Ana saw an event that was never committed.
    async with open_server(host_grace=GRACE, hibernation_timeout=TIMEOUT) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await host.until("event", "session/join")
        code = host.room
        host.drop()
        ana.drop()
        await trio.sleep(1)
        server.store.pause()
        await trio.sleep(GRACE)  # hibernation journaled; its commit waits for the store
        host = await server.resume(host, last_seen=host.last_sequence(), epoch=1)
        ana = await server.resume(ana, last_seen=ana.last_sequence(), epoch=1)
        await host.send_event("chat/message", {"text": "unsaved"}, event_id="u1")
        await ana.until("event", "chat/message")
        server.store.fail_next(4, after_applying=True)  # it lands; the news does not arrive
        server.store.resume()
        await trio.sleep(0.1)  # the commit is being retried
        assert server.store.status(code) == "hibernating"
        await server.kill()
        await server.start()

        host = await server.resume(host, last_seen=host.last_sequence(), epoch=1)
        await chatted(host, "saved")  # takes the number "unsaved" had
        again = await server.resume(ana, last_seen=ana.last_sequence(), epoch=1)
        assert again.session["epoch"] == 2
        assert (await again.next("event-cursor"))["data"]["mode"] == "baseline"
        assert [m["text"] for m in again.session["state"]["chat"]] == ["saved"]


async def test_join_wakes_a_hibernating_room(autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=GRACE, hibernation_timeout=TIMEOUT) as server:
        host, seen = await hibernated_room(server)
        ana = await server.join(host.room, "Ana")
        assert ana.session["sequence"] == seen + 2  # session/hibernated, then the join
        assert set(ana.session["state"]["scenes"]) == {"s1"}
        assert ana.session["hostId"] == host.uuid
        # The host has been away far longer than its grace: the joiner takes over at once.
        migrated = await ana.until("event", "session/host-migrated")
        assert migrated["data"] == {"name": "session/host-migrated", "newHostId": ana.uuid,
                                    "previousHostId": host.uuid, "manual": False}
        assert migrated["serverSequence"] == seen + 3
        await server.running.flush()
        assert server.store.status(host.room) == "active"
        assert host.room in await server.running.rooms()
        ack = await chatted(ana, "a1")
        assert ack["data"]["serverSequence"] == seen + 4


async def test_untouched_hibernating_room_is_abandoned_by_the_janitor(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=GRACE, hibernation_timeout=TIMEOUT) as server:
        host, _ = await hibernated_room(server)
        await trio.sleep(TIMEOUT / 2)
        assert server.store.status(host.room) == "hibernating"
        await trio.sleep(TIMEOUT)  # nobody connects: the sweep alone must notice
        assert server.store.status(host.room) == "abandoned"


async def test_room_hibernating_past_the_timeout_is_abandoned(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=GRACE, hibernation_timeout=TIMEOUT) as server:
        host, seen = await hibernated_room(server)
        await trio.sleep(TIMEOUT + 1)

        again = await server.connect(query(reconnect=host.room, token=host.token,
                                           lastSeenSequence=seen))
        assert (await again.next("error"))["data"]["code"] == "room-not-found"
        assert await again.wait_closed() == 4404
        joiner = await server.connect(query(join=host.room, name="Ana"))
        assert (await joiner.next("error"))["data"]["code"] == "room-not-found"
        assert await joiner.wait_closed() == 4404
        await server.running.flush()
        assert server.store.status(host.room) == "abandoned"


async def test_abandoned_code_can_be_created_again(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=GRACE, hibernation_timeout=TIMEOUT) as server:
        old, _ = await hibernated_room(server)
        code = old.room
        await trio.sleep(TIMEOUT + 1)
        probe = await server.connect(query(join=code, name="Ana"))
        assert await probe.wait_closed() == 4404  # the room is found abandoned

        fresh = await server.create("New GM", code=code)
        assert fresh.room == code
        assert fresh.session["sequence"] == 1
        assert fresh.session["state"]["scenes"] == {}
        assert roster(fresh.session) == [(fresh.uuid, "New GM", "host")]
        ack = await acked(fresh, "n1")
        assert ack["data"]["serverSequence"] == 2
        assert [e.name for e in server.store.journal(code)] == ["session/join", "scene/create"]
        assert server.store.status(code) == "active"

        stale = await server.connect(query(reconnect=code, token=old.token, lastSeenSequence=0))
        assert (await stale.next("error"))["data"]["code"] == "invalid-token"
        assert await stale.wait_closed() == 4401


# Crash containment -----------------------------------------------------------


async def room_with_co_host(server: TestServer) -> tuple[TestClient, TestClient]:
    host = await server.create("GM")
    ana = await server.join(host.room, "Ana")
    await host.send_event("session/add-co-host", {"playerId": ana.uuid}, event_id="co")
    await host.until("event-ack", eventId="co")
    await ana.until("event", "session/co-host-added")
    return host, ana


async def test_room_crash_sends_clients_to_resume_and_the_room_continues(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host, ana = await room_with_co_host(server)
        await acked(host, "s1")
        await ana.until("event", "scene/create")
        before = host.last_sequence()

        await server.running.crash_room(host.room)
        for client in (host, ana):
            backoff = await client.until("backoff")
            assert backoff["data"]["reason"] == "room-restart"
            assert backoff["data"]["retryAfterMs"] > 0
            assert await client.wait_closed() == 1012
            assert client.frames[-1] is backoff

        host2 = await server.resume(host, last_seen=before, epoch=host.session["epoch"])
        ana2 = await server.resume(ana, last_seen=before, epoch=ana.session["epoch"])
        for again in (host2, ana2):
            assert (await again.next("event-cursor"))["data"]["mode"] == "resume"
            assert again.session["sequence"] == before
            # Everything was flushed before the restart: no history to disown.
            assert again.session["epoch"] == host.session["epoch"]
            assert again.session["hostId"] == host.uuid
            assert again.session["coHostIds"] == [ana.uuid]
            assert roster(again.session) == [(host.uuid, "GM", "host"),
                                             (ana.uuid, "Ana", "co-host")]
            assert set(again.session["state"]["scenes"]) == {"s1"}

        ack = await acked(host2, "s2")
        assert ack["data"]["serverSequence"] == before + 1
        seen = await ana2.until("event", "scene/create")
        assert seen["serverSequence"] == before + 1
        assert journal_ids(server, host.room)[-2:] == ["s1", "s2"]


async def test_room_crash_leaves_other_rooms_untouched(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host, ana = await room_with_co_host(server)
        gm = await server.create("Other GM")
        bob = await server.join(gm.room, "Bob")
        await gm.until("event", "session/join")
        untouched = [len(gm.frames), len(bob.frames)]

        await server.running.crash_room(host.room)
        assert await host.wait_closed() == 1012
        assert await ana.wait_closed() == 1012
        await server.resume(host, last_seen=host.last_sequence())  # the room is back

        assert [len(gm.frames), len(bob.frames)] == untouched
        assert not gm.closed.is_set()
        assert not bob.closed.is_set()
        ack = await acked(gm, "g1")
        seen = await bob.until("event", "scene/create")
        assert seen["serverSequence"] == ack["data"]["serverSequence"]


async def test_events_acked_before_a_crash_are_all_replayed(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host, ana = await room_with_co_host(server)
        joined_at = ana.session["sequence"]
        sent = []
        for index in range(5):
            sender = host if index % 2 else ana
            await acked(sender, f"s{index}")
            sent.append(f"s{index}")

        await server.running.crash_room(host.room)
        assert await ana.wait_closed() == 1012
        again = await server.resume(ana, last_seen=joined_at)
        cursor = await again.next("event-cursor")
        replay = [await again.next("event") for _ in range(cursor["data"]["replayThrough"]
                                                          - joined_at)]
        sequences = [frame["serverSequence"] for frame in replay]
        assert sequences == list(range(joined_at + 1, cursor["data"]["replayThrough"] + 1))
        assert [f["eventId"] for f in replay if f["data"]["name"] == "scene/create"] == sent


async def test_room_restarted_after_a_crash_waits_for_its_own_writes_before_stopping(
        autojump_clock: trio.testing.MockClock) -> None:
    # Notices that the earlier incarnation's writes committed arrive after the restart;
    # they must not count as the new incarnation's writes being durable, or the room
    # stops with its hibernation unwritten and the next start loads a stale room.
    async with open_server(host_grace=GRACE, hibernation_timeout=TIMEOUT) as server:
        host = await server.create("GM")
        code = host.room
        await acked(host, "s1")
        server.store.pause()
        await host.send_event("scene/create", scene("s2"), event_id="s2")
        await host.send_event("scene/create", scene("s3"), event_id="s3")
        await trio.testing.wait_all_tasks_blocked()  # the room has taken both in
        await server.running.crash_room(code)
        assert await host.wait_closed() == 1012
        await trio.sleep(1)
        server.store.resume()  # the crashed incarnation's writes commit; the room restarts
        await trio.sleep(1)
        server.store.pause()
        await trio.sleep(GRACE + 1)  # nobody came back: the new incarnation hibernates
        assert code in await server.running.rooms()  # its hibernation is not durable yet

        server.store.resume()
        await trio.sleep(1)
        assert code not in await server.running.rooms()
        journal = server.store.journal(code)
        assert [e.event_id for e in journal if e.name == "scene/create"] == ["s1", "s2", "s3"]
        assert journal[-1].name == "session/hibernated"
        again = await server.resume(host, last_seen=host.last_sequence())
        assert again.session["sequence"] == journal[-1].sequence
        assert (await again.next("event-cursor"))["data"]["mode"] == "resume"
        assert sorted(again.session["state"]["scenes"]) == ["s1", "s2", "s3"]


async def test_new_epoch_after_an_unclean_stop_is_durable_before_any_client_sees_it(
        autojump_clock: trio.testing.MockClock) -> None:
    # Otherwise a second unclean stop before the record commits hands out the same epoch
    # again, for different events, and a client of the first one resumes into a history
    # that is not the one it saw.
    async with open_server(host_grace=600) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await chatted(host, "c1")
        await server.kill()
        await server.start()
        server.store.fail_next(8)  # loads work, commits fail for about 7 s
        pending = await server.connect(query(reconnect=ana.room, token=ana.token,
                                             lastSeenSequence=ana.last_sequence(), epoch=1))
        await trio.sleep(3)
        assert pending.events() == []  # the restored room waits for its epoch record

        await pending.until("event", "session/reconnected")
        assert pending.session["epoch"] == 2
        record = await server.store.load_room(host.room)
        assert record is not None
        assert record.epochs[-1] == (2, ana.last_sequence() + 1)
        await server.kill()
        await server.start()
        again = await server.resume(pending, last_seen=pending.last_sequence(), epoch=2)
        assert again.session["epoch"] == 3


async def test_new_epoch_the_store_refuses_is_never_shown_to_a_client(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=600) as server:
        host = await server.create("GM")
        await chatted(host, "c1")
        await server.kill()
        await server.start()
        server.store.refuse(host.room, times=2)  # the new epoch's record, batch and retry
        again = await server.resume(host, last_seen=host.last_sequence(), epoch=1)
        record = await server.store.load_room(host.room)
        assert record is not None
        assert record.epochs[-1][0] == again.session["epoch"] == 2
        await trio.sleep(1)
        assert not again.closed.is_set()  # it was not shown an epoch that then went away
        assert [e.event_id for e in server.store.journal(host.room)].count("c1") == 1


async def test_room_crashing_repeatedly_is_stopped_then_restarted_from_the_store(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        code = host.room
        await acked(host, "s1")
        client = host
        for _ in range(3):
            await server.running.crash_room(code)
            assert await client.wait_closed() == 1012
            client = await server.resume(client, last_seen=client.last_sequence())
            assert code in await server.running.rooms()

        await server.running.crash_room(code)  # the fourth within 60 s
        assert (await client.until("backoff"))["data"]["reason"] == "room-restart"
        assert await client.wait_closed() == 1012
        assert code not in await server.running.rooms()

        again = await server.resume(client, last_seen=0)
        assert again.session["hostId"] == host.uuid
        assert set(again.session["state"]["scenes"]) == {"s1"}
        assert code in await server.running.rooms()
        ack = await acked(again, "s2")
        assert ack["data"]["serverSequence"] == again.session["sequence"] + 1


async def test_room_stopped_after_repeated_crashes_first_hands_its_writes_to_the_store(
        autojump_clock: trio.testing.MockClock) -> None:
    # A generation started while the stopped one's writes are still queued would load a
    # stale room and reuse sequence numbers.
    async with open_server() as server:
        host = await server.create("GM")
        code = host.room
        client = host
        for _ in range(3):
            await server.running.crash_room(code)
            assert await client.wait_closed() == 1012
            client = await server.resume(client, last_seen=client.last_sequence())
        server.store.pause()
        await client.send_event("scene/create", scene("s1"), event_id="s1")
        await trio.testing.wait_all_tasks_blocked()  # the room has taken it in
        await server.running.crash_room(code)  # the fourth within 60 s, s1 not committed
        assert await client.wait_closed() == 1012
        await trio.sleep(1)
        assert code in await server.running.rooms()  # waiting for the store

        server.store.resume()
        await trio.sleep(1)
        assert code not in await server.running.rooms()
        assert "s1" in journal_ids(server, code)
        again = await server.resume(client, last_seen=client.last_sequence())
        assert set(again.session["state"]["scenes"]) == {"s1"}
        assert server.store.rejections == []


async def test_crashes_spread_beyond_the_window_do_not_stop_the_room(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        client = await server.create("GM")
        code = client.room
        for crash in range(4):
            if crash == 3:
                await trio.sleep(61)  # the first crash leaves the 60 s window
            await server.running.crash_room(code)
            assert await client.wait_closed() == 1012
            client = await server.resume(client, last_seen=client.last_sequence())
        assert code in await server.running.rooms()


# Server restart --------------------------------------------------------------


async def test_server_restart_sends_every_client_away_then_resume_finds_everything(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host, ana = await room_with_co_host(server)
        bob = await server.join(host.room, "Bob")
        other = await server.create("Other GM")
        await acked(host, "s1")
        await chatted(bob, "b1")
        await acked(other, "o1")
        clients = [host, ana, bob, other]
        assert (await host.until("event", "chat/message"))["eventId"] == "b1"
        sequence = host.last_sequence()

        await server.restart()
        for client in clients:
            assert await client.wait_closed() == 1012
            assert client.frames[-1]["type"] == "backoff"
            assert client.frames[-1]["data"]["reason"] == "server-restart"

        for previous in (host, ana, bob):
            again = await server.resume(previous, last_seen=sequence,
                                        epoch=previous.session["epoch"])
            assert (await again.next("event-cursor"))["data"]["mode"] == "resume"
            assert again.session["uuid"] == previous.uuid
            assert again.session["sequence"] == sequence
            # Restored from the store: a new epoch, which costs a client whose history is
            # all durable nothing (it resumes, as above).
            assert again.session["epoch"] == previous.session["epoch"] + 1
            assert again.session["hostId"] == host.uuid
            assert again.session["coHostIds"] == [ana.uuid]
            assert roster(again.session) == [(host.uuid, "GM", "host"),
                                             (ana.uuid, "Ana", "co-host"),
                                             (bob.uuid, "Bob", "player")]
            assert set(again.session["state"]["scenes"]) == {"s1"}
            assert [m["text"] for m in again.session["state"]["chat"]] == ["b1"]

        for client in clients:
            ids = journal_ids(server, client.room)
            for frame in client.frames:
                if frame["type"] == "event-ack":
                    assert ids.count(frame["data"]["eventId"]) == 1


async def test_server_restart_commits_events_still_waiting_for_the_store(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await host.until("event", "session/join")
        seen = host.last_sequence()
        server.store.pause()
        await host.send_event("scene/create", scene("s1"), event_id="s1")
        await ana.until("event", "scene/create")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.restart)
            await host.until("backoff")  # the drain has begun
            server.store.resume()
        assert not [f for f in host.frames if f.get("eventId") == "s1"
                    or f["type"] == "event-ack"]

        again = await server.resume(host, last_seen=seen)
        await again.next("event-cursor")
        replayed = await again.next("event")
        assert replayed["eventId"] == "s1"
        assert journal_ids(server, host.room).count("s1") == 1


# Store outages ---------------------------------------------------------------


async def test_paused_store_holds_acks_but_not_broadcasts_or_cursors(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await host.until("event", "session/join")
        server.store.pause()
        await host.send_event("scene/create", scene("s1"), event_id="s1")
        await host.send_event("scene/create", scene("s2"), event_id="s2")
        await host.cursor("s1", 3, 4)

        assert (await ana.until("event", "scene/create"))["eventId"] == "s1"
        assert (await ana.until("event", "scene/create"))["eventId"] == "s2"
        cursors = await ana.until("cursors")
        assert cursors["data"]["cursors"][0]["position"] == {"x": 3, "y": 4}
        await trio.sleep(5)
        assert host.unread() == []

        server.store.resume()
        own_1 = await host.next("event")
        ack_1 = await host.next("event-ack")
        own_2 = await host.next("event")
        ack_2 = await host.next("event-ack")
        assert [own_1["eventId"], ack_1["data"]["eventId"]] == ["s1", "s1"]
        assert [own_2["eventId"], ack_2["data"]["eventId"]] == ["s2", "s2"]
        assert ack_2["data"]["serverSequence"] == ack_1["data"]["serverSequence"] + 1


async def test_failed_commits_are_retried_until_acked(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        server.store.fail_next(3)
        for scene_id in ("s1", "s2", "s3"):
            await host.send_event("scene/create", scene(scene_id), event_id=scene_id)
        acks = [await host.until("event-ack") for _ in range(3)]
        assert [a["data"]["eventId"] for a in acks] == ["s1", "s2", "s3"]
        assert server.running.health.store_ok
        ids = journal_ids(server, host.room)
        assert ids[-3:] == ["s1", "s2", "s3"]
        assert len(ids) == len(set(ids))
        assert (await ana.until("event", "scene/create"))["eventId"] == "s1"


async def test_commit_failing_after_applying_is_retried_without_a_duplicate(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        server.store.fail_next(1, after_applying=True)
        await host.send_event("scene/create", scene("s1"), event_id="s1")
        await ana.until("event", "scene/create")
        with trio.move_on_after(20):  # retries back off 0.05 s, 0.1 s, ...: plenty
            await host.until("event-ack", eventId="s1")
        assert journal_ids(server, host.room).count("s1") == 1
        assert any(f["type"] == "event-ack" for f in host.frames), "s1 was never acked"
        ack = await acked(host, "s2")
        assert ack["data"]["serverSequence"] == host.last_sequence()
        assert journal_ids(server, host.room).count("s2") == 1


async def test_drain_ends_at_once_when_a_member_disconnects_during_it(
        autojump_clock: trio.testing.MockClock) -> None:
    # A connection that ended while its room drained used to re-arm the room's idle
    # timer: the drain then waited its whole timeout and the room never reported its exit.
    async with open_server(drain_timeout=4.0) as server:
        host = await server.create("GM")
        server.store.pause()  # the drain's snapshot stays uncommitted: the room waits
        async with trio.open_nursery() as nursery:
            began = trio.current_time()
            nursery.start_soon(server.stop)
            await trio.testing.wait_all_tasks_blocked()  # the room is draining
            host.drop()
            await trio.testing.wait_all_tasks_blocked()  # and has seen the disconnect
            server.store.resume()
        assert trio.current_time() - began < 1.0


async def test_drain_delivers_pending_acks_before_sending_clients_away(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        server.store.latency = 0.5  # every commit takes half a second
        await host.send_event("scene/create", scene("late"), event_id="late")
        await trio.sleep(0.1)
        await server.stop()
        kinds = [f["type"] for f in host.frames]
        assert kinds[-3:] == ["event", "event-ack", "backoff"]
        assert host.frames[-2]["data"]["eventId"] == "late"
        assert host.close_code == 1012


async def test_drain_sends_rooms_away_in_batches_spread_over_the_drain_spread(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(drain_batch=2, drain_spread=1.5, drain_timeout=10.0) as server:
        hosts = [await server.create(f"GM{index}") for index in range(5)]
        began = trio.current_time()
        hinted: dict[int, float] = {}

        async def watch(index: int) -> None:
            await hosts[index].until("backoff")
            hinted[index] = trio.current_time() - began

        async with trio.open_nursery() as nursery:
            for index in range(5):
                nursery.start_soon(watch, index)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(server.stop)
        batches = sorted(set(hinted.values()))  # (each a transit time after its batch)
        assert [at - batches[0] for at in batches] == pytest.approx([0.0, 0.5, 1.0])
        assert sorted(hinted.values()).count(batches[0]) == 2
        assert sorted(hinted.values()).count(batches[2]) == 1


async def test_drain_spread_is_at_most_a_quarter_of_the_drain_timeout(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(drain_batch=1, drain_spread=30.0, drain_timeout=4.0) as server:
        hosts = [await server.create(f"GM{index}") for index in range(2)]
        began = trio.current_time()
        await server.stop()
        assert trio.current_time() - began < 4.0
        for host in hosts:
            assert host.close_code == 1012


async def test_drain_refuses_new_durable_events_with_a_retry_hint(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        server.store.pause()
        await host.send_event("scene/create", scene("s1"), event_id="s1")
        await ana.until("event", "scene/create")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.stop)
            await trio.sleep(0.5)  # draining, waiting for the paused store
            await ana.send_event("chat/message", {"text": "too late"}, event_id="late")
            refusal = await ana.until("error")
            assert refusal["data"]["code"] == "unavailable"
            assert refusal["data"]["eventId"] == "late"
            server.store.resume()
        assert "late" not in journal_ids(server, host.room)
        assert journal_ids(server, host.room).count("s1") == 1


async def test_abandoned_rooms_are_deleted_after_the_retention(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=GRACE, hibernation_timeout=TIMEOUT,
                           abandoned_retention=600, cleanup_interval=60) as server:
        host, _ = await hibernated_room(server)
        await trio.sleep(TIMEOUT + 60)
        assert server.store.status(host.room) == "abandoned"
        await trio.sleep(600)
        assert server.store.status(host.room) is None
        assert server.store.journal(host.room) == []


async def test_writes_the_store_refuses_restart_only_their_room_in_a_new_epoch(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host, ana = await room_with_co_host(server)
        other = await server.create("Other GM")
        await acked(host, "s1")
        await server.running.flush()
        durable = host.last_sequence()
        # As a database refuses a write it cannot take: the batch, then the room's share.
        server.store.refuse(host.room, times=2)
        await host.send_event("scene/create", scene("s2"), event_id="s2")
        await other.send_event("scene/create", scene("same-batch"), event_id="same-batch")
        while (await ana.until("event", "scene/create"))["eventId"] != "s2":
            pass  # s2 reaches the others before the store refuses it
        # The other room's write shared the refused batch, and is committed all the same.
        assert (await other.until("event-ack", eventId="same-batch"))["data"]["duplicate"] is False
        for client in (host, ana):
            hint = await client.until("backoff")
            assert hint["data"]["reason"] == "room-restart"
            assert await client.wait_closed() == 1012
        assert not any(f["type"] == "event-ack" and f["data"]["eventId"] == "s2"
                       for f in host.frames)
        # Every other room keeps committing.
        ack = await acked(other, "elsewhere")
        assert ack["data"]["serverSequence"] == 3
        assert journal_ids(server, other.room)[-2:] == ["same-batch", "elsewhere"]
        again = await server.resume(ana, last_seen=ana.last_sequence(), epoch=1)
        # Ana saw s2, which is gone: her history no longer matches the room's.
        assert (await again.next("event-cursor"))["data"]["mode"] == "baseline"
        assert again.session["epoch"] == 2
        assert again.session["sequence"] == durable
        assert set(again.session["state"]["scenes"]) == {"s1"}
        assert "s2" not in journal_ids(server, host.room)


async def test_what_a_client_sends_while_its_seat_waits_is_kept_for_the_room(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=GRACE, hibernation_timeout=TIMEOUT) as server:
        host, _ = await hibernated_room(server)
        server.store.pause()  # the room's load waits for the store
        back = await server.connect(query(reconnect=host.room, token=host.token))
        await back.send_event("chat/message", {"text": "early"}, event_id="early")
        await trio.sleep(1.0)
        assert back.frames == []  # no seat yet
        server.store.resume()
        await back.until("event", "session/reconnected")
        ack = await back.until("event-ack", eventId="early")
        assert ack["data"]["serverSequence"] > 0


async def test_a_join_whose_client_left_while_the_room_loaded_takes_no_seat(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=GRACE, hibernation_timeout=TIMEOUT) as server:
        host, _ = await hibernated_room(server)
        server.store.pause()  # the room's load waits for the store
        gone = await server.connect(query(join=host.room, name="Gone"))
        back = await server.connect(query(reconnect=host.room, token=host.token))
        gone.drop()
        await trio.sleep(1.0)
        server.store.resume()
        await back.until("event", "session/reconnected")
        await trio.sleep(1.0)
        assert [p["name"] for p in back.session["players"]] == ["GM"]
        assert back.events("session/join") == []


async def test_a_seat_whose_connection_went_before_it_was_answered_is_announced_away(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        # A join the room grants while its connection has just gone: the reply is lost.
        registry = server.running.listener.registry
        reply, answers = trio.open_memory_channel[SessionResult](1)
        answers.close()
        peer = server.running.listener.make_peer(999, "memory")
        await registry.send(OpenSession(request=JoinRoom(code=host.room, name="Ghost"),
                                        peer=peer, reply=reply))
        joined = await host.until("event", "session/join")
        ghost = joined["data"]["player"]["id"]
        await host.until("event", "session/disconnected", uuid=ghost)
