"""``nexus-actors simulate``: many seeded runs, spread over processes, failures shrunk
to their shortest trace and saved so one command replays them."""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import attrs
import orjson

from .simulation import Outcome, Step, run, shrink


@attrs.frozen
class Settings:
    steps: int
    rooms: int
    clients: int
    nodes: int = 1
    "Servers sharing the store (as processes share a database): rooms move between them."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--seeds", type=int, default=1, metavar="K",
                        help="run K seeds: --seed, --seed+1, ... (default 1)")
    parser.add_argument("--steps", type=int, default=200, help="steps per run (default 200)")
    parser.add_argument("--rooms", type=int, default=3, help="rooms per run (default 3)")
    parser.add_argument("--clients", type=int, default=10,
                        help="clients per run, hosts included (default 10)")
    parser.add_argument("--nodes", type=int, default=1,
                        help="servers sharing the store, as processes share a database: "
                             "clients reach any of them, nodes are killed, revived and "
                             "drained, leases are stolen (default 1)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="worker processes (default 1; 0 = one per core)")
    parser.add_argument("--replay", type=Path, metavar="TRACE",
                        help="replay a saved trace instead of generating runs")
    parser.add_argument("--traces", type=Path, default=Path("."), metavar="DIR",
                        help="where to save the shrunk trace of a failing seed (default .)")
    parser.add_argument("--shrink-budget", type=int, default=300, metavar="N",
                        help="at most N replays to shrink a failure (0: do not shrink)")
    parser.add_argument("--verbose", action="store_true",
                        help="print every seed's digest, not only the summary")


def main(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    if args.replay is not None:
        return replay(args.replay, out)
    if (args.seeds < 1 or args.steps < 1 or args.rooms < 1 or args.clients < args.rooms
            or not 1 <= args.nodes <= 8):
        print("nexus-actors: --seeds and --steps must be positive, --clients at least "
              "--rooms (each room starts with its host), --nodes from 1 to 8",
              file=sys.stderr)
        return 2
    settings = Settings(steps=args.steps, rooms=args.rooms, clients=args.clients,
                        nodes=args.nodes)
    seeds = range(args.seed, args.seed + args.seeds)
    jobs = args.jobs or multiprocessing.cpu_count()
    started = time.perf_counter()
    total_steps = total_faults = 0
    failures: list[Outcome] = []
    for outcome in _outcomes(seeds, settings, jobs):
        total_steps += len(outcome.steps)
        total_faults += outcome.faults
        if outcome.failure is not None:
            failures.append(outcome)
            print(f"seed {outcome.seed}: FAILED after step {outcome.failed_at}: "
                  f"{outcome.failure}", file=out, flush=True)
        elif args.verbose or args.seeds == 1:
            print(f"seed {outcome.seed}: {len(outcome.steps)} steps, {outcome.faults} faults, "
                  f"digest {outcome.digest}", file=out, flush=True)
    elapsed = time.perf_counter() - started
    print(f"{args.seeds} seeds, {total_steps} steps, {total_faults} faults in {elapsed:.1f} s "
          f"({total_steps / elapsed:,.0f} steps/s, {total_faults / elapsed:,.0f} faults/s, "
          f"{jobs} process{'es' if jobs > 1 else ''}); {len(failures)} failed", file=out)
    for outcome in failures:
        _report(outcome, settings, args.traces, args.shrink_budget, out)
    return 1 if failures else 0


def _one(task: tuple[int, Settings]) -> Outcome:
    seed, settings = task
    return run(seed, steps=settings.steps, rooms=settings.rooms, clients=settings.clients,
               nodes=settings.nodes)


def _outcomes(seeds: range, settings: Settings, jobs: int) -> Iterator[Outcome]:
    tasks = [(seed, settings) for seed in seeds]
    if jobs <= 1 or len(tasks) == 1:
        yield from map(_one, tasks)
        return
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        yield from pool.imap(_one, tasks, chunksize=8)


def _report(outcome: Outcome, settings: Settings, traces: Path, budget: int,
            out: TextIO) -> None:
    print(f"\nseed {outcome.seed} failed after {len(outcome.failing_steps)} steps; "
          f"shrinking...", file=out, flush=True)
    short = (shrink(outcome, rooms=settings.rooms, clients=settings.clients, budget=budget,
                    nodes=settings.nodes)
             if budget > 0 else outcome)
    traces.mkdir(parents=True, exist_ok=True)
    path = traces / f"simulation-{outcome.seed}.json"
    save(path, short, settings)
    print(f"shortest failing trace: {len(short.failing_steps)} steps -> {path}", file=out)
    print(f"failure: {short.failure}", file=out)
    for number, step in enumerate(short.failing_steps):
        print(f"  {number:4d} {_describe(step)}", file=out)
    if short.log:
        print("last server log lines:", file=out)
        for line in short.log[-15:]:
            print(f"  {line}", file=out)
    print(f"replay: nexus-actors simulate --replay {path}", file=out, flush=True)


def _describe(step: Step) -> str:
    return " ".join([step["op"], *(f"{k}={v}" for k, v in step.items() if k != "op")])


def save(path: Path, outcome: Outcome, settings: Settings) -> None:
    """Write ``outcome``'s failing steps, with what it takes to replay them, as JSON."""
    path.write_bytes(orjson.dumps({
        "seed": outcome.seed, "rooms": settings.rooms, "clients": settings.clients,
        "nodes": settings.nodes, "failure": outcome.failure, "steps": outcome.failing_steps,
    }, option=orjson.OPT_INDENT_2))


def load(path: Path) -> tuple[int, Settings, list[Step], str | None]:
    data: dict[str, Any] = orjson.loads(path.read_bytes())
    steps: list[Step] = data["steps"]
    return (int(data["seed"]), Settings(steps=len(steps), rooms=int(data["rooms"]),
                                        clients=int(data["clients"]),
                                        nodes=int(data.get("nodes", 1))), steps,
            data.get("failure"))


def replay(path: Path, out: TextIO = sys.stdout) -> int:
    """Run a saved trace again; exit 1 if it still fails."""
    try:
        seed, settings, steps, expected = load(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"nexus-actors: cannot read trace {path}: {exc}", file=sys.stderr)
        return 2
    outcome = run(seed, rooms=settings.rooms, clients=settings.clients, trace=steps,
                  nodes=settings.nodes)
    if outcome.failure is None:
        print(f"seed {seed}: {len(steps)} steps replayed, no invariant failed "
              f"(digest {outcome.digest})", file=out)
        if expected:
            print(f"the trace was saved failing with: {expected}", file=out)
        return 0
    print(f"seed {seed}: FAILED after step {outcome.failed_at}: {outcome.failure}", file=out)
    for line in outcome.log[-15:]:
        print(f"  {line}", file=out)
    return 1
