"""What a room records besides its journal: snapshots over time, presence, the
connection log, and seats given up after NEXUS_SEAT_TTL."""

from __future__ import annotations

import trio
import trio.testing

from nexus_actors.testing import open_server, query


async def test_a_room_snapshots_after_the_interval_even_with_few_events(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(snapshot_every=100, snapshot_interval=30) as server:
        host = await server.create("GM")
        await host.send_event("scene/create", {"scene": {"id": "s1", "name": "Cave"}})
        ack = await host.until("event-ack")
        await server.running.flush()
        assert server.store.snapshot_sequence(host.room) is None
        await trio.sleep(31)
        await server.running.flush()
        assert server.store.snapshot_sequence(host.room) == ack["data"]["serverSequence"]


async def test_presence_and_the_connection_log_follow_members(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=0) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bob = await server.join(host.room, "Bob")
        ana.drop()
        await host.until("event", "session/disconnected", uuid=ana.uuid)
        back = await server.resume(ana, last_seen=ana.last_sequence())
        await host.send_event("session/kick", {"playerId": bob.uuid})
        await host.until("event-ack")
        host.drop()
        await back.until("event", "session/host-migrated")
        await server.running.flush()
        log = [(e.kind, e.user_id) for e in server.store.connection_events]
        assert log == [
            ("connect", host.uuid), ("connect", ana.uuid), ("connect", bob.uuid),
            ("disconnect", ana.uuid), ("resume", ana.uuid), ("kicked", bob.uuid),
            ("disconnect", host.uuid), ("host-migrated", ana.uuid),
        ]
        assert set(server.store.last_seen(host.room)) == {host.uuid, ana.uuid, bob.uuid}


async def test_a_seat_unseen_for_the_seat_ttl_is_given_up(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(seat_ttl=100, host_grace=600) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        ana.drop()
        await host.until("event", "session/disconnected", uuid=ana.uuid)
        await trio.sleep(99)
        assert host.events("session/leave") == []
        left = await host.until("event", "session/leave")
        assert left["data"] == {"name": "session/leave", "uuid": ana.uuid, "reason": "expired"}
        assert left["actorId"] is None
        again = await server.connect(query(reconnect=host.room, token=ana.token))
        assert (await again.next("error"))["data"]["code"] == "invalid-token"


async def test_an_expired_primary_host_is_replaced_and_seats_expire_on_restore_too(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(seat_ttl=100, host_grace=5, hibernation_timeout=3600) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bob = await server.join(host.room, "Bob")
        host.drop()
        migrated = await ana.until("event", "session/host-migrated")  # after the grace
        assert migrated["data"]["newHostId"] == ana.uuid
        ana.drop()
        bob.drop()
        await trio.sleep(200)  # the room hibernates: nobody is there to expire seats
        assert host.room not in await server.running.rooms()
        # Restoring the room gives up every seat unseen for longer than the TTL: the
        # newcomer finds an empty table and takes the primary host's role.
        newcomer = await server.join(host.room, "Cara")
        assert [p["name"] for p in newcomer.session["players"]] == ["Cara"]
        assert newcomer.session["hostId"] == newcomer.uuid
        again = await server.connect(query(reconnect=host.room, token=ana.token))
        assert (await again.next("error"))["data"]["code"] == "invalid-token"
        left = [e for e in server.store.journal(host.room) if e.name == "session/leave"]
        assert {e.data["uuid"] for e in left} == {host.uuid, ana.uuid, bob.uuid}
        assert {e.data["reason"] for e in left} == {"expired"}


async def test_connection_records_are_dropped_rather_than_queued_behind_an_outage(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(persist_queue=16, persist_flush_interval=0) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await server.running.flush()
        server.store.pause()
        for index in range(10):  # more than half the queue: only durable writes now
            await host.send_event("chat/message", {"text": f"m{index}"}, event_id=f"m{index}")
            await ana.until("event", "chat/message")
        ana.drop()
        await host.until("event", "session/disconnected", uuid=ana.uuid)
        server.store.resume()
        for index in range(10):
            await host.until("event-ack", eventId=f"m{index}")
        await server.running.flush()
        kinds = [(e.kind, e.user_id) for e in server.store.connection_events]
        assert ("disconnect", ana.uuid) not in kinds  # best-effort: dropped, not waited for
        journal = [e.event_id for e in server.store.journal(host.room)]
        assert [f"m{index}" for index in range(10)] == journal[-10:]
