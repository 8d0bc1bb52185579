"""Durable events and the output gate.

Covers how a durable event travels: applied by the room, numbered with a
gap-free per-room ``serverSequence``, broadcast to the other members at once,
and acknowledged to its sender (own copy, ``event-ack``, ``update-confirmed``)
only after the store committed it. Also idempotency by ``eventId``, optimistic
updates with versions and their rejections, every event of protocol v1 end to
end, rooms being independent, and the ``overloaded`` refusal when the
persistence queue is full.
"""

from __future__ import annotations

from typing import Any

import trio.testing

from nexus_actors.room import events as ev
from nexus_actors.room.state import RoomState
from nexus_actors.testing import TestClient, TestServer, open_server

# Helpers -------------------------------------------------------------------


async def barrier(client: TestClient) -> None:
    """A round trip through the room that is answered at once, even with the store paused.

    Once it returns, every frame the room sent ``client`` for messages handled
    before it has arrived (the room handles one message at a time, in order).
    """
    event_id = await client.send_event("token/move", {"tokenId": "no-such-token",
                                                      "position": {"x": 0, "y": 0}})
    await client.until("error", eventId=event_id)


async def acked(client: TestClient, name: str, data: dict[str, Any] | None = None,
                **options: Any) -> dict[str, Any]:
    """Send a durable event and return its ``event-ack`` data (it is committed then)."""
    event_id = await client.send_event(name, data, **options)
    ack: dict[str, Any] = (await client.until("event-ack", eventId=event_id))["data"]
    return ack


async def table(server: TestServer) -> tuple[TestClient, TestClient, TestClient]:
    """A room with a host, two players, scene ``s1`` and token ``t1`` (version 1) on it."""
    host = await server.create("GM")
    ana = await server.join(host.room, "Ana")
    bo = await server.join(host.room, "Bo")
    await acked(host, "scene/create", {"scene": {"id": "s1", "name": "Cave"}})
    await acked(host, "token/create", {"token": {"id": "t1", "sceneId": "s1",
                                                 "position": {"x": 0, "y": 0}}})
    await ana.until("event", "token/create")
    await bo.until("event", "token/create")
    return host, ana, bo


def new_frames(client: TestClient, since: int) -> list[dict[str, Any]]:
    return client.frames[since:]


def replayed(session: dict[str, Any], frames: list[dict[str, Any]]) -> dict[str, Any]:
    """The state a client reaches by applying the journaled events it received."""
    state = session["state"]
    room = RoomState(code="TEST", sequence=session["sequence"], scenes=state["scenes"],
                     active_scene_id=state["activeSceneId"], tokens=state["tokens"],
                     characters=state["characters"], initiative=state["initiative"],
                     chat=state["chat"])
    for frame in sorted((f for f in frames if "serverSequence" in f),
                        key=lambda f: f["serverSequence"]):
        data = {k: v for k, v in frame["data"].items() if k != "name"}
        ev.apply(room, ev.Event(sequence=frame["serverSequence"], name=frame["data"]["name"],
                                data=data, event_id=frame["eventId"], actor_id=frame["actorId"],
                                timestamp=frame["timestamp"]), chat_history=1000)
    return room.public()


def texts(frames: list[dict[str, Any]]) -> list[str]:
    return [f["data"]["message"]["text"] for f in frames]


# Broadcast and sequence -------------------------------------------------------


async def test_an_event_reaches_the_others_with_its_sequence_sender_and_id(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bo = await server.join(host.room, "Bo")
        event_id = await ana.send_event("chat/message", {"text": "hi"}, client_sequence=1)
        for other in (host, bo):
            frame = await other.until("event", "chat/message")
            assert frame["eventId"] == event_id
            assert frame["actorId"] == ana.uuid
            assert frame["serverSequence"] == 4
            assert frame["data"]["message"]["text"] == "hi"
            assert frame["data"]["message"]["userId"] == ana.uuid
            assert frame["data"]["message"]["userName"] == "Ana"


async def test_sequences_start_at_one_per_room_and_have_no_gaps(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        assert host.session["sequence"] == 1
        ana = await server.join(host.room, "Ana")
        assert (await host.until("event", "session/join"))["serverSequence"] == 2
        bo = await server.join(host.room, "Bo")
        sent = []
        for i in range(6):
            sender = (host, ana)[i % 2]
            sent.append((await acked(sender, "chat/message", {"text": f"m{i}"}))
                        ["serverSequence"])
        assert sent == [4, 5, 6, 7, 8, 9]
        seen = [(await bo.until("event", "chat/message"))["serverSequence"] for _ in range(6)]
        assert seen == sent
        assert [e.sequence for e in server.store.journal(host.room)] == list(range(1, 10))


# The output gate -------------------------------------------------------------


async def test_the_sender_hears_back_only_after_the_commit(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await host.until("event", "session/join")
        server.store.pause()
        mark = len(ana.frames)
        event_id = await ana.send_event("chat/message", {"text": "held"})
        broadcast = await host.until("event", "chat/message")
        assert broadcast["eventId"] == event_id
        await barrier(ana)
        assert [f["type"] for f in new_frames(ana, mark)] == ["error"]  # the barrier's only
        assert event_id not in [e.event_id for e in server.store.journal(host.room)]
        server.store.resume()
        own = await ana.next("event")
        assert (own["eventId"], own["serverSequence"]) == (event_id, broadcast["serverSequence"])
        ack = await ana.next("event-ack")
        assert ack["data"] == {"eventId": event_id, "serverSequence": 3, "duplicate": False}
        assert server.store.journal(host.room)[-1].event_id == event_id


async def test_update_confirmed_also_waits_for_the_commit(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        _host, ana, bo = await table(server)
        server.store.pause()
        mark = len(ana.frames)
        event_id = await ana.send_event("token/move", {
            "tokenId": "t1", "position": {"x": 4, "y": 4}, "updateId": "u1", "version": 1})
        await bo.until("event", "token/move")
        await barrier(ana)
        assert [f["type"] for f in new_frames(ana, mark)] == ["error"]
        server.store.resume()
        assert (await ana.next("event"))["eventId"] == event_id
        assert (await ana.next("event-ack"))["data"]["eventId"] == event_id
        confirmed = await ana.next("update-confirmed")
        assert confirmed["data"]["updateId"] == "u1"


# Idempotency -------------------------------------------------------------------


async def test_a_repeated_event_id_is_acknowledged_as_a_duplicate_and_applied_once(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        first = await acked(ana, "chat/message", {"text": "once"}, event_id="e-1")
        again = await acked(ana, "chat/message", {"text": "twice"}, event_id="e-1")
        assert first == {"eventId": "e-1", "serverSequence": 3, "duplicate": False}
        assert again == {"eventId": "e-1", "serverSequence": 3, "duplicate": True}
        assert len(ana.events("chat/message")) == 1  # no second copy of its own event
        await acked(ana, "chat/message", {"text": "after"})
        await host.until("event", "chat/message", message=ana.events("chat/message")[-1]
                         ["data"]["message"])
        assert texts(host.events("chat/message")) == ["once", "after"]
        fresh = await server.join(host.room, "Bo")
        assert [m["text"] for m in fresh.session["state"]["chat"]] == ["once", "after"]


async def test_a_duplicate_of_an_uncommitted_event_waits_for_the_same_commit(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await host.until("event", "session/join")
        server.store.pause()
        mark = len(ana.frames)
        await ana.send_event("chat/message", {"text": "retry me"}, event_id="e-1")
        await host.until("event", "chat/message")
        await ana.send_event("chat/message", {"text": "retry me"}, event_id="e-1")
        await barrier(ana)
        assert [f["type"] for f in new_frames(ana, mark)] == ["error"]
        server.store.resume()
        assert (await ana.next("event"))["eventId"] == "e-1"
        assert (await ana.next("event-ack"))["data"] == {
            "eventId": "e-1", "serverSequence": 3, "duplicate": False}
        assert (await ana.next("event-ack"))["data"] == {
            "eventId": "e-1", "serverSequence": 3, "duplicate": True}
        assert len(host.events("chat/message")) == 1


async def test_an_event_id_used_by_another_member_is_refused(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bo = await server.join(host.room, "Bo")
        await acked(ana, "chat/message", {"text": "ana's"}, event_id="shared")
        await bo.send_event("chat/message", {"text": "bo's"}, event_id="shared")
        error = await bo.until("error", eventId="shared")
        assert error["data"]["code"] == "invalid"
        assert [f for f in bo.frames if f["type"] == "event-ack"] == []
        after = await acked(ana, "chat/message", {"text": "after"})
        await host.until("event", "chat/message", message=ana.events("chat/message")[-1]
                         ["data"]["message"])
        assert after["serverSequence"] == 5
        assert texts(host.events("chat/message")) == ["ana's", "after"]


# Optimistic updates --------------------------------------------------------------


async def test_an_update_on_the_current_version_is_confirmed_with_the_next_version(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        _host, ana, bo = await table(server)
        event_id = await ana.send_event("token/move", {
            "tokenId": "t1", "position": {"x": 3, "y": 4}, "updateId": "u1", "version": 1})
        seen = await bo.until("event", "token/move")
        assert seen["data"]["version"] == 2
        ack = await ana.until("event-ack", eventId=event_id)
        confirmed = await ana.next("update-confirmed")
        assert confirmed["data"] == {"updateId": "u1", "eventId": event_id,
                                     "serverSequence": ack["data"]["serverSequence"],
                                     "version": 2}


async def test_a_stale_version_is_rejected_with_the_current_entity_and_not_broadcast(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host, ana, bo = await table(server)
        await acked(ana, "token/move", {"tokenId": "t1", "position": {"x": 3, "y": 4},
                                        "updateId": "u1", "version": 1})
        event_id = await bo.send_event("token/move", {
            "tokenId": "t1", "position": {"x": 9, "y": 9}, "updateId": "u2", "version": 1})
        rejected = (await bo.until("update-rejected"))["data"]
        assert rejected["updateId"] == "u2"
        assert rejected["eventId"] == event_id
        assert rejected["reason"] == "version-conflict"
        assert rejected["currentVersion"] == 2
        assert rejected["current"] == {"id": "t1", "sceneId": "s1",
                                       "position": {"x": 3, "y": 4}, "version": 2}
        after = await acked(bo, "chat/message", {"text": "after"})
        assert (await host.until("event", "chat/message"))["serverSequence"] \
            == after["serverSequence"]
        assert [e["data"]["position"] for e in host.events("token/move")] == [{"x": 3, "y": 4}]
        assert [f for f in bo.frames if f.get("data", {}).get("eventId") == event_id
                and f["type"] == "event-ack"] == []


async def test_an_update_without_a_version_is_last_write_wins(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host, ana, bo = await table(server)
        for client, x, update_id in ((ana, 1, "ua"), (bo, 2, "ub")):
            event_id = await client.send_event("token/move", {
                "tokenId": "t1", "position": {"x": x, "y": x}, "updateId": update_id})
            await client.until("event-ack", eventId=event_id)
            confirmed = (await client.next("update-confirmed"))["data"]
            assert (confirmed["updateId"], confirmed["version"]) == (update_id, x + 1)
        fresh = await server.join(host.room, "Cy")
        assert fresh.session["state"]["tokens"]["t1"]["position"] == {"x": 2, "y": 2}
        assert fresh.session["state"]["tokens"]["t1"]["version"] == 3


async def test_not_found_and_forbidden_are_update_rejected_when_an_update_id_is_given(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host, ana, _bo = await table(server)
        moved = await ana.send_event("token/move", {
            "tokenId": "ghost", "position": {"x": 1, "y": 1}, "updateId": "u1"})
        missing = (await ana.until("update-rejected"))["data"]
        assert (missing["updateId"], missing["eventId"], missing["reason"]) == (
            "u1", moved, "not-found")
        assert (missing["currentVersion"], missing["current"]) == (None, None)
        renamed = await ana.send_event("scene/update", {
            "sceneId": "s1", "changes": {"name": "Mine"}, "updateId": "u2", "version": 1})
        denied = (await ana.until("update-rejected"))["data"]
        assert (denied["updateId"], denied["eventId"], denied["reason"]) == (
            "u2", renamed, "forbidden")
        assert denied["currentVersion"] == 1
        assert denied["current"] == {"id": "s1", "name": "Cave", "version": 1}
        fresh = await server.join(host.room, "Cy")
        assert fresh.session["state"]["scenes"]["s1"]["name"] == "Cave"


async def test_not_found_and_forbidden_are_errors_without_an_update_id(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host, ana, _bo = await table(server)
        moved = await ana.send_event("token/move", {"tokenId": "ghost",
                                                    "position": {"x": 1, "y": 1}})
        missing = (await ana.until("error", eventId=moved))["data"]
        assert missing["code"] == "not-found"
        deleted = await ana.send_event("scene/delete", {"sceneId": "s1"})
        denied = (await ana.until("error", eventId=deleted))["data"]
        assert denied["code"] == "forbidden"
        assert not [f for f in ana.frames if f["type"] == "update-rejected"]
        await acked(ana, "chat/message", {"text": "after"})
        assert (await host.until("event"))["data"]["name"] == "chat/message"


# Every event end to end ------------------------------------------------------------


async def test_every_event_applies_end_to_end_and_clients_converge(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        steps: list[tuple[TestClient, str, dict[str, Any]]] = [
            (host, "scene/create", {"scene": {"id": "s1", "name": "Cave"}}),
            (host, "scene/create", {"scene": {"id": "s2", "name": "Keep"}}),
            (host, "scene/update", {"sceneId": "s1", "changes": {"name": "Big Cave", "grid": 5},
                                    "version": 1}),
            (host, "scene/activate", {"sceneId": "s1"}),
            (ana, "token/create", {"token": {"id": "t1", "sceneId": "s1",
                                             "position": {"x": 1, "y": 2}}}),
            (ana, "token/create", {"token": {"id": "t2", "sceneId": "s2",
                                             "position": {"x": 0, "y": 0}}}),
            (ana, "token/create", {"token": {"id": "t3", "sceneId": "s1",
                                             "position": {"x": 0, "y": 0}}}),
            (ana, "token/move", {"tokenId": "t1", "position": {"x": 3, "y": 4}, "version": 1}),
            (ana, "token/update", {"tokenId": "t1", "changes": {"label": "Orc"}}),
            (ana, "token/delete", {"tokenId": "t3"}),
            (ana, "character/create", {"character": {"id": "c1", "name": "Hero", "hp": 10}}),
            (ana, "character/create", {"character": {"id": "c2", "name": "Extra"}}),
            (ana, "character/update", {"characterId": "c1", "changes": {"hp": 7}}),
            (ana, "character/delete", {"characterId": "c2"}),
            (host, "initiative/set", {"order": ["c1", "t1"], "round": 1, "turn": 0}),
            (host, "initiative/next", {}),
            (host, "initiative/next", {}),
            (ana, "chat/message", {"text": "gg"}),
            (host, "scene/delete", {"sceneId": "s2"}),
        ]
        for client, name, data in steps:
            ack = await acked(client, name, data)
            assert ack["duplicate"] is False
        await ana.until("event", "scene/delete")  # the last step, broadcast to her
        final = (await server.join(host.room, "Bo")).session
        state = final["state"]
        assert final["sequence"] == 3 + len(steps)  # two joins, the steps, Bo's join
        assert state["scenes"] == {"s1": {"id": "s1", "name": "Big Cave", "grid": 5,
                                          "version": 2}}
        assert state["activeSceneId"] == "s1"
        assert state["tokens"] == {"t1": {"id": "t1", "sceneId": "s1",
                                          "position": {"x": 3, "y": 4}, "label": "Orc",
                                          "version": 3}}
        assert state["characters"] == {"c1": {"id": "c1", "name": "Hero", "hp": 7,
                                              "version": 2}}
        assert state["initiative"] == {"order": ["c1", "t1"], "round": 2, "turn": 0,
                                       "version": 4}
        assert [(m["userId"], m["userName"], m["text"]) for m in state["chat"]] == [
            (ana.uuid, "Ana", "gg")]
        for client in (host, ana):
            assert replayed(client.session, client.frames) == state


async def test_creates_without_an_id_get_a_server_generated_one(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await acked(host, "scene/create", {"scene": {"name": "Cave"}})
        scene = (await ana.until("event", "scene/create"))["data"]["scene"]
        await acked(host, "token/create", {"token": {"sceneId": scene["id"],
                                                     "position": {"x": 0, "y": 0}}})
        token = (await ana.until("event", "token/create"))["data"]["token"]
        await acked(host, "character/create", {"character": {"name": "Hero"}})
        character = (await ana.until("event", "character/create"))["data"]["character"]
        ids = [scene["id"], token["id"], character["id"]]
        assert all(isinstance(i, str) and i for i in ids)
        assert len(set(ids)) == 3
        assert host.events("character/create")[-1]["data"]["character"] == character
        state = (await server.join(host.room, "Bo")).session["state"]
        assert state["scenes"][scene["id"]]["version"] == 1
        assert state["tokens"][token["id"]]["sceneId"] == scene["id"]
        assert state["characters"][character["id"]]["name"] == "Hero"


async def test_two_rooms_have_their_own_sequences_and_broadcasts(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        gm_a = await server.create("GM A")
        ana = await server.join(gm_a.room, "Ana")
        gm_b = await server.create("GM B")
        bo = await server.join(gm_b.room, "Bo")
        assert gm_a.room != gm_b.room
        assert (gm_a.session["sequence"], gm_b.session["sequence"]) == (1, 1)
        assert (ana.session["sequence"], bo.session["sequence"]) == (2, 2)
        in_a = await acked(gm_a, "chat/message", {"text": "in A"})
        in_b = await acked(gm_b, "chat/message", {"text": "in B"})
        assert (in_a["serverSequence"], in_b["serverSequence"]) == (3, 3)
        assert texts([await ana.until("event", "chat/message")]) == ["in A"]
        assert texts([await bo.until("event", "chat/message")]) == ["in B"]
        await barrier(ana)
        await barrier(bo)
        assert texts(ana.events("chat/message")) == ["in A"]
        assert texts(bo.events("chat/message")) == ["in B"]
        assert [e.name for e in server.store.journal(gm_b.room)] == [
            "session/join", "session/join", "chat/message"]


# Overload ---------------------------------------------------------------------------


async def test_a_full_persistence_queue_refuses_events_until_the_store_catches_up(
        autojump_clock: trio.testing.MockClock) -> None:
    # A zero flush interval sends the first batch to the (paused) store at once, so
    # the queue behind it fills up.
    async with open_server(persist_queue=16, persist_flush_interval=0) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await host.until("event", "session/join")
        server.store.pause()
        sent = [await host.send_event("chat/message", {"text": f"m{i}"}) for i in range(20)]
        await barrier(host)
        errors = {f["data"]["eventId"]: f["data"] for f in host.frames if f["type"] == "error"}
        refused = [event_id for event_id in sent if event_id in errors]
        accepted = [event_id for event_id in sent if event_id not in errors]
        assert accepted
        assert refused
        assert accepted == sent[:len(accepted)]  # nothing drains while the store is paused
        for event_id in refused:
            assert errors[event_id]["code"] == "overloaded"
            assert errors[event_id]["retryAfterMs"] > 0
        await barrier(ana)
        assert [f["eventId"] for f in ana.events("chat/message")] == accepted
        server.store.resume()
        acks = [(await host.until("event-ack", eventId=event_id))["data"]
                for event_id in accepted]
        assert [a["serverSequence"] for a in acks] == list(range(3, 3 + len(accepted)))
        assert not any(a["duplicate"] for a in acks)
        after = await acked(host, "chat/message", {"text": "after"})
        assert after["serverSequence"] == 3 + len(accepted)
        chat = (await server.join(host.room, "Bo")).session["state"]["chat"]
        assert [m["text"] for m in chat] == [f"m{i}" for i in range(len(accepted))] + ["after"]


async def test_a_version_conflict_without_update_id_still_carries_the_current_entity(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        await host.send_event("scene/create", {"scene": {"id": "s1", "name": "Cave"}})
        await host.until("event-ack")
        await host.send_event("scene/update", {"sceneId": "s1", "changes": {"name": "Pit"},
                                               "version": 7}, event_id="stale")
        error = await host.until("error")
        assert error["data"]["code"] == "version-conflict"
        assert error["data"]["eventId"] == "stale"
        assert error["data"]["currentVersion"] == 1
        assert error["data"]["current"] == {"id": "s1", "name": "Cave", "version": 1}
