"""The load test's trio side: rooms of real client sessions, their sending rounds, the churn.

Each simulated player is a :class:`~nexus_actors.client.Session` from
:func:`~nexus_actors.client.connect`, connected through a
:class:`~nexus_actors.loadtest.churn.CuttableOpener`, with a task reading its
events into the :class:`~nexus_actors.loadtest.tally.Tally`. A room's host
creates the room, a scene and one token per player; the others join. Then,
for the duration, one task per room sends every player's cursor at
``cursor_hz`` and each player's optimistic move of its own token at its own
phase; the churn task cuts connections. At the end the run waits (bounded) for
every session to be connected with nothing unanswered, counts what is still
unanswered as lost, and closes every session.
"""

from __future__ import annotations

import math
import random
import resource
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, Literal, Protocol

import attrs
import orjson
import trio
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from ..client import ClientError, EventsLagged, Opener, Options, Session, connect
from ..client.connect import endpoint
from .churn import CuttableOpener, victims
from .plan import Plan, PlanError, raise_descriptor_limit
from .report import GeneratorFailed, behind, build_report, render
from .tally import PlayerTally, Tally

CONNECTING_AT_ONCE = 50
"Sessions being opened at the same time during the set-up."
REFRESH_INTERVAL = 0.5
"Seconds between updates of the progress display."
PLAIN_STATUS_INTERVAL = 10.0
"Seconds between status lines when standard error is not a terminal."


@attrs.define(eq=False)
class Player:
    """One simulated seat."""

    room: int
    index: int
    "Its seat in the room: 0 is the host."
    name: str
    token_id: str
    "The token it moves (created by the host)."
    rng: random.Random
    opener: CuttableOpener
    tally: PlayerTally
    session: Session | None = None
    state: Literal["pending", "seated", "failed"] = "pending"
    next_move: float = math.inf
    moves: int = 0


@attrs.define(eq=False)
class Room:
    index: int
    players: list[Player]
    phase: float
    "Where in the sending interval this room's rounds fall (0 to 1): rooms spread out."
    ready: trio.Event = attrs.Factory(trio.Event)
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    code: str | None = None
    scene_id: str = ""
    seated: list[Player] = attrs.Factory(list)
    "Players seated by the end of the set-up: the ones that play."
    abandoned: bool = False
    "Not set up in time (or its host could not create it): it takes no part in the run."
    driven: trio.Event = attrs.Factory(trio.Event)
    "Its sending rounds are over (the run stopped), or it never had any."


class ProgressView(Protocol):
    """Where a run shows its progress: :class:`Display`, or a generator process's report
    to the process that started it (``--processes``)."""

    def phase(self, name: str, total: float | None) -> None: ...

    def update(self, completed: float, counts: dict[str, int], now: float) -> None: ...


class Display:
    """Progress on standard error: a live bar on a terminal, else a status line now and then."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None
        if console.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description:<11}"), BarColumn(), TaskProgressColumn(),
                TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                console=console, auto_refresh=False)
            self.progress.start()
        self.task: TaskID | None = None
        self.name = ""
        self._printed = -math.inf

    def phase(self, name: str, total: float | None) -> None:
        self.name = name
        if self.progress is not None:
            if self.task is not None:
                self.progress.update(self.task, completed=self.progress.tasks[-1].total)
            self.task = self.progress.add_task(name, total=total, status="")
            self.progress.refresh()
        else:
            self.console.print(f"loadtest: {name}", highlight=False)
            self._printed = -math.inf

    def update(self, completed: float, counts: dict[str, int], now: float) -> None:
        status = status_line(counts)
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=completed, status=status)
            self.progress.refresh()
        elif now - self._printed >= PLAIN_STATUS_INTERVAL:
            self._printed = now
            self.console.print(f"loadtest: {self.name}: {status}", highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def status_line(counts: dict[str, int]) -> str:
    """The progress in one line, from :meth:`LoadTest.counts` (or their sum over processes)."""
    status = (f"{counts['connected']}/{counts['playing']} connected, "
              f"{counts['cursors']:,} cursors, {counts['acked']:,}/{counts['moves']:,} acked")
    if counts["cuts"] or counts["attempted"]:
        status += (f", {counts['cuts']} cut, {counts['succeeded']}/"
                   f"{counts['attempted']} reconnected")
    return status


def cpu_seconds() -> float:
    """User and system CPU time this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@attrs.frozen(kw_only=True)
class Outcome:
    """What one generator process measured (the report is built from it, or from the sum
    of several)."""

    tally: Tally
    elapsed: float
    "Seconds the load ran."
    rooms: int
    "Rooms that took part (set up in time)."
    cpu: float
    "CPU seconds this process used while the load ran."


async def _no_gate() -> None:
    pass


class LoadTest:
    """One run of a :class:`Plan`, or of its ``shard`` of the rooms: (index, count) takes
    every room whose number is ``index`` modulo ``count`` (one of ``count`` processes)."""

    def __init__(self, plan: Plan, *, opener: Opener | None = None,
                 shard: tuple[int, int] = (0, 1)) -> None:
        self.plan = plan
        self.tally = Tally(origin=trio.current_time())
        self.rng = random.Random(plan.seed)
        base = opener if opener is not None else endpoint(plan.url)[1]
        self.options = Options(cursor_hz=max(2 * plan.cursor_hz, 1.0))
        "Cursors are paced by the sending rounds; the client's own limit stays out of the way."
        # Every room is drawn from the seed, so a room plays the same whichever process
        # has it; the churn draws from the same generator afterwards.
        rooms = [self._room(index, base) for index in range(plan.rooms)]
        index, count = shard
        self.rooms = [room for room in rooms if room.index % count == index]
        self.go = trio.Event()
        self.stop = trio.Event()
        self.finished = trio.Event()
        self.connecting = trio.CapacityLimiter(CONNECTING_AT_ONCE)
        self._wake = trio.Event()
        self._phase_started = 0.0

    def _room(self, index: int, base: Opener) -> Room:
        players = [
            Player(room=index, index=seat, name="host" if seat == 0 else f"p{seat}",
                   token_id=f"t{index}-{seat}", rng=random.Random(self.rng.getrandbits(64)),
                   opener=CuttableOpener(base), tally=PlayerTally(room=index))
            for seat in range(self.plan.players)]
        return Room(index=index, players=players, phase=self.rng.random())

    @property
    def playing(self) -> list[Player]:
        return [p for room in self.rooms if not room.abandoned for p in room.seated]

    def poke(self) -> None:
        """Something changed that :meth:`settled` may depend on."""
        self._wake.set()

    # Players -----------------------------------------------------------------------------

    async def play(self, room: Room, player: Player, *,
                   task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold one seat until the run is finished; starts with whether it was seated."""
        if player.index == 0:
            seat: dict[str, Any] = {"name": player.name, "role": "host"}
        else:
            seat = {"room": room.code, "name": player.name}
        async with AsyncExitStack() as stack:
            async with self.connecting:
                try:
                    session = await stack.enter_async_context(connect(
                        self.plan.url, options=self.options, opener=player.opener,
                        rng=player.rng, **seat))
                except ClientError as exc:
                    player.state = "failed"
                    self.tally.connect_failed(exc.code)
                    task_status.started(False)
                    return
            player.session, player.state = session, "seated"
            self.tally.opened()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.read_events, player, session)
                task_status.started(True)
                await self.finished.wait()
                nursery.cancel_scope.cancel()

    async def read_events(self, player: Player, session: Session) -> None:
        tally = self.tally
        while True:
            try:
                async for batch in session.event_batches():
                    now = trio.current_time()
                    for event in batch:
                        tally.on_event(player.tally, event, now)
                    self.poke()
                break
            except EventsLagged as exc:
                tally.lagged += exc.dropped
        self.poke()

    # Rooms -------------------------------------------------------------------------------

    async def run_room(self, room: Room) -> None:
        with room.scope:
            async with trio.open_nursery() as nursery:
                host = room.players[0]
                if not await nursery.start(self.play, room, host):
                    self.abandon(room, "room-not-created")
                    return
                session = host.session
                assert session is not None
                room.code = session.room_code
                scene = await session.create_scene(f"loadtest {room.index}")
                room.scene_id = scene.entity_id
                for player in room.players:
                    await session.create_token(scene.entity_id, 0, player.index,
                                               token_id=player.token_id, label=player.name)
                await session.flush()
                tokens = session.state["tokens"]
                if session.ended or any(p.token_id not in tokens for p in room.players):
                    self.abandon(room, "room-not-set-up")
                    return
                async with trio.open_nursery() as joining:
                    for player in room.players[1:]:
                        joining.start_soon(nursery.start, self.play, room, player)
                room.seated = [p for p in room.players if p.state == "seated"]
                room.ready.set()
                await self.go.wait()
                try:
                    await self.drive(room)
                finally:
                    room.driven.set()

    def abandon(self, room: Room, reason: str) -> None:
        """The room takes no part: its players not seated yet count as failed for
        ``reason``, and its sessions are closed."""
        room.abandoned = True
        pending = [p for p in room.players if p.state == "pending"]
        for player in pending:
            player.state = "failed"
        if pending:
            self.tally.connect_failed(reason, len(pending))
        room.scope.cancel()
        room.ready.set()
        room.driven.set()

    async def drive(self, room: Room) -> None:
        """Every player's cursor each round, and its moves at its own phase, until the end."""
        plan, tally = self.plan, self.tally
        players = room.seated
        others = len(players) - 1
        interval = plan.round_interval
        move_every = 1.0 / plan.moves_per_sec if plan.moves_per_sec else math.inf
        due = trio.current_time() + room.phase * interval
        for player in players:
            if move_every < math.inf:
                player.next_move = due + player.rng.uniform(0, move_every)
        while True:
            await trio.sleep_until(due)
            now = trio.current_time()
            if self.stop.is_set():
                return
            tally.tick(due, now)
            due += interval
            if due < now:  # the generator fell behind: skip the rounds it missed
                due = now + interval
            for player in players:
                session = player.session
                assert session is not None
                if session.ended:
                    continue
                try:
                    if plan.cursor_hz and session.connected:
                        x = tally.clock_ms(trio.current_time())
                        await session.update_cursor(room.scene_id, x, float(player.index))
                        tally.cursor_sent(others)
                    if now >= player.next_move:
                        player.next_move += move_every
                        if player.next_move < now:
                            player.next_move = now + move_every
                        player.moves += 1
                        tally.sending_move(player.tally, trio.current_time())
                        try:
                            await session.move_token(player.token_id, player.moves % 100,
                                                     player.index)
                        except ClientError as exc:
                            tally.move_not_sent(player.tally, exc.code)
                        else:
                            tally.move_sent()
                except ClientError as exc:
                    tally.send_failed(exc.code)
            if self.stop.is_set():
                return

    async def churn(self) -> None:
        """Every ``churn_interval``, cut that fraction of the connected sessions."""
        while True:
            with trio.move_on_after(self.plan.churn_interval):
                await self.stop.wait()
            if self.stop.is_set():
                return
            connected = [p for p in self.playing
                         if p.session is not None and p.session.connected]
            for player in victims(self.rng, connected, self.plan.churn):
                if player.opener.cut():
                    self.tally.cuts += 1

    # The whole run -------------------------------------------------------------------------

    def settled(self) -> bool:
        """Every session still going is connected, reconnected and has nothing unanswered."""
        for player in self.playing:
            session = player.session
            assert session is not None
            if session.ended:
                continue
            if (not session.connected or session.unanswered or player.tally.waiting()
                    or player.tally.reconnecting_since is not None):
                return False
        return True

    def counts(self) -> dict[str, int]:
        """The progress so far, in numbers (summed over processes by ``--processes``)."""
        tally = self.tally
        playing = self.playing
        return {"connected": sum(1 for p in playing
                                 if p.session is not None and p.session.connected),
                "playing": len(playing), "cursors": tally.cursors_received,
                "acked": tally.acked, "moves": tally.moves_sent, "cuts": tally.cuts,
                "attempted": tally.reconnects_attempted,
                "succeeded": tally.reconnects_succeeded}

    def show(self, display: ProgressView) -> None:
        now = trio.current_time()
        if self.go.is_set():
            completed = min(now - self._phase_started, self.plan.duration)
        else:
            completed = sum(1 for room in self.rooms if room.ready.is_set())
        display.update(completed, self.counts(), now)

    async def refresh(self, display: ProgressView) -> None:
        while not self.finished.is_set():
            self.show(display)
            with trio.move_on_after(REFRESH_INTERVAL):
                await self.finished.wait()

    async def run(self, display: Display) -> dict[str, Any]:
        """The whole run in this process; the report."""
        outcome = await self.play_out(display)
        display.close()
        return build_report(self.plan, outcome.tally, elapsed=outcome.elapsed,
                            rooms=outcome.rooms, cpu=outcome.cpu)

    async def play_out(self, display: ProgressView,
                       start: Callable[[], Awaitable[None]] = _no_gate) -> Outcome:
        """Set up, wait for ``start`` (the other processes' set-ups), load, settle."""
        plan, tally = self.plan, self.tally
        async with trio.open_nursery() as nursery:
            display.phase("setting up", len(self.rooms))
            nursery.start_soon(self.refresh, display)
            for room in self.rooms:
                nursery.start_soon(self.run_room, room)
            with trio.move_on_after(plan.setup_timeout):
                for room in self.rooms:
                    await room.ready.wait()
            for room in self.rooms:
                if not room.ready.is_set():
                    self.abandon(room, "setup-timeout")
            self.show(display)

            await start()
            display.phase("running", plan.duration)
            self._phase_started = started = trio.current_time()
            cpu = cpu_seconds()
            self.go.set()
            if plan.churn:
                nursery.start_soon(self.churn)
            if self.playing:  # else there is nothing to wait for
                await trio.sleep(plan.duration)
            self.stop.set()
            elapsed = trio.current_time() - started
            cpu = cpu_seconds() - cpu
            for room in self.rooms:  # every move counted is sent before the settling
                await room.driven.wait()
            self.show(display)

            display.phase("settling", None)
            with trio.move_on_after(plan.settle):
                while not self.settled():
                    self._wake = trio.Event()
                    await self._wake.wait()
            for player in self.playing:
                assert player.session is not None
                tally.finish(player.tally, player.session.unanswered)
            self.show(display)
            display.phase("closing", None)
            self.finished.set()
        return Outcome(tally=tally, elapsed=elapsed, cpu=cpu,
                       rooms=sum(1 for room in self.rooms if not room.abandoned))


def main(args: Any) -> int:
    """``nexus-actors loadtest``: run, print the table (and the JSON report), exit 0 if
    every check passed, 1 if one failed, 2 for arguments out of bounds."""
    try:
        plan = Plan.from_args(args)
        if plan.processes == 1:
            raise_descriptor_limit(plan.connections)
    except PlanError as exc:
        print(f"nexus-actors loadtest: {exc}", file=sys.stderr)
        return 2
    errors = Console(stderr=True)

    async def run() -> dict[str, Any]:
        display = Display(errors)
        if plan.processes == 1:
            return await LoadTest(plan).run(display)
        from .workers import coordinate

        return await coordinate(plan, display)

    report: dict[str, Any] | None = None
    status = 1
    try:
        report = trio.run(run)
    except* KeyboardInterrupt:
        status = 130
    except* GeneratorFailed as group:
        for failure in group.exceptions:
            print(f"nexus-actors loadtest: {failure}", file=sys.stderr)
    if report is None:
        return status
    if args.json == "-":
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        Console().print(render(report))
        if args.json:
            with open(args.json, "wb") as out:
                out.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    lagging = behind(report)
    if lagging is not None:
        print(f"nexus-actors loadtest: warning: the generator did not keep up ({lagging}); "
              "its latencies measure itself as much as the server: give it a machine of its "
              "own, more --processes on more cores, or fewer players", file=sys.stderr)
    for failed in report["failed_checks"]:
        print(f"nexus-actors loadtest: check failed: {failed}", file=sys.stderr)
    return 0 if report["passed"] else 1
