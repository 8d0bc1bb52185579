"""What a load test does: the command line's arguments, checked, in one immutable object."""

from __future__ import annotations

import argparse
import math
import random
import resource

import attrs

from ..client.connect import endpoint

MAX_CONNECTIONS = 20_000
"Sessions one generator may open: past this, run several generators (docs/loadtest.md)."
MAX_MESSAGES_PER_SECOND = 50.0
"""Messages one simulated player may send per second: the client's pacing
(``Options.send_rate``), below the server's default per-connection limit (NEXUS_RATE_LIMIT)."""
DESCRIPTOR_MARGIN = 64
"""File descriptors needed besides one per connection (the interpreter's own, the report)."""


MAX_PROCESSES = 64
"Generator processes one command may start."

IDLE_ROUND = 0.05
"Seconds between a room's sending rounds when no cursors are sent (moves only)."


class PlanError(Exception):
    """An argument out of bounds; the message names the flag and says why."""


def _between(flag: str, value: float, low: float, high: float, *,
             low_open: bool = False) -> None:
    if not (low < value if low_open else low <= value) or not value <= high or math.isnan(value):
        bound = f"more than {low:g}" if low_open else f"at least {low:g}"
        raise PlanError(f"{flag} must be {bound} and at most {high:g} (got {value:g})")


@attrs.frozen(kw_only=True)
class Plan:
    """One load test: how many rooms and players, what they send, for how long."""

    url: str
    "The server's WebSocket URL (``ws://`` or ``wss://``)."
    rooms: int = 50
    players: int = 10
    "Seats per room, the host included."
    duration: float = 60.0
    "Seconds of load, after every room is set up."
    cursor_hz: float = 20.0
    "Cursor updates each player sends per second (0: none)."
    moves_per_sec: float = 1.0
    "Optimistic moves of its own token each player sends per second (0: none)."
    churn: float = 0.0
    "Fraction of the connected sessions whose connection is cut every ``churn_interval``."
    churn_interval: float = 30.0
    seed: int = 0
    "Seeds the churn choices, the players' phases and their reconnection jitter."
    settle: float = 15.0
    "Seconds to wait at the end for outstanding acknowledgements and reconnections."
    setup_timeout: float = 120.0
    "Seconds the set-up (rooms created, scenes, tokens, joins) may take in all."
    processes: int = 1
    "Generator processes sharing the rooms (one core each at most: Python runs one thread)."

    def __attrs_post_init__(self) -> None:
        try:
            endpoint(self.url)
        except ValueError as exc:
            raise PlanError(f"--url: {exc}") from None
        _between("--rooms", self.rooms, 1, 10_000)
        _between("--players", self.players, 1, 100)
        if self.connections > MAX_CONNECTIONS:
            raise PlanError(
                f"--rooms x --players is {self.connections} connections; one generator opens "
                f"at most {MAX_CONNECTIONS} (run several generators on separate machines)")
        _between("--duration", self.duration, 0, 86_400, low_open=True)
        _between("--cursor-hz", self.cursor_hz, 0, MAX_MESSAGES_PER_SECOND)
        _between("--moves-per-sec", self.moves_per_sec, 0, MAX_MESSAGES_PER_SECOND)
        if self.cursor_hz + self.moves_per_sec > MAX_MESSAGES_PER_SECOND:
            raise PlanError(
                f"--cursor-hz + --moves-per-sec is {self.cursor_hz + self.moves_per_sec:g} "
                f"messages per second per player; at most {MAX_MESSAGES_PER_SECOND:g} (the "
                "client's pacing, below the server's NEXUS_RATE_LIMIT of 60)")
        _between("--churn", self.churn, 0, 1)
        _between("--churn-interval", self.churn_interval, 0.1, 86_400)
        _between("--settle", self.settle, 0, 600)
        _between("--setup-timeout", self.setup_timeout, 1, 3600)
        _between("--processes", self.processes, 1, MAX_PROCESSES)
        if self.processes > self.rooms:
            raise PlanError(f"--processes ({self.processes}) must be at most --rooms "
                            f"({self.rooms}): a room is played by one process")

    @property
    def connections(self) -> int:
        return self.rooms * self.players

    @property
    def round_interval(self) -> float:
        """Seconds between a room's sending rounds (each sends every player's cursor)."""
        return 1.0 / self.cursor_hz if self.cursor_hz else IDLE_ROUND

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
        return cls(url=args.url, rooms=args.rooms, players=args.players,
                   duration=args.duration, cursor_hz=args.cursor_hz,
                   moves_per_sec=args.moves_per_sec, churn=args.churn,
                   churn_interval=args.churn_interval, seed=seed, settle=args.settle,
                   setup_timeout=args.setup_timeout, processes=args.processes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Plan(url="ws://localhost")
    parser.add_argument("--url", required=True,
                        help="the server, e.g. ws://127.0.0.1:5000 or wss://tables.example.com")
    parser.add_argument("--rooms", type=int, default=defaults.rooms, metavar="N",
                        help="rooms to create (default %(default)s)")
    parser.add_argument("--players", type=int, default=defaults.players, metavar="N",
                        help="seats per room, the host included (default %(default)s)")
    parser.add_argument("--duration", type=float, default=defaults.duration, metavar="S",
                        help="seconds of load after the set-up (default %(default)s)")
    parser.add_argument("--cursor-hz", type=float, default=defaults.cursor_hz, metavar="HZ",
                        help="cursor updates per player per second (default %(default)s)")
    parser.add_argument("--moves-per-sec", type=float, default=defaults.moves_per_sec, metavar="F",
                        help="optimistic moves of its own token per player per second "
                             "(default %(default)s)")
    parser.add_argument("--churn", type=float, default=defaults.churn, metavar="F",
                        help="fraction of the connections cut every --churn-interval, as a "
                             "network failure would; they resume by themselves "
                             "(default %(default)s)")
    parser.add_argument("--churn-interval", type=float, default=defaults.churn_interval,
                        metavar="S",
                        help="seconds between cuts (default %(default)s)")
    parser.add_argument("--seed", type=int, default=None, metavar="N",
                        help="seed of the churn choices, phases and jitter (default: random, "
                             "printed in the report)")
    parser.add_argument("--settle", type=float, default=defaults.settle, metavar="S",
                        help="seconds to wait at the end for outstanding acknowledgements "
                             "and reconnections (default %(default)s)")
    parser.add_argument("--setup-timeout", type=float, default=defaults.setup_timeout, metavar="S",
                        help="seconds the set-up may take (default %(default)s)")
    parser.add_argument("--processes", type=int, default=defaults.processes, metavar="N",
                        help="generator processes sharing the rooms, for more players than "
                             "one core can drive (default %(default)s)")
    parser.add_argument("--json", metavar="REPORT",
                        help="also write the report as JSON to this file ('-': standard "
                             "output, instead of the table)")


def descriptor_limit(needed: int, soft: int, hard: int) -> int | None:
    """The soft limit on open files to set for ``needed`` descriptors (``None``: the current
    one is enough). Raises :class:`PlanError` when the hard limit is too low."""
    infinity = resource.RLIM_INFINITY
    if soft == infinity or soft >= needed:
        return None
    if hard != infinity and hard < needed:
        raise PlanError(
            f"{needed} file descriptors are needed but this process may open at most {hard} "
            f"(the hard limit): raise it (ulimit -Hn, or LimitNOFILE= in a systemd unit) or "
            f"use fewer --rooms or --players")
    return needed


def raise_descriptor_limit(connections: int) -> None:
    """Raise this process's soft limit on open files to cover ``connections``."""
    needed = connections + connections // 10 + DESCRIPTOR_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = descriptor_limit(needed, soft, hard)
    if wanted is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
