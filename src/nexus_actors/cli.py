"""``nexus-actors``: the command line."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType

import trio

from . import __version__, loadtest, logs, terminal
from .actors.supervisor import Interrupted, serve
from .config import Config, settings_table
from .errors import ConfigError, StoreError
from .store.base import Store
from .store.setup import database, migrate_when_reachable, prepare_store
from .testing import campaign
from .tls import tls_context

log = logging.getLogger("nexus_actors")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nexus-actors",
                                     description="Realtime room server for virtual tabletops.")
    parser.add_argument("--version", action="version", version=f"nexus-actors {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser(
        "serve", help="run the server",
        description="Run the server. Every setting also reads its environment variable.")
    Config.add_arguments(serve_parser)
    migrate_parser = commands.add_parser(
        "migrate", help="apply database migrations and exit",
        description="Apply the schema migrations the database lacks (DATABASE_URL, or the "
                    "embedded PostgreSQL when it is unset), then exit.")
    Config.add_arguments(migrate_parser)
    commands.add_parser("settings", help="print the settings table (Markdown)")
    simulate_parser = commands.add_parser(
        "simulate", help="run seeded simulations of the server with faults",
        description="Run the real server in-process under a virtual clock with simulated "
                    "clients, random actions and faults, checking every invariant after "
                    "every step. A failing seed is shrunk to its shortest failing trace, "
                    "saved, and the command that replays it is printed "
                    "(docs/simulation.md).")
    campaign.add_arguments(simulate_parser)
    client_parser = commands.add_parser(
        "client", help="an interactive terminal client, to poke a server by hand",
        description="Take a seat in a room (create one with --host, join with --join, or "
                    "resume a seat with --join CODE --token T), print one line per event and "
                    "read commands from standard input (/help lists them).")
    terminal.add_arguments(client_parser)
    loadtest_parser = commands.add_parser(
        "loadtest", help="load a server with simulated players and check nothing is lost",
        description="Rooms of simulated players, each a real client session: cursors, "
                    "optimistic token moves and cut connections (--churn) for --duration "
                    "seconds; prints latencies, delivery, losses and reconnections, and exits "
                    "1 if an event was lost or applied twice or reconnections failed "
                    "(docs/loadtest.md).")
    loadtest.add_arguments(loadtest_parser)
    return parser


def _configure_logging(config: Config) -> None:
    logs.configure(config.log_level, config.log_format, sys.stderr)


GC_THRESHOLDS = (20_000, 50, 100)
"""Young collections every 20,000 net allocations instead of 700, full ones ~5,000 times
rarer: at full load a full collection pauses the loop for tens of milliseconds, so it
should happen every few minutes, not every few seconds (docs/decisions/0002)."""


def tune_gc() -> None:
    """Freeze what start-up created and make collections rarer (for the server process)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "settings":
        print(settings_table())
        return 0
    if args.command == "simulate":
        return campaign.main(args)
    if args.command == "client":
        return terminal.main(args)
    if args.command == "loadtest":
        from .loadtest.runner import main as run_loadtest  # loads rich: only when asked

        tune_gc()  # thousands of sessions: full collections would stall the generator too
        return run_loadtest(args)
    flags = {name: getattr(args, name) for name, _, _ in Config.settings()}
    try:
        config = Config.from_sources(flags, os.environ)
    except ConfigError as exc:
        print(f"nexus-actors: {exc.message}", file=sys.stderr)
        return 2
    _configure_logging(config)
    # Until the server listens for signals itself, SIGTERM stops the start-up (waiting
    # for the database can take a while): as PID 1 in a container the process would
    # otherwise ignore it, and the platform would wait for its kill timeout.
    received: list[int] = []
    signal.signal(signal.SIGTERM, _stop_starting(received))
    try:
        return _run(args.command, config)
    except KeyboardInterrupt:  # SIGTERM or Ctrl-C before the server listened for signals
        signum = received[-1] if received else signal.SIGINT
        log.warning("received %s while starting; exiting", signal.Signals(signum).name)
        return 128 + signum


def _stop_starting(received: list[int]) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise KeyboardInterrupt  # what Trio expects from a signal at any instant

    return handler


def _run(command: str, config: Config) -> int:
    try:
        if command == "migrate":
            return _migrate(config)
        log.info("nexus-actors %s starting (pid %d)", __version__, os.getpid())
        tls_context(config)  # a certificate that cannot be loaded stops us before the database
        store, where = prepare_store(config)
    except (ConfigError, StoreError) as exc:
        print(f"nexus-actors: {exc.message}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    log.info("rooms are stored in %s", where)
    tune_gc()
    try:
        trio.run(_serve, config, store)
    except Interrupted as exc:  # a second signal during the drain
        return 128 + exc.signum
    except Exception:
        log.critical("nexus-actors stopped by an error", exc_info=True)
        return 1
    return 0


def _migrate(config: Config) -> int:
    where = database(config)
    if where.url is None:
        print("nexus-actors: nothing to migrate: DATABASE_URL is 'memory'", file=sys.stderr)
        return 0
    applied = migrate_when_reachable(where.url, config)
    done = ", ".join(f"{v:03d}" for v in applied) if applied else "none (up to date)"
    print(f"migrations applied to {where.description}: {done}")
    return 0


async def _serve(config: Config, store: Store) -> None:
    await store.open()
    try:
        await serve(config, store=store)
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()
