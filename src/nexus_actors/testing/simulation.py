"""Seeded simulation: the real server, many clients, random actions and faults, every
invariant checked after every step, any failure replayable from its seed.

A run is a pure function of its seed: the server runs over in-memory streams under
``MockClock(autojump_threshold=0)`` with the memory store and seeded ``Deps``, Trio's
own scheduling order is seeded, and every action comes from one ``random.Random``.
Each step is recorded as plain data, so a failing run can be replayed from its trace,
and shrunk: steps are removed while the failure persists (steps whose targets no
longer exist are skipped), leaving the shortest trace that still fails.

Invariants, checked after every step once the server has settled:

- every live room with seats has exactly one primary host among them, and co-hosts
  are seats that are not the primary host; a primary host gone past its grace period
  while another member is connected has been replaced;
- the store never refuses a write (the simulation never asks it to, so a refusal means
  the server wrote something inconsistent);
- the journal is gap-free and every ``eventId`` in it is unique;
- every acknowledged event is in the journal, once, at the acknowledged sequence;
- every event a client applied is the journal's event at that sequence;
- every connected client has converged to the server's state (and, after a resume,
  replaying the missed events reproduced the state the server sent);
- no client shows the cursor of a member that is not connected, and every client
  knows who is connected.
"""

from __future__ import annotations

import hashlib
import logging
import random
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from typing import Any

import attrs
import orjson
import trio
import trio.testing

from ..config import Config
from ..room.state import RoomState
from ..store.memory import MemoryStore
from .client import TestClient, query
from .harness import TestServer, open_server, open_servers
from .replica import Inconsistent, Replica

Step = dict[str, Any]
"One action, as plain data: ``{'op': ..., ...}``."
CONNECTS = frozenset({"create", "join", "recreate", "rejoin", "resume"})
"Steps that open a connection: with several nodes, each names the node it reaches."

SETTLE = 0.25
"Virtual seconds after each step for the server to settle (commits, cursor ticks)."
FAULTS = frozenset({"drop", "stall", "lag", "pause_store", "fail_store", "crash", "restart",
                    "kill", "revive", "steal", "jump"})

SIM_CONFIG = Config(
    host_grace=5.0, hibernation_timeout=300.0, heartbeat_interval=10.0,
    heartbeat_timeout=5.0, snapshot_every=7, max_players=8,
    rate_limit=1000.0, rate_burst=1000, drain_timeout=5.0,
    # Every simulated client connects from the same in-memory "address".
    address_connect_rate=1e6, address_connect_burst=1_000_000,
    address_failure_rate=1e6, address_failure_burst=1_000_000,
    # Leases that run out within a run, so a killed node's rooms move.
    lease_ttl=6.0,
)
"Short timers so grace periods, hibernation and heartbeats happen within a run."


class Violation(AssertionError):
    """An invariant does not hold."""


@attrs.define
class Agent:
    """A simulated client: one seat, its connections, its copy of the room, its outbox."""

    index: int
    room: int
    "Index of the room in the simulation."
    client: TestClient | None = None
    read: int = 0
    "Frames of ``client`` already taken in."
    replica: Replica | None = None
    uuid: str | None = None
    token: str | None = None
    status: str = "new"
    """new, connected, leaving (left or kicked, not yet closed), away (dropped or sent
    away), stalled, left, kicked, refused"""
    refused_seat: str | None = None
    """The seat the server said is gone: its resume was refused ``invalid-token``, or its
    connection closed as left or kicked (checked against the room)."""
    outbox: dict[str, tuple[str, dict[str, Any]]] = attrs.Factory(dict)
    "Durable events sent and not yet answered: resent with the same eventId on resume."
    acked: dict[str, tuple[str, int]] = attrs.Factory(dict)
    "``eventId`` → room code and ``serverSequence`` of each acknowledged event."
    sent: int = 0

    @property
    def name(self) -> str:
        return f"a{self.index}"

    def next_event_id(self) -> str:
        self.sent += 1
        return f"{self.name}-e{self.sent}"


@attrs.define
class Outcome:
    seed: int
    steps: list[Step]
    digest: str
    failure: str | None = None
    failed_at: int | None = None
    "Index in ``steps`` of the step after which an invariant failed."
    faults: int = 0
    log: list[str] = attrs.Factory(list)
    "The server's last log lines."

    @property
    def failing_steps(self) -> list[Step]:
        """The steps up to and including the one after which the run failed."""
        end = len(self.steps) if self.failed_at is None else self.failed_at + 1
        return self.steps[:end]


class Simulation:
    def __init__(self, servers: list[TestServer], rng: random.Random, *, rooms: int,
                 clients: int) -> None:
        self.servers = servers
        "One server, or several sharing the store (nodes, as processes share a database)."
        self.down: set[int] = set()
        "Nodes killed and not started again yet."
        self.store: MemoryStore = servers[0].store
        self.rng = rng
        self.room_count = rooms
        self.client_count = clients
        self.codes: list[str | None] = [None] * rooms
        self.agents: list[Agent] = []
        self.paused = False
        self.hash = hashlib.sha256()
        self.faults = 0
        self._pending_resend: list[tuple[Agent, str]] = []

    # Generating steps ----------------------------------------------------

    def generate(self) -> Step:
        """The next action, chosen from what exists now."""
        step = self._generate()
        if len(self.servers) > 1 and step["op"] in CONNECTS:
            step["node"] = self.rng.randrange(len(self.servers))  # whichever the client reaches
        return step

    def _generate(self) -> Step:
        rng = self.rng
        live = [a for a in self.agents if a.status == "connected"]
        if len(self.agents) < self.room_count:  # every room starts with its host
            return {"op": "create", "agent": len(self.agents)}
        if len(self.agents) < self.client_count and rng.random() < 0.25:
            return {"op": "join", "agent": len(self.agents), "room": rng.randrange(self.room_count)}
        away = [a for a in self.agents if a.status in ("away", "stalled")]
        stalled = [a for a in self.agents if a.status == "stalled"]
        gone = [a for a in self.agents if a.status in ("left", "kicked", "refused")]
        options: list[tuple[float, Callable[[], Step]]] = []
        if away:
            options.append((1.0, lambda: {"op": "resume", "agent": rng.choice(away).index}))
        if stalled:
            options.append((0.5, lambda: {"op": "unstall",
                                          "agent": rng.choice(stalled).index}))
        if gone:
            options.append((0.3, lambda: {"op": "rejoin", "agent": rng.choice(gone).index}))
        orphans = [a for a in gone if self.store.status(self.codes[a.room] or "") in (
            None, "abandoned")]
        if orphans:  # the room is gone for good: someone opens a new one in its place
            options.append((0.5, lambda: {"op": "recreate",
                                          "agent": rng.choice(orphans).index}))
        if live:
            options += [
                (3.0, lambda: {"op": "move", "agent": rng.choice(live).index,
                               "token": rng.randrange(6), "x": rng.randrange(100),
                               "y": rng.randrange(100), "versioned": rng.random() < 0.5}),
                (1.5, lambda: {"op": "cursor", "agent": rng.choice(live).index,
                               "x": rng.randrange(100), "y": rng.randrange(100)}),
                (1.0, lambda: {"op": "chat", "agent": rng.choice(live).index,
                               "text": f"m{rng.randrange(1000)}"}),
                (0.8, lambda: {"op": "scene", "agent": rng.choice(live).index,
                               "scene": rng.randrange(3)}),
                (0.8, lambda: {"op": "token", "agent": rng.choice(live).index,
                               "token": rng.randrange(6), "scene": rng.randrange(3)}),
                (0.3, lambda: {"op": "initiative", "agent": rng.choice(live).index}),
                (0.4, lambda: {"op": "host", "agent": self._commander(live).index,
                               "action": rng.choice(["transfer", "add", "remove", "kick"]),
                               "target": rng.randrange(len(self.agents))}),
                (0.25, lambda: {"op": "leave", "agent": rng.choice(live).index}),
                (0.6, lambda: {"op": "drop", "agent": rng.choice(live).index}),
                (0.2, lambda: {"op": "stall", "agent": rng.choice(live).index}),
                (0.3, lambda: {"op": "lag", "agent": rng.choice(live).index,
                               "seconds": rng.choice([0.0, 0.05, 0.3, 1.0, 3.5])}),
            ]
        options += [
            (0.15, lambda: {"op": "pause_store"} if not self.paused else {"op": "resume_store"}),
            (0.1, lambda: {"op": "fail_store", "count": rng.randrange(1, 4),
                           "after": rng.random() < 0.5}),
            (0.1, lambda: {"op": "crash", "room": rng.randrange(self.room_count)}),
            (0.05, lambda: {"op": "restart"}),
            (0.05, lambda: {"op": "kill"}),
            (0.15, lambda: {"op": "jump",
                            "seconds": rng.choice([1, 1, 7, 7, 12, 12, 40, 40, 400])}),
        ]
        nodes = len(self.servers)
        if nodes > 1:
            options += [
                (0.1, lambda: {"op": "restart", "node": rng.randrange(nodes)}),
                (0.1, lambda: {"op": "kill", "node": rng.randrange(nodes)}),
                (0.1, lambda: {"op": "steal", "room": rng.randrange(self.room_count),
                               "node": rng.randrange(nodes)}),
            ]
            if self.down:
                options.append((0.3, lambda: {"op": "revive",
                                              "node": rng.choice(sorted(self.down))}))
        total = sum(weight for weight, _ in options)
        pick = rng.uniform(0, total)
        for weight, make in options:
            pick -= weight
            if pick <= 0:
                return make()
        return options[-1][1]()

    def _commander(self, live: list[Agent]) -> Agent:
        """Mostly someone allowed to manage the room (host or co-host), sometimes anyone."""
        hosts = [a for a in live if a.replica is not None and a.replica.state is not None
                 and a.uuid in (a.replica.state.host_id, *a.replica.state.co_host_ids)]
        return self.rng.choice(hosts if hosts and self.rng.random() < 0.8 else live)

    # Running steps -------------------------------------------------------

    async def execute(self, step: Step) -> None:
        op = step["op"]
        if op in FAULTS:
            self.faults += 1
        await getattr(self, f"_op_{op}")(step)
        await trio.sleep(SETTLE)
        await self._quiesce()
        while self._pending_resend:  # a resume's event-cursor arrived: resend at once
            await self.flush_resends()
            await self._quiesce()

    async def _quiesce(self) -> None:
        """Let everything due at this instant run to completion without moving the clock
        (idle waiters with no cushion are woken before the clock autojumps), then take in
        what clients received: clients and rooms then describe one moment."""
        await trio.testing.wait_all_tasks_blocked()
        for agent in self.agents:
            self._absorb(agent)

    def _agent(self, step: Step, *statuses: str) -> Agent | None:
        index = step.get("agent", -1)
        if not 0 <= index < len(self.agents):
            return None
        agent = self.agents[index]
        return agent if not statuses or agent.status in statuses else None

    def _live(self, step: Step) -> Agent | None:
        """The step's agent, if its connection is open (a client knows when it is not)."""
        agent = self._agent(step, "connected")
        if agent is None or agent.client is None or not agent.client.can_send:
            return None
        return agent

    def _node(self, step: Step) -> TestServer:
        """The server a client reaches: the step's node, or the next one up."""
        count = len(self.servers)
        wanted = int(step.get("node", 0))
        for offset in range(count):
            index = (wanted + offset) % count
            if index not in self.down:
                return self.servers[index]
        raise AssertionError("every node is down")

    async def _connect(self, agent: Agent, target: str, step: Step) -> None:
        agent.client = await self._node(step).connect(target)
        agent.read = 0
        agent.status = "connected"

    async def _op_create(self, step: Step) -> None:
        agent = Agent(index=step["agent"], room=step["agent"])
        self.agents.append(agent)
        await self._connect(agent, query(host="", name=agent.name), step)

    async def _op_join(self, step: Step) -> None:
        if step["agent"] != len(self.agents):
            return
        agent = Agent(index=step["agent"], room=step["room"])
        self.agents.append(agent)
        code = self.codes[agent.room]
        if code is None:
            agent.status = "refused"
            return
        await self._connect(agent, query(join=code, name=agent.name), step)

    async def _op_recreate(self, step: Step) -> None:
        """A member of a room that is gone hosts a new room, which takes its place."""
        agent = self._agent(step, "left", "kicked", "refused")
        if agent is None or self.store.status(self.codes[agent.room] or "") not in (
                None, "abandoned"):
            return
        self._forget(agent)
        await self._connect(agent, query(host="", name=agent.name), step)

    def _forget(self, agent: Agent) -> None:
        if agent.client is not None:
            agent.client.drop()
        agent.replica = agent.uuid = agent.token = None
        agent.outbox.clear()

    async def _op_rejoin(self, step: Step) -> None:
        """A member who left, was kicked or refused joins again: a new seat."""
        agent = self._agent(step, "left", "kicked", "refused")
        code = self.codes[agent.room] if agent is not None else None
        if agent is None or code is None:
            return
        self._forget(agent)
        await self._connect(agent, query(join=code, name=agent.name), step)

    async def _op_resume(self, step: Step) -> None:
        agent = self._agent(step, "away", "stalled")
        if agent is None or agent.token is None or agent.replica is None:
            return
        if agent.client is not None:
            agent.client.drop()
        code = self.codes[agent.room]
        await self._connect(agent, query(reconnect=code, token=agent.token,
                                         lastSeenSequence=agent.replica.applied,
                                         epoch=agent.replica.epoch), step)

    async def _op_unstall(self, step: Step) -> None:
        agent = self._agent(step, "stalled")
        if agent is not None and agent.client is not None:
            agent.client.unstall()
            agent.status = "connected"

    async def _send(self, agent: Agent, name: str, data: dict[str, Any]) -> None:
        assert agent.client is not None
        event_id = agent.next_event_id()
        agent.outbox[event_id] = (name, data)
        await self._resend(agent, event_id)

    async def _resend(self, agent: Agent, event_id: str) -> None:
        assert agent.client is not None
        name, data = agent.outbox[event_id]
        if agent.client.can_send:
            await agent.client.send_event(name, data, event_id=event_id)

    def _room_id(self, agent: Agent, kind: str, number: int) -> str:
        return f"{kind}{agent.room}-{number}"

    async def _op_move(self, step: Step) -> None:
        agent = self._live(step)
        if agent is None or agent.replica is None or agent.replica.state is None:
            return
        token_id = self._room_id(agent, "t", step["token"])
        data: dict[str, Any] = {"tokenId": token_id,
                                "position": {"x": step["x"], "y": step["y"]},
                                "updateId": f"{agent.name}-u{agent.sent + 1}"}
        token = agent.replica.state.tokens.get(token_id)
        if step["versioned"] and token is not None:
            data["version"] = token["version"]
        await self._send(agent, "token/move", data)

    async def _op_cursor(self, step: Step) -> None:
        agent = self._live(step)
        if agent is not None and agent.client is not None:
            await agent.client.cursor(self._room_id(agent, "s", 0), step["x"], step["y"])

    async def _op_chat(self, step: Step) -> None:
        agent = self._live(step)
        if agent is not None:
            await self._send(agent, "chat/message", {"text": step["text"]})

    async def _op_scene(self, step: Step) -> None:
        agent = self._live(step)
        if agent is not None:
            scene_id = self._room_id(agent, "s", step["scene"])
            await self._send(agent, "scene/create", {"scene": {"id": scene_id,
                                                               "name": scene_id}})

    async def _op_token(self, step: Step) -> None:
        agent = self._live(step)
        if agent is not None:
            await self._send(agent, "token/create", {"token": {
                "id": self._room_id(agent, "t", step["token"]),
                "sceneId": self._room_id(agent, "s", step["scene"]),
                "position": {"x": 0, "y": 0}}})

    async def _op_initiative(self, step: Step) -> None:
        agent = self._live(step)
        if agent is not None:
            await self._send(agent, "initiative/next", {})

    async def _op_host(self, step: Step) -> None:
        agent = self._live(step)
        if agent is None or not 0 <= step["target"] < len(self.agents):
            return
        target = self.agents[step["target"]].uuid
        if target is None:
            return
        name, field = {"transfer": ("session/transfer-host", "newHostId"),
                       "add": ("session/add-co-host", "playerId"),
                       "remove": ("session/remove-co-host", "playerId"),
                       "kick": ("session/kick", "playerId")}[step["action"]]
        await self._send(agent, name, {field: target})

    async def _op_leave(self, step: Step) -> None:
        agent = self._live(step)
        if agent is not None:
            agent.outbox.clear()  # a client that leaves gives up what it had not sent
            await self._send(agent, "session/leave", {})
            agent.status = "leaving"

    async def _op_drop(self, step: Step) -> None:
        agent = self._live(step)
        if agent is not None and agent.client is not None:
            agent.client.drop()
            agent.status = "away"

    async def _op_stall(self, step: Step) -> None:
        agent = self._live(step)
        if agent is not None and agent.client is not None:
            agent.client.stall()
            agent.status = "stalled"

    async def _op_lag(self, step: Step) -> None:
        agent = self._live(step)
        if agent is not None and agent.client is not None:
            agent.client.lag(step["seconds"])

    async def _op_pause_store(self, step: Step) -> None:
        self.store.pause()
        self.paused = True

    async def _op_resume_store(self, step: Step) -> None:
        self.store.resume()
        self.paused = False

    async def _op_fail_store(self, step: Step) -> None:
        self.store.fail_next(step["count"], after_applying=step["after"])

    def _code(self, step: Step) -> str | None:
        """The code of the step's room, once it has one."""
        return self.codes[step["room"]] if 0 <= step["room"] < len(self.codes) else None

    async def _op_crash(self, step: Step) -> None:
        code = self._code(step)
        for server in self.servers:
            if code is not None and server.server is not None:
                await server.running.crash_room(code)

    async def _op_restart(self, step: Step) -> None:
        self.store.resume()  # a drain waits for its writes; let them through
        self.paused = False
        node = step.get("node", 0)
        if node not in self.down:
            await self.servers[node].restart()

    async def _op_kill(self, step: Step) -> None:
        node = step.get("node", 0)
        if node in self.down:
            return
        await self.servers[node].kill()
        if len(self.servers) - len(self.down) > 1:  # its rooms move once their leases expire
            self.down.add(node)
        else:  # the last node up: it is restarted at once (the same node id)
            await self.servers[node].start()

    async def _op_revive(self, step: Step) -> None:
        node = step.get("node", 0)
        if node in self.down:
            self.down.discard(node)
            await self.servers[node].start()

    async def _op_steal(self, step: Step) -> None:
        """Another node takes a room's lease, as if its owner had been paused past it: the
        owner's writes are fenced from now on, and it must notice and let the room go."""
        code = self._code(step)
        lease = self.store.leases.get(code or "")
        thief = f"node-{step['node']}"
        if code is None or lease is None or lease.owner == thief:
            return
        self.store.steal(code, thief, f"ws://{thief}.test", self.servers[0].config.lease_ttl)

    async def _op_jump(self, step: Step) -> None:
        await trio.sleep(step["seconds"])

    # Taking in what clients received ----------------------------------------

    def _absorb(self, agent: Agent) -> None:
        client = agent.client
        if client is None or agent.status == "stalled":
            return
        frames = client.frames
        while agent.read < len(frames):
            frame = frames[agent.read]
            agent.read += 1
            self._take(agent, frame)
        if client.closed.is_set() and agent.status in ("connected", "leaving"):
            code = client.close_code
            agent.status = {4001: "kicked", 1000: "left"}.get(code or 0, "away")
            if code in (4401, 4404):
                agent.status = "refused"
            if code in (4401, 4001, 1000):  # the departure is durable: the seat stays gone
                agent.refused_seat = agent.uuid

    def _take(self, agent: Agent, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        data = frame.get("data") or {}
        if kind == "event" and "serverSequence" not in frame and data.get(
                "name", "").startswith("session/") and "roomCode" in data:
            agent.uuid, agent.token = data["uuid"], data["token"]
            self.codes[agent.room] = data["roomCode"]
            if agent.replica is None:
                agent.replica = Replica(code=data["roomCode"],
                                        chat_history=self.servers[0].config.chat_history)
            agent.replica.session(data)
        elif agent.replica is None:
            return  # refused before a session began
        elif kind == "event" and data.get("name") == "session/token":
            agent.token = data["token"]  # the rotated token replaces the one presented
        elif kind == "event-cursor":
            agent.replica.cursor_mode(data)
            for event_id in list(agent.outbox):  # resend what was never answered
                self._pending_resend.append((agent, event_id))
        elif kind == "event":
            agent.replica.event(frame)
            if data.get("name") == "session/kicked" and data.get("playerId") == agent.uuid:
                agent.status = "leaving"  # kicked once the close (4001) says it is durable
        elif kind == "event-ack":
            agent.acked[data["eventId"]] = (agent.replica.code, data["serverSequence"])
            agent.outbox.pop(data["eventId"], None)
        elif kind == "update-rejected":
            agent.outbox.pop(data["eventId"], None)
        elif kind == "error" and "eventId" in data:
            if data["code"] not in ("overloaded", "unavailable", "rate-limited"):
                agent.outbox.pop(data["eventId"], None)
        elif kind == "cursors":
            agent.replica.cursors_frame(data)

    async def flush_resends(self) -> None:
        pending, self._pending_resend = self._pending_resend, []
        for agent, event_id in pending:
            if event_id in agent.outbox and agent.client is not None:
                await self._resend(agent, event_id)

    # Invariants ----------------------------------------------------------

    async def check(self) -> dict[str, Any]:
        """Check every invariant; return what was observed (for the digest)."""
        observed: dict[str, Any] = {"rooms": []}
        healthy = not self.paused and self.store.healthy
        if self.store.rejections:  # the simulation never asks the store to refuse a write
            raise Violation(f"the store refused writes: {self.store.rejections[0]}")
        reports = await self._inspect([code for code in self.codes if code is not None])
        for index, code in enumerate(self.codes):
            if code is None:
                continue
            report = reports.get(code)
            journal = self.store.journal(code)
            sequences = [e.sequence for e in journal]
            first = sequences[0] if sequences else None
            if first is not None and sequences != list(range(first, first + len(sequences))):
                raise Violation(f"room {index}: journal has gaps: {sequences}")
            ids = [e.event_id for e in journal]
            if len(ids) != len(set(ids)):
                raise Violation(f"room {index}: an eventId is in the journal twice")
            by_sequence = {e.sequence: e.event_id for e in journal}
            for agent in self.agents:
                if agent.room != index:
                    continue
                for event_id, (acked_in, sequence) in agent.acked.items():
                    if acked_in != code:
                        continue  # acknowledged by a room that is gone
                    if sequence in by_sequence and by_sequence[sequence] != event_id:
                        raise Violation(f"{agent.name}: acked {event_id} at {sequence}, "
                                        f"journal has {by_sequence[sequence]}")
                    retained = first is not None and sequence >= first
                    if (retained or not sequences) and event_id not in ids:
                        raise Violation(f"{agent.name}: acked {event_id} is not durable")
            observed["rooms"].append(self._check_room(index, code, report, by_sequence,
                                                      healthy))
        observed["agents"] = [(a.status, a.replica.applied if a.replica else None,
                               len(a.acked), len(a.outbox)) for a in self.agents]
        return observed

    async def _inspect(self, codes: list[str]) -> dict[str, dict[str, Any] | None]:
        """Each live room's report from the node that owns it, if it answers at this
        instant (not a busy one, e.g. still loading: waiting for it would let time pass
        behind the clients' back)."""
        answers: dict[str, dict[str, Any] | None] = {}
        up = {server.config.node_id: server for index, server in enumerate(self.servers)
              if index not in self.down and server.server is not None}
        owners = {code: up.get(lease.owner) for code in codes
                  if (lease := self.store.leases.get(code)) is not None}

        async def ask(code: str) -> None:
            owner = owners.get(code)
            answers[code] = await owner.running.inspect(code) if owner is not None else None

        async with trio.open_nursery() as nursery:
            for code in codes:
                nursery.start_soon(ask, code)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        return answers

    def _check_room(self, index: int, code: str, report: dict[str, Any] | None,
                    journal: dict[int, str], healthy: bool) -> Any:
        if report is None:
            return None
        server = RoomState.from_snapshot(report["snapshot"])
        if server.seats:
            if server.host_id not in server.seats:
                raise Violation(f"room {index}: primary host {server.host_id} has no seat")
            if server.host_id in server.co_host_ids or not set(server.co_host_ids) <= set(
                    server.seats):
                raise Violation(f"room {index}: co-hosts {server.co_host_ids} are wrong")
        connected = set(report["connected"])
        # A room that is draining (moving to another node) promotes no one: its host's grace
        # goes on from the store's record where it lands.
        if server.host_id is not None and server.host_id not in connected and (
                connected & set(server.seats)) and not report["draining"]:
            deadline = report["graceDeadline"]
            if deadline is None or deadline < trio.current_time():
                raise Violation(f"room {index}: primary host {server.host_id} is gone past "
                                f"its grace period and {sorted(connected)} are connected")
        for agent in self.agents:
            if agent.room == index and agent.refused_seat is not None:
                if agent.refused_seat in server.seats:
                    raise Violation(f"{agent.name}: told its seat {agent.refused_seat} is "
                                    f"gone (token refused, or closed as left or kicked), "
                                    f"yet the room has it")
                agent.refused_seat = None
        expected = server.client_view()
        for agent in self.agents:
            replica = agent.replica
            if (agent.room != index or replica is None or replica.state is None
                    or replica.code != code):
                continue
            for sequence, event_id in replica.history.items():
                if sequence in journal and journal[sequence] != event_id and (
                        replica.epoch == report["epoch"]):
                    raise Violation(f"{agent.name} applied {event_id} at {sequence}, the "
                                    f"journal has {journal[sequence]}")
            if (agent.status != "connected" or agent.uuid not in connected
                    or agent.client is None or agent.client.in_transit):
                continue  # away, or frames still on a slow link: it cannot be up to date
            if healthy and not agent.outbox and replica.settled:
                if replica.state.client_view() != expected:
                    raise Violation(f"{agent.name} has not converged to room {index}: "
                                    f"{_diff(replica.state.client_view(), expected)}")
                stale = set(replica.cursors) - (connected - {agent.uuid})
                if stale:
                    raise Violation(f"{agent.name} still shows cursors of {sorted(stale)}")
                shown = {m for m, on in replica.connected.items() if on}
                if shown != connected:
                    raise Violation(f"{agent.name} thinks {sorted(shown)} are connected; "
                                    f"the room has {sorted(connected)}")
        return {"snapshot": report["snapshot"], "connected": sorted(connected),
                "epoch": report["epoch"]}


def _diff(mine: dict[str, Any], theirs: dict[str, Any]) -> str:
    keys = [k for k in mine if mine[k] != theirs.get(k)]
    return ", ".join(f"{k}: {str(mine[k])[:200]} != {str(theirs.get(k))[:200]}" for k in keys)


@contextmanager
def _seeded_scheduler(seed: int) -> Iterator[None]:
    """Seed Trio's shuffling of each scheduling batch (it is random by design)."""
    from trio._core import _run

    state = _run._r.getstate()
    _run._r.seed(seed)
    try:
        yield
    finally:
        _run._r.setstate(state)


async def _run(seed: int, plan: list[Step] | None, count: int, rooms: int, clients: int,
               config: Config, outcome: Outcome, nodes: int) -> None:
    async with AsyncExitStack() as stack:
        if nodes > 1:
            servers = await stack.enter_async_context(open_servers(nodes, config, seed=seed))
        else:
            servers = [await stack.enter_async_context(open_server(config, seed=seed))]
        sim = Simulation(servers, random.Random(seed), rooms=rooms, clients=clients)
        for number in range(len(plan) if plan is not None else count):
            step = plan[number] if plan is not None else sim.generate()
            outcome.steps.append(step)
            try:
                await sim.execute(step)
                observed = await sim.check()
            except (Violation, Inconsistent) as exc:
                outcome.failure = f"{type(exc).__name__}: {exc}"
                outcome.failed_at = number
                break
            finally:
                outcome.faults = sim.faults
            sim.hash.update(orjson.dumps({"step": step, "observed": observed},
                                         option=orjson.OPT_SORT_KEYS))
            outcome.digest = sim.hash.hexdigest()
        if outcome.failure is None:
            sim.store.resume()  # let the server drain


class _Capture(logging.Handler):
    """The server's log lines during a run, kept (the last ones) instead of printed."""

    def __init__(self, keep: int = 200) -> None:
        super().__init__()
        self.lines: deque[str] = deque(maxlen=keep)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{trio.current_time():10.3f} {record.name}: {record.getMessage()}"
                          if _in_trio() else f"{record.name}: {record.getMessage()}")


def _in_trio() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


@contextmanager
def _captured_logs() -> Iterator[_Capture]:
    logger = logging.getLogger("nexus_actors")
    capture = _Capture()
    saved = logger.handlers[:], logger.propagate
    logger.handlers[:] = [capture]
    logger.propagate = False
    try:
        yield capture
    finally:
        logger.handlers[:], logger.propagate = saved


def run(seed: int, *, steps: int = 200, rooms: int = 3, clients: int = 10,
        trace: list[Step] | None = None, config: Config = SIM_CONFIG,
        nodes: int = 1) -> Outcome:
    """One seeded run (or the replay of ``trace``), on ``nodes`` servers sharing the store.
    Synchronous: it runs its own event loop.

    The server's log lines are kept in :attr:`Outcome.log` rather than printed.
    """
    outcome = Outcome(seed=seed, steps=[], digest="")
    with _seeded_scheduler(seed), _captured_logs() as capture:
        clock = trio.testing.MockClock(autojump_threshold=0)
        try:
            trio.run(_run, seed, trace, steps, rooms, clients, config, outcome, nodes,
                     clock=clock)
        except BaseException as exc:  # a crash of the server or the harness is a failure
            if isinstance(exc, KeyboardInterrupt):
                raise
            leaf = _leaf(exc)
            outcome.failure = f"crashed: {type(leaf).__name__}: {leaf}"
            outcome.failed_at = max(0, len(outcome.steps) - 1)
            capture.lines.extend(traceback.format_exception(leaf))
    outcome.log = list(capture.lines)
    return outcome


def _leaf(exc: BaseException) -> BaseException:
    """The first exception that is not a group (what actually went wrong)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def shrink(outcome: Outcome, *, rooms: int, clients: int, config: Config = SIM_CONFIG,
           budget: int = 300, nodes: int = 1) -> Outcome:
    """The shortest trace found that still fails (delta debugging over the steps).

    Chunks of steps are removed, halving the chunk size when no chunk can go, within
    ``budget`` replays. Each step lets virtual time pass, and many failures need time
    (a grace period running out), so a chunk that cannot go is tried once more as a
    single ``jump`` lasting as long. A step whose target no longer exists does nothing,
    so every candidate is a valid run. The failure may change on the way (any invariant
    violation counts), as in other shrinkers: the result is a short failing trace.
    """
    assert outcome.failure is not None
    best = outcome
    trace = outcome.failing_steps
    chunk = max(1, len(trace) // 2)
    runs = 0

    def fails(candidate: list[Step]) -> Outcome | None:
        nonlocal runs
        runs += 1
        attempt = run(outcome.seed, rooms=rooms, clients=clients, trace=candidate,
                      config=config, nodes=nodes)
        return attempt if attempt.failure is not None else None

    while chunk >= 1 and runs < budget:
        start = 0
        reduced = False
        while start < len(trace) and runs < budget:
            removed = trace[start:start + chunk]
            candidates = [trace[:start] + trace[start + chunk:]]
            if len(removed) > 1:
                waited = sum(s["seconds"] for s in removed if s["op"] == "jump")
                jump = {"op": "jump",
                        "seconds": round(waited + SETTLE * (len(removed) - 1), 3)}
                candidates.append([*trace[:start], jump, *trace[start + chunk:]])
            for candidate in candidates:
                attempt = fails(candidate) if candidate and runs < budget else None
                if attempt is not None:
                    trace = attempt.failing_steps
                    best = attempt
                    reduced = True
                    break
            else:
                start += chunk
        if not reduced:
            chunk //= 2
    best.steps = trace
    return best
