"""``--processes N``: the rooms shared among N generator processes, one report.

One Python process runs on one core, and full client sessions are not cheap;
past a few hundred players at 20 Hz one process cannot keep up. The command
then starts N generator processes (``python -m nexus_actors.loadtest.workers``)
and talks to each over its standard input and output, in JSON lines:

- to the generator: ``{"plan": {...}, "shard": [index, count]}``, then ``go``
  once every generator has set its rooms up, so the load starts everywhere at
  once;
- from the generator: ``{"phase": ..., "completed": ..., "counts": {...}}`` for
  the progress, ``{"ready": true}`` after its set-up, and finally
  ``{"done": {...}}`` with its whole tally (:meth:`Tally.to_data`).

A room is played by one process (every room whose number is ``index`` modulo
``count``), so a cursor's send time and its receipt are read from the same
clock. The coordinator adds the tallies together and builds the one report
from the sum: counts add up, latency histograms merge bucket by bucket.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import attrs
import orjson
import trio

from .plan import Plan, PlanError, raise_descriptor_limit
from .report import GeneratorFailed, build_report
from .runner import REFRESH_INTERVAL, Display, LoadTest, Outcome
from .tally import Tally

GO = {"go": True}
"Tells every generator to start the load, once all of them are set up."


@attrs.define
class Generator:
    """One generator process, as the coordinator sees it."""

    index: int
    process: trio.Process
    phase: str = "starting"
    completed: float = 0.0
    counts: dict[str, int] = attrs.Factory(dict)
    ready: trio.Event = attrs.Factory(trio.Event)
    done: dict[str, Any] | None = None
    killed: bool = False
    "Stopped by the coordinator (another generator failed)."

    def take(self, message: dict[str, Any]) -> None:
        if "counts" in message:
            self.phase = message["phase"]
            self.completed = message["completed"]
            self.counts = message["counts"]
        if message.get("ready"):
            self.ready.set()
        if "done" in message:
            self.done = message["done"]


async def _lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[Any]:
    """The JSON lines of a stream, decoded, until it ends."""
    buffer = b""
    while chunk := await stream.receive_some():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield orjson.loads(line)


async def _follow(generator: Generator) -> None:
    stdout = generator.process.stdout
    assert stdout is not None
    async for message in _lines(stdout):
        generator.take(message)
    await generator.process.wait()
    generator.ready.set()  # a generator that died is waited for no longer


def _failed(generator: Generator) -> GeneratorFailed:
    return GeneratorFailed(
        f"generator process {generator.index + 1} ended without its results "
        f"(exit status {generator.process.returncode}; its errors are above)")


GENERATOR = (sys.executable, "-m", "nexus_actors.loadtest.workers")
"The command of a generator process."


async def coordinate(plan: Plan, display: Display, *,
                     command: Sequence[str] = GENERATOR) -> dict[str, Any]:
    """Run ``plan`` over ``plan.processes`` generator processes; the report of them all.
    Raises :class:`GeneratorFailed` if one ends without its results."""
    count = plan.processes
    generators: list[Generator] = []
    try:
        async with trio.open_nursery() as nursery:
            for index in range(count):
                process = await trio.lowlevel.open_process(
                    list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                generator = Generator(index=index, process=process)
                generators.append(generator)
                nursery.start_soon(_follow, generator)
                await _tell(generator, {"plan": attrs.asdict(plan), "shard": [index, count]})
            await _show_until(display, generators, "setting up", plan.rooms,
                              lambda g: g.ready.is_set())
            if any(g.process.returncode is not None for g in generators):
                nursery.cancel_scope.cancel()  # one is gone: the run cannot be whole
            else:
                for generator in generators:
                    await _tell(generator, GO)
                await _show_until(display, generators, "running", plan.duration,
                                  lambda g: g.phase not in ("setting up", "running"))
                await _show_until(display, generators, "settling", None,
                                  lambda g: g.done is not None)
    finally:
        for generator in generators:
            if generator.process.returncode is None:
                generator.killed = True
                generator.process.kill()
        display.close()
    tally = Tally(origin=0.0)
    elapsed = cpu = 0.0
    rooms = 0
    failed = [g for g in generators if g.done is None]
    if failed:  # the one that ended by itself, rather than those stopped because of it
        raise _failed(min(failed, key=lambda g: g.killed))
    for generator in generators:
        assert generator.done is not None
        tally.merge(generator.done["tally"])
        elapsed = max(elapsed, generator.done["elapsed"])
        rooms += generator.done["rooms"]
        cpu += generator.done["cpu"]
    return build_report(plan, tally, elapsed=elapsed, rooms=rooms, cpu=cpu)


async def _tell(generator: Generator, message: dict[str, Any]) -> None:
    stdin = generator.process.stdin
    assert stdin is not None
    try:
        await stdin.send_all(orjson.dumps(message) + b"\n")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # it has exited: its follower sees that


async def _show_until(display: Display, generators: list[Generator], phase: str,
                      total: float | None, finished: Callable[[Generator], bool]) -> None:
    """Show the generators' progress, summed, until ``finished`` holds for each."""
    display.phase(phase, total)
    while True:
        counts: dict[str, int] = {}
        for generator in generators:
            for key, value in generator.counts.items():
                counts[key] = counts.get(key, 0) + value
        if counts:
            if phase == "setting up":
                completed = sum(g.completed for g in generators if g.phase == phase)
            else:
                completed = min((g.completed for g in generators), default=0.0)
            display.update(completed, counts, trio.current_time())
        if all(finished(g) or g.process.returncode is not None for g in generators):
            return
        await trio.sleep(REFRESH_INTERVAL)


# The generator's side ----------------------------------------------------------------------


class Reporter:
    """A generator's progress, written to the coordinator as JSON lines."""

    def __init__(self, out: trio.abc.SendStream) -> None:
        self.out = out
        self.name = "setting up"
        self.completed = 0.0
        self.counts: dict[str, int] = {}

    def phase(self, name: str, total: float | None) -> None:
        self.name = name
        self.completed = 0.0

    def update(self, completed: float, counts: dict[str, int], now: float) -> None:
        self.completed = completed
        self.counts = counts

    async def send(self, message: dict[str, Any]) -> None:
        await self.out.send_all(orjson.dumps(message) + b"\n")

    async def report(self) -> None:
        while True:
            await self.send({"phase": self.name, "completed": self.completed,
                             "counts": self.counts})
            await trio.sleep(REFRESH_INTERVAL)


async def generate(commands: trio.abc.ReceiveStream, out: trio.abc.SendStream) -> None:
    """One generator process: read its plan and shard, play them, report the outcome."""
    lines = _lines(commands)
    order = await anext(lines)
    plan = Plan(**order["plan"])
    index, count = order["shard"]
    load = LoadTest(plan, shard=(index, count))
    raise_descriptor_limit(sum(len(room.players) for room in load.rooms))
    reporter = Reporter(out)

    async def start() -> None:
        await reporter.send({"ready": True})
        if await anext(lines, None) != GO:
            raise GeneratorFailed("the coordinator went away before the start")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reporter.report)
        outcome: Outcome = await load.play_out(reporter, start)
        nursery.cancel_scope.cancel()
    await reporter.send({"phase": "done", "completed": 0.0, "counts": load.counts()})
    await reporter.send({"done": {"tally": outcome.tally.to_data(), "elapsed": outcome.elapsed,
                                  "rooms": outcome.rooms, "cpu": outcome.cpu}})


def main() -> int:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    stdout = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))
    status = 0
    try:
        trio.run(generate, stdin, stdout)
    except* KeyboardInterrupt:
        status = 130
    except* (GeneratorFailed, PlanError) as group:
        for exc in group.exceptions:
            print(f"nexus-actors loadtest generator: {exc}", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    from ..cli import tune_gc

    tune_gc()
    sys.exit(main())
