"""Named scenarios: failures reported against other realtime servers, replayed against ours.

Each test takes one bug report filed against another realtime server or its
clients (Socket.IO, SignalR, ActionCable, Centrifugo, ...; the report is named
in the test's docstring), builds the situation it describes with the in-memory
harness under the autojumping MockClock, and checks that this server comes out
of it the way ``docs/protocol.md`` says: nothing acknowledged is lost, nothing
is applied or delivered twice, sequences stay gap-free, and every member's
copy of the room, kept the way a client must keep it (section 16), ends equal
to the server's.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import trio
import trio.testing

from nexus_actors.room.state import RoomState
from nexus_actors.testing import ClientError, TestClient, TestServer, open_server, query
from nexus_actors.testing.replica import Replica

SESSION_FRAMES = frozenset({"session/created", "session/joined", "session/reconnected"})


class Copy:
    """One member's copy of the room, kept across all of its connections.

    A :class:`~nexus_actors.testing.replica.Replica` (what section 16 of the
    protocol asks of a client: adopt a baseline, apply a resume's replay and
    then equal the session frame, apply journaled events strictly in order),
    fed from several connections in turn, stricter in one way: a journaled
    event delivered again after it was applied fails the test.
    """

    def __init__(self, chat_history: int) -> None:
        self.replica = Replica(code="", chat_history=chat_history)
        self.modes: list[str] = []
        "The ``event-cursor`` mode of every connection, in order."
        self._read: dict[TestClient, int] = {}
        self._delivered: set[int] = set()

    @property
    def sequence(self) -> int:
        return self.replica.applied

    @property
    def epoch(self) -> int | None:
        return self.replica.epoch or None

    def absorb(self, *clients: TestClient) -> Copy:
        """Take in every frame these connections received since the last call."""
        for client in clients:
            start = self._read.get(client, 0)
            for frame in client.frames[start:]:
                self._take(frame)
            self._read[client] = len(client.frames)
        return self

    def _take(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        data: dict[str, Any] = frame.get("data") or {}
        if kind == "event" and data.get("name") in SESSION_FRAMES:
            self.replica.session(data)
        elif kind == "event-cursor":
            self.modes.append(data["mode"])
            self._delivered.clear()  # a resume replays whatever waited behind a gap
            self.replica.cursor_mode(data)
        elif kind == "event":
            if "serverSequence" in frame:
                sequence = int(frame["serverSequence"])
                if sequence <= self.sequence or sequence in self._delivered:
                    raise AssertionError(f"serverSequence {sequence} delivered twice: {frame}")
                self._delivered.add(sequence)
            self.replica.event(frame)

    def state_(self) -> RoomState:
        assert self.replica.state is not None
        return self.replica.state

    def view(self) -> dict[str, Any]:
        assert self.replica.settled, "events still wait behind a gap, or a replay is unfinished"
        return self.state_().client_view()


async def server_view(server: TestServer, code: str) -> dict[str, Any]:
    report = await server.running.inspect(code)
    assert report is not None
    return RoomState.from_snapshot(report["snapshot"]).client_view()


# Helpers -------------------------------------------------------------------------


async def acked(client: TestClient, name: str, data: dict[str, Any] | None = None,
                **options: Any) -> dict[str, Any]:
    """Send a durable event; its ``event-ack`` data once it is committed."""
    event_id = await client.send_event(name, data, **options)
    ack: dict[str, Any] = (await client.until("event-ack", eventId=event_id))["data"]
    return ack


async def lay_table(host: TestClient, *others: TestClient) -> None:
    """Scene ``s1`` with token ``t1`` (version 1) on it, seen by everyone."""
    await acked(host, "scene/create", {"scene": {"id": "s1", "name": "Cave"}})
    await acked(host, "token/create", {"token": {"id": "t1", "sceneId": "s1",
                                                 "position": {"x": 0, "y": 0}}})
    for other in others:
        await other.until("event", "token/create")


async def table_of_three(server: TestServer) -> tuple[
        TestClient, TestClient, TestClient, dict[str, Copy]]:
    """A host, Ana and Bo at a laid table, and each one's copy of the room."""
    host = await server.create("GM")
    ana = await server.join(host.room, "Ana")
    bo = await server.join(host.room, "Bo")
    await lay_table(host, ana, bo)
    copies = {member.uuid: Copy(server.config.chat_history).absorb(member)
              for member in (host, ana, bo)}
    return host, ana, bo, copies


def step(index: int, token: str = "t1", version: int | None = None) -> dict[str, Any]:
    """A ``token/move`` payload (based on ``version`` when given)."""
    data: dict[str, Any] = {"tokenId": token, "position": {"x": index, "y": -index}}
    if version is not None:
        data["version"] = version
    return data


def acks(client: TestClient) -> dict[str, list[dict[str, Any]]]:
    """Every ``event-ack`` this connection received, by eventId."""
    seen: dict[str, list[dict[str, Any]]] = {}
    for frame in client.frames:
        if frame["type"] == "event-ack":
            seen.setdefault(frame["data"]["eventId"], []).append(frame["data"])
    return seen


async def settle(server: TestServer, *clients: TestClient) -> None:
    """Wait until everything is committed and every frame owed to ``clients`` has arrived.

    The flush makes every queued write durable (the room is told at once); an
    event the room refuses at once is then answered behind every frame the room
    queued for that member before it.
    """
    await server.running.flush()
    for client in clients:
        event_id = await client.send_event("token/move", {"tokenId": "no-such-token",
                                                          "position": {"x": 0, "y": 0}})
        await client.until("error", eventId=event_id)


def journal_ids(server: TestServer, code: str) -> list[str]:
    return [event.event_id for event in server.store.journal(code)]


def journaled(server: TestServer, code: str, name: str) -> int:
    return sum(1 for event in server.store.journal(code) if event.name == name)


def presence(client: TestClient, member_id: str) -> list[str]:
    return [f["data"]["name"] for f in client.frames if f["type"] == "event"
            and f["data"].get("name") in ("session/connected", "session/disconnected")
            and f["data"].get("uuid") == member_id]


async def resume(server: TestServer, seat: TestClient, copy: Copy, **options: Any) -> TestClient:
    """Take ``seat`` back from where ``copy`` stands (session frame and cursor read)."""
    client = await server.resume(seat, last_seen=copy.sequence, epoch=copy.epoch, **options)
    await client.next("event-cursor")
    return client


async def rejoin(server: TestServer, seat: TestClient, copy: Copy) -> TestClient:
    """Resume ``seat`` until a connection is seated, waiting out ``room-restart`` hints."""
    while True:
        client = await server.connect(query(reconnect=seat.room, token=seat.token,
                                            lastSeenSequence=copy.sequence, epoch=copy.epoch))
        try:
            await client.until("event-cursor")
        except ClientError:
            copy.absorb(client)
            hint = client.frames[-1]
            assert hint["type"] == "backoff", client.frames
            assert hint["data"]["reason"] in ("room-restart", "unavailable"), hint
            await trio.sleep(hint["data"]["retryAfterMs"] / 1000)
            continue
        return client


# 1. A long quiet period ------------------------------------------------------------


async def test_resume_after_hours_of_quiet_loses_nothing_and_the_sequence_continues(
        autojump_clock: trio.testing.MockClock) -> None:
    """https://github.com/socketio/socket.io/issues/5282

    Socket.IO: connection state recovery failed for long-lived connections. After
    a long stretch with no traffic, even a short disconnect could not be recovered
    because the packet the client's offset pointed to had already expired from the
    server's buffer, so the missed packets were not replayed. Here three hours pass
    with nothing but answered pings; then a drop and a resume replay exactly what
    was missed, and the sequence goes on from there.
    """
    async with open_server(heartbeat_interval=30, heartbeat_timeout=10,
                           host_grace=15) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await lay_table(host, ana)
        ana_copy = Copy(server.config.chat_history).absorb(ana)
        quiet_from = ana_copy.sequence

        await trio.sleep(3 * 3600)  # three hours: nothing but pings, all answered
        pings = [f for f in ana.frames if f["type"] == "ping"]
        assert len(pings) >= 3 * 3600 // 30 - 1
        assert not ana.closed.is_set()
        assert not host.closed.is_set()
        assert server.store.journal(host.room)[-1].sequence == quiet_from  # nothing journaled

        ana.drop()
        await host.until("event", "session/disconnected", uuid=ana.uuid)
        missed = [await acked(host, "token/move", step(1, version=1)),
                  await acked(host, "chat/message", {"text": "still there?"}),
                  await acked(host, "token/move", step(2, version=2))]
        again = await resume(server, ana, ana_copy)
        cursor = again.frames[1]["data"]
        assert cursor == {"mode": "resume", "sequence": quiet_from,
                          "replayThrough": quiet_from + 3}
        event_id = await again.send_event("chat/message", {"text": "back"})
        ack = (await again.until("event-ack", eventId=event_id))["data"]
        assert ack["serverSequence"] == quiet_from + 4  # the sequence simply continues
        await settle(server, again, host)

        ana_copy.absorb(again)
        assert [a["serverSequence"] for a in missed] == [quiet_from + 1, quiet_from + 2,
                                                        quiet_from + 3]
        assert ana_copy.view() == await server_view(server, host.room)
        assert ana_copy.state_().tokens["t1"]["position"] == {"x": 2.0, "y": -2.0}
        assert presence(host, ana.uuid) == ["session/disconnected", "session/connected"]


async def test_resume_after_hours_away_within_the_hibernation_window_replays_everything(
        autojump_clock: trio.testing.MockClock) -> None:
    """https://github.com/centrifugal/centrifugo/issues/165

    Centrifugo: a client that reconnected after a long absence recovered an empty
    or truncated history and had no way to tell that it had missed publications.
    Here the room sleeps while nobody is there; a member who comes back within the
    hibernation window gets every event it missed (the hibernation included) and
    the sequence carries on, and one who comes back after it is told the room is
    gone instead of being handed a silently incomplete room.
    """
    async with open_server(host_grace=15, hibernation_timeout=4 * 3600,
                           heartbeat_interval=30) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await lay_table(host, ana)
        ana_copy = Copy(server.config.chat_history).absorb(ana)
        host_copy = Copy(server.config.chat_history).absorb(host)
        ana.drop()
        await host.until("event", "session/disconnected", uuid=ana.uuid)
        for index in range(1, 4):
            await acked(host, "token/move", step(index, version=index))
        await settle(server, host)
        host_copy.absorb(host)
        host.drop()

        await trio.sleep(15 + 1)  # the room hibernates once nobody is connected
        assert server.store.status(host.room) == "hibernating"
        assert journaled(server, host.room, "session/hibernated") == 1
        await trio.sleep(4 * 3600 - 60)  # nearly four hours asleep, still within the window

        again = await resume(server, ana, ana_copy)
        through = again.frames[1]["data"]["replayThrough"]
        replay = [f["data"]["name"] for f in again.frames
                  if f.get("serverSequence", through + 1) <= through]
        assert replay == ["token/move"] * 3 + ["session/hibernated"]
        # After a hibernation the host's grace period is over: the first member back leads.
        migrated = await again.until("event", "session/host-migrated")
        assert migrated["data"] == {"name": "session/host-migrated", "newHostId": ana.uuid,
                                    "previousHostId": host.uuid, "manual": False}
        host_again = await resume(server, host, host_copy)
        ack = await acked(again, "token/move", step(9, version=4))
        assert ack["serverSequence"] == migrated["serverSequence"] + 1
        await settle(server, again, host_again)
        expected = await server_view(server, host.room)
        assert ana_copy.absorb(again).view() == expected
        assert host_copy.absorb(host_again).view() == expected
        assert ana_copy.modes == host_copy.modes == ["baseline", "resume"]
        assert expected["hostId"] == ana.uuid

        # Past the window the room is abandoned: a resume is refused, not half-served.
        again.drop()
        host_again.drop()
        await trio.sleep(15 + 4 * 3600 + 60)
        late = await server.connect(query(reconnect=host.room, token=ana.token,
                                          lastSeenSequence=ana_copy.sequence,
                                          epoch=ana_copy.epoch))
        assert (await late.next("error"))["data"]["code"] == "room-not-found"
        assert await late.wait_closed() == 4404


# 2. A second drop right after a resume --------------------------------------------


async def test_drop_mid_replay_then_a_third_resume_loses_nothing_and_applies_nothing_twice(
        autojump_clock: trio.testing.MockClock) -> None:
    """https://github.com/SignalR/SignalR/issues/3245

    SignalR: a client that reconnected and then lost its connection again right
    away, before it had received an updated message id, missed messages on the
    next reconnect. Here the second connection is cut the moment its
    ``event-cursor`` arrives, with the replay only partly delivered (a small
    socket buffer holds the rest back); the third resume, from wherever the
    client's copy got to, must fill in exactly the rest.
    """
    async with open_server(host_grace=600) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await lay_table(host, ana)
        copy = Copy(server.config.chat_history).absorb(ana)
        ana.drop()
        await host.until("event", "session/disconnected", uuid=ana.uuid)
        for index in range(1, 31):
            await host.send_event("token/move", step(index, version=index))
            await host.send_event("chat/message", {"text": f"move {index} " + "." * 40})
        await settle(server, host)
        before_second = copy.sequence

        second = await server.resume(ana, last_seen=copy.sequence, epoch=copy.epoch,
                                     capacity=1024)
        cursor = await second.next("event-cursor")
        second.drop()  # cut mid-replay
        assert cursor["data"]["replayThrough"] == before_second + 60
        await host.until("event", "session/disconnected", uuid=ana.uuid)
        copy.absorb(second)
        partly = copy.sequence - before_second
        assert 0 < partly < 60, "the replay was meant to be cut short"
        for index in range(31, 36):
            await acked(host, "token/move", step(index, version=index))

        third = await resume(server, second, copy)
        assert third.frames[1]["data"] == {"mode": "resume", "sequence": before_second + partly,
                                           "replayThrough": before_second + 65}
        await settle(server, third, host)
        copy.absorb(third)
        assert copy.view() == await server_view(server, host.room)
        assert copy.modes == ["baseline", "resume", "resume"]
        replayed = [f["serverSequence"] for f in third.frames if "serverSequence" in f]
        assert replayed == list(range(before_second + partly + 1, before_second + 66))
        assert presence(host, ana.uuid) == ["session/disconnected", "session/connected"] * 2


# 3. Two seats resuming at once ------------------------------------------------------


async def test_two_seats_resuming_at_the_same_instant_each_get_exactly_what_they_missed(
        autojump_clock: trio.testing.MockClock) -> None:
    """https://github.com/Project-Pandora-Game/pandora/pull/291

    Pandora: several characters in the same room disconnecting at the same moment
    raced each other and left the room in an inconsistent state. Here two seats
    that dropped at different points resume at the same instant, while the host
    keeps moving: each gets a replay from its own ``lastSeenSequence``, exactly
    once, and the presence of both is reported once each.
    """
    async with open_server(host_grace=600) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bo = await server.join(host.room, "Bo")
        await lay_table(host, ana, bo)
        copies = {ana.uuid: Copy(server.config.chat_history).absorb(ana),
                  bo.uuid: Copy(server.config.chat_history).absorb(bo)}
        ana.drop()
        await host.until("event", "session/disconnected", uuid=ana.uuid)
        for index in range(1, 4):
            await acked(host, "token/move", step(index, version=index))
        await settle(server, bo)
        copies[bo.uuid].absorb(bo)
        bo.drop()
        await host.until("event", "session/disconnected", uuid=bo.uuid)
        for index in range(4, 7):
            await acked(host, "token/move", step(index, version=index))
        starts = {ana.uuid: copies[ana.uuid].sequence, bo.uuid: copies[bo.uuid].sequence}
        assert starts[bo.uuid] == starts[ana.uuid] + 3

        seated: dict[str, TestClient] = {}

        async def come_back(seat: TestClient) -> None:
            seated[seat.uuid] = await resume(server, seat, copies[seat.uuid])

        async def keep_moving() -> None:
            for index in range(7, 10):
                await host.send_event("token/move", step(index, version=index))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(come_back, ana)
            nursery.start_soon(come_back, bo)
            nursery.start_soon(keep_moving)

        for member_id, client in seated.items():
            cursor = client.frames[1]["data"]
            assert cursor["mode"] == "resume"
            assert cursor["sequence"] == starts[member_id]
        both = [await acked(seated[ana.uuid], "token/move", step(20, token="t1")),
                await acked(seated[bo.uuid], "chat/message", {"text": "both back"})]
        await settle(server, host, *seated.values())
        expected = await server_view(server, host.room)
        for member_id, client in seated.items():
            assert copies[member_id].absorb(client).view() == expected
        assert Copy(server.config.chat_history).absorb(host).view() == expected
        assert both[1]["serverSequence"] == both[0]["serverSequence"] + 1 == expected["sequence"]
        assert expected["state"]["tokens"]["t1"]["version"] == 11
        for member in (ana, bo):
            assert presence(host, member.uuid) == ["session/disconnected", "session/connected"]
        # Bo's return is announced to Ana at most once (not at all if Ana was seated after).
        assert presence(seated[ana.uuid], bo.uuid) in ([], ["session/connected"])
        probe = await server.join(host.room, "Probe")
        assert [(p["name"], p["connected"]) for p in probe.session["players"]] == [
            ("GM", True), ("Ana", True), ("Bo", True), ("Probe", True)]


# 4. The host drops in the middle of a burst ---------------------------------------


async def test_host_dropping_mid_burst_keeps_every_acked_move_and_a_resend_applies_once(
        autojump_clock: trio.testing.MockClock) -> None:
    """https://github.com/Impostor/Impostor/issues/5 and
    https://github.com/socketio/socket.io-client/issues/1279

    Impostor (an Among Us server): when the host left mid-game the game got stuck
    instead of carrying on under a new host. Socket.IO client: events emitted while
    the connection was going down were sometimes sent again after the reconnection
    and sometimes not, so the server got them twice or never. Here the host fires
    twenty conditional token moves without waiting: the first five are acked, the
    next seven are applied but still being committed when its connection is cut,
    the rest were never sent. After the grace period exactly one member is
    promoted; the old host comes back and sends every unacknowledged move again,
    and each is applied exactly once.
    """
    async with open_server(host_grace=5) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bo = await server.join(host.room, "Bo")
        await lay_table(host, ana, bo)
        host_copy = Copy(server.config.chat_history).absorb(host)
        ids = [f"gm-move-{index}" for index in range(1, 21)]

        for index in range(1, 6):  # move i is based on version i: the token is at 1 + i after
            await host.send_event("token/move", step(index, version=index),
                                  event_id=ids[index - 1])
        await host.until("event-ack", eventId=ids[4])
        server.store.pause()
        for index in range(6, 13):
            await host.send_event("token/move", step(index, version=index),
                                  event_id=ids[index - 1])
        await ana.until("event", "token/move", version=13)
        host.drop()
        await ana.until("event", "session/disconnected", uuid=host.uuid)
        assert set(acks(host)) & set(ids) == set(ids[:5])
        server.store.resume()

        promoted = await ana.until("event", "session/host-migrated")
        assert promoted["data"]["newHostId"] == ana.uuid
        assert promoted["data"]["previousHostId"] == host.uuid
        await settle(server, ana, bo)
        durable = set(journal_ids(server, host.room))
        assert set(ids[:12]) <= durable  # acked, and applied-but-unacked, both committed

        host_copy.absorb(host)
        again = await resume(server, host, host_copy)
        assert again.session["hostId"] == ana.uuid
        for index in range(6, 21):
            await again.send_event("token/move", step(index, version=index),
                                   event_id=ids[index - 1])
        answers = [(await again.until("event-ack", eventId=event_id))["data"]
                   for event_id in ids[5:]]
        assert [a["duplicate"] for a in answers] == [True] * 7 + [False] * 8
        original = {e.event_id: e.sequence for e in server.store.journal(host.room)}
        assert all(a["serverSequence"] == original[a["eventId"]] for a in answers)
        assert [f for f in again.frames if f["type"] == "error"] == []

        await trio.sleep(60)  # long past any grace period: nothing else changes hands
        await settle(server, again, ana, bo)
        expected = await server_view(server, host.room)
        assert host_copy.absorb(again).view() == expected
        for member in (ana, bo):
            assert Copy(server.config.chat_history).absorb(member).view() == expected
            assert len(member.events("session/host-migrated")) == 1
        assert journaled(server, host.room, "session/host-migrated") == 1
        assert Counter(journal_ids(server, host.room)).most_common(1)[0][1] == 1
        assert [i for i in journal_ids(server, host.room) if i in ids] == ids
        assert expected["hostId"] == ana.uuid
        assert expected["state"]["tokens"]["t1"]["version"] == 21
        assert expected["state"]["tokens"]["t1"]["position"] == {"x": 20.0, "y": -20.0}


# 5. A slow consumer during a burst --------------------------------------------------


async def test_member_that_stops_reading_during_a_burst_slows_nobody_and_resumes_after(
        autojump_clock: trio.testing.MockClock) -> None:
    """https://github.com/mrniko/netty-socketio/issues/218

    netty-socketio: a client that could not keep up with the messages pushed to it
    let them pile up on the server without bound while the room kept sending. Here
    one member stops reading in the middle of a burst from three others: they get
    every event and every ack at once (in virtual time), the stalled member is
    closed with a ``slow-consumer`` backoff hint, and it resumes with a copy equal
    to the room's.
    """
    async with open_server(outbox_frames=128, host_grace=600, chat_history=500) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        bo = await server.join(host.room, "Bo")
        slow = await server.connect(query(join=host.room, name="Slow"), capacity=4096)
        await slow.until("event-cursor")
        await lay_table(host, ana, bo, slow)
        await acked(ana, "token/create", {"token": {"id": "t2", "sceneId": "s1",
                                                    "position": {"x": 5, "y": 5}}})
        await settle(server, host, ana, bo, slow)
        slow_copy = Copy(server.config.chat_history).absorb(slow)
        slow.stall()

        started = trio.current_time()
        sent: dict[TestClient, list[str]] = {host: [], ana: [], bo: []}
        for window in range(10):  # ten events each in flight at a time, a hundred in all
            for index in range(window * 10 + 1, window * 10 + 11):
                sent[host].append(await host.send_event(
                    "token/move", {**step(index), "updateId": f"gm-{index}"}))
                sent[ana].append(await ana.send_event("token/move", step(index, token="t2")))
                sent[bo].append(await bo.send_event("chat/message", {"text": f"line {index}"}))
            for client, event_ids in sent.items():
                for event_id in event_ids[-10:]:
                    ack = await client.until("event-ack", eventId=event_id)
                    assert ack["data"]["duplicate"] is False
        assert trio.current_time() - started < 0.5  # nobody waited for the stalled member
        confirmed = [f for f in host.frames if f["type"] == "update-confirmed"]
        assert len(confirmed) == 100

        await settle(server, host, ana, bo)
        expected = await server_view(server, host.room)
        for member in (host, ana, bo):
            assert Copy(server.config.chat_history).absorb(member).view() == expected
            assert not member.closed.is_set()
        assert expected["state"]["tokens"]["t1"]["version"] == 101
        assert len(expected["state"]["chat"]) == 100

        slow.unstall()
        assert await slow.wait_closed() == 1013
        hint = slow.frames[-1]
        assert hint["type"] == "backoff"
        assert hint["data"]["reason"] == "slow-consumer"
        assert 1000 <= hint["data"]["retryAfterMs"] <= 3000
        for member in (host, ana, bo):
            await member.until("event", "session/disconnected", uuid=slow.uuid)
        slow_copy.absorb(slow)
        await trio.sleep(hint["data"]["retryAfterMs"] / 1000)
        again = await resume(server, slow, slow_copy)
        ack = await acked(again, "token/move", step(99, token="t2"))
        assert ack["duplicate"] is False
        await settle(server, again, host)
        expected = await server_view(server, host.room)
        assert slow_copy.absorb(again).view() == expected
        assert presence(host, slow.uuid) == ["session/disconnected", "session/connected"]


async def test_member_reading_promptly_is_not_a_slow_consumer_because_of_its_own_burst(
        autojump_clock: trio.testing.MockClock) -> None:
    """https://github.com/mrniko/netty-socketio/issues/218

    netty-socketio: the workaround for clients that cannot keep up was to drop any
    client whose queue passed a fixed size, which only works if the size is picked
    so that it never catches a client that does read.
    Here a member that reads everything at once sends twenty moves without waiting
    (well inside the rate limit's burst); its own copies and acks come back after
    one commit, and it must not be sent away as a slow consumer for that.
    """
    async with open_server(outbox_frames=32, host_grace=600) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await lay_table(host, ana)
        event_ids = [await ana.send_event("token/move", step(index)) for index in range(20)]
        for event_id in event_ids:
            await ana.until("event-ack", eventId=event_id)
        assert not ana.closed.is_set()
        assert [f for f in ana.frames if f["type"] == "backoff"] == []


# 6. The room crashes while members are resuming ---------------------------------------


async def test_room_crashing_while_members_resume_leaves_everyone_seated_with_nothing_lost(
        autojump_clock: trio.testing.MockClock) -> None:
    """https://github.com/tetrio/issues/issues/28

    TETR.IO: when a worker failed, its clients were not removed from their rooms,
    and players were left in limbo, unable to rejoin a room they were still
    counted in. Here the room actor crashes twice while two members are resuming
    and the host has a move in flight: every client is sent away with a
    ``room-restart`` hint and comes back, the host's move is applied once, and all
    end up seated with the room's state.
    """
    async with open_server(host_grace=600, restart_retry_ms=1000) as server:
        host, ana, bo, copies = await table_of_three(server)
        code = host.room
        for member in (ana, bo):
            member.drop()
            await host.until("event", "session/disconnected", uuid=member.uuid)
        for index in range(1, 4):
            await acked(host, "token/move", step(index, version=index))
        await settle(server, host)
        server.store.pause()  # the host's next move is applied, not yet committed
        in_flight = await host.send_event("token/move", step(4, version=4))
        report = await server.running.inspect(code)  # answered after the move is handled
        assert report is not None
        assert report["snapshot"]["state"]["tokens"]["t1"]["version"] == 5

        seated: dict[str, TestClient] = {}

        async def come_back(seat: TestClient) -> None:
            seated[seat.uuid] = await rejoin(server, seat, copies[seat.uuid])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(come_back, ana)
            await server.running.crash_room(code)
            nursery.start_soon(come_back, bo)
            await trio.sleep(0.5)  # the crashed room's writes wait for the store
            server.store.resume()
            await trio.sleep(0.5)
            await server.running.crash_room(code)

        assert await host.wait_closed() == 1012
        assert host.frames[-1]["data"]["reason"] == "room-restart"
        copies[host.uuid].absorb(host)
        await trio.sleep(host.frames[-1]["data"]["retryAfterMs"] / 1000)
        seated[host.uuid] = await rejoin(server, host, copies[host.uuid])
        sent_back: Counter[str] = Counter()
        while closed := [m for m in (ana, bo) if seated[m.uuid].closed.is_set()]:
            for member in closed:  # seated, then sent away again by the second crash
                client = seated[member.uuid]
                assert client.close_code == 1012
                assert client.frames[-1]["data"]["reason"] == "room-restart"
                sent_back[member.uuid] += 1
                copies[member.uuid].absorb(client)
                seated[member.uuid] = await rejoin(server, member, copies[member.uuid])
        assert sent_back == {ana.uuid: 1, bo.uuid: 1}

        resent = await acked(seated[host.uuid], "token/move", step(4, version=4),
                             event_id=in_flight)
        assert resent["duplicate"] is True  # the crash flushed it before the room restarted
        await acked(seated[ana.uuid], "token/move", step(5, version=5))
        await settle(server, *seated.values())
        expected = await server_view(server, code)
        for member_id, client in seated.items():
            assert not client.closed.is_set()
            assert copies[member_id].absorb(client).view() == expected
        report = await server.running.inspect(code)
        assert report is not None
        assert report["connected"] == sorted(seated)
        assert report["epoch"] == 1  # a crash inside a running server starts no new epoch
        assert Counter(journal_ids(server, code)).most_common(1)[0][1] == 1
        assert expected["state"]["tokens"]["t1"]["version"] == 6


# 7. Faults: a server restart, a store that fails after committing, a clock jump -------


async def test_server_restart_with_moves_in_flight_loses_nothing_and_applies_each_once(
        autojump_clock: trio.testing.MockClock) -> None:
    """https://github.com/rails/rails/issues/29545

    ActionCable: after the server was rebooted, the reconnecting client performed
    the same actions again and the server created duplicate records. Here the
    server drains and restarts while the host has five moves applied but still
    being committed (the store is slower than the drain's wait for it, so their
    acks never reach the host), and one member has been away since before the
    restart. Everyone resumes with its token, ``lastSeenSequence`` and epoch, the
    host resends what has no answer, and each move is applied exactly once.
    """
    async with open_server(host_grace=600, restart_retry_ms=1000) as server:
        host, ana, bo, copies = await table_of_three(server)
        code = host.room
        ana.drop()
        await host.until("event", "session/disconnected", uuid=ana.uuid)
        for index in range(1, 4):
            await acked(host, "token/move", step(index, version=index))
        server.store.latency = 3.0  # commits now outlast the drain's wait for them
        ids = [await host.send_event("token/move", step(index, version=index))
               for index in range(4, 9)]
        await bo.until("event", "token/move", version=9)

        await server.restart()
        server.store.latency = 0.0
        for client in (host, bo):
            hint = await client.until("backoff")
            assert hint["data"]["reason"] == "server-restart"
            assert await client.wait_closed() == 1012
        # The drain waited for the commits only so long: the moves were committed, but the
        # host was sent away before their acks.
        assert set(acks(host)) & set(ids) == set()
        assert set(ids) <= set(journal_ids(server, code))
        assert journaled(server, code, "session/hibernated") == 0
        await trio.sleep(1.5)

        seated = {member.uuid: await resume(server, member, copies[member.uuid].absorb(member))
                  for member in (host, bo, ana)}
        for client in seated.values():
            assert client.frames[1]["data"]["mode"] == "resume"
            assert client.session["epoch"] == 2  # restored from the store: a new epoch
        again = seated[host.uuid]
        for index, event_id in zip(range(4, 9), ids, strict=True):
            await again.send_event("token/move", step(index, version=index), event_id=event_id)
        answers = [(await again.until("event-ack", eventId=event_id))["data"]
                   for event_id in ids]
        assert [a["duplicate"] for a in answers] == [True] * 5
        assert [f for f in again.frames if f["type"] == "error"] == []
        await settle(server, *seated.values())
        expected = await server_view(server, code)
        for member_id, client in seated.items():
            assert copies[member_id].absorb(client).view() == expected
        assert [i for i in journal_ids(server, code) if i in ids] == ids
        assert expected["state"]["tokens"]["t1"]["version"] == 9
        assert expected["hostId"] == host.uuid


async def test_store_failing_after_it_committed_a_batch_applies_the_resent_event_once(
        autojump_clock: trio.testing.MockClock) -> None:
    """https://github.com/socketio/socket.io/issues/5334

    Socket.IO: with acknowledgements and retries, an event whose ack did not come
    back in time was emitted again and the server processed it several times.
    Here the store takes a batch and then fails before confirming it, so the
    server retries the commit; meanwhile the sender retries the event on the same
    connection, and later the host's connection drops with a move in that state
    and it resends the move after resuming. Each is applied exactly once and the
    sequence stays gap-free.
    """
    async with open_server(host_grace=600) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        code = host.room
        await lay_table(host, ana)
        host_copy = Copy(server.config.chat_history).absorb(host)

        server.store.fail_next(1, after_applying=True)
        first = await host.send_event("token/move", step(1, version=1))
        await host.send_event("token/move", step(1, version=1), event_id=first)  # a retry
        answers = [(await host.until("event-ack", eventId=first))["data"] for _ in range(2)]
        assert [a["duplicate"] for a in answers] == [False, True]
        assert answers[0]["serverSequence"] == answers[1]["serverSequence"]
        assert [f for f in host.frames if f["type"] == "error"] == []

        server.store.pause()
        server.store.fail_next(1, after_applying=True)
        second = await host.send_event("token/move", step(2, version=2))
        await ana.until("event", "token/move", version=3)
        host.drop()
        await ana.until("event", "session/disconnected", uuid=host.uuid)
        server.store.resume()
        await server.running.flush()
        assert journal_ids(server, code).count(second) == 1

        again = await resume(server, host, host_copy.absorb(host))
        ack = await acked(again, "token/move", step(2, version=2), event_id=second)
        assert ack["duplicate"] is True
        assert ack["serverSequence"] == answers[0]["serverSequence"] + 1
        third = await acked(again, "token/move", step(3, version=3))
        assert third["duplicate"] is False
        assert third["serverSequence"] == ack["serverSequence"] + 1
        await settle(server, again, ana)
        expected = await server_view(server, code)
        assert host_copy.absorb(again).view() == expected
        assert Copy(server.config.chat_history).absorb(ana).view() == expected
        sequences = [event.sequence for event in server.store.journal(code)]
        assert sequences == list(range(1, len(sequences) + 1))
        assert Counter(journal_ids(server, code)).most_common(1)[0][1] == 1
        assert expected["state"]["tokens"]["t1"]["version"] == 4
        assert [f["eventId"] for f in ana.events("token/move")] == [first, second,
                                                                    third["eventId"]]


async def test_clock_jump_while_one_member_sleeps_and_the_host_is_gone_ends_as_documented(
        autojump_clock: trio.testing.MockClock) -> None:
    """https://github.com/hazelcast/hazelcast/pull/4226

    Hazelcast: an abrupt jump forward of the clock made heartbeats look missed and
    healthy members were spuriously kicked out of the cluster. Here an hour of
    virtual time passes in one sleep while the host's connection is gone and one
    member's laptop is asleep (it reads nothing and answers no ping). The outcome
    is the one docs/protocol.md gives: the sleeping member is dropped after the
    heartbeat interval and timeout and keeps its seat, the member that answered
    its pings stays connected and becomes host exactly once when the host's grace
    period ends, and both absent members resume afterwards with everything they
    missed. A room nobody returns to within the hibernation timeout is gone.
    """
    async with open_server(heartbeat_interval=30, heartbeat_timeout=10, host_grace=60,
                           hibernation_timeout=600) as server:
        host, ana, bo, copies = await table_of_three(server)
        code = host.room
        host.drop()
        ana.stall()
        await trio.sleep(3600)

        assert not bo.closed.is_set()
        assert presence(bo, host.uuid) == ["session/disconnected"]
        assert presence(bo, ana.uuid) == ["session/disconnected"]
        assert [e["data"]["newHostId"] for e in bo.events("session/host-migrated")] == [bo.uuid]
        assert journaled(server, code, "session/host-migrated") == 1
        assert journaled(server, code, "session/hibernated") == 0
        ana.unstall()
        assert await ana.wait_closed() == 1006  # dropped without a close frame

        seated = {member.uuid: await resume(server, member, copies[member.uuid].absorb(member))
                  for member in (ana, host)}
        seated[bo.uuid] = bo
        for member in (ana, host):
            assert seated[member.uuid].session["hostId"] == bo.uuid
            assert seated[member.uuid].frames[1]["data"]["mode"] == "resume"
        await acked(seated[ana.uuid], "token/move", step(1, version=1))
        await settle(server, *seated.values())
        expected = await server_view(server, code)
        for member_id, client in seated.items():
            assert copies[member_id].absorb(client).view() == expected
        assert expected["hostId"] == bo.uuid

        for client in seated.values():
            client.drop()
        await trio.sleep(60 + 600 + 60)  # asleep for longer than the hibernation timeout
        late = await server.connect(query(reconnect=code, token=bo.token,
                                          lastSeenSequence=copies[bo.uuid].sequence,
                                          epoch=copies[bo.uuid].epoch))
        assert (await late.next("error"))["data"]["code"] == "room-not-found"
        assert await late.wait_closed() == 4404
