"""The room actor: one task owns a room's state, seats, hosts, journal and cursors.

Everything that changes a room arrives through its mailbox and is handled by
synchronous code, one message at a time; the actor only awaits its mailbox,
its timers and the store read at start. Durable events are applied, journaled
(handed to the persistence actor) and broadcast to the other members at once;
the sender's own copy, its ``event-ack`` and ``update-confirmed`` wait until
the persistence actor reports the event committed (the output gate).

:func:`~nexus_actors.actors.room_supervisor.run_room` supervises it.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Iterable
from typing import Any

import attrs
import orjson
import trio

from ..errors import Code, StoreError
from ..protocol import inbound as msg, outbound
from ..protocol.connect import CreateRoom, ResumeSeat
from ..protocol.wire import Wire, encode
from ..room import events as ev
from ..room.cursors import CursorBoard
from ..room.events import Event, Planned, Rejection
from ..room.hosts import successor
from ..room.resume import resume_point
from ..room.state import RoomState, Seat
from ..store.base import (
    AppendEvent,
    CheckLease,
    HeldElsewhere,
    LogConnection,
    PutPresence,
    PutRoom,
    PutSeatToken,
    PutSnapshot,
    ReleaseLease,
    RoomRecord,
    Write,
)
from . import peer as close
from .gate import OutputGate
from .mailbox import CursorMailbox
from .messages import (
    Attach,
    Attached,
    Committed,
    Crash,
    CursorsPending,
    Detach,
    Drain,
    Hold,
    Inbound,
    Inspect,
    LeaseLost,
    Let,
    Refused,
    Relay,
    RoomIdle,
    RoomMsg,
    Stop,
    WritesRejected,
)
from .peer import Peer
from .persistence import Flush, Intent
from .services import Services

GROWS = (msg.SceneCreate, msg.SceneUpdate, msg.TokenCreate, msg.TokenUpdate,
         msg.CharacterCreate, msg.CharacterUpdate, msg.InitiativeSet)
"""Events that can make a room's state larger: refused at NEXUS_MAX_STATE_BYTES. Moves,
chat (its history is bounded), deletes and session requests are not."""

log = logging.getLogger("nexus_actors.room")

BATCH = 64
"Messages handled per wake-up before the room yields to other tasks."
SWEEP_INTERVAL = 5.0
"Seconds between checks for connections that vanished without a Detach."
BACKLOG_RETRY = 0.01
"Seconds between retries of writes the persistence queue could not take."
DRAIN_ACK_WAIT = 2.0
"Seconds a draining room waits for its writes to commit before closing its clients."
HANDOFF_DELAY = 5.0
"""Seconds most of a room's members must have been relayed here by one other process before
the room moves there (a load balancer hashing on the room code sends them there)."""
HANDOFF_COOLDOWN = 300.0
"""Seconds a room loaded from the store (moved, restarted, taken over) stays before it may
move again: without a load balancer routing by room code it must not hop around."""
MAX_EPOCHS = 16
UPDATE_REJECT_REASONS = frozenset({Code.VERSION_CONFLICT, Code.FORBIDDEN, Code.NOT_FOUND,
                                   Code.INVALID})


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


Seen = tuple[int, str, str | None, str | None, Any]
"""What the room remembers of a journaled event to answer a duplicate:
``(serverSequence, eventId, actorId, updateId, version)``. A plain tuple of atoms,
so the garbage collector stops tracking it (the journal is long-lived and large)."""


def _seen(event: Event) -> Seen:
    return (event.sequence, event.event_id, event.actor_id, event.data.get("updateId"),
            event.data.get("version"))


class LostWrites(Exception):
    """Writes the room applied and broadcast were refused by the store."""


class Moved(Exception):
    """Another process owns the room now: this incarnation must stop, not restart."""


@attrs.define
class Shell:
    """What outlives one room incarnation: its connections, the attach count and the
    intent numbering."""

    peers: dict[int, Peer] = attrs.Factory(dict)
    attaches: int = 0
    marks: int = 0
    """Intents the room's incarnations have written. Numbers continue across a restart, so
    a ``Committed`` notice meant for an earlier incarnation (it can arrive late, after the
    restart) never covers the intents of the next one."""
    fence: int | None = None
    "The fence of the lease the latest incarnation claimed."


def send_away(services: Services, peers: Iterable[Peer], reason: str) -> None:
    """Close each connection with a jittered ``backoff`` hint for ``reason`` (1012): the
    clients resume by themselves, wherever the room is then."""
    base, rng = services.config.retry_ms(reason), services.deps.random
    now_ms = services.deps.wall_ms()
    for peer in peers:
        peer.close(close.SERVICE_RESTART, reason.replace("-", " "),
                   outbound.backoff(reason, outbound.jitter(base, rng), now_ms))


class Room:
    """One incarnation of a room actor (see :func:`~.room_supervisor.run_room`)."""

    def __init__(self, services: Services, code: str, generation: int, shell: Shell,
                 notify: trio.MemorySendChannel[RoomMsg], *, flushed: bool = False) -> None:
        self.s = services
        self.config = services.config
        self.code = code
        self.generation = generation
        self.shell = shell
        self.notify = notify
        self.flushed = flushed
        "Everything this room ever queued is durable (a restart after a crash)."
        self.state: RoomState | None = None
        "``None`` while the code is unclaimed (no such room yet)."
        self.epochs: list[tuple[int, int]] = []
        self.hibernating = False
        self.journal: deque[tuple[int, str, bytes]] = deque()
        "The retained journal tail ``(serverSequence, eventId, encoded frame)``, for replay."
        self.by_event_id: dict[str, Seen] = {}
        self.members: dict[str, Peer] = {}
        "Connected members and their current connection."
        self.member_of: dict[int, str] = {}
        self.since: dict[str, float] = {}
        "When each connected member's current connection began."
        self.seen_through: dict[str, int] = {}
        "Sequence each connected member's welcome or replay covered."
        self.cursors = CursorBoard()
        self.cursor_mailbox = CursorMailbox()
        # A restart waits until the store has taken or refused everything earlier
        # incarnations wrote, so nothing before this incarnation is pending.
        self.mark = self.committed_mark = self.first_mark = shell.marks
        self.new_epoch = False
        "This incarnation began a new epoch when it loaded the room."
        self.state_bytes = 0
        "The state's encoded size at the last snapshot, plus every event's size since."
        self.backlog: deque[Intent] = deque()
        "Writes the persistence queue had no room for yet (sent in order, before any new one)."
        self.gate = OutputGate()
        self.since_snapshot = 0
        self.snapshot_deadline: float | None = None
        self.last_seen: dict[str, int] = {}
        "When each seat was last connected (wall-clock ms), for seat expiry."
        self.grace_deadline: float | None = None
        self.idle_deadline: float | None = None
        self.cursor_deadline: float | None = None
        self.cursor_flushed = -float("inf")
        "When the last ``cursors`` frames went out (one flush per tick at most)."
        self.sweep_deadline: float | None = None
        self.drain_deadline: float | None = None
        self.idle_requested = False
        self.draining = False
        self.done = False
        self.fence: int | None = None
        "The fence of the room's lease while this incarnation holds it."
        self.elsewhere: HeldElsewhere | None = None
        "Another live process holds the lease: every connection is relayed there."
        self.released = False
        "The lease was given up (a drain): nothing more is written."
        self.unsure: deque[tuple[int, Attach]] = deque()
        "Resumes with a token no seat takes, each waiting for its lease check to commit."
        self.closing: deque[tuple[int, Peer, int, str]] = deque()
        "Kicked and departed members' connections, each closed once its intent is durable."
        self.leaving = "server-restart"
        "The backoff reason a drain sends clients away with."
        self.handoff_deadline: float | None = None
        "When to move the room to the process that relays most of its members, if it still does."
        self.handoff_not_before = 0.0

    # Start ---------------------------------------------------------------

    async def load(self) -> None:
        if not await self._claim():
            return
        record = await self.s.store.load_room(self.code)
        now_ms = self.s.deps.wall_ms()
        if record is None or record.status == "abandoned":
            return
        if (record.status == "hibernating"
                and now_ms - record.last_activity > self.config.hibernation_timeout * 1000):
            self._write(PutRoom(code=self.code, status="abandoned",
                                last_activity=record.last_activity, epochs=record.epochs))
            log.info("room %s abandoned: it hibernated longer than the reconnect window",
                     self.code)
            return
        self.new_epoch = self._restore(record, now_ms)
        if self.new_epoch:
            # Clients are about to be told the new epoch: it must be durable first, or
            # another unclean stop would hand out the same epoch for different events.
            await self._until_epoch_is_durable()

    async def _claim(self) -> bool:
        """Take the room's lease; ``False`` if a live process holds it (then every
        connection is relayed to it, and this incarnation stops once idle)."""
        node, metrics = self.s.node, self.s.metrics
        claim = await self.s.store.claim(self.code, node.id, node.url, self.config.lease_ttl)
        if isinstance(claim, HeldElsewhere):
            metrics.lease_claims["elsewhere"] += 1
            self.elsewhere = claim
            return False
        metrics.lease_claims["takeover" if claim.takeover else "claimed"] += 1
        if claim.takeover:
            log.info("room %s: taken over from a process whose lease expired", self.code)
        if self.flushed and claim.previous != self.shell.fence:
            # Another process held the room since the last incarnation here: the writes
            # that incarnation flushed may have been fenced out, not committed.
            self.flushed = False
        self.fence = self.shell.fence = claim.fence
        try:
            self.s.leases.send_nowait(Hold(code=self.code, fence=claim.fence,
                                           room=self.notify.clone()))
        except trio.WouldBlock:  # sized for every room: cannot happen short of a bug
            log.error("room %s: the lease actor is full; its lease may expire", self.code)
        return True

    def release(self) -> None:
        """This incarnation stopped for good: give the lease up (any process may claim the
        room at once) and stop renewing it."""
        fence = self.fence
        if fence is None:
            return
        self.fence = None
        if not self.released:
            self.released = True
            try:
                self.s.persist.send_nowait(Intent(write=ReleaseLease(code=self.code,
                                                                    fence=fence)))
            except trio.WouldBlock:
                pass  # it expires instead
        self._let(fence)

    def lost(self) -> None:
        """The lease is another process's: stop renewing it, release nothing."""
        if self.fence is not None:
            self._let(self.fence)
            self.fence = None

    def _let(self, fence: int) -> None:
        try:
            self.s.leases.send_nowait(Let(code=self.code, fence=fence))
        except trio.WouldBlock:
            pass  # renewal then finds it gone

    async def _until_epoch_is_durable(self) -> None:
        began = trio.current_time()
        while self.backlog:
            await self.s.persist.send(self.backlog.popleft())
        done = trio.Event()
        await self.s.persist.send(Flush(done=done))
        await done.wait()
        recorded = await self.s.store.load_room(self.code)
        if (recorded is None or recorded.status != "active"
                or tuple(recorded.epochs[-1:]) != tuple(self.epochs[-1:])):
            raise LostWrites(f"the store did not record room {self.code}'s new epoch")
        waited = trio.current_time() - began  # the host's grace starts when we serve
        if self.grace_deadline is not None:
            self.grace_deadline += waited
        if self.idle_deadline is not None:
            self.idle_deadline += waited

    def _restore(self, record: RoomRecord, now_ms: int) -> bool:
        """Rebuild the room from ``record``; ``True`` if it begins a new epoch."""
        state = (RoomState.from_snapshot(orjson.loads(record.snapshot))
                 if record.snapshot is not None else RoomState(code=self.code))
        for event in record.journal:
            if event.sequence > state.sequence:
                ev.apply(state, event, chat_history=self.config.chat_history)
        for member_id, (token_hash, previous_hash) in record.tokens.items():
            seat = state.seats.get(member_id)  # rotations are not journaled
            if seat is not None:
                seat.token_hash, seat.previous_hash = token_hash, previous_hash
        self.state = state
        retained = list(record.journal)[-self.config.journal_retain:]
        self.journal.extend((e.sequence, e.event_id, e.wire().payload) for e in retained)
        self.by_event_id = {e.event_id: _seen(e) for e in retained}
        self.gate = OutputGate(state.sequence)
        self.epochs = list(record.epochs) or [(1, 1)]
        # Unless this server flushed everything the room wrote before restarting it,
        # clients may have seen events that were never committed (an unclean stop, or
        # a kill after the room woke from hibernation in place and before the store
        # heard of it), so sequence numbers from here on begin a new epoch. After a
        # clean stop this costs nothing: every client's history is durable, and
        # resumes from anywhere in it.
        begins_epoch = not self.flushed
        if begins_epoch:
            self.epochs = [*self.epochs, (self.epochs[-1][0] + 1, state.sequence + 1)]
            self.epochs = self.epochs[-MAX_EPOCHS:]
            log.info("room %s restored from the store (epoch %d)", self.code,
                     self.epochs[-1][0])
        self._put_room("active", now_ms)
        self.last_seen = {member_id: record.last_seen.get(member_id, now_ms)
                          for member_id in state.seats}
        for member_id, seen in self.last_seen.items():  # nobody is connected yet
            self._record(PutPresence(code=self.code, member_id=member_id, connected=False,
                                     at=seen))
        self._expire_seats(now_ms)
        now = trio.current_time()
        if state.host_id is not None:
            # The host's grace period goes on from the store's record: a host that had
            # left has that much less of it; one still connected when the room stopped
            # (a drain, a dead process) gets all of it from now. A room that hibernated
            # has had nobody connected for longer than that, so whoever comes first and
            # is eligible may be promoted at once.
            hibernated = bool(record.journal) and record.journal[-1].name == "session/hibernated"
            left = record.last_seen.get(state.host_id)
            away = (0.0 if left is None or state.host_id in record.connected
                    else max(0.0, (now_ms - left) / 1000))
            self.grace_deadline = (now if hibernated
                                   else now + max(0.0, self.config.host_grace - away))
        self.idle_deadline = now + self.config.host_grace
        self.handoff_not_before = now + HANDOFF_COOLDOWN
        self.state_bytes = len(orjson.dumps(state.snapshot()))
        return begins_epoch

    # Loop ----------------------------------------------------------------

    async def run(self, inbox: trio.MemoryReceiveChannel[RoomMsg]) -> None:
        try:
            await self.load()
        except StoreError as exc:
            log.warning("room %s could not be loaded: %s", self.code, exc.message)
            self.refuse_all(inbox, Code.UNAVAILABLE, "the room could not be loaded")
            return
        if self.state is None:
            self.idle_deadline = trio.current_time()
        metrics = self.s.metrics
        counted = 0
        try:
            while not self.done:
                with trio.move_on_at(self._next_deadline()):
                    message = await inbox.receive()
                    self.handle(message)
                    for _ in range(BATCH):
                        if self._stopped():
                            break
                        try:
                            message = inbox.receive_nowait()
                        except trio.WouldBlock:
                            break
                        self.handle(message)
                if not self._stopped():
                    self.on_time(trio.current_time())
                for peer in self.members.values():
                    peer.flush()
                metrics.members_connected += len(self.members) - counted
                counted = len(self.members)
        finally:
            metrics.members_connected -= counted

    def _stopped(self) -> bool:
        return self.done

    def refuse_all(self, inbox: trio.MemoryReceiveChannel[RoomMsg], code: Code,
                    message: str) -> None:
        while True:
            try:
                item = inbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            if isinstance(item, Attach):
                self._refuse(item, code, message, close.TRY_AGAIN_LATER, backoff="unavailable")

    def _next_deadline(self) -> float:
        deadlines = [d for d in (self.grace_deadline, self.idle_deadline, self.cursor_deadline,
                                 self.sweep_deadline, self.drain_deadline,
                                 self.snapshot_deadline, self.handoff_deadline)
                     if d is not None]
        if self.backlog:
            deadlines.append(trio.current_time() + BACKLOG_RETRY)
        return min(deadlines) if deadlines else float("inf")

    def handle(self, message: RoomMsg) -> None:
        if isinstance(message, Inbound):
            self.on_inbound(message)
        elif isinstance(message, CursorsPending):
            self._schedule_cursors()
        elif isinstance(message, Committed):
            self.on_committed(message.mark)
        elif isinstance(message, Attach):
            self.shell.attaches += 1
            self.on_attach(message)
        elif isinstance(message, Detach):
            self.on_detach(message.peer_id)
        elif isinstance(message, Drain):
            self.on_drain()
        elif isinstance(message, Stop):
            self.done = True
        elif isinstance(message, LeaseLost) and message.fence == self.fence:
            raise Moved(f"room {self.code} belongs to another process now")
        elif isinstance(message, WritesRejected) and (message.mark > self.first_mark
                                                      or not self.new_epoch):
            # A predecessor's lost writes need a new epoch; one that began here covers them.
            raise LostWrites(f"the store refused writes of room {self.code}")
        elif isinstance(message, Crash):
            raise RuntimeError(f"injected crash in room {self.code}")
        elif isinstance(message, Inspect):
            self._inspect(message)

    def on_time(self, now: float) -> None:
        self._flush_backlog()
        if self.cursor_deadline is not None and now >= self.cursor_deadline:
            self._tick_cursors()
        if self.sweep_deadline is not None and now >= self.sweep_deadline:
            self._sweep(now)
        if self.grace_deadline is not None and now >= self.grace_deadline:
            self._check_host(now)
        if self.idle_deadline is not None and now >= self.idle_deadline:
            self.idle_deadline = None
            self._go_idle()
        if self.drain_deadline is not None and now >= self.drain_deadline:
            self._drain_step()
        if self.snapshot_deadline is not None and now >= self.snapshot_deadline:
            self._snapshot()
        if self.handoff_deadline is not None and now >= self.handoff_deadline:
            self.handoff_deadline = None
            self._consider_handoff(now, act=True)

    # Seats ---------------------------------------------------------------

    def on_attach(self, a: Attach) -> None:
        self.idle_requested = False  # the registry declines a stop with an attach in flight
        self._attach(a)
        if not self.members and self.idle_deadline is None:
            now = trio.current_time()
            claimed = self.state is not None and not self.hibernating
            self.idle_deadline = now + (self.config.host_grace if claimed else 0.0)

    def _attach(self, a: Attach) -> None:
        if a.peer.closed:  # the client went while this waited (the room was loading)
            a.inbox.close()
            return
        if self.elsewhere is not None:
            self._relay(a, self.elsewhere)
            return
        if self.draining:
            self._refuse(a, Code.UNAVAILABLE, "the room is moving; try again",
                         close.SERVICE_RESTART, backoff=self.leaving)
            return
        request = a.request
        if isinstance(request, CreateRoom):
            if self.state is not None:
                self._refuse(a, Code.ROOM_EXISTS, f"room {self.code} already exists",
                             close.ROOM_EXISTS)
                return
            if not self._persist_has_room(3):
                self._refuse(a, Code.OVERLOADED, "the server is busy", close.TRY_AGAIN_LATER,
                             backoff="overloaded")
                return
            self._create()
        elif self.state is None:
            self._refuse(a, Code.ROOM_NOT_FOUND, f"room {self.code} does not exist",
                         close.ROOM_NOT_FOUND)
            return
        state = self.state
        assert state is not None
        if isinstance(request, ResumeSeat):
            digest = hash_token(request.token)
            member_id = next((s.id for s in state.seats.values() if s.accepts(digest)), None)
            if member_id is None:
                self._refuse_token(a)
                return
            self._wake()
            old = self.members.get(member_id)
            was_connected = old is not None
            if old is not None:  # superseded: the seat stays connected, cursor and all
                self._drop_connection(member_id, announce=False, keep_cursor=True)
                old.close(close.SUPERSEDED, "superseded",
                          outbound.error(Code.SUPERSEDED, "this seat was resumed elsewhere",
                                         self._now_ms()))
            if not self._seat(a, member_id):
                return
            replayed = self._welcome(
                a.peer, "session/reconnected", member_id, request.token,
                resume=resume_point(request.last_seen, request.epoch, sequence=state.sequence,
                                    epochs=self.epochs, first_retained=self._first_retained()))
            self._rotate_token(state.seats[member_id], digest, a.peer)
            metrics = self.s.metrics
            metrics.resumes["baseline" if replayed is None else "replay"] += 1
            metrics.replayed_events += replayed or 0
            if not was_connected:
                self._broadcast(self._notice("session/connected", {"uuid": member_id}),
                                exclude=member_id)
        else:
            if len(state.seats) >= self.config.max_players:
                self._refuse(a, Code.ROOM_FULL,
                             f"room {self.code} has all {self.config.max_players} seats taken",
                             close.ROOM_FULL)
                return
            if not self._persist_has_room(3):
                self._refuse(a, Code.OVERLOADED, "the server is busy", close.TRY_AGAIN_LATER,
                             backoff="overloaded")
                return
            self._wake()
            token = self.s.deps.new_token()
            seat = Seat(id=self.s.deps.new_id(), name=request.name, token_hash=hash_token(token))
            joined = self._commit(ev.joined(seat, state), actor=seat.id,
                                  event_id=self.s.deps.new_id())
            if not self._seat(a, seat.id):
                # Its connection went meanwhile: the others saw it join, connected.
                self._broadcast(self._notice("session/disconnected", {"uuid": seat.id}))
                return
            self.seen_through[seat.id] = joined.sequence
            # The token promises a seat that can be resumed: keep the welcome (and all
            # after it) back until the seat is durable.
            self.gate.hold_seat(seat.id, joined.sequence, a.peer)
            name = "session/created" if isinstance(request, CreateRoom) else "session/joined"
            self._welcome(a.peer, name, seat.id, token, resume=None)
        self._check_host(trio.current_time())
        self._consider_handoff(trio.current_time())

    def _relay(self, a: Attach, held: HeldElsewhere) -> None:
        """Send the connection to the process that holds the lease, unless it came from
        another process already, or that one cannot be reached: then come back when the
        lease may have expired."""
        url = held.url
        request = a.request
        if isinstance(request, CreateRoom) and request.code is None:
            # A code this server picked is live elsewhere: the connection picks another.
            self._refuse(a, Code.ROOM_EXISTS, f"room {self.code} already exists",
                         close.ROOM_EXISTS)
            return
        if a.relayed or url is None or url == self.s.node.url:
            retry = outbound.after_lease(held.remaining, self.config.restart_retry_ms,
                                         self.s.deps.random)
            self._refuse(a, Code.UNAVAILABLE, "the room is moving between servers; try again",
                         close.TRY_AGAIN_LATER, backoff="unavailable", retry_ms=retry)
            return
        a.inbox.close()
        try:
            a.reply.send_nowait(Relay(url=url, remaining=held.remaining))
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
            pass

    def _refuse_token(self, a: Attach) -> None:
        """No seat takes the token: a final answer (the client gives the seat up), so this
        room first makes sure it still owns the room. Another process may have taken it
        over (this one was paused) and given the seat a newer token this room has not
        seen: then this room stops, and the client is sent to the new owner."""
        if self.fence is None:
            self._refuse_unknown_token(a)
            return
        self.unsure.append((self._write(CheckLease(code=self.code)), a))

    def _refuse_unknown_token(self, a: Attach) -> None:
        self._refuse(a, Code.INVALID_TOKEN, "no seat in this room has that token",
                     close.INVALID_TOKEN)

    def _answer_unsure(self) -> None:
        """Refuse the tokens whose lease check has committed: the room is still ours."""
        while self.unsure and self.unsure[0][0] <= self.committed_mark:
            _, a = self.unsure.popleft()
            self._refuse_unknown_token(a)

    def refuse_unsure(self, reason: str) -> None:
        """This incarnation stops before its lease checks were answered: the requests
        waiting on them are sent away with a hint (the room lives on elsewhere, or here
        again soon)."""
        while self.unsure:
            _, a = self.unsure.popleft()
            self._refuse(a, Code.UNAVAILABLE, "the room is moving; try again",
                         close.TRY_AGAIN_LATER, backoff=reason)

    def _rotate_token(self, seat: Seat, presented: str, peer: Peer) -> None:
        """Give the seat a new token; send it in ``session/token`` once that is durable.

        The token presented stays valid beside the new one until the member presents the
        new one, so a member whose connection drops before the notice arrives, or whose
        notice is lost with the room, still holds a token that resumes the seat.
        """
        token = self.s.deps.new_token()
        seat.rotate(presented, hash_token(token))
        mark = self._write(PutSeatToken(code=self.code, member_id=seat.id,
                                        token_hash=seat.token_hash,
                                        previous_hash=seat.previous_hash))
        self.gate.when_durable(mark, seat.id, peer,
                               self._notice("session/token", {"token": token}))

    def _seat(self, a: Attach, member_id: str) -> bool:
        """Bind the connection to the seat and answer the connection; false if it is gone."""
        try:
            a.reply.send_nowait(Attached(member_id=member_id, room=a.inbox,
                                         cursors=self.cursor_mailbox))
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
            a.inbox.close()
            return False
        peer = a.peer
        self.shell.peers[peer.id] = peer
        self.members[member_id] = peer
        self.member_of[peer.id] = member_id
        self.since[member_id] = trio.current_time()
        if self.sweep_deadline is None:
            self.sweep_deadline = trio.current_time() + SWEEP_INTERVAL
        if member_id == self.state_().host_id:
            self.grace_deadline = None
        now_ms = self._now_ms()
        self.last_seen[member_id] = now_ms
        self._record(PutPresence(code=self.code, member_id=member_id, connected=True, at=now_ms))
        kind = "resume" if isinstance(a.request, ResumeSeat) else "connect"
        self.s.metrics.sessions[kind] += 1
        self._record(LogConnection(code=self.code, user_id=member_id, kind=kind, at=now_ms,
                                   metadata={"address": peer.address}))
        return True

    def _refuse(self, a: Attach, code: Code, message: str, close_code: int,
                backoff: str | None = None, retry_ms: int | None = None) -> None:
        """Refuse the attach (``retry_ms``: the hint to give as it is, else a jittered
        default for ``backoff``)."""
        hint = None
        if backoff is not None:
            if retry_ms is None:
                retry_ms = self._jitter(self.config.retry_ms(backoff))
            hint = outbound.backoff(backoff, retry_ms, self._now_ms())
        a.inbox.close()
        try:
            a.reply.send_nowait(Refused(code=code, message=message, close_code=close_code,
                                        backoff=hint))
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
            pass

    def _welcome(self, peer: Peer, name: str, member_id: str, token: str,
                 resume: int | None) -> int | None:
        """Send the session frame, the event-cursor and the replay after ``resume``; the
        number of events replayed (``None``: a baseline instead)."""
        state = self.state_()
        data = {
            "name": name, "roomCode": self.code, "uuid": member_id, "token": token,
            "hostId": state.host_id, "coHostIds": list(state.co_host_ids),
            "players": self._players(), "state": state.public(), "sequence": state.sequence,
            "epoch": self.epochs[-1][0],
        }
        now_ms = self._now_ms()
        session = encode("event", data, now_ms)
        peer.queue(session)
        replay = ([Wire(payload, "event") for sequence, _, payload in self.journal
                   if sequence > resume]
                  if resume is not None else [])
        if (peer.queued + len(replay) + 2 > peer.max_frames
                or len(session) + sum(map(len, replay)) + 4096 > peer.max_bytes):
            # A replay the outbox cannot hold would close the client as a slow consumer
            # on every resume; the session frame carries the whole state instead.
            resume, replay = None, []
        if resume is None:
            cursor = {"mode": "baseline", "sequence": state.sequence,
                      "replayThrough": state.sequence}
            peer.queue(encode("event-cursor", cursor, now_ms))
        else:
            cursor = {"mode": "resume", "sequence": resume, "replayThrough": state.sequence}
            peer.queue(encode("event-cursor", cursor, now_ms))
            for wire in replay:
                peer.queue(wire)
        self.seen_through[member_id] = state.sequence
        self._collect_cursors()  # the newest positions, not the last round's
        baseline = self.cursors.baseline(member_id, now_ms)
        if baseline is not None:
            peer.queue(baseline)
        return None if resume is None else len(replay)

    def _players(self) -> list[dict[str, Any]]:
        state = self.state_()
        return [state.player(member_id, member_id in self.members) for member_id in state.seats]

    def on_detach(self, peer_id: int) -> None:
        self.shell.peers.pop(peer_id, None)
        member_id = self.member_of.get(peer_id)
        if member_id is not None:
            self._drop_connection(member_id, announce=True)

    def _drop_connection(self, member_id: str, *, announce: bool,
                         keep_cursor: bool = False) -> None:
        peer = self.members.pop(member_id)
        del self.member_of[peer.id]
        self.shell.peers.pop(peer.id, None)
        del self.since[member_id]
        self.seen_through.pop(member_id, None)
        self.gate.forget(member_id)
        if not keep_cursor:
            self._cursor_gone(member_id)
        if member_id in self.state_().seats:
            now_ms = self._now_ms()
            self.last_seen[member_id] = now_ms
            if not keep_cursor:
                self._record(PutPresence(code=self.code, member_id=member_id, connected=False,
                                         at=now_ms))
                self._record(LogConnection(code=self.code, user_id=member_id,
                                           kind="disconnect", at=now_ms))
        if not announce:
            return
        self._broadcast(self._notice("session/disconnected", {"uuid": member_id}))
        if self.draining:  # no grace periods now: the drain ends once nobody is left
            self._maybe_idle()
            return
        state = self.state_()
        now = trio.current_time()
        if member_id == state.host_id:
            self.grace_deadline = now + self.config.host_grace
        if not self.members:
            self.idle_deadline = now + self.config.host_grace
            self.sweep_deadline = None
        self._check_host(now)
        self._consider_handoff(now)

    def _sweep(self, now: float) -> None:
        for member_id, peer in list(self.members.items()):
            if peer.closed and self.members.get(member_id) is peer:
                self._drop_connection(member_id, announce=True)
        self._expire_seats(self._now_ms())
        self.sweep_deadline = now + SWEEP_INTERVAL if self.members else None

    def _expire_seats(self, now_ms: int) -> None:
        """Give up the seats of members not connected for ``seat_ttl`` (journaled leaves)."""
        state = self.state_()
        ttl_ms = self.config.seat_ttl * 1000
        for member_id in [m for m in state.seats if m not in self.members
                          and now_ms - self.last_seen.get(m, now_ms) > ttl_ms]:
            for item in ev.seat_given_up(state, member_id, "expired", self.since):
                self._commit(item, actor=None, event_id=self.s.deps.new_id())
            self.last_seen.pop(member_id, None)
            log.info("room %s: seat %s expired", self.code, member_id)

    # Hosts ---------------------------------------------------------------

    def _check_host(self, now: float) -> None:
        """Promote a successor if the primary host is gone past its grace period."""
        state = self.state
        if state is None or state.host_id is None or state.host_id in self.members:
            self.grace_deadline = None
            return
        if self.grace_deadline is not None and now < self.grace_deadline:
            return
        heir = successor(state, self.since, leaving=state.host_id)
        if heir is None:
            self.grace_deadline = None  # re-checked whenever someone connects
            return
        self.grace_deadline = None
        previous = state.host_id
        self._commit(ev.migrated(state, heir, manual=False), actor=None,
                     event_id=self.s.deps.new_id())
        log.info("room %s: host %s promoted after %s left", self.code, heir, previous)

    # Events --------------------------------------------------------------

    def on_inbound(self, m: Inbound) -> None:
        member_id = self.member_of.get(m.peer_id)
        if member_id is None:
            return  # a superseded or departed connection's late frame
        peer = self.members[member_id]
        frame = m.frame
        payload = frame.payload
        assert not isinstance(payload, msg.CursorUpdate)  # cursors use the cursor mailbox
        event_id = frame.event_id
        assert event_id is not None
        if self.draining:
            peer.queue(outbound.error(Code.UNAVAILABLE, "the server is restarting; send it again "
                                      "after you reconnect", self._now_ms(), event_id=event_id,
                                      retryAfterMs=self.config.restart_retry_ms))
            return
        prior = self.by_event_id.get(event_id)
        if prior is not None:
            if prior[2] != member_id:
                peer.queue(outbound.error(Code.INVALID, "eventId is already used",
                                          self._now_ms(), event_id=event_id))
                return
            self.s.metrics.duplicates += 1
            self._acknowledge(member_id, prior, prior[0], duplicate=True)
            return
        if not self._persist_has_room(3):
            peer.queue(outbound.error(Code.OVERLOADED, "the server is busy; send it again later",
                                      self._now_ms(), event_id=event_id,
                                      retryAfterMs=self._jitter(self.config.overload_retry_ms)))
            return
        if isinstance(payload, GROWS) and self.state_bytes >= self.config.max_state_bytes:
            self.state_bytes = len(orjson.dumps(self.state_().snapshot()))  # exactly, now
            if self.state_bytes >= self.config.max_state_bytes:
                self._reject(peer, frame, Rejection(
                    f"the room's state is at its size limit ({self.config.max_state_bytes} "
                    "bytes); delete something first", code=Code.STATE_TOO_LARGE))
                return
        state = self.state_()
        context = ev.Context(actor_id=member_id, connected_since=self.since,
                             new_id=self.s.deps.new_id, timestamp=self._now_ms(),
                             max_chat_length=self.config.max_chat_length)
        try:
            planned = ev.plan(state, payload, context)
        except Rejection as rejection:
            self._reject(peer, frame, rejection)
            return
        applied: list[Event] = []
        for index, item in enumerate(planned):
            applied.append(self._commit(item, actor=member_id,
                                        event_id=event_id if index == 0 else self.s.deps.new_id(),
                                        gate=member_id))
        self._acknowledge(member_id, _seen(applied[0]), applied[-1].sequence,
                          duplicate=False)
        self._after(applied, member_id)

    def _after(self, applied: list[Event], actor: str) -> None:
        """Connection effects of session events: kicked and departed members go."""
        mark = self.mark  # the intent that makes ``applied`` durable
        for event in applied:
            if event.name == "session/kicked":
                self._record(LogConnection(code=self.code, user_id=event.data["playerId"],
                                           kind="kicked", at=event.timestamp,
                                           metadata={"by": actor}))
                target = event.data["playerId"]
                peer = self.members.get(target)
                if peer is not None:
                    self._drop_connection(target, announce=False)
                    self._close_when_durable(mark, peer, close.KICKED, "kicked")
            elif event.name == "session/leave":
                member_id = event.data["uuid"]
                peer = self.members.get(member_id)
                if peer is not None:
                    self._drop_connection(member_id, announce=False)
                    self._close_when_durable(mark, peer, close.NORMAL, "left")
                if not self.members:
                    self.idle_deadline = trio.current_time() + self.config.host_grace
                    self.sweep_deadline = None

    def _close_when_durable(self, mark: int, peer: Peer, code: int, reason: str) -> None:
        """Close a departed member's connection once intent ``mark`` is durable: the close
        confirms its departure. Until then the shell keeps the connection, so if this
        incarnation stops first the client is sent away with a hint like everyone else,
        and on resuming finds what the store holds (its seat, if the departure was lost)."""
        self.shell.peers[peer.id] = peer
        self.closing.append((mark, peer, code, reason))

    def _close_departed(self) -> None:
        while self.closing and self.closing[0][0] <= self.committed_mark:
            _, peer, code, reason = self.closing.popleft()
            self.shell.peers.pop(peer.id, None)
            peer.close(code, reason)

    def _reject(self, peer: Peer, frame: msg.EventFrame, rejection: Rejection) -> None:
        self.s.metrics.rejections[str(rejection.code)] += 1
        payload = frame.payload
        assert not isinstance(payload, msg.CursorUpdate)
        update_id = ev.update_id_of(payload)
        now_ms = self._now_ms()
        if update_id is None:
            peer.queue(outbound.error(rejection.code, rejection.message, now_ms,
                                      event_id=frame.event_id, **rejection.detail))
            return
        version, current = ev.current_of(self.state_(), payload)
        reason = rejection.code if rejection.code in UPDATE_REJECT_REASONS else Code.INVALID
        data = {"updateId": update_id, "eventId": frame.event_id, "reason": str(reason),
                "code": str(rejection.code), "message": rejection.message,
                "currentVersion": rejection.detail.get("currentVersion", version),
                "current": rejection.detail.get("current", current)}
        peer.queue(encode("update-rejected", data, now_ms))

    def _commit(self, item: Planned, *, actor: str | None, event_id: str,
                gate: str | None = None) -> Event:
        """Sequence, apply, journal and broadcast one event (``gate``: the sender waits)."""
        state = self.state_()
        event = Event(sequence=state.sequence + 1, name=item.name, data=item.data,
                      event_id=event_id, actor_id=actor, timestamp=self._now_ms(),
                      secret=item.secret)
        ev.apply(state, event, chat_history=self.config.chat_history)
        wire = event.wire()
        self.state_bytes += len(wire.payload)  # an upper bound until the next snapshot
        self.journal.append((event.sequence, event.event_id, wire.payload))
        self.by_event_id[event.event_id] = _seen(event)
        if len(self.journal) > self.config.journal_retain:
            self.by_event_id.pop(self.journal.popleft()[1], None)
        self.gate.journaled(self._write(AppendEvent(code=self.code, event=event)), event.sequence)
        self.since_snapshot += 1
        if self.since_snapshot >= self.config.snapshot_every:
            self._snapshot()
        elif self.snapshot_deadline is None:
            self.snapshot_deadline = trio.current_time() + self.config.snapshot_interval
        self.s.metrics.durable_events += 1
        if event.name == "session/host-migrated":
            self.s.metrics.host_migrations["manual" if event.data["manual"] else "auto"] += 1
            if event.data["manual"]:
                log.info("room %s: host %s handed the table to %s", self.code,
                         event.data["previousHostId"], event.data["newHostId"])
            self._record(LogConnection(code=self.code, user_id=event.data["newHostId"],
                                       kind="host-migrated", at=event.timestamp,
                                       metadata={"previous": event.data["previousHostId"],
                                                 "manual": event.data["manual"]}))
        recipients = 0
        for member_id, peer in self.members.items():
            if member_id != gate and self.seen_through.get(member_id, 0) < event.sequence:
                peer.queue(wire)
                recipients += 1
        self._count_broadcast(recipients)
        if gate is not None:
            self.gate.own_event(gate, event.sequence, wire)
        return event

    def _acknowledge(self, member_id: str, event: Seen, sequence: int, *,
                     duplicate: bool) -> None:
        """Send ``event-ack`` (and ``update-confirmed``) once ``sequence`` is durable."""
        now_ms = self._now_ms()
        event_sequence, event_id, _, update_id, version = event
        frames = [encode("event-ack", {"eventId": event_id, "serverSequence": event_sequence,
                                       "duplicate": duplicate}, now_ms)]
        if update_id is not None:
            frames.append(encode("update-confirmed", {
                "updateId": update_id, "eventId": event_id,
                "serverSequence": event_sequence, "version": version}, now_ms))
        self.gate.after(member_id, sequence, frames, self.members.get(member_id))

    def on_committed(self, mark: int) -> None:
        self.committed_mark = max(self.committed_mark, mark)
        self.gate.committed(mark, self.members, self.seen_through)
        self._close_departed()
        self._answer_unsure()
        if self.draining:
            self._drain_step()
        self._maybe_idle()

    # Cursors -------------------------------------------------------------

    def _cursor_gone(self, member_id: str) -> None:
        self.cursors.remove(member_id)
        if self.cursors.pending:
            self._schedule_cursors()

    def _schedule_cursors(self) -> None:
        """Flush at once if a tick has passed since the last flush, else at the next tick."""
        if self.cursor_deadline is None:
            self.cursor_deadline = max(trio.current_time(),
                                       self.cursor_flushed + 1.0 / self.config.cursor_tick_hz)

    def _collect_cursors(self) -> None:
        """Move the latest cursors left in the mailbox onto the board."""
        seats = self.state_().seats
        for peer_id, (scene_id, x, y) in self.cursor_mailbox.take().items():
            member_id = self.member_of.get(peer_id)
            if member_id is not None:  # else: superseded or gone since it moved
                self.cursors.update(member_id, seats[member_id].name, scene_id, x, y)

    def _tick_cursors(self) -> None:
        self.cursor_deadline = None
        self._collect_cursors()
        if not self.cursors.pending:
            return
        self.cursor_flushed = trio.current_time()
        self.s.metrics.cursor_ticks += 1
        for member_id, wire in self.cursors.flush(list(self.members), self._now_ms()):
            self.members[member_id].queue(wire)

    # Durability ----------------------------------------------------------

    def _write(self, write: Write) -> int:
        self.mark += 1
        self.shell.marks = self.mark
        self.backlog.append(Intent(write=write, notify=self.notify, mark=self.mark, owner=self,
                                   fence=self.fence))
        self._flush_backlog()
        return self.mark

    def _flush_backlog(self) -> None:
        while self.backlog:
            try:
                self.s.persist.send_nowait(self.backlog[0])
            except trio.WouldBlock:
                return
            self.backlog.popleft()

    def _record(self, write: Write) -> None:
        """A best-effort write (presence, connection log): dropped rather than ever waited for
        when the persistence queue is more than half full."""
        stats = self.s.persist.statistics()
        if (self.released or self.backlog
                or stats.current_buffer_used * 2 > stats.max_buffer_size):
            return
        self.s.persist.send_nowait(Intent(write=write, fence=self.fence))

    def _persist_has_room(self, count: int) -> bool:
        """Admission control for client work: leave headroom for the room's own writes."""
        if self.backlog:
            return False
        stats = self.s.persist.statistics()
        return stats.current_buffer_used + count + 4 <= stats.max_buffer_size

    def _snapshot(self) -> None:
        state = self.state_()
        self.since_snapshot = 0
        self.snapshot_deadline = None
        snapshot = orjson.dumps(state.snapshot())
        self.state_bytes = len(snapshot)
        self._write(PutSnapshot(code=self.code, sequence=state.sequence, snapshot=snapshot))

    def _put_room(self, status: Any, now_ms: int, *, created: bool = False) -> None:
        state = self.state_()
        self._write(PutRoom(code=self.code, status=status, last_activity=now_ms,
                            epochs=tuple(self.epochs), host_id=state.host_id, created=created))

    def _first_retained(self) -> int:
        return self.journal[0][0] if self.journal else self.state_().sequence + 1

    # Lifecycle -----------------------------------------------------------

    def _create(self) -> None:
        self.state = RoomState(code=self.code)
        self.epochs = [(1, 1)]
        self._put_room("active", self._now_ms(), created=True)
        log.info("room %s created", self.code)

    def _wake(self) -> None:
        """Someone arrived: stay up (and leave hibernation if it had begun)."""
        self.idle_deadline = None
        self.idle_requested = False
        if self.hibernating:
            self.hibernating = False
            self._put_room("active", self._now_ms())
            log.info("room %s woke from hibernation", self.code)

    def _go_idle(self) -> None:
        """Nobody has been connected for the grace period: hibernate, then ask to stop."""
        if self.members:
            return
        state = self.state
        if state is not None and not self.hibernating:
            self._commit(Planned(name="session/hibernated",
                                 data={"reconnectWindow": int(self.config.hibernation_timeout
                                                              * 1000)}),
                         actor=None, event_id=self.s.deps.new_id())
            self._snapshot()
            self._put_room("hibernating", self._now_ms())
            self.hibernating = True
            log.info("room %s hibernating", self.code)
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if self.members or self.idle_requested or self.idle_deadline is not None:
            return
        if not (self.hibernating or self.state is None or self.draining):
            return
        if self.committed_mark < self.mark:
            return  # ask once everything is durable
        if self.draining:
            self.done = True
            return
        try:
            self.s.registry.send_nowait(RoomIdle(code=self.code, generation=self.generation,
                                                 attaches=self.shell.attaches))
        except trio.WouldBlock:
            self.idle_deadline = trio.current_time() + 0.1
            return
        self.idle_requested = True

    # Moving ----------------------------------------------------------------

    def _relayed_majority(self) -> str | None:
        """The process that relays more of the connected members here than connect
        directly, if one does."""
        direct = 0
        via: dict[str, int] = {}
        for peer in self.members.values():
            if peer.via is None:
                direct += 1
            else:
                via[peer.via] = via.get(peer.via, 0) + 1
        if not via:
            return None
        node, count = max(via.items(), key=lambda item: item[1])
        return node if count > direct else None

    def _consider_handoff(self, now: float, *, act: bool = False) -> None:
        """Move the room to the process that relays most of its members, once that has
        held for ``HANDOFF_DELAY`` (a room created where its creator happened to land, its
        players sent by the load balancer to the room code's process)."""
        node = None if self.draining or self.state is None else self._relayed_majority()
        if node is None:
            self.handoff_deadline = None
            return
        if act and not self.s.health.store_ok:  # it could not be claimed elsewhere: later
            self.handoff_deadline = now + HANDOFF_DELAY
        elif act:
            log.info("room %s: most members come through %s; moving it there", self.code, node)
            self.s.metrics.handoffs += 1
            self.leaving = "room-moved"
            self.on_drain()
        elif self.handoff_deadline is None:
            self.handoff_deadline = max(now + HANDOFF_DELAY, self.handoff_not_before)

    def on_drain(self) -> None:
        """The server is stopping (or the room moving): flush, deliver the acks, give the
        lease up, then send everyone away."""
        self.draining = True
        self.handoff_deadline = None
        now_ms = self._now_ms()
        self.grace_deadline = self.idle_deadline = self.cursor_deadline = None
        self.sweep_deadline = None
        if self.state is not None:
            if self.since_snapshot:
                self._snapshot()
            self._put_room("hibernating", now_ms)
        if self.fence is not None:
            # With the room's last writes, so its clients, told to resume once these are
            # durable, find it free to claim on another process.
            self._write(ReleaseLease(code=self.code, fence=self.fence))
            self.released = True
        self.drain_deadline = trio.current_time() + min(DRAIN_ACK_WAIT,
                                                        self.config.drain_timeout / 4)
        self._drain_step()

    def _drain_step(self) -> None:
        """Once everything is durable (acks sent) or the wait is over, close every client."""
        if self.members and (self.committed_mark >= self.mark or self.drain_deadline is None
                             or trio.current_time() >= self.drain_deadline):
            peers = list(self.members.values())
            for member_id in list(self.members):
                self._drop_connection(member_id, announce=False)
            send_away(self.s, peers, self.leaving)
        if not self.members:
            self.drain_deadline = None
        self._maybe_idle()

    # Helpers -------------------------------------------------------------

    def _inspect(self, message: Inspect) -> None:
        report: dict[str, Any] | None = None
        if self.state is not None:
            report = {"snapshot": self.state.snapshot(), "connected": sorted(self.members),
                      "epoch": self.epochs[-1][0], "durable": self.gate.durable_sequence,
                      "hibernating": self.hibernating, "graceDeadline": self.grace_deadline,
                      "draining": self.draining}
        try:
            message.reply.send_nowait(report)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def state_(self) -> RoomState:
        assert self.state is not None
        return self.state

    def _now_ms(self) -> int:
        return self.s.deps.wall_ms()

    def _jitter(self, base_ms: int) -> int:
        return outbound.jitter(base_ms, self.s.deps.random)

    def _notice(self, name: str, data: dict[str, Any]) -> Wire:
        return encode("event", {"name": name, **data}, self._now_ms())

    def _broadcast(self, wire: Wire, exclude: str | None = None) -> None:
        recipients = 0
        for member_id, peer in self.members.items():
            if member_id != exclude:
                peer.queue(wire)
                recipients += 1
        self._count_broadcast(recipients)

    def _count_broadcast(self, recipients: int) -> None:
        metrics = self.s.metrics
        metrics.broadcasts += 1
        metrics.broadcast_recipients += recipients
