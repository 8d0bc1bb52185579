"""Shared pieces of the client tests: openers that can cut connections, deterministic ids,
an event recorder, and the comparison of a client's copy with the server's room."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import trio

from nexus_actors.client import ClientEvent, Opener, Options, Session, connect
from nexus_actors.room.state import RoomState
from nexus_actors.testing import TestServer

URL = "ws://nexus.test"
"The harness ignores the address; the URL only names the path."
WAIT = 120.0
"Virtual seconds a wait may take under the mock clock (a guard against a hung test)."

E = TypeVar("E")


def seeded_ids(seed: int) -> Callable[[], str]:
    """UUIDs from a seeded generator, so a run's event ids are the same every time."""
    rng = random.Random(seed)
    return lambda: str(uuid.UUID(int=rng.getrandbits(128), version=4))


def deterministic(seed: int) -> dict[str, Any]:
    """``connect`` arguments that make a session's jitter and ids reproducible."""
    return {"rng": random.Random(seed), "new_id": seeded_ids(seed)}


class HarnessOpener:
    """Connects to the in-memory server (whichever instance runs now), remembering each
    stream and when it was asked for, so a test can cut the connection or check timing."""

    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.streams: list[trio.abc.Stream] = []
        self.calls: list[float] = []

    async def __call__(self) -> trio.abc.Stream:
        self.calls.append(trio.current_time())
        stream = self.server.listener.connect()
        self.streams.append(stream)
        return stream

    def cut(self) -> None:
        """Cut the latest connection without a closing handshake (a network failure)."""
        close = getattr(self.streams[-1], "close", None)
        assert close is not None
        close()


@attrs.define
class Recorder:
    """Reads a session's events in the background; tests wait on and inspect them."""

    session: Session
    events: list[ClientEvent] = attrs.Factory(list)
    times: list[float] = attrs.Factory(list)
    "When each event was read (trio time)."
    ended: bool = False
    _arrived: trio.Event = attrs.Factory(trio.Event)

    async def run(self) -> None:
        async for event in self.session.events():
            self.events.append(event)
            self.times.append(trio.current_time())
            self._arrived.set()
            self._arrived = trio.Event()
        self.ended = True
        self._arrived.set()

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    def when(self, event: ClientEvent) -> float:
        return self.times[next(i for i, e in enumerate(self.events) if e is event)]

    async def until(self, condition: Callable[[], bool], what: str = "the condition") -> None:
        """Wait until ``condition()`` holds, checked after each event."""
        with trio.fail_after(WAIT):
            while not condition():
                if self.ended:
                    raise AssertionError(f"the session ended before {what}: "
                                         f"{self.events[-5:]}")
                await self._arrived.wait()

    async def wait_for(self, kind: type[E], predicate: Callable[[E], bool] = lambda _: True,
                       *, count: int = 1) -> E:
        """The ``count``-th event of type ``kind`` matching ``predicate``."""
        def found() -> list[E]:
            return [e for e in self.of(kind) if predicate(e)]

        await self.until(lambda: len(found()) >= count, kind.__name__)
        return found()[count - 1]


def record(nursery: trio.Nursery, session: Session) -> Recorder:
    recorder = Recorder(session)
    nursery.start_soon(recorder.run)
    return recorder


def server_room(report: dict[str, Any] | None) -> dict[str, Any]:
    """The same view of a room from ``Server.inspect``."""
    assert report is not None, "the room is not live"
    return RoomState.from_snapshot(report["snapshot"]).client_view()


@asynccontextmanager
async def gm_seat(opener: Opener, nursery: trio.Nursery, *,
                  options: Options | None = None) -> AsyncIterator[tuple[Session, Recorder]]:
    """A GM who created a room, with its events recorded."""
    async with connect(URL, name="GM", role="host", opener=opener, options=options,
                       **deterministic(1)) as gm:
        yield gm, record(nursery, gm)


@asynccontextmanager
async def two_seats(opener: Opener, nursery: trio.Nursery, *,
                    gm_options: Options | None = None, ana_options: Options | None = None,
                    ) -> AsyncIterator[tuple[Session, Recorder, Session, Recorder]]:
    """A GM who created a room and Ana who joined it, each with its events recorded."""
    async with connect(URL, name="GM", role="host", opener=opener, options=gm_options,
                       **deterministic(1)) as gm, \
            connect(URL, room=gm.room_code, name="Ana", opener=opener, options=ana_options,
                    **deterministic(2)) as ana:
        yield gm, record(nursery, gm), ana, record(nursery, ana)
