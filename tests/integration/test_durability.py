"""Durability end to end: real server processes on real PostgreSQL, real sockets, real clock.

Each test runs ``python -m nexus_actors serve`` on the ``database_url`` fixture's fresh
database and talks to it over TCP, then breaks something a production server meets:

- a SIGTERM restart: every seat resumes with its token, ``lastSeenSequence`` and epoch (a new one)
  into the same state, sequence, hosts, co-hosts and players, and play continues gap-free;
- ``kill -9`` under load: every acknowledged event is in ``room_events`` exactly once and
  reaches each resuming client; events resent with the same ``eventId`` are applied once;
  the room starts a new epoch, and an old-epoch client past the durable point gets a baseline;
- a database outage, made by a TCP proxy between the server and PostgreSQL that the test
  cuts and restores: cursors and broadcasts keep flowing, acks wait, ``/ready`` says why it
  is 503, a full persistence queue refuses events with ``overloaded``, and after the
  database returns the held acks arrive in order with nothing confirmed lost;
- rooms loaded lazily after a restart: a hibernated room comes back, an abandoned one is
  ``room-not-found``.

Every wait is bounded (``trio.fail_after``); the only polling is of things an external
process does (``/health``, ``/ready``, a row in the database), and the only other sleeps
pace the load generators and make the outage last a few seconds. No server process
outlives its test: each is killed in a ``finally``.
"""

from __future__ import annotations

import hashlib
import itertools
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, LiteralString

import orjson
import psycopg
import pytest
import trio
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from websockets.protocol import State

from nexus_actors.testing import TestClient, query
from nexus_actors.testing.processes import free_port, server_environment

pytestmark = pytest.mark.realclock

START_TIMEOUT = 20.0
"Seconds a server process may take to answer /health (imports are slow on a busy machine)."
DRAIN_TIMEOUT = 5
"NEXUS_DRAIN_TIMEOUT given to every process."
EXIT_TIMEOUT = DRAIN_TIMEOUT + 5.0
"Seconds a process may take to exit after SIGTERM."
POLL = 0.05
"Seconds between looks at something only an external process changes."
COMMON = {"NEXUS_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT), "NEXUS_RATE_LIMIT": "100000",
        "NEXUS_RATE_BURST": "100000", "NEXUS_HEARTBEAT_INTERVAL": "600",
        "NEXUS_ADDRESS_CONNECT_RATE": "100000", "NEXUS_ADDRESS_CONNECT_BURST": "100000"}
"""Settings for every process: a short drain; no rate limit (the load generators send
faster than a person); no WebSocket pings, whose pongs the client's reader would write
while a load generator writes on the same socket (a TestClient has one writer)."""


# Server processes ------------------------------------------------------------------


async def http_get(port: int, path: str) -> tuple[int, Any] | None:
    """Status and JSON body of ``GET path``, or ``None`` while nothing accepts on the port."""
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return None
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        reply = b""
        while chunk := await stream.receive_some():
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), orjson.loads(body) if body else None


async def poll_http(port: int, path: str, status: int) -> Any:
    """Ask ``path`` until it answers ``status`` (bounded by the caller); the body."""
    while True:
        reply = await http_get(port, path)
        if reply is not None and reply[0] == status:
            return reply[1]
        await trio.sleep(POLL)


class Node:
    """One running ``nexus-actors serve`` process and clients for it."""

    def __init__(self, process: trio.Process, port: int, nursery: trio.Nursery) -> None:
        self.process = process
        self.port = port
        self.nursery = nursery

    async def connect(self, target: str) -> TestClient:
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        return await TestClient.open(stream, target, self.nursery)

    async def _seated(self, target: str, expected: str) -> TestClient:
        client = await self.connect(target)
        first = await client.next("event")
        assert first["data"]["name"] == expected, first
        await client.next("event-cursor")
        return client

    async def create(self, name: str) -> TestClient:
        return await self._seated(query(host="", name=name), "session/created")

    async def join(self, code: str, name: str) -> TestClient:
        return await self._seated(query(join=code, name=name), "session/joined")

    async def resume(self, code: str, token: str, *, last_seen: int | None,
                     epoch: int | None) -> tuple[TestClient, dict[str, Any]]:
        """A ``reconnect`` to the seat of ``token``; the client and its ``event-cursor`` data."""
        client = await self.connect(query(reconnect=code, token=token,
                                          lastSeenSequence=last_seen, epoch=epoch))
        first = await client.next("event")
        assert first["data"]["name"] == "session/reconnected", first
        cursor: dict[str, Any] = (await client.next("event-cursor"))["data"]
        return client, cursor

    async def drain(self) -> int:
        """SIGTERM; the exit code."""
        self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(EXIT_TIMEOUT):
            return await self.process.wait()

    async def kill(self) -> None:
        """SIGKILL: no drain, nothing flushed."""
        self.process.kill()
        await self.process.wait()


class Cluster:
    """Server processes started one after another on one database (the same rooms): one
    server restarted, each time on a new port but with the same node id, as a process
    restarted in place (same host and port) is; so it takes its rooms' leases back at
    once, even after a kill -9."""

    def __init__(self, database_url: str, logs: Path, nursery: trio.Nursery) -> None:
        self.database_url = database_url
        self.logs = logs
        self.nursery = nursery
        self.processes: list[tuple[trio.Process, Path]] = []

    async def start(self, **settings: str) -> Node:
        """Run ``python -m nexus_actors serve`` until /health answers (``settings``: env)."""
        port = free_port()
        env = server_environment(**{"PORT": str(port), "NEXUS_HOST": "127.0.0.1",
                             "DATABASE_URL": self.database_url, "LOG_LEVEL": "info",
                             "NEXUS_NODE_ID": "one-server", **COMMON, **settings})
        log = self.logs / f"server-{len(self.processes) + 1}.log"
        with log.open("wb") as stderr:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "nexus_actors", "serve"], env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        self.processes.append((process, log))
        with trio.fail_after(START_TIMEOUT):
            # Polling is the only way to see an external process start listening.
            while (reply := await http_get(port, "/health")) is None or reply[0] != 200:
                if process.poll() is not None:
                    pytest.fail(f"server exited: {log.read_text()}")
                await trio.sleep(POLL)
        return Node(process, port, self.nursery)


@asynccontextmanager
async def cluster(database_url: str, logs: Path) -> AsyncIterator[Cluster]:
    """Servers (and clients) for one test; every process still running is killed after."""
    async with trio.open_nursery() as nursery:
        servers = Cluster(database_url, logs, nursery)
        try:
            yield servers
        finally:
            with trio.CancelScope(shield=True):
                for process, log in servers.processes:
                    if process.returncode is None:
                        process.kill()
                    await process.wait()
                    print(f"--- {log.name} (exit {process.returncode})\n{log.read_text()}")
            nursery.cancel_scope.cancel()


# The database, read directly ---------------------------------------------------------


def _fetch(url: str, sql: LiteralString, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


async def connected_becomes(url: str, code: str, expected: set[str]) -> None:
    """Wait (bounded) until exactly ``expected`` seats of ``code`` are marked connected."""
    with trio.fail_after(5):
        while True:
            rows = await trio.to_thread.run_sync(
                _fetch, url, "SELECT id FROM players WHERE room_code = %s AND connected",
                (code,))
            if {str(r[0]) for r in rows} == expected:
                return
            await trio.sleep(0.05)  # polling the database: another process writes it


async def journal(url: str, code: str) -> list[tuple[int, str, str]]:
    """``room_events`` of ``code``: ``(server_sequence, event_id, name)`` in sequence order."""
    rows = await trio.to_thread.run_sync(
        _fetch, url, "SELECT server_sequence, event_id, name FROM room_events"
        " WHERE room_code = %s ORDER BY server_sequence", (code,))
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


async def room_row(url: str, code: str) -> tuple[str, list[list[int]]]:
    """``(status, epochs)`` of ``code`` in ``rooms``."""
    [(status, epochs)] = await trio.to_thread.run_sync(
        _fetch, url, "SELECT status, epochs::text FROM rooms WHERE code = %s", (code,))
    return str(status), orjson.loads(epochs)


async def until_status(url: str, code: str, status: str) -> None:
    """Wait (bounded by the caller) until the server has stored ``status`` for ``code``."""
    while True:
        if (await room_row(url, code))[0] == status:
            return
        await trio.sleep(POLL)


def assert_sound(rows: list[tuple[int, str, str]]) -> dict[str, int]:
    """A journal with no gap and no eventId twice; ``eventId -> serverSequence``."""
    assert [seq for seq, _, _ in rows] == list(range(1, len(rows) + 1))
    twice = [eid for eid, n in Counter(eid for _, eid, _ in rows).items() if n > 1]
    assert twice == []
    return {eid: seq for seq, eid, _ in rows}


# Frames --------------------------------------------------------------------------------


def acks(client: TestClient) -> dict[str, dict[str, Any]]:
    """``eventId -> event-ack data`` of every ack ``client`` received (the last one wins)."""
    return {f["data"]["eventId"]: f["data"] for f in client.frames if f["type"] == "event-ack"}


def errors(client: TestClient, code: str) -> dict[str, dict[str, Any]]:
    """``eventId -> error data`` of ``client``'s ``error`` frames with ``code``."""
    return {f["data"]["eventId"]: f["data"] for f in client.frames
            if f["type"] == "error" and f["data"]["code"] == code}


def assert_released_in_order(client: TestClient, ids: list[str]) -> None:
    """``client`` got its own copy of each of ``ids``, then its ack, in the order sent."""
    wanted = set(ids)
    released = [(f["type"], f["eventId"] if f["type"] == "event" else f["data"]["eventId"])
                for f in client.frames
                if (f["type"] == "event" and f.get("eventId") in wanted)
                or (f["type"] == "event-ack" and f["data"]["eventId"] in wanted)]
    assert released == [step for eid in ids for step in (("event", eid), ("event-ack", eid))]
    sequences = [acks(client)[eid]["serverSequence"] for eid in ids]
    assert sequences == sorted(sequences)


def event_ids(client: TestClient) -> set[str]:
    return {f["eventId"] for f in client.frames if f["type"] == "event" and "eventId" in f}


async def read_until(client: TestClient, done: Callable[[], bool]) -> None:
    """Read ``client``'s frames until ``done()`` (each wait bounded by the client)."""
    while not done():
        await client.next()


async def replay(client: TestClient, cursor: dict[str, Any]) -> list[dict[str, Any]]:
    """The replayed events that follow a ``resume`` cursor (none after a baseline)."""
    if cursor["mode"] != "resume":
        return []
    return [await client.next("event") for _ in range(cursor["replayThrough"]
                                                       - cursor["sequence"])]


async def acked(client: TestClient, event_id: str) -> dict[str, Any]:
    """Wait for ``event_id``'s ack on ``client``; its data."""
    await read_until(client, lambda: event_id in acks(client))
    return acks(client)[event_id]


async def until_acked(client: TestClient, ids: Iterable[str]) -> None:
    """Wait until ``client`` has an ack for every one of ``ids``."""
    wanted = set(ids)
    await read_until(client, lambda: wanted <= acks(client).keys())


async def until_seen(client: TestClient, ids: Iterable[str]) -> None:
    """Wait until ``client`` has received the ``event`` frame of every one of ``ids``."""
    wanted = set(ids)
    await read_until(client, lambda: wanted <= event_ids(client))


async def until_answered(client: TestClient, event_id: str) -> dict[str, Any]:
    """Wait for an ``error`` about ``event_id``; its data."""
    def answer() -> dict[str, Any] | None:
        return next((f["data"] for f in client.frames if f["type"] == "error"
                     and f["data"].get("eventId") == event_id), None)

    await read_until(client, lambda: answer() is not None)
    found = answer()
    assert found is not None
    return found


# 1. Restart --------------------------------------------------------------------------


async def test_rooms_seats_and_hosts_survive_a_sigterm_restart(database_url: str,
                                                               tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with cluster(database_url, tmp_path) as servers:
            first = await servers.start()
            gm = await first.create("GM")
            code = gm.room
            ana = await first.join(code, "Ana")
            bob = await first.join(code, "Bob")
            await acked(gm, await gm.send_event("session/add-co-host", {"playerId": ana.uuid}))
            await acked(gm, await gm.send_event("scene/create", {
                "scene": {"id": "cave", "name": "Cave"}}))
            await acked(ana, await ana.send_event("scene/activate", {"sceneId": "cave"}))
            await acked(bob, await bob.send_event("token/create", {"token": {
                "id": "orc", "sceneId": "cave", "position": {"x": 1, "y": 1}}}))
            await acked(bob, await bob.send_event("token/move", {
                "tokenId": "orc", "position": {"x": 5, "y": 6}, "version": 1,
                "updateId": "u-1"}))
            await acked(ana, await ana.send_event("chat/message", {"text": "the orc moves"}))
            # The last joiner's welcome is the whole room as it stands before the restart.
            dee = await first.join(code, "Dee")
            before, sequence = dee.session, dee.session["sequence"]
            for member in (gm, ana, bob):
                await member.until("event", "session/join")
                assert member.last_sequence() == sequence

            assert await first.drain() == 0
            for member in (gm, ana, bob, dee):
                hint = await member.until("backoff")
                assert hint["data"]["reason"] == "server-restart"
                assert await member.wait_closed() == 1012
            assert (await room_row(database_url, code))[0] == "hibernating"

            second = await servers.start()
            # Bob lost the last three events: they are replayed as they were first sent.
            missed = {f["serverSequence"]: f["eventId"] for f in bob.frames
                      if f["type"] == "event" and f.get("serverSequence", 0) > sequence - 3}
            back: dict[str, TestClient] = {}
            for member, last_seen in ((gm, sequence), (ana, sequence), (bob, sequence - 3),
                                      (dee, sequence)):
                again, cursor = await second.resume(code, member.token, last_seen=last_seen,
                                                    epoch=member.session["epoch"])
                assert cursor == {"mode": "resume", "sequence": last_seen,
                                  "replayThrough": sequence}
                session = again.session
                assert session["uuid"] == member.uuid
                # A new epoch (every load from the store begins one); the history resumes.
                assert session["epoch"] == before["epoch"] + 1 == 2
                assert session["sequence"] == sequence
                assert session["state"] == before["state"]
                assert session["hostId"] == gm.uuid
                assert session["coHostIds"] == [ana.uuid]
                assert ({p["id"]: (p["name"], p["role"]) for p in session["players"]}
                        == {p["id"]: (p["name"], p["role"]) for p in before["players"]})
                # Restored seats are disconnected until their members come back.
                assert {p["id"] for p in session["players"] if p["connected"]} == {
                    *back, member.uuid}
                replayed = await replay(again, cursor)
                assert {f["serverSequence"]: f["eventId"] for f in replayed} == (
                    missed if member is bob else {})
                back[member.uuid] = again
            state = before["state"]
            assert state["activeSceneId"] == "cave"
            assert state["tokens"]["orc"]["position"] == {"x": 5.0, "y": 6.0}
            assert state["tokens"]["orc"]["version"] == 2
            assert [m["text"] for m in state["chat"]] == ["the orc moves"]

            # Play goes on after the restored sequence, with the restored co-host's rights.
            ana2, gm2, bob2 = back[ana.uuid], back[gm.uuid], back[bob.uuid]
            scene = await ana2.send_event("scene/create", {"scene": {"id": "keep", "name": "Keep"}})
            assert (await acked(ana2, scene))["serverSequence"] == sequence + 1
            chat = await bob2.send_event("chat/message", {"text": "onwards"})
            assert (await acked(bob2, chat))["serverSequence"] == sequence + 2
            for other in (gm2, back[dee.uuid]):
                await until_seen(other, [scene, chat])
                assert [(f["eventId"], f["serverSequence"]) for f in other.events()
                        if "serverSequence" in f] == [(scene, sequence + 1), (chat, sequence + 2)]
            assert_sound(await journal(database_url, code))


async def test_a_rotated_token_resumes_across_a_sigterm_restart_and_a_kill_9(
        database_url: str, tmp_path: Path) -> None:
    async def newest(client: TestClient) -> str:
        return str((await client.until("event", "session/token"))["data"]["token"])

    with trio.fail_after(60):
        async with cluster(database_url, tmp_path) as servers:
            first = await servers.start()
            gm = await first.create("GM")
            code = gm.room
            ana = await first.join(code, "Ana")
            original = ana.token
            ana.drop()
            again, _ = await first.resume(code, original, last_seen=None, epoch=None)
            rotated = await newest(again)
            assert await first.drain() == 0

            second = await servers.start()
            back, _ = await second.resume(code, rotated, last_seen=None, epoch=None)
            latest = await newest(back)  # durable before it was sent
            await second.kill()

            third = await servers.start()

            async def refused(token: str) -> None:
                refusal = await third.connect(query(reconnect=code, token=token))
                assert (await refusal.next("error"))["data"]["code"] == "invalid-token"
                assert await refusal.wait_closed() == 4401

            await refused(original)  # retired when the rotated token was presented
            final, _ = await third.resume(code, latest, last_seen=None, epoch=None)
            assert final.uuid == ana.uuid
            await newest(final)
            await refused(rotated)  # retired now that the latest one was presented
            stored = _fetch(database_url, "SELECT previous_token_hash FROM players"
                                          " WHERE room_code = %s AND id = %s", (code, ana.uuid))
            assert stored == [(hashlib.sha256(latest.encode()).hexdigest(),)]


# 2. kill -9 under load ---------------------------------------------------------------

SEND_PAUSE = 0.001
"Seconds between two events of one load generator (its sending rate, not a wait)."
MOVE_EVERY = 4
"Every fourth generated event moves the sender's token; the others are chat messages."
ACKS_BEFORE_KILL = 25
"Acks each sender has before the server is killed."
MAX_SENT = 400
"Events one sender generates at most (keeps every replay well inside the outbox)."


class Sender:
    """A client that sends events continuously, remembering each one it sent."""

    def __init__(self, client: TestClient, label: str, token: str) -> None:
        self.client = client
        self.label = label
        self.token = token
        self.sent: dict[str, tuple[str, dict[str, Any]]] = {}
        "``eventId -> (name, data)`` in sending order."

    def event(self, i: int) -> tuple[str, str, dict[str, Any]]:
        event_id = f"{self.label}-{i}"
        if i % MOVE_EVERY == 0:
            return event_id, "token/move", {"tokenId": self.token,
                                            "position": {"x": float(i), "y": 0.0}}
        return event_id, "chat/message", {"text": event_id}

    async def flood(self, stop: trio.Event) -> None:
        """Send without waiting for acks until ``stop`` (or MAX_SENT, or a lost connection)."""
        for i in range(1, MAX_SENT + 1):
            if (stop.is_set() or self.client.closed.is_set()
                    or self.client.protocol.state is not State.OPEN):
                return
            event_id, name, data = self.event(i)
            self.sent[event_id] = (name, data)
            await self.client.send_event(name, data, event_id=event_id)
            await trio.sleep(SEND_PAUSE)

    def moves(self, ids: set[str] | dict[str, int]) -> int:
        return sum(1 for eid, (name, _) in self.sent.items() if name == "token/move"
                   and eid in ids)


async def until_durable_after(observer: TestClient, sender: Sender, sent: int) -> None:
    """Wait until ``observer`` knows that an event ``sender`` sent after its first ``sent``
    is durable: it has seen the event's broadcast and an ack for a later sequence (a room's
    events commit in sequence order)."""
    def durable() -> bool:
        later = set(list(sender.sent)[sent:])
        seen = [f["serverSequence"] for f in observer.frames
                if f["type"] == "event" and f.get("eventId") in later]
        acked = [ack["serverSequence"] for ack in acks(observer).values()]
        return bool(seen) and max(acked) > min(seen)

    await read_until(observer, durable)


async def test_sigterm_with_many_clients_sends_each_a_jittered_hint_and_loses_no_ack(
        database_url: str, tmp_path: Path) -> None:
    rooms, per_room = 8, 6
    with trio.fail_after(90):
        async with cluster(database_url, tmp_path) as servers:
            node = await servers.start(NEXUS_RESTART_RETRY_MS="2000")
            members: list[TestClient] = []
            for index in range(rooms):
                host = await node.create(f"GM{index}")
                members.append(host)
                for seat in range(per_room - 1):
                    members.append(await node.join(host.room, f"P{index}-{seat}"))
            sent = {}
            for member in members:  # one event each, acknowledged before the signal
                sent[member] = await member.send_event("chat/message", {"text": "before"})
            for member in members:
                await acked(member, sent[member])
            late = {member: await member.send_event("chat/message", {"text": "during"})
                    for member in members}  # in flight when the signal comes

            assert await node.drain() == 0
            retry = []
            for member in members:
                hint = await member.until("backoff")
                assert hint["data"]["reason"] == "server-restart"
                retry.append(hint["data"]["retryAfterMs"])
                assert await member.wait_closed() == 1012
            assert all(1000 <= ms < 3000 for ms in retry)  # jittered around 2000
            assert max(retry) - min(retry) >= 500  # spread, not one stampede

            durable: dict[str, list[str]] = {}
            for code in {member.room for member in members}:
                durable[code] = [event_id for _, event_id, _ in await journal(database_url,
                                                                               code)]
            for member in members:
                ids = durable[member.room]
                assert ids.count(sent[member]) == 1
                if late[member] in acks(member):  # acknowledged while draining: durable too
                    assert ids.count(late[member]) == 1


async def test_kill_9_under_load_keeps_every_acked_event_and_applies_resent_ones_once(
        database_url: str, tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with cluster(database_url, tmp_path) as servers:
            first = await servers.start(NEXUS_PERSIST_FLUSH_INTERVAL="0.02",
                                        NEXUS_CHAT_HISTORY="100000",
                                        NEXUS_JOURNAL_RETAIN="100000")
            rooms: dict[str, list[Sender]] = {}
            for room_name, players in (("a", 2), ("b", 1)):
                gm = await first.create(f"GM-{room_name}")
                await acked(gm, await gm.send_event("scene/create", {
                    "scene": {"id": "map", "name": "Map"}}))
                members = [gm] + [await first.join(gm.room, f"P{i}-{room_name}")
                                  for i in range(players)]
                senders = []
                for index, member in enumerate(members):
                    label = f"{room_name}{index}"
                    await acked(member, await member.send_event("token/create", {"token": {
                        "id": f"tok-{label}", "sceneId": "map", "position": {"x": 0, "y": 0}}}))
                    senders.append(Sender(member, label, f"tok-{label}"))
                rooms[gm.room] = senders
            everyone = [s for senders in rooms.values() for s in senders]

            stop = trio.Event()
            async with trio.open_nursery() as load:
                for sender in everyone:
                    load.start_soon(sender.flood, stop)
                for sender in everyone:
                    for _ in range(ACKS_BEFORE_KILL):
                        await sender.client.until("event-ack")
                # One client stops reading (an app sent to the background) and goes on
                # sending: its events are committed, their acks never reach it.
                peer, deaf = rooms[next(iter(rooms))][:2]
                deaf.client.stall()
                await until_durable_after(peer.client, deaf, len(deaf.sent))
                stop.set()
                await first.kill()
            for sender in everyone:
                if sender is not deaf:
                    assert await sender.client.wait_closed() == 1006

            # (a) In the database: every acked event exactly once, at its acked sequence.
            durable: dict[str, int] = {}
            committed: dict[str, dict[str, int]] = {}
            for code, senders in rooms.items():
                rows = await journal(database_url, code)
                committed[code] = assert_sound(rows)
                durable[code] = len(rows)
                for sender in senders:
                    for eid, ack in acks(sender.client).items():
                        assert committed[code].get(eid) == ack["serverSequence"], eid
            unacked = {s.label: [eid for eid in s.sent if eid not in acks(s.client)]
                       for s in everyone}
            assert any(unacked.values()), "the kill came after every event was acked"
            assert any(eid in committed[peer.client.room] for eid in unacked[deaf.label])

            second = await servers.start(NEXUS_CHAT_HISTORY="100000",
                                         NEXUS_JOURNAL_RETAIN="100000")
            # (b) Each seat resumes into a new epoch; replay and state hold every acked event.
            resumed: dict[str, TestClient] = {}
            for code, senders in rooms.items():
                rows = await journal(database_url, code)
                by_sequence = {seq: eid for seq, eid, _ in rows}
                chats = [eid for _, eid, name in rows if name == "chat/message"]
                for sender in senders:
                    old = sender.client
                    last_seen = old.last_sequence()
                    again, cursor = await second.resume(code, old.token, last_seen=last_seen,
                                                        epoch=old.session["epoch"])
                    assert again.session["epoch"] == 2  # restored after an unclean stop
                    assert again.session["sequence"] == durable[code]
                    if sender is senders[0]:
                        # The killed process left every seat "connected" in players; the
                        # restored room marks them away until they resume.
                        await connected_becomes(database_url, code, {old.uuid})
                    if last_seen <= durable[code]:
                        assert cursor == {"mode": "resume", "sequence": last_seen,
                                          "replayThrough": durable[code]}
                    else:  # it saw broadcasts that never became durable
                        assert cursor["mode"] == "baseline"
                    replayed = {f["serverSequence"]: f["eventId"]
                                for f in await replay(again, cursor)}
                    assert replayed == {seq: eid for seq, eid in by_sequence.items()
                                        if seq > cursor["sequence"]}
                    state = again.session["state"]
                    assert [m["text"] for m in state["chat"]] == chats
                    for each in senders:
                        assert state["tokens"][each.token]["version"] == 1 + each.moves(
                            committed[code])
                        for eid, ack in acks(each.client).items():
                            seq = ack["serverSequence"]
                            assert seq <= cursor["sequence"] or replayed[seq] == eid
                    resumed[sender.label] = again

            # (c) Resending the unacked events: duplicates for the committed ones, new
            # sequences for the rest; nothing is applied twice.
            for sender in everyone:
                client = resumed[sender.label]
                for eid in unacked[sender.label]:
                    name, data = sender.sent[eid]
                    await client.send_event(name, data, event_id=eid)
            for code, senders in rooms.items():
                for sender in senders:
                    client = resumed[sender.label]
                    await until_acked(client, unacked[sender.label])
                    for eid in unacked[sender.label]:
                        ack = acks(client)[eid]
                        if eid in committed[code]:
                            assert ack == {"eventId": eid, "duplicate": True,
                                           "serverSequence": committed[code][eid]}
                        else:
                            assert ack["duplicate"] is False
                            assert ack["serverSequence"] > durable[code]
                gm = resumed[senders[0].label]
                await acked(gm, await gm.send_event("chat/message", {"text": f"{code}-last"},
                                                    event_id=f"{code}-last"))
                final = assert_sound(await journal(database_url, code))
                for sender in senders:
                    assert set(sender.sent) <= final.keys()

                # The new epoch began after the durable point: an old-epoch client that saw
                # beyond it must start over; one that did not may resume.
                assert (await room_row(database_url, code))[1] == [[1, 1], [2, durable[code] + 1]]
                old_token = senders[0].client.token
                _, cursor = await second.resume(code, old_token, last_seen=durable[code] + 1,
                                                epoch=1)
                assert cursor["mode"] == "baseline"
                probe, cursor = await second.resume(code, old_token, last_seen=durable[code],
                                                    epoch=1)
                assert cursor["mode"] == "resume"
                assert [f["eventId"] for f in await replay(probe, cursor)] == [
                    eid for eid, seq in sorted(final.items(), key=lambda item: item[1])
                    if seq > durable[code]]
                state = probe.session["state"]
                sent_chats = [eid for s in senders for eid, (name, _) in s.sent.items()
                              if name == "chat/message"] + [f"{code}-last"]
                texts = [m["text"] for m in state["chat"]]
                assert sorted(texts) == sorted(sent_chats)  # each exactly once
                for sender in senders:
                    assert state["tokens"][sender.token]["version"] == 1 + sender.moves(
                        set(sender.sent))


# 3. Database outage --------------------------------------------------------------------


class DatabaseProxy:
    """A TCP front for PostgreSQL (over TCP or its Unix socket) that the test can cut."""

    def __init__(self, url: str) -> None:
        params = conninfo_to_dict(url)
        self.url = url
        host = str(params.get("host") or "/var/run/postgresql")
        port = int(params.get("port") or 5432)
        self.target: str | tuple[str, int] = (
            f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port))
        self.up = True
        self.refused = 0
        "Connections closed at once while the database was away."
        self.port = 0
        self._links: set[trio.CancelScope] = set()

    @property
    def proxied_url(self) -> str:
        """The database URL through this proxy."""
        return make_conninfo(self.url, host="127.0.0.1", port=str(self.port))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._link, listeners)

    def cut(self) -> None:
        """The database goes away: every link closes, new ones are refused."""
        self.up = False
        for scope in self._links:
            scope.cancel()

    def restore(self) -> None:
        self.up = True

    async def _link(self, client: trio.SocketStream) -> None:
        async with client:
            if not self.up:
                self.refused += 1
                return
            if isinstance(self.target, str):
                upstream: trio.SocketStream = await trio.open_unix_socket(self.target)
            else:
                upstream = await trio.open_tcp_stream(*self.target)
            async with upstream:
                with trio.CancelScope() as scope:
                    self._links.add(scope)
                    try:
                        async with trio.open_nursery() as pipes:
                            pipes.start_soon(self._pipe, client, upstream, scope)
                            pipes.start_soon(self._pipe, upstream, client, scope)
                    finally:
                        self._links.discard(scope)

    @staticmethod
    async def _pipe(source: trio.SocketStream, sink: trio.SocketStream,
                    scope: trio.CancelScope) -> None:
        try:
            while data := await source.receive_some(65536):
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()  # one side ended: end the link


PERSIST_QUEUE = 64
"NEXUS_PERSIST_QUEUE for the outage test: small, so the outage fills it."
BURST = 40
"Events sent in one go while filling the persistence queue."
BACKGROUND_PAUSE = 0.05
"Seconds between two chat messages (and cursor moves) of the background sender."
BOB_OUTAGE_EVENTS = 20
"""Chat messages Bob sends during the outage: few enough to leave room in the persistence
queue, so that the events sent later in the outage are still accepted (and broadcast)."""
OUTAGE = 3.0
"Seconds the database stays away (at least: the checks that follow take a little more)."
PROBE_PAUSE = 0.2
"Seconds between two looks at /ready and /health during the outage."


async def test_database_outage_keeps_rooms_serving_and_holds_acks_until_it_returns(
        database_url: str, tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with cluster(database_url, tmp_path) as servers:
            proxy = DatabaseProxy(database_url)
            await servers.nursery.start(proxy.run)
            node = await servers.start(DATABASE_URL=proxy.proxied_url,
                                       NEXUS_PERSIST_QUEUE=str(PERSIST_QUEUE))
            gm = await node.create("GM")
            code = gm.room
            ana = await node.join(code, "Ana")
            bob = await node.join(code, "Bob")
            await acked(gm, await gm.send_event("scene/create", {
                "scene": {"id": "map", "name": "Map"}}))
            for _ in range(5):
                await acked(ana, await ana.send_event("chat/message", {"text": "warm-up"}))

            bob_sent: list[str] = []
            outage = trio.Event()
            bob_during: list[str] = []
            stop = trio.Event()

            async def background() -> None:
                """Bob moves his cursor throughout and chats (a little during the outage)."""
                for i in itertools.count(1):
                    if stop.is_set():
                        return
                    if not outage.is_set():
                        bob_sent.append(await bob.send_event("chat/message", {"text": f"{i}"}))
                    elif len(bob_during) < BOB_OUTAGE_EVENTS:
                        bob_during.append(await bob.send_event("chat/message", {"text": f"{i}"}))
                    await bob.cursor("map", float(i), 0.0)
                    await trio.sleep(BACKGROUND_PAUSE)

            async with trio.open_nursery() as load:
                load.start_soon(background)
                await read_until(ana, lambda: len(bob_sent) >= 5 and set(bob_sent[:5])
                                 <= event_ids(ana))

                proxy.cut()
                outage.set()
                cut_at = trio.current_time()
                # Durable events still reach the other members at once.
                during = [await ana.send_event("chat/message", {"text": f"outage {i}"})
                          for i in range(5)]
                await until_seen(gm, during)
                # The server tells its load balancer why it is not ready, and stays healthy,
                # for as long as the database is away.
                with trio.fail_after(20):
                    body = await poll_http(node.port, "/ready", 503)
                assert body["ready"] is False
                assert any(r.startswith("store unavailable") for r in body["reasons"]), body
                while trio.current_time() < cut_at + OUTAGE:
                    ready, health = (await http_get(node.port, "/ready"),
                                     await http_get(node.port, "/health"))
                    assert ready is not None
                    assert ready[0] == 503
                    assert health is not None
                    assert health[0] == 200
                    await trio.sleep(PROBE_PAUSE)
                # Seconds into the outage, cursors (never stored) still flow both ways...
                await ana.cursor("map", 111.0, 222.0)
                await read_until(bob, lambda: any(
                    c["userId"] == ana.uuid and c["position"] == {"x": 111.0, "y": 222.0}
                    for f in bob.frames if f["type"] == "cursors" for c in f["data"]["cursors"]))
                seen_before = len(ana.frames)
                await read_until(ana, lambda: any(
                    c["userId"] == bob.uuid for f in ana.frames[seen_before:]
                    if f["type"] == "cursors" for c in f["data"]["cursors"]))
                # ... and durable events still reach the others at once.
                late = await ana.send_event("chat/message", {"text": "still here"})
                during.append(late)
                await until_seen(gm, [late])

                # The queue fills: further events are refused, with a hint, not dropped.
                for round_ in range(20):
                    burst = [await ana.send_event("chat/message", {"text": f"burst {round_}"})
                             for _ in range(BURST)]
                    during += burst
                    marker = await ana.send_event("token/move", {
                        "tokenId": "no-such-token", "position": {"x": 0, "y": 0}})
                    await until_answered(ana, marker)
                    if errors(ana, "overloaded").keys() & set(burst):
                        break
                refused = {eid: error for eid, error in errors(ana, "overloaded").items()
                           if eid in during}
                assert refused, "the persistence queue never filled"
                assert all(e["retryAfterMs"] > 0 for e in refused.values())
                # Nothing sent since the cut can be durable yet: no ack, and no own copy.
                assert not (acks(ana).keys() | acks(bob).keys()) & (
                    set(during) | set(bob_during))
                assert not event_ids(ana) & set(during)
                assert proxy.refused > 0

                proxy.restore()
                accepted = [eid for eid in during if eid not in refused]
                with trio.fail_after(30):
                    await read_until(ana, lambda: set(accepted) <= acks(ana).keys())
                    await poll_http(node.port, "/ready", 200)
                stop.set()
            bob_all = bob_sent + bob_during
            await read_until(bob, lambda: set(bob_all) <= acks(bob).keys()
                             | errors(bob, "overloaded").keys())
            bob_refused = errors(bob, "overloaded")

            # The held acks came in the order the events were sent, each after its own copy.
            assert_released_in_order(ana, accepted)
            assert_released_in_order(bob, [eid for eid in bob_all if eid not in bob_refused])

            rows = assert_sound(await journal(database_url, code))
            for client in (ana, bob):
                for eid, ack in acks(client).items():
                    assert rows.get(eid) == ack["serverSequence"], eid
            assert not rows.keys() & (refused.keys() | bob_refused.keys())
            await read_until(gm, lambda: (set(accepted) | (set(bob_all) - bob_refused.keys()))
                             <= event_ids(gm))
            for client in (gm, ana, bob):
                assert not event_ids(client) & (refused.keys() | bob_refused.keys())

            # A refused event did not use up its eventId: sent again, it is applied.
            again = next(iter(refused))
            await ana.send_event("chat/message", {"text": "again"}, event_id=again)
            assert (await acked(ana, again))["duplicate"] is False
            assert again in assert_sound(await journal(database_url, code))


# 4. Lazy loading after a restart ---------------------------------------------------------


async def test_restart_brings_back_a_hibernated_room_and_refuses_an_abandoned_one(
        database_url: str, tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with cluster(database_url, tmp_path) as servers:
            # A room that hibernates, then is abandoned, all before the restart.
            first = await servers.start(NEXUS_HOST_GRACE="0.2", NEXUS_HIBERNATION_TIMEOUT="1")
            lost = await first.create("GM")
            await acked(lost, await lost.send_event("chat/message", {"text": "anyone?"}))
            await lost.close()
            assert await lost.wait_closed() == 1000
            with trio.fail_after(15):
                await until_status(database_url, lost.room, "abandoned")
            assert await first.drain() == 0

            # A room that hibernates before the restart (and is not abandoned).
            second = await servers.start(NEXUS_HOST_GRACE="0.2")
            gm = await second.create("GM")
            code = gm.room
            await acked(gm, await gm.send_event("scene/create", {
                "scene": {"id": "inn", "name": "Inn"}}))
            await acked(gm, await gm.send_event("token/create", {"token": {
                "id": "bard", "sceneId": "inn", "position": {"x": 2, "y": 3}}}))
            ana = await second.join(code, "Ana")
            await acked(ana, await ana.send_event("chat/message", {"text": "a song"}))
            await read_until(gm, lambda: gm.last_sequence() == ana.last_sequence())
            before = ana.session
            for member in (ana, gm):
                await member.close()
                assert await member.wait_closed() == 1000
            with trio.fail_after(15):
                await until_status(database_url, code, "hibernating")
            rows = await journal(database_url, code)
            assert rows[-1][2] == "session/hibernated"
            assert await second.drain() == 0

            third = await servers.start()
            again, cursor = await third.resume(code, gm.token, last_seen=gm.last_sequence(),
                                               epoch=gm.session["epoch"])
            assert cursor == {"mode": "resume", "sequence": gm.last_sequence(),
                              "replayThrough": len(rows)}
            assert [f["data"]["name"] for f in await replay(again, cursor)] == [
                "session/hibernated"]
            assert again.session["epoch"] == 2  # every restore from the store begins one
            assert again.session["hostId"] == gm.uuid
            assert {p["id"]: p["name"] for p in again.session["players"]} == {
                gm.uuid: "GM", ana.uuid: "Ana"}
            state = again.session["state"]
            assert state == {**before["state"], "chat": state["chat"]}
            assert [m["text"] for m in state["chat"]] == ["a song"]
            assert state["tokens"]["bard"]["position"] == {"x": 2.0, "y": 3.0}
            chat = await again.send_event("chat/message", {"text": "we are back"})
            assert (await acked(again, chat))["serverSequence"] == len(rows) + 1

            for target in (query(reconnect=lost.room, token=lost.token,
                                 lastSeenSequence=lost.last_sequence()),
                           query(join=lost.room, name="Late")):
                refused = await third.connect(target)
                frame = await refused.next("error")
                assert frame["data"]["code"] == "room-not-found"
                assert await refused.wait_closed() == 4404
