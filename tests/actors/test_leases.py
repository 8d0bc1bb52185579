"""Room ownership across processes, in the harness: leases, fencing and relays.

Several servers share one memory store, as processes share one database
(``open_servers``): node *i* is advertised at ``ws://node-i.test`` and relays
reach it through its in-memory listener. A room holds its lease while it lives
(renewed), gives it up when it stops or drains (before its clients are told to
resume), stops at once when another process has taken it (its clients are sent
to resume, and its writes are fenced out of the store), and a connection that
reaches a process that does not own its room is relayed to the owner, both
ways, transparently. A host's grace period goes on from the store's record when
another process takes the room over.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from nexus_actors.actors.relay import CLIENT_HEADER, SECRET_HEADER
from nexus_actors.store.base import Claimed
from nexus_actors.store.memory import MemoryStore
from nexus_actors.testing import TestClient, TestServer, open_server, open_servers, query

TTL = 6.0
"Lease lifetime in these tests (renewed every 2 s)."


async def chatted(client: TestClient, event_id: str) -> dict[str, Any]:
    await client.send_event("chat/message", {"text": event_id}, event_id=event_id)
    return await client.until("event-ack", eventId=event_id)


async def take_over(store: MemoryStore, code: str, node: str = "thief") -> int:
    """Another process claims ``code``: its holder's lease has (just) expired."""
    store.leases[code].expires = trio.current_time()
    claim = await store.claim(code, node, f"ws://{node}.test", TTL)
    assert isinstance(claim, Claimed)
    return claim.fence


async def backoff_and_close(client: TestClient) -> tuple[dict[str, Any], int | None]:
    hint = await client.until("backoff")
    return hint, await client.wait_closed()


def metric(server: TestServer, name: str) -> Any:
    return getattr(server.running.listener.metrics, name)


# Leases ---------------------------------------------------------------------------------


async def test_a_live_room_holds_its_lease_and_keeps_renewing_it(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(lease_ttl=TTL) as server:
        host = await server.create("GM")
        lease = server.store.leases[host.room]
        assert lease.owner == "memory-server"
        await trio.sleep(10 * TTL)
        assert server.store.leases[host.room].fence == lease.fence
        assert server.store.leases[host.room].expires > trio.current_time()
        await chatted(host, "still mine")
        assert metric(server, "lease_claims") == {"claimed": 1}


async def test_a_room_that_stops_gives_its_lease_up(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(lease_ttl=TTL, host_grace=5.0) as server:
        host = await server.create("GM")
        code = host.room
        await host.close()
        await host.wait_closed()
        await trio.sleep(5.0 + 1)  # hibernated, and its actor stopped
        assert await server.running.rooms() == []
        assert code not in server.store.leases


async def test_a_drain_gives_the_lease_up_before_its_clients_are_told_to_resume(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(lease_ttl=TTL) as server:
        host = await server.create("GM")
        await chatted(host, "before")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.stop)
            hint, code = await backoff_and_close(host)
            assert host.room not in server.store.leases  # free when the client hears
        assert hint["data"]["reason"] == "server-restart"
        assert code == 1012
        assert "before" in [e.event_id for e in server.store.journal(host.room)]


async def test_a_room_whose_lease_was_taken_stops_and_sends_its_clients_away(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(lease_ttl=TTL) as server:
        host = await server.create("GM")
        player = await server.join(host.room, "Ana")
        code = host.room
        fence = await take_over(server.store, code)
        for client in (host, player):
            hint, close_code = await backoff_and_close(client)
            assert hint["data"]["reason"] == "room-moved"
            assert close_code == 1012
        assert await server.running.rooms() == []
        assert server.store.leases[code].fence == fence  # not released: it is not ours
        assert metric(server, "leases_lost") == 1


async def test_writes_after_the_lease_was_taken_are_fenced_out_and_never_acknowledged(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(lease_ttl=TTL) as server:
        host = await server.create("GM")
        player = await server.join(host.room, "Ana")
        code = host.room
        await chatted(host, "mine")
        await take_over(server.store, code)
        await host.send_event("chat/message", {"text": "too late"}, event_id="late")
        # The other member sees it at once (it is applied here), but it never becomes
        # durable: no ack, and the room goes.
        await player.until("event", "chat/message")
        hint, _ = await backoff_and_close(host)
        assert hint["data"]["reason"] == "room-moved"
        assert not [f for f in host.frames if f.get("type") == "event-ack"
                    and f["data"]["eventId"] == "late"]
        ids = [e.event_id for e in server.store.journal(code)]
        assert "mine" in ids
        assert "late" not in ids
        assert server.store.fenced == [code]
        assert metric(server, "fenced") == 1


# Relays -----------------------------------------------------------------------------------


async def test_members_on_two_processes_share_one_room_through_a_relay(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_servers(2, lease_ttl=TTL) as (a, b):
        host = await a.create("GM")
        code = host.room
        player = await b.join(code, "Ana")  # b does not own it: relayed to a
        assert player.session["roomCode"] == code
        assert await b.running.rooms() == []
        assert await a.running.rooms() == [code]
        await host.until("event", "session/join")
        await chatted(player, "from b")
        said = await host.until("event", "chat/message")
        assert said["data"]["message"]["text"] == "from b"
        await chatted(host, "from a")
        heard = await player.until("event", "chat/message")
        assert heard["data"]["message"]["text"] == "from a"
        # The seat is a's: its token resumes it through either process.
        token = player.token
        await player.close()
        assert await player.wait_closed() == 1000
        await host.until("event", "session/disconnected", uuid=player.uuid)
        back = await b.connect(query(reconnect=code, token=token))
        await back.until("event", "session/reconnected")
        assert metric(b, "relays") == {"opened": 2}
        assert metric(b, "relays_open") == 1
        assert metric(b, "relayed_frames")["up"] >= 1


async def test_a_relayed_client_hears_its_own_latency_not_the_owners(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_servers(2, lease_ttl=TTL) as (a, b):
        # Different heartbeats: a pings every 3 s, b every 7 s.
        await a.stop()
        a.config = a.config.evolve(heartbeat_interval=3.0)
        await a.start()
        b.config = b.config.evolve(heartbeat_interval=7.0)
        await b.restart()
        host = await a.create("GM")
        player = await b.join(host.room, "Ana")
        began = len([f for f in player.frames if f.get("type") == "ping"])
        await trio.sleep(70.0)
        pings = len([f for f in player.frames if f.get("type") == "ping"]) - began
        assert 9 <= pings <= 11  # b's ten, none of a's twenty-three


async def test_a_client_relayed_to_an_owner_that_died_resumes_once_the_lease_expires(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_servers(2, lease_ttl=TTL) as (a, b):
        host = await a.create("GM")
        code = host.room
        player = await b.join(code, "Ana")
        await chatted(player, "kept")
        token, seen = player.token, player.last_sequence()
        await a.kill()
        hint, close_code = await backoff_and_close(player)
        assert (hint["data"]["reason"], close_code) == ("room-restart", 1012)
        # a's lease has not expired yet: b cannot reach a, and says when to come back.
        early = await b.connect(query(reconnect=code, token=token, lastSeenSequence=seen))
        refusal = await early.until("error")
        hint = await early.until("backoff")
        assert refusal["data"]["code"] == "unavailable"
        assert hint["data"]["retryAfterMs"] >= 1000
        assert await early.wait_closed() == 1013
        await trio.sleep(hint["data"]["retryAfterMs"] / 1000)
        back = await b.connect(query(reconnect=code, token=token, lastSeenSequence=seen))
        await back.until("event", "session/reconnected")
        assert await b.running.rooms() == [code]
        assert b.store.leases[code].owner == "node-1"
        assert metric(b, "lease_claims")["takeover"] == 1
        assert "kept" in [e.event_id for e in b.store.journal(code)]


async def test_a_relayed_connection_is_never_relayed_again(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_servers(3, lease_ttl=TTL) as (a, b, c):
        host = await a.create("GM")
        secret = b.running.node.relay_secret
        assert secret is not None
        # As if c had relayed this client to b, believing b the owner: b refuses it.
        forwarded = await b.connect(query(join=host.room, name="Ana"),
                                    headers={SECRET_HEADER: secret, CLIENT_HEADER: "1.2.3.4:5"})
        refusal = await forwarded.until("error")
        assert refusal["data"]["code"] == "unavailable"
        assert await forwarded.wait_closed() == 1013
        assert metric(b, "relays") == {}
        assert metric(c, "relays") == {}


async def test_relay_headers_with_a_wrong_secret_are_ignored(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_servers(2, lease_ttl=TTL) as (a, b):
        host = await a.create("GM")
        forged = await b.connect(query(join=host.room, name="Mallory"),
                                 headers={SECRET_HEADER: "guess", CLIENT_HEADER: "6.6.6.6:6"})
        await forged.until("event", "session/joined")  # an ordinary client: relayed to a
        assert metric(b, "relays") == {"opened": 1}
        assert next(e.metadata for e in a.store.connection_events
                if e.user_id == forged.uuid) == {"address": "memory"}


async def test_the_hosts_grace_goes_on_from_the_store_after_a_takeover(
        autojump_clock: trio.testing.MockClock) -> None:
    grace = 15.0
    async with open_servers(2, lease_ttl=TTL, host_grace=grace) as (a, b):
        host = await a.create("GM")
        code = host.room
        player = await a.join(code, "Ana")
        token = player.token
        await host.close()
        await player.until("event", "session/disconnected", uuid=host.uuid)
        left = trio.current_time()
        await trio.sleep(2.0)
        await a.kill()  # with it the room, its host gone for 2 s
        await trio.sleep(TTL)
        back = await b.connect(query(reconnect=code, token=token))
        await back.until("event", "session/reconnected")
        migrated = await back.until("event", "session/host-migrated")
        assert migrated["data"]["newHostId"] == player.uuid
        # The grace counted from when the host left, not from the takeover.
        assert abs(trio.current_time() - (left + grace)) < 1.0


async def test_a_room_moves_to_the_process_that_relays_most_of_its_members(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_servers(2, lease_ttl=TTL) as (a, b):
        gm = await a.create("GM")  # created where the creator landed
        code = gm.room
        ana = await b.join(code, "Ana")  # the room code's process, as the balancer picks it
        await chatted(ana, "one relayed, one direct: it stays")
        await trio.sleep(10.0)
        assert await a.running.rooms() == [code]
        bo = await b.join(code, "Bo")
        joined = trio.current_time()
        for client in (gm, ana, bo):
            hint, close_code = await backoff_and_close(client)
            assert (hint["data"]["reason"], close_code) == ("room-moved", 1012)
            assert hint["data"]["retryAfterMs"] <= 500
        assert abs(trio.current_time() - (joined + 5.0)) < 1.0
        assert code not in a.store.leases  # released: free for b at once
        back = [await b.connect(query(reconnect=code, token=c.token,
                                      lastSeenSequence=c.last_sequence()))
                for c in (gm, ana, bo)]
        for client in back:
            await client.until("event", "session/reconnected")
        assert await b.running.rooms() == [code]
        assert a.store.leases[code].owner == "node-1"
        assert metric(a, "handoffs") == 1
        await chatted(back[0], "all here now")


async def test_a_room_that_moved_does_not_move_again_at_once(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_servers(2, lease_ttl=TTL) as (a, b):
        gm = await b.create("GM")
        code = gm.room
        await gm.close()
        await gm.wait_closed()
        await b.stop()  # drained: the room is in the store, its lease free
        await b.start()
        # Loaded on a now, with two of its three members relayed by b.
        back = await a.connect(query(reconnect=code, token=gm.token))
        await back.until("event", "session/reconnected")
        ana = await b.join(code, "Ana")
        bo = await b.join(code, "Bo")
        await trio.sleep(60.0)
        assert await a.running.rooms() == [code]
        assert metric(a, "handoffs") == 0
        await chatted(bo, "still on a")
        await trio.sleep(300.0)  # the cooldown over, the majority still relayed: it moves
        hint, _ = await backoff_and_close(ana)
        assert hint["data"]["reason"] == "room-moved"
        assert metric(a, "handoffs") == 1


async def test_a_code_the_server_picks_that_is_live_on_another_process_is_picked_again(
        autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    servers: dict[str, TestServer] = {}

    async def dial(url: str) -> trio.abc.Stream:
        return servers[url].listener.connect()

    # Two processes whose code pickers draw the same codes (the same seed).
    async with open_server(store=store, seed=7, dial=dial, node_id="a",
                           advertise_url="ws://a.test") as a, \
            open_server(store=store, seed=7, dial=dial, node_id="b",
                        advertise_url="ws://b.test") as b:
        servers.update({"ws://a.test": a, "ws://b.test": b})
        first = await a.create("GM")
        second = await b.create("GM")  # drew the same code first, then another
        assert second.room != first.room
        assert await b.running.rooms() == [second.room]
        assert store.leases[second.room].owner == "b"


async def test_a_client_that_left_while_its_resume_waited_does_not_take_its_seat_later(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_servers(2, lease_ttl=TTL) as (a, b):
        gm = await a.create("GM")
        ana = await a.join(gm.room, "Ana")
        first_token = ana.token
        a.store.pause()  # b's claim for the room now waits for the database
        slow = await b.connect(query(reconnect=gm.room, token=first_token))
        slow.drop()  # the client gives up on it...
        ana.drop()
        back = await a.connect(query(reconnect=gm.room, token=first_token))  # ...comes back
        await back.until("event", "session/reconnected")
        a.store.resume()
        rotated = await back.until("event", "session/token")
        await trio.sleep(5.0)  # b's claim has long been answered
        assert not back.closed.is_set()  # not superseded in its own name
        assert metric(b, "relays") == {}
        back.drop()
        again = await a.connect(query(reconnect=gm.room, token=rotated["data"]["token"]))
        await again.until("event", "session/reconnected")


async def test_a_room_that_lost_its_lease_unnoticed_never_refuses_a_token_for_good(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_servers(2, lease_ttl=TTL) as (a, b):
        gm = await a.create("GM")
        code = gm.room
        ana = await a.join(code, "Ana")
        ana.drop()
        # b takes the room (as from a paused a); a will notice at its next renewal.
        a.store.steal(code, "node-1", "ws://node-1.test", TTL)
        moved = await b.connect(query(reconnect=code, token=ana.token))
        newest = (await moved.until("event", "session/token"))["data"]["token"]
        moved.drop()
        # a still runs the room, and does not know the newest token: it must not answer
        # "invalid-token" (the client would give its seat up) but send it on.
        stale = await a.connect(query(reconnect=code, token=newest))
        refusal = await stale.until("error")
        hint = await stale.until("backoff")
        assert (refusal["data"]["code"], hint["data"]["reason"]) == ("unavailable", "room-moved")
        assert await stale.wait_closed() == 1013
        back = await b.connect(query(reconnect=code, token=newest))
        await back.until("event", "session/reconnected")


async def test_a_relay_whose_client_leaves_while_it_reaches_the_owner_asks_for_nothing(
        autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    servers: dict[str, TestServer] = {}

    async def slow_dial(url: str) -> trio.abc.Stream:
        await trio.sleep(2.0)  # a slow network between the processes
        return servers[url].listener.connect()

    async with open_server(store=store, seed=1, dial=slow_dial, node_id="a",
                           advertise_url="ws://a.test", lease_ttl=TTL) as a, \
            open_server(store=store, seed=2, dial=slow_dial, node_id="b",
                        advertise_url="ws://b.test", lease_ttl=TTL) as b:
        servers.update({"ws://a.test": a, "ws://b.test": b})
        gm = await a.create("GM")
        ana = await a.join(gm.room, "Ana")
        token = ana.token
        ana.drop()
        slow = await b.connect(query(reconnect=gm.room, token=token))
        await trio.sleep(1.0)  # b is on its way to a
        slow.drop()  # gone before b reaches a: it comes back straight to a
        back = await a.connect(query(reconnect=gm.room, token=token))
        newest = await back.until("event", "session/token")
        await trio.sleep(5.0)
        assert not back.closed.is_set()  # nobody resumed the seat in its name since
        assert metric(b, "relays") == {}
        back.drop()
        again = await a.connect(query(reconnect=gm.room, token=newest["data"]["token"]))
        await again.until("event", "session/reconnected")
