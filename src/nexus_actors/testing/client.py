"""A protocol v1 test client over any trio stream (in-memory or a real socket).

It speaks WebSocket through ``websockets``' sans-I/O ``ClientProtocol`` and
records every frame it receives. Tests read frames in order with
:meth:`TestClient.next`, skip to one with :meth:`TestClient.until`, and cause
faults: :meth:`drop` cuts the connection without a close handshake and
:meth:`stall` stops reading (so pings go unanswered and the server's writes
back up).
"""

from __future__ import annotations

import itertools
from typing import Any
from urllib.parse import urlencode

import orjson
import trio
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from .streams import MemoryStream

RECEIVE_SIZE = 65536
DEFAULT_TIMEOUT = 30.0
"Seconds :meth:`TestClient.next` waits (trio time: instant under an autojumping MockClock)."


class ClientError(AssertionError):
    """The server did not send what the test expected."""


def query(**params: Any) -> str:
    """``/ws?...`` for connect parameters (``None`` values are left out)."""
    return "/ws?" + urlencode({k: v for k, v in params.items() if v is not None})


class TestClient:
    """One WebSocket client connection."""

    __test__ = False  # not a pytest test class
    _instances = itertools.count(1)

    def __init__(self, stream: trio.abc.Stream, protocol: ClientProtocol) -> None:
        self.stream = stream
        self.protocol = protocol
        self.frames: list[dict[str, Any]] = []
        "Every JSON frame received, in order."
        self._read = 0
        self._arrived = trio.Event()
        self._running = trio.Event()
        self._running.set()
        self.closed = trio.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._ids = itertools.count(1)
        self._instance = next(TestClient._instances)
        self.session: dict[str, Any] = {}
        "``data`` of the session frame (``session/created``, ``joined`` or ``reconnected``)."
        self.latest_token: str | None = None
        "The newest resume token received (session frame or ``session/token`` notice)."
        self.response: Response | None = None

    # Opening -------------------------------------------------------------

    @classmethod
    async def open(cls, stream: trio.abc.Stream, target: str, nursery: trio.Nursery, *,
                   origin: str | None = None, compress: bool = True,
                   headers: dict[str, str] | None = None) -> TestClient:
        """Run the opening handshake on ``stream`` for ``target`` (``/ws?join=...``)."""
        # ``None``, not ``[]``: an empty list sends an empty (invalid) extensions header.
        extensions = [ClientPerMessageDeflateFactory()] if compress else None
        protocol = ClientProtocol(parse_uri(f"ws://nexus.test{target}"), origin=None,
                                  extensions=extensions, max_size=None)
        request = protocol.connect()
        if origin is not None:
            request.headers["Origin"] = origin
        for name, value in (headers or {}).items():
            request.headers[name] = value
        protocol.send_request(request)
        client = cls(stream, protocol)
        await client._flush()
        with trio.fail_after(DEFAULT_TIMEOUT):
            while client.response is None:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    protocol.receive_eof()
                    raise ClientError("connection closed during the handshake")
                protocol.receive_data(data)
                for event in protocol.events_received():
                    if isinstance(event, Response):
                        client.response = event
                    else:
                        client._frame(event)
        if client.response.status_code != 101:
            raise ClientError(f"handshake refused: {client.response.status_code} "
                              f"{client.response.body!r}")
        nursery.start_soon(client._reader)
        return client

    # Sending -------------------------------------------------------------

    async def _flush(self) -> None:
        for chunk in self.protocol.data_to_send():
            try:
                if chunk:
                    await self.stream.send_all(chunk)
                else:
                    await self.stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    async def send_text(self, text: str | bytes) -> None:
        self.protocol.send_text(text.encode() if isinstance(text, str) else text)
        await self._flush()

    async def send_binary(self, data: bytes) -> None:
        self.protocol.send_binary(data)
        await self._flush()

    async def send_json(self, message: Any) -> None:
        await self.send_text(orjson.dumps(message))

    def next_event_id(self) -> str:
        """An eventId unique to this connection (a resumed seat does not reuse old ones)."""
        return f"{self.session.get('uuid', 'client')[:8]}-{self._instance}-{next(self._ids)}"

    async def send_event(self, name: str, data: dict[str, Any] | None = None, *,
                         event_id: str | None = None, client_sequence: int | None = None) -> str:
        """Send ``{"type": "event", ...}``; returns the ``eventId`` used."""
        event_id = event_id or self.next_event_id()
        message: dict[str, Any] = {"type": "event", "data": {"name": name, **(data or {})},
                                   "eventId": event_id, "timestamp": 0}
        if client_sequence is not None:
            message["clientSequence"] = client_sequence
        await self.send_json(message)
        return event_id

    async def cursor(self, scene_id: str, x: float, y: float) -> None:
        await self.send_json({"type": "event", "data": {
            "name": "cursor/update", "sceneId": scene_id, "position": {"x": x, "y": y}}})

    # Receiving -----------------------------------------------------------

    def _frame(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
            frame = orjson.loads(event.data)
            self.frames.append(frame)
            if frame.get("type") == "event" and "serverSequence" not in frame:
                data = frame["data"]
                if not self.session and "roomCode" in data:
                    self.session = data
                if "token" in data:  # a session frame or a session/token notice
                    self.latest_token = str(data["token"])
            self._arrived.set()
            self._arrived = trio.Event()

    async def _reader(self) -> None:
        protocol = self.protocol
        try:
            while True:
                await self._running.wait()
                try:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                # Stalled while this read was in flight: hold the bytes unprocessed, so
                # a ping that just arrived goes unanswered until unstall().
                await self._running.wait()
                if not data:
                    protocol.receive_eof()
                    await self._flush()
                    break
                protocol.receive_data(data)
                for event in protocol.events_received():
                    self._frame(event)
                await self._flush()
        finally:
            if protocol.close_rcvd is not None:
                self.close_code = protocol.close_rcvd.code
                self.close_reason = protocol.close_rcvd.reason
            else:
                self.close_code = 1006
            self.closed.set()
            self._arrived.set()
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    async def next(self, kind: str | None = None) -> dict[str, Any]:
        """The next unread frame (which must be of type ``kind`` when given).

        Waits at most :data:`DEFAULT_TIMEOUT` (a guard against a hung test; wrap the
        call in ``trio.fail_after`` for a tighter bound).
        """
        with trio.fail_after(DEFAULT_TIMEOUT):
            while self._read >= len(self.frames):
                if self.closed.is_set():
                    raise ClientError(f"connection closed ({self.close_code}) while waiting")
                await self._arrived.wait()
        frame = self.frames[self._read]
        self._read += 1
        if kind is not None and frame.get("type") != kind:
            raise ClientError(f"expected a {kind!r} frame, got {frame}")
        return frame

    async def until(self, kind: str, name: str | None = None, **fields: Any) -> dict[str, Any]:
        """Skip frames until one of type ``kind`` (and event ``name``, and ``data`` fields)."""
        with trio.fail_after(DEFAULT_TIMEOUT):
            while True:
                frame = await self.next()
                if frame.get("type") != kind:
                    continue
                data = frame.get("data") or {}
                if name is not None and data.get("name") != name:
                    continue
                if all(data.get(key) == value for key, value in fields.items()):
                    return frame

    def unread(self) -> list[dict[str, Any]]:
        return self.frames[self._read:]

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every received ``event`` frame (named ``name``)."""
        return [f for f in self.frames if f.get("type") == "event"
                and (name is None or f["data"].get("name") == name)]

    # Faults and closing --------------------------------------------------

    def drop(self) -> None:
        """Cut the connection without a closing handshake (a network failure)."""
        if isinstance(self.stream, trio.SocketStream):
            self.stream.socket.close()
        else:
            close = getattr(self.stream, "close", None)
            if close is not None:
                close()

    def stall(self) -> None:
        """Stop reading: pings go unanswered and the server's writes back up."""
        self._running = trio.Event()

    def unstall(self) -> None:
        self._running.set()

    def lag(self, seconds: float) -> None:
        """Delay every frame sent either way from now on by ``seconds`` (in-memory only)."""
        if isinstance(self.stream, MemoryStream):
            self.stream.lag(seconds)

    @property
    def can_send(self) -> bool:
        """Whether frames can still be sent (no closing handshake has begun)."""
        return self.protocol.state is State.OPEN and not self.closed.is_set()

    @property
    def in_transit(self) -> bool:
        """Whether frames sent either way are still on their way (see :meth:`lag`)."""
        return isinstance(self.stream, MemoryStream) and self.stream.in_transit

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Start a clean closing handshake."""
        self.protocol.send_close(code, reason)
        await self._flush()

    async def wait_closed(self) -> int | None:
        """Wait for the connection to end; returns the close code (1006: no close frame)."""
        with trio.fail_after(DEFAULT_TIMEOUT):
            await self.closed.wait()
        return self.close_code

    # Session shortcuts ---------------------------------------------------

    @property
    def uuid(self) -> str:
        return str(self.session["uuid"])

    @property
    def token(self) -> str:
        """The newest resume token this connection received."""
        assert self.latest_token is not None, "no session frame yet"
        return self.latest_token

    @property
    def room(self) -> str:
        return str(self.session["roomCode"])

    def last_sequence(self) -> int:
        """The highest ``serverSequence`` up to which this client has seen every event.

        The session frame's state covers its ``sequence``; after that, events arrive as
        broadcasts (others' at once, its own with their ``event-ack`` once durable), so
        a later sequence can arrive before an earlier one: only an unbroken run counts.
        This is what a client sends back as ``lastSeenSequence``.
        """
        last = int(self.session.get("sequence", 0))
        seen = set()
        for frame in self.frames:
            if frame.get("type") == "event" and "serverSequence" in frame:
                seen.add(int(frame["serverSequence"]))
            elif frame.get("type") == "event-ack":
                seen.add(int(frame["data"]["serverSequence"]))
        while last + 1 in seen:
            last += 1
        return last
