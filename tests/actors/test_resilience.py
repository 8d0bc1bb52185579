"""Connection resilience: heartbeats, dead and slow peers, backoff hints, resuming a seat."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from nexus_actors.protocol.outbound import quality_of
from nexus_actors.testing import TestClient, TestServer, open_server, query


def names(frames: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(f["type"], f["data"].get("name")) for f in frames]


def chat_texts(frames: list[dict[str, Any]]) -> list[str]:
    return [f["data"]["message"]["text"] for f in frames
            if f["type"] == "event" and f["data"]["name"] == "chat/message"]


async def chat(client: TestClient, text: str) -> str:
    """Send a chat message and wait for its ack; returns the eventId."""
    event_id = await client.send_event("chat/message", {"text": text})
    await client.until("event-ack", eventId=event_id)
    return event_id


async def relayed(client: TestClient, event_id: str) -> dict[str, Any]:
    """Skip to the event frame with ``event_id``."""
    while True:
        frame = await client.next()
        if frame["type"] == "event" and frame.get("eventId") == event_id:
            return frame


async def seat_of(server: TestServer, room: str, member_id: str) -> dict[str, Any]:
    """The member's entry in the player list a fresh joiner receives."""
    probe = await server.join(room, "Probe")
    players: list[dict[str, Any]] = probe.session["players"]
    [seat] = [p for p in players if p["id"] == member_id]
    return seat


# Heartbeat ----------------------------------------------------------------


async def test_server_pings_every_interval_and_reports_latency_and_quality(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(heartbeat_interval=20) as server:
        host = await server.create("GM")
        for _ in range(2):
            await trio.sleep(19)
            assert [f for f in host.unread() if f["type"] == "ping"] == []
            ping = await host.next("ping")
            assert ping["data"] == {"latency": 0.0, "quality": "excellent"}


@pytest.mark.parametrize(("latency", "quality"), [
    (0, "excellent"), (99.9, "excellent"), (100, "good"), (199.9, "good"),
    (200, "fair"), (399.9, "fair"), (400, "poor"), (5000, "poor"),
])
def test_connection_quality_thresholds(latency: float, quality: str) -> None:
    assert quality_of(latency) == quality


async def test_client_that_stops_answering_pings_is_dropped_and_keeps_its_seat(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(heartbeat_interval=30, heartbeat_timeout=10,
                           host_grace=600) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await host.until("event", "session/join")
        ana.stall()
        await trio.sleep(30 + 10 - 1)
        assert ("event", "session/disconnected") not in names(host.unread())
        gone = await host.until("event", "session/disconnected")
        assert gone["data"]["uuid"] == ana.uuid
        ana.unstall()
        assert await ana.wait_closed() == 1006  # dropped, no closing handshake
        assert (await seat_of(server, host.room, ana.uuid))["connected"] is False

        again = await server.resume(ana, last_seen=ana.last_sequence())
        assert again.uuid == ana.uuid
        back = await host.until("event", "session/connected")
        assert back["data"]["uuid"] == ana.uuid


async def test_dead_client_is_dropped_even_when_its_socket_buffer_is_full(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(heartbeat_interval=30, heartbeat_timeout=10,
                           host_grace=600) as server:
        host = await server.create("GM")
        ana = await server.connect(query(join=host.room, name="Ana"), capacity=4096)
        await ana.next("event")
        await host.until("event", "session/join")
        ana.stall()
        for index in range(40):  # fills the 4 KiB pipe; the rest waits in the outbox
            await chat(host, f"message {index}")
        await trio.sleep(30)
        gone = await host.until("event", "session/disconnected")
        assert gone["data"]["uuid"] == ana.uuid


async def test_client_heartbeat_is_answered_with_a_pong_carrying_the_same_id(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await host.until("event", "session/join")
        for ping_id in (7, "abc"):
            await ana.send_json({"type": "heartbeat", "data": {"kind": "ping", "id": ping_id}})
            pong = await ana.next("heartbeat")
            assert pong["data"] == {"kind": "pong", "id": ping_id}
        event_id = await ana.send_event("chat/message", {"text": "hi"})
        seen = await host.next("event")  # the host saw nothing of the heartbeats
        assert seen["eventId"] == event_id


# Slow consumers -------------------------------------------------------------


async def test_slow_consumer_is_closed_with_a_backoff_hint_and_the_room_carries_on(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(outbox_frames=32, host_grace=600, chat_history=500) as server:
        host = await server.create("GM")
        bob = await server.join(host.room, "Bob")
        slow = await server.connect(query(join=host.room, name="Slow"), capacity=4096)
        await slow.next("event")
        await slow.next("event-cursor")
        await bob.until("event", "session/join")
        slow.stall()

        texts = [f"message {index:03d}" for index in range(100)]
        for text in texts:
            await chat(host, text)
        assert chat_texts([await bob.next("event") for _ in texts]) == texts
        await relayed(host, await chat(bob, "bob still here"))

        slow.unstall()
        assert await slow.wait_closed() == 1013
        assert slow.frames[-1]["type"] == "backoff"
        assert slow.frames[-1]["data"]["reason"] == "slow-consumer"
        assert 1000 <= slow.frames[-1]["data"]["retryAfterMs"] < 3000  # 2 s, jittered
        gone = await host.until("event", "session/disconnected")
        assert gone["data"]["uuid"] == slow.uuid
        assert [f for f in host.frames + bob.frames
                if f["type"] == "event" and f["data"]["name"] == "session/disconnected"
                and f["data"]["uuid"] != slow.uuid] == []


async def test_slow_consumer_that_never_reads_again_is_dropped_all_the_same(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(outbox_frames=32, host_grace=600, heartbeat_interval=30,
                           close_timeout=2) as server:
        host = await server.create("GM")
        slow = await server.connect(query(join=host.room, name="Slow"), capacity=4096)
        await slow.next("event")
        slow.stall()
        for index in range(100):
            await chat(host, f"message {index}")
        await trio.sleep(30)  # its close frame can never be written: it is not reading
        gone = await host.until("event", "session/disconnected")
        assert gone["data"]["uuid"] == slow.uuid
        assert (await seat_of(server, host.room, slow.uuid))["connected"] is False


async def test_slow_consumer_resumes_with_the_events_it_missed_replayed(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(outbox_frames=8, host_grace=600) as server:
        host = await server.create("GM")
        bob = await server.join(host.room, "Bob")
        slow = await server.connect(query(join=host.room, name="Slow"), capacity=1024)
        await slow.next("event")
        await slow.next("event-cursor")
        seen = slow.last_sequence()
        slow.stall()

        async def tick(step: int) -> None:  # one cursors frame per member per tick
            await host.cursor("s1", step, step)
            await bob.until("cursors")

        for step in range(10):  # fill the pipe
            await tick(step)
        await chat(host, "one")  # queued in the outbox, then dropped with it
        await chat(host, "two")
        for step in range(10, 30):  # overflow the outbox
            await tick(step)
        slow.unstall()
        assert await slow.wait_closed() == 1013
        assert chat_texts(slow.frames) == []
        assert slow.last_sequence() == seen

        again = await server.resume(slow, last_seen=seen)
        cursor = await again.next("event-cursor")
        assert cursor["data"] == {"mode": "resume", "sequence": seen,
                                  "replayThrough": seen + 2}
        replay = [await again.next("event"), await again.next("event")]
        assert chat_texts(replay) == ["one", "two"]
        assert [f["serverSequence"] for f in replay] == [seen + 1, seen + 2]


async def test_slow_consumer_that_missed_more_than_its_outbox_resumes_from_a_baseline(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(outbox_frames=32, host_grace=600, chat_history=500) as server:
        host = await server.create("GM")
        slow = await server.connect(query(join=host.room, name="Slow"), capacity=4096)
        await slow.next("event")
        await slow.next("event-cursor")
        slow.stall()
        texts = [f"message {index:03d}" for index in range(100)]
        for text in texts:
            await chat(host, text)
        slow.unstall()
        assert await slow.wait_closed() == 1013

        # The replay would overflow the outbox again: the state comes whole instead.
        again = await server.resume(slow, last_seen=slow.last_sequence())
        cursor = await again.next("event-cursor")
        assert cursor["data"]["mode"] == "baseline"
        assert [m["text"] for m in again.session["state"]["chat"]] == texts
        event_id = await again.send_event("chat/message", {"text": "caught up"})
        ack = await again.until("event-ack", eventId=event_id)
        assert ack["data"]["duplicate"] is False


# Backoff hints -------------------------------------------------------------------


async def test_drain_sends_every_client_a_server_restart_hint(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(restart_retry_ms=1000) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        other = await server.create("Other GM")
        await server.stop()
        for client in (host, ana, other):
            hint = await client.until("backoff")
            assert hint["data"]["reason"] == "server-restart"
            assert 500 <= hint["data"]["retryAfterMs"] <= 1500
            assert await client.wait_closed() == 1012

        await server.start()
        again = await server.resume(ana, last_seen=ana.last_sequence())
        assert again.uuid == ana.uuid


async def test_room_crash_sends_its_clients_a_room_restart_hint_and_the_room_comes_back(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(restart_retry_ms=1000, host_grace=600) as server:
        host = await server.create("GM")
        scene = await host.send_event("scene/create", {"scene": {"id": "s1", "name": "Cave"}})
        await host.until("event-ack", eventId=scene)
        ana = await server.join(host.room, "Ana")
        bystander = await server.create("Elsewhere")

        await server.running.crash_room(host.room)
        for client in (host, ana):
            hint = await client.until("backoff")
            assert hint["data"]["reason"] == "room-restart"
            assert 500 <= hint["data"]["retryAfterMs"] <= 1500  # jittered around 1000
            assert await client.wait_closed() == 1012

        await chat(bystander, "unaffected")
        assert [f for f in bystander.frames if f["type"] == "backoff"] == []
        again = await server.resume(host, last_seen=host.last_sequence())
        assert again.session["state"]["scenes"]["s1"]["name"] == "Cave"
        assert again.session["hostId"] == host.uuid


# Resuming a seat --------------------------------------------------------------------


async def test_abrupt_drop_keeps_the_seat_and_resume_replays_what_was_missed(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=600) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await host.until("event", "session/join")
        seen = ana.last_sequence()
        ana.drop()
        assert (await host.until("event", "session/disconnected"))["data"]["uuid"] == ana.uuid
        missed = ["while", "you", "were away"]
        for text in missed:
            await chat(host, text)

        again = await server.resume(ana, last_seen=seen)
        assert again.uuid == ana.uuid
        cursor = await again.next("event-cursor")
        assert cursor["data"] == {"mode": "resume", "sequence": seen,
                                  "replayThrough": seen + 3}
        replay = [await again.next("event") for _ in missed]
        assert chat_texts(replay) == missed
        assert [f["serverSequence"] for f in replay] == [seen + 1, seen + 2, seen + 3]
        assert (await host.until("event", "session/connected"))["data"]["uuid"] == ana.uuid


async def test_second_drop_right_after_a_resume_still_allows_a_third_resume_losing_nothing(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=600) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await host.until("event", "session/join")
        seen = ana.last_sequence()
        ana.drop()
        await chat(host, "first")
        second = await server.resume(ana, last_seen=seen)
        second.drop()
        await chat(host, "second")

        third = await server.resume(second, last_seen=seen)
        assert third.uuid == ana.uuid
        await third.next("event-cursor")
        assert chat_texts([await third.next("event"), await third.next("event")]) == [
            "first", "second"]
        assert [m["text"] for m in third.session["state"]["chat"]] == ["first", "second"]

        event_id = await chat(third, "all here")
        await relayed(host, event_id)
        presence = [f["data"]["name"] for f in host.frames if f["type"] == "event"
                    and f["data"].get("uuid") == ana.uuid]
        assert presence == ["session/disconnected", "session/connected"] * 2
        assert (await seat_of(server, host.room, ana.uuid))["connected"] is True


async def test_simultaneous_resumes_of_one_seat_leave_exactly_one_attached(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=600) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await host.until("event", "session/join")
        ana.drop()
        await host.until("event", "session/disconnected")
        target = query(reconnect=ana.room, token=ana.token, lastSeenSequence=ana.last_sequence())
        clients: list[TestClient] = []

        async def resume() -> None:
            clients.append(await server.connect(target))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(resume)
            nursery.start_soon(resume)

        closed: list[TestClient] = []
        async with trio.open_nursery() as nursery:
            async def watch(client: TestClient) -> None:
                await client.closed.wait()
                closed.append(client)
                nursery.cancel_scope.cancel()

            for client in clients:
                nursery.start_soon(watch, client)
        [loser] = closed
        [winner] = [c for c in clients if c is not loser]
        assert loser.close_code == 4000
        assert loser.events("session/reconnected")
        assert [f["data"]["code"] for f in loser.frames if f["type"] == "error"] == [
            "superseded"]

        event_id = await winner.send_event("chat/message", {"text": "the one"})
        assert (await winner.until("event-ack", eventId=event_id))["data"]["duplicate"] is False
        assert (await relayed(host, event_id))["actorId"] == ana.uuid
        probe = await server.join(host.room, "Probe")
        assert [(p["name"], p["connected"]) for p in probe.session["players"]] == [
            ("GM", True), ("Ana", True), ("Probe", True)]
        assert [m["text"] for m in probe.session["state"]["chat"]] == ["the one"]
        assert not winner.closed.is_set()
