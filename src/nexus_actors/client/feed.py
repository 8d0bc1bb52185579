"""The application's event stream: bounded, one reader, a clear error when it lags.

The session never waits for the application: events go into a bounded buffer
and, when it is full, later events are dropped until the reader has taken what
was kept and has been told (:class:`~nexus_actors.client.errors.EventsLagged`)
how many it missed. The state itself is never affected.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator

import trio

from .errors import EventsLagged
from .events import ClientEvent


class EventFeed:
    """Events for the application, in order."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._events: deque[ClientEvent] = deque()
        self._dropped = 0
        self._closed = False
        self._arrived = trio.Event()

    def put(self, event: ClientEvent) -> None:
        if self._closed:
            return
        if self._dropped or len(self._events) >= self.capacity:
            self._dropped += 1
        else:
            self._events.append(event)
        self._arrived.set()

    def close(self) -> None:
        """No more events; the reader finishes after the ones already kept."""
        self._closed = True
        self._arrived.set()

    def __aiter__(self) -> EventFeed:
        return self

    async def _wait(self) -> None:
        """Until an event is kept; raises at a lag or once closed and empty."""
        if self._events:
            await trio.lowlevel.checkpoint()
            return
        while not self._events:
            if self._dropped:
                dropped, self._dropped = self._dropped, 0
                raise EventsLagged(dropped)
            if self._closed:
                raise StopAsyncIteration
            await self._arrived.wait()
            self._arrived = trio.Event()

    async def __anext__(self) -> ClientEvent:
        await self._wait()
        return self._events.popleft()

    def batches(self) -> AsyncIterator[list[ClientEvent]]:
        """Every event kept so far at each step, in order: one wake for a burst."""
        return _Batches(self)

    async def next_batch(self) -> list[ClientEvent]:
        await self._wait()
        batch = list(self._events)
        self._events.clear()
        return batch


class _Batches:
    def __init__(self, feed: EventFeed) -> None:
        self._feed = feed

    def __aiter__(self) -> _Batches:
        return self

    async def __anext__(self) -> list[ClientEvent]:
        return await self._feed.next_batch()
