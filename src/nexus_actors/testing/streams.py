"""In-memory byte streams with TCP-like back-pressure, and a listener that hands them out.

``trio.testing.memory_stream_pair`` buffers without limit, so a client that
stops reading would never push back on the server. These pipes hold at most
``capacity`` bytes in flight per direction: a writer blocks when the reader
falls behind, exactly what makes a slow consumer visible to the server.
"""

from __future__ import annotations

import math
from collections import deque

import trio
from trio.lowlevel import ParkingLot

DEFAULT_CAPACITY = 256 * 1024
"Bytes in flight per direction, about a loopback socket's buffers."


class _Pipe:
    """One direction: bytes written by one end, read by the other."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buffer = bytearray()
        self.eof = False
        "The writer is done (EOF after the buffer drains)."
        self.reader_gone = False
        "The reader closed; writes fail like a reset socket."
        self.lot = ParkingLot()
        self.delay = 0.0
        "Seconds between a write and the moment its bytes can be read (a slow link)."
        self.in_transit: deque[tuple[float, bytes]] = deque()
        "Bytes written but not readable yet: ``(when readable, bytes)``, in order."

    def wake(self) -> None:
        self.lot.unpark_all()

    @property
    def used(self) -> int:
        return len(self.buffer) + sum(len(chunk) for _, chunk in self.in_transit)

    def _arrive(self) -> None:
        now = trio.current_time()
        while self.in_transit and self.in_transit[0][0] <= now:
            self.buffer += self.in_transit.popleft()[1]

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            if self.reader_gone:
                raise trio.BrokenResourceError("peer closed the stream")
            if self.eof:
                raise trio.ClosedResourceError("stream was closed")
            room = self.capacity - self.used
            if room <= 0:
                await self.lot.park()
                continue
            if self.delay or self.in_transit:
                ready = trio.current_time() + self.delay
                if self.in_transit:  # never overtake bytes written earlier
                    ready = max(ready, self.in_transit[-1][0])
                self.in_transit.append((ready, bytes(view[:room])))
            else:
                self.buffer += view[:room]
            view = view[room:]
            self.wake()
        await trio.lowlevel.checkpoint()

    async def read(self, max_bytes: int | None) -> bytes:
        self._arrive()
        while not self.buffer and not (self.eof and not self.in_transit):
            if self.reader_gone:
                raise trio.ClosedResourceError("stream was closed")
            if self.in_transit:
                with trio.move_on_at(self.in_transit[0][0]):
                    await self.lot.park()
                self._arrive()
            else:
                await self.lot.park()
        if self.reader_gone:
            raise trio.ClosedResourceError("stream was closed")
        size = len(self.buffer) if max_bytes is None else min(max_bytes, len(self.buffer))
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        self.wake()
        await trio.lowlevel.checkpoint()
        return data


class MemoryStream(trio.abc.HalfCloseableStream):
    """One end of a bounded in-memory connection."""

    def __init__(self, outgoing: _Pipe, incoming: _Pipe) -> None:
        self._out = outgoing
        self._in = incoming

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._out.write(data)

    async def wait_send_all_might_not_block(self) -> None:
        while self._out.used >= self._out.capacity and not self._out.reader_gone:
            await self._out.lot.park()

    def lag(self, seconds: float) -> None:
        """Delay every byte sent in either direction from now on by ``seconds``."""
        self._out.delay = self._in.delay = seconds

    @property
    def in_transit(self) -> bool:
        """Whether bytes sent either way are still on their way (see :meth:`lag`)."""
        return bool(self._out.in_transit or self._in.in_transit)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._in.read(max_bytes)

    async def send_eof(self) -> None:
        self._out.eof = True
        self._out.wake()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """Close both directions at once: the peer reads EOF and its writes fail."""
        self._out.eof = True
        self._out.wake()
        self._in.reader_gone = True
        self._in.wake()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


def stream_pair(capacity: int = DEFAULT_CAPACITY) -> tuple[MemoryStream, MemoryStream]:
    """A connected ``(client, server)`` pair."""
    up, down = _Pipe(capacity), _Pipe(capacity)
    return MemoryStream(up, down), MemoryStream(down, up)


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose connections come from :meth:`connect` instead of the network."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](math.inf)

    def connect(self, capacity: int = DEFAULT_CAPACITY) -> MemoryStream:
        """Open a connection to the server; returns the client's end."""
        client, server = stream_pair(capacity)
        self._send.send_nowait(server)
        return client

    async def accept(self) -> trio.abc.Stream:
        return await self._receive.receive()

    async def aclose(self) -> None:
        self._receive.close()
        await trio.lowlevel.checkpoint()
