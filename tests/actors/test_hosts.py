"""Hosts (seed Phase 3): automatic migration, manual transfer, co-hosts, kick and leave.

Covers who is promoted when the primary host's connection is lost (and when),
``session/transfer-host`` and its refusals, ``session/add-co-host`` /
``session/remove-co-host``, what each role may do, ``session/kick``,
``session/leave``, and that every change is durable (later joiners and a
restarted server see it).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio.testing

from nexus_actors.testing import TestClient, TestServer, open_server, query

CO_HOST_PERMISSIONS = {"canEditScenes": True, "canManagePlayers": False,
                       "canControlInitiative": True, "canTransferHost": False}


async def _acked(client: TestClient, name: str, data: dict[str, Any] | None = None) -> str:
    """Send a durable request and wait for its ``event-ack``."""
    event_id = await client.send_event(name, data)
    ack = await client.until("event-ack", eventId=event_id)
    assert ack["data"]["duplicate"] is False
    return event_id


async def _refused(client: TestClient, name: str, data: dict[str, Any] | None = None) -> str:
    """Send a durable request and return the code of the ``error`` it gets."""
    event_id = await client.send_event(name, data)
    error = await client.until("error", eventId=event_id)
    return str(error["data"]["code"])


async def _co_host(host: TestClient, member: TestClient) -> None:
    await _acked(host, "session/add-co-host", {"playerId": member.uuid})


async def _dropped(client: TestClient, *watchers: TestClient) -> None:
    """Cut ``client``'s connection and wait until the room has noticed."""
    client.drop()
    for watcher in watchers:
        await watcher.until("event", "session/disconnected", uuid=client.uuid)


def _migrated(frame: dict[str, Any]) -> dict[str, Any]:
    data = dict(frame["data"])
    assert data.pop("name") == "session/host-migrated"
    return data


def _roles(session: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["role"] for p in session["players"]}


async def _invalid_token(server: TestServer, client: TestClient) -> int | None:
    raw = await server.connect(query(reconnect=client.room, token=client.token))
    error = await raw.next("error")
    assert error["data"]["code"] == "invalid-token"
    return await raw.wait_closed()


# Automatic migration ------------------------------------------------------


async def test_host_is_replaced_only_when_the_grace_period_ends(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=5) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await _dropped(host, ana)
        dropped_at = trio.current_time()
        with trio.move_on_after(4.9) as early:
            await ana.until("event", "session/host-migrated")
        assert early.cancelled_caught
        frame = await ana.until("event", "session/host-migrated")
        assert trio.current_time() - dropped_at == pytest.approx(5)
        assert _migrated(frame) == {"newHostId": ana.uuid, "previousHostId": host.uuid,
                                    "manual": False}
        assert frame["actorId"] is None


async def test_earliest_added_connected_co_host_is_promoted(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=5) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bob = await server.join(host.room, "Bob")
        cara = await server.join(host.room, "Cara")
        dave = await server.join(host.room, "Dave")
        await _co_host(host, dave)  # added first, but will be disconnected
        await _co_host(host, cara)  # added before Bob although Bob joined earlier
        await _co_host(host, bob)
        await _dropped(dave, ana)
        await _dropped(host, ana)
        frame = await ana.until("event", "session/host-migrated")
        assert _migrated(frame)["newHostId"] == cara.uuid
        joiner = await server.join(host.room, "Eve")
        assert joiner.session["hostId"] == cara.uuid
        assert joiner.session["coHostIds"] == [dave.uuid, bob.uuid]


async def test_without_co_hosts_the_longest_connected_player_is_promoted(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=5) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")  # joined first...
        bob = await server.join(host.room, "Bob")
        await _dropped(ana, bob)
        await trio.sleep(1)
        ana = await server.resume(ana, last_seen=ana.last_sequence())  # ...connected later
        await bob.until("event", "session/connected", uuid=ana.uuid)
        await _dropped(host, bob, ana)
        frame = await ana.until("event", "session/host-migrated")
        assert _migrated(frame) == {"newHostId": bob.uuid, "previousHostId": host.uuid,
                                    "manual": False}
        assert _migrated(await bob.until("event", "session/host-migrated")) == _migrated(frame)


async def test_host_resuming_within_the_grace_period_keeps_the_role(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=5) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bob = await server.join(host.room, "Bob")
        await _dropped(host, ana, bob)
        await trio.sleep(3)
        back = await server.resume(host, last_seen=host.last_sequence())
        for member in (ana, bob):
            await member.until("event", "session/connected", uuid=host.uuid)
        await trio.sleep(10)  # well past the grace period
        assert back.session["hostId"] == host.uuid
        joiner = await server.join(host.room, "Cara")
        assert joiner.session["hostId"] == host.uuid
        assert _roles(joiner.session)["GM"] == "host"
        assert ana.events("session/host-migrated") == []
        assert bob.events("session/host-migrated") == []


async def test_zero_grace_promotes_at_once(autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=0) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await _dropped(host, ana)
        dropped_at = trio.current_time()
        frame = await ana.next("event")
        assert _migrated(frame) == {"newHostId": ana.uuid, "previousHostId": host.uuid,
                                    "manual": False}
        assert trio.current_time() == dropped_at


async def test_without_a_connected_candidate_the_next_member_to_connect_is_promoted(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=5) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await _dropped(host, ana)
        await trio.sleep(2)
        ana.drop()  # nobody is connected now; the room hibernates 5 s after this
        await trio.sleep(4)  # the host's grace period ended 1 s ago, with no candidate
        assert "session/host-migrated" not in [e.name for e in server.store.journal(host.room)]
        ana = await server.resume(ana, last_seen=ana.last_sequence())
        frame = await ana.until("event", "session/host-migrated")
        assert _migrated(frame) == {"newHostId": ana.uuid, "previousHostId": host.uuid,
                                    "manual": False}


async def test_old_host_resuming_after_migration_is_a_player(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=5) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await _dropped(host, ana)
        await ana.until("event", "session/host-migrated")
        back = await server.resume(host, last_seen=host.last_sequence())
        assert back.session["hostId"] == ana.uuid
        assert _roles(back.session) == {"GM": "player", "Ana": "host"}
        code = await _refused(back, "scene/create", {"scene": {"id": "s1", "name": "Cave"}})
        assert code == "forbidden"


# Manual transfer ----------------------------------------------------------


async def test_primary_host_transfers_the_role_and_is_acked_after_the_commit(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bob = await server.join(host.room, "Bob")
        server.store.pause()
        event_id = await host.send_event("session/transfer-host", {"newHostId": ana.uuid})
        expected = {"newHostId": ana.uuid, "previousHostId": host.uuid, "manual": True}
        for member in (ana, bob):
            assert _migrated(await member.until("event", "session/host-migrated")) == expected
        with trio.move_on_after(1):
            await host.until("event", "session/host-migrated")
        assert host.events("session/host-migrated") == []
        server.store.resume()
        frame = await host.until("event", "session/host-migrated")
        assert _migrated(frame) == expected
        assert frame["actorId"] == host.uuid
        ack = await host.next("event-ack")
        assert ack["data"]["eventId"] == event_id


@pytest.mark.parametrize("requester", ["co-host", "player"])
async def test_only_the_primary_host_may_transfer(
        autojump_clock: trio.testing.MockClock, requester: str) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bob = await server.join(host.room, "Bob")
        if requester == "co-host":
            await _co_host(host, ana)
        code = await _refused(ana, "session/transfer-host", {"newHostId": bob.uuid})
        assert code == "forbidden"
        assert (await server.join(host.room, "Cara")).session["hostId"] == host.uuid


async def test_transfer_to_a_disconnected_member_is_refused(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await _dropped(ana, host)
        code = await _refused(host, "session/transfer-host", {"newHostId": ana.uuid})
        assert code == "not-connected"


@pytest.mark.parametrize(("target", "expected"), [("unknown", "not-found"), ("self", "invalid")])
async def test_transfer_to_an_unknown_member_or_to_oneself_is_refused(
        autojump_clock: trio.testing.MockClock, target: str, expected: str) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        new_host = host.uuid if target == "self" else "00000000-0000-4000-8000-000000000000"
        code = await _refused(host, "session/transfer-host", {"newHostId": new_host})
        assert code == expected
        assert ana.events("session/host-migrated") == []


async def test_after_a_transfer_the_new_host_has_every_permission_and_the_old_one_none(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bob = await server.join(host.room, "Bob")
        cara = await server.join(host.room, "Cara")
        await _acked(host, "session/transfer-host", {"newHostId": ana.uuid})
        scene: dict[str, Any] = {"scene": {"id": "s1", "name": "Cave"}}
        initiative: dict[str, Any] = {"order": [bob.uuid], "round": 1, "turn": 0}
        host_powers: list[tuple[str, dict[str, Any]]] = [
            ("scene/create", scene), ("initiative/set", initiative),
            ("session/transfer-host", {"newHostId": bob.uuid}),
            ("session/add-co-host", {"playerId": bob.uuid}),
            ("session/kick", {"playerId": cara.uuid})]
        for name, data in host_powers:
            assert await _refused(host, name, data) == "forbidden", name
        await _acked(ana, "scene/create", scene)
        await _acked(ana, "initiative/set", initiative)
        await _acked(ana, "session/add-co-host", {"playerId": bob.uuid})
        await _acked(ana, "session/kick", {"playerId": cara.uuid})
        await _acked(ana, "session/transfer-host", {"newHostId": bob.uuid})


# Co-hosts -----------------------------------------------------------------


async def test_primary_host_adds_and_removes_co_hosts_and_everyone_is_told(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bob = await server.join(host.room, "Bob")
        await _co_host(host, ana)
        added = {"name": "session/co-host-added", "coHostId": ana.uuid,
                 "permissions": CO_HOST_PERMISSIONS}
        assert [e["data"] for e in host.events("session/co-host-added")] == [added]
        for member in (ana, bob):
            assert (await member.until("event", "session/co-host-added"))["data"] == added
        assert _roles((await server.join(host.room, "Cara")).session)["Ana"] == "co-host"
        await _acked(host, "session/remove-co-host", {"playerId": ana.uuid})
        removed = {"name": "session/co-host-removed", "coHostId": ana.uuid}
        assert [e["data"] for e in host.events("session/co-host-removed")] == [removed]
        for member in (ana, bob):
            assert (await member.until("event", "session/co-host-removed"))["data"] == removed
        joiner = await server.join(host.room, "Dave")
        assert joiner.session["coHostIds"] == []
        assert _roles(joiner.session)["Ana"] == "player"


@pytest.mark.parametrize("request_name", ["session/add-co-host", "session/remove-co-host"])
async def test_only_the_primary_host_manages_co_hosts(
        autojump_clock: trio.testing.MockClock, request_name: str) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bob = await server.join(host.room, "Bob")
        cara = await server.join(host.room, "Cara")
        await _co_host(host, ana)
        await _co_host(host, cara)
        target = cara.uuid if request_name.endswith("remove-co-host") else bob.uuid
        for requester in (ana, bob):  # a co-host, then a player
            assert await _refused(requester, request_name, {"playerId": target}) == "forbidden"
        assert (await server.join(host.room, "Dave")).session["coHostIds"] == [ana.uuid,
                                                                                cara.uuid]


async def test_co_host_edits_scenes_and_initiative_but_cannot_manage_the_session(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bob = await server.join(host.room, "Bob")
        await _co_host(host, ana)
        await _acked(ana, "scene/create", {"scene": {"id": "s1", "name": "Cave"}})
        await _acked(ana, "scene/activate", {"sceneId": "s1"})
        await _acked(ana, "initiative/set", {"order": [bob.uuid, host.uuid], "round": 1,
                                             "turn": 0})
        await _acked(ana, "initiative/next", {})
        primary_only: list[tuple[str, dict[str, Any]]] = [
            ("session/kick", {"playerId": bob.uuid}),
            ("session/transfer-host", {"newHostId": bob.uuid}),
            ("session/add-co-host", {"playerId": bob.uuid})]
        for name, data in primary_only:
            assert await _refused(ana, name, data) == "forbidden", name
        joiner = await server.join(host.room, "Cara")
        assert joiner.session["state"]["activeSceneId"] == "s1"
        assert joiner.session["state"]["initiative"]["turn"] == 1
        assert _roles(joiner.session) == {"GM": "host", "Ana": "co-host", "Bob": "player",
                                          "Cara": "player"}


async def test_player_cannot_use_host_powers_but_plays_and_chats(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await _acked(host, "scene/create", {"scene": {"id": "s1", "name": "Cave"}})
        host_powers: list[tuple[str, dict[str, Any]]] = [
            ("scene/create", {"scene": {"id": "s2", "name": "Keep"}}),
            ("scene/update", {"sceneId": "s1", "changes": {"name": "Pit"}}),
            ("initiative/set", {"order": [ana.uuid], "round": 1, "turn": 0}),
            ("session/kick", {"playerId": host.uuid}),
            ("session/transfer-host", {"newHostId": ana.uuid}),
            ("session/add-co-host", {"playerId": ana.uuid})]
        for name, data in host_powers:
            assert await _refused(ana, name, data) == "forbidden", name
        token = {"id": "t1", "sceneId": "s1", "position": {"x": 1, "y": 2}}
        await _acked(ana, "token/create", {"token": token})
        await _acked(ana, "token/move", {"tokenId": "t1", "position": {"x": 5, "y": 6}})
        await _acked(ana, "character/create", {"character": {"id": "c1", "name": "Rook"}})
        await _acked(ana, "chat/message", {"text": "hello"})
        chat = await host.until("event", "chat/message")
        assert chat["data"]["message"]["userName"] == "Ana"
        state = (await server.join(host.room, "Bob")).session["state"]
        assert state["scenes"]["s1"]["name"] == "Cave"
        assert state["tokens"]["t1"]["position"] == {"x": 5, "y": 6}
        assert "c1" in state["characters"]


# Kick and leave -----------------------------------------------------------


async def test_kicked_member_is_told_closed_and_loses_the_seat(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bob = await server.join(host.room, "Bob")
        await _acked(host, "session/kick", {"playerId": bob.uuid})
        expected = {"name": "session/kicked", "playerId": bob.uuid, "by": host.uuid}
        assert (await bob.until("event", "session/kicked"))["data"] == expected
        assert await bob.wait_closed() == 4001
        assert bob.frames[-1]["data"] == expected
        assert (await ana.until("event", "session/kicked"))["data"] == expected
        assert await _invalid_token(server, bob) == 4401
        assert _roles((await server.join(host.room, "Cara")).session) == {
            "GM": "host", "Ana": "player", "Cara": "player"}


async def test_departures_close_only_once_they_are_durable(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bob = await server.join(host.room, "Bob")
        server.store.pause()
        await host.send_event("session/kick", {"playerId": bob.uuid})
        await ana.send_event("session/leave", {})
        await bob.until("event", "session/kicked")
        await host.until("event", "session/leave", uuid=ana.uuid)
        with trio.move_on_after(5):
            await bob.wait_closed()
        assert bob.close_code is None
        assert ana.close_code is None
        server.store.resume()
        assert await bob.wait_closed() == 4001
        assert await ana.wait_closed() == 1000
        assert await _invalid_token(server, bob) == 4401
        assert await _invalid_token(server, ana) == 4401


async def test_a_kick_the_store_refuses_sends_the_member_away_to_resume_its_seat(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        bob = await server.join(host.room, "Bob")
        server.store.refuse(host.room, times=2)  # the batch, then the room's share
        await host.send_event("session/kick", {"playerId": bob.uuid})
        await bob.until("event", "session/kicked")
        assert (await bob.until("backoff"))["data"]["reason"] == "room-restart"
        assert await bob.wait_closed() == 1012
        again = await server.resume(bob, last_seen=bob.last_sequence())
        assert _roles(again.session) == {"GM": "host", "Bob": "player"}


async def test_primary_host_cannot_be_kicked_nor_kick_itself(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await _co_host(host, ana)
        assert await _refused(host, "session/kick", {"playerId": host.uuid}) == "invalid"
        assert await _refused(ana, "session/kick", {"playerId": host.uuid}) == "forbidden"
        joiner = await server.join(host.room, "Bob")
        assert joiner.session["hostId"] == host.uuid
        assert [p["connected"] for p in joiner.session["players"]] == [True, True, True]
        assert host.close_code is None


async def test_leaving_closes_normally_and_gives_the_seat_up(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bob = await server.join(host.room, "Bob")
        await ana.send_event("session/leave", {})
        assert await ana.wait_closed() == 1000
        for member in (host, bob):
            left = await member.until("event", "session/leave")
            assert left["data"] == {"name": "session/leave", "uuid": ana.uuid, "reason": "left"}
        assert await _invalid_token(server, ana) == 4401
        assert _roles((await server.join(host.room, "Cara")).session) == {
            "GM": "host", "Bob": "player", "Cara": "player"}


async def test_leaving_primary_host_is_replaced_at_once_by_the_same_rule(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=15) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bob = await server.join(host.room, "Bob")
        await _co_host(host, bob)
        await host.send_event("session/leave", {})
        assert await host.wait_closed() == 1000
        left_at = trio.current_time()
        left = await ana.until("event", "session/leave")
        assert left["data"]["uuid"] == host.uuid
        frame = await ana.next("event")
        assert _migrated(frame) == {"newHostId": bob.uuid, "previousHostId": host.uuid,
                                    "manual": False}
        assert frame["serverSequence"] == left["serverSequence"] + 1
        assert trio.current_time() == left_at
        joiner = await server.join(host.room, "Cara")
        assert joiner.session["hostId"] == bob.uuid
        assert joiner.session["coHostIds"] == []


async def test_leaving_primary_host_hands_over_even_when_nobody_else_is_connected(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=5) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bob = await server.join(host.room, "Bob")
        await _co_host(host, bob)
        await _dropped(ana, host)
        await _dropped(bob, host)
        await host.send_event("session/leave", {})
        assert await host.wait_closed() == 1000
        again = await server.resume(ana, last_seen=ana.last_sequence())
        assert again.session["hostId"] == bob.uuid  # the co-host, though disconnected
        assert _roles(again.session) == {"Ana": "player", "Bob": "host"}


# Durability ---------------------------------------------------------------


async def test_later_joiner_sees_every_host_change(autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bob = await server.join(host.room, "Bob")
        cara = await server.join(host.room, "Cara")
        dave = await server.join(host.room, "Dave")
        for member in (ana, bob, cara, dave):
            await _co_host(host, member)
        await _acked(host, "session/remove-co-host", {"playerId": ana.uuid})
        await _acked(host, "session/kick", {"playerId": cara.uuid})
        await _acked(host, "session/transfer-host", {"newHostId": dave.uuid})
        joiner = await server.join(host.room, "Eve")
        assert joiner.session["hostId"] == dave.uuid
        assert joiner.session["coHostIds"] == [bob.uuid]
        assert _roles(joiner.session) == {"GM": "player", "Ana": "player", "Bob": "co-host",
                                          "Dave": "host", "Eve": "player"}


async def test_host_changes_survive_a_restart(autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=5) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bob = await server.join(host.room, "Bob")
        cara = await server.join(host.room, "Cara")
        await _co_host(host, bob)
        await _co_host(host, cara)
        await _dropped(host, ana)
        assert _migrated(await ana.until("event", "session/host-migrated"))["newHostId"] \
            == bob.uuid
        await server.restart()
        bob_again = await server.resume(bob, last_seen=bob.last_sequence())
        assert bob_again.session["hostId"] == bob.uuid
        assert bob_again.session["coHostIds"] == [cara.uuid]
        host_again = await server.resume(host, last_seen=host.last_sequence())
        assert _roles(host_again.session) == {"GM": "player", "Ana": "player", "Bob": "host",
                                              "Cara": "co-host"}
        # A fresh eventId: the old connection's ids are remembered (a reuse would be a retry).
        kick = await host_again.send_event("session/kick", {"playerId": ana.uuid},
                                           event_id="kick-after-restart")
        error = await host_again.until("error", eventId=kick)
        assert error["data"]["code"] == "forbidden"
