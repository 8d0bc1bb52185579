"""The real server over real TCP sockets with the real clock.

The in-memory tests never touch the plain-TCP fast paths of the connection
actor (``Connection.write_now``, the non-blocking direct write, and
``Connection._receive``, the direct read), so this file is their coverage:
rooms end to end over TCP (create, join, move, acks, cursors, the output gate),
permessage-deflate as negotiated and as seen on the wire (small frames
uncompressed, large ones compressed, nothing compressed without the offer),
back-pressure (a client that stops reading is shed as a slow consumer while
the room carries on; a slow but steady reader loses nothing), heartbeats over
TCP, abrupt disconnects and resume, the HTTP routes and the message size limit.

Every wait is bounded: the whole of each test runs under ``trio.fail_after``.
"""

from __future__ import annotations

import random
import socket
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import orjson
import pytest
import trio
from websockets.frames import Opcode

from nexus_actors.actors.supervisor import Server, serve
from nexus_actors.config import Config
from nexus_actors.protocol.outbound import quality_of
from nexus_actors.store.memory import MemoryStore
from nexus_actors.testing import TestClient, query

pytestmark = pytest.mark.realclock

TEST_TIMEOUT = 20.0
"Seconds one test may take in all (generous: CI machines are slow)."
STOP_TIMEOUT = 15.0
"Seconds the server may take to drain and stop at the end of a test."
SMALL_BUFFER = 16384
"""SO_RCVBUF of clients meant to push back. Much smaller (4 KiB) and Linux loopback can
stall for good: the window the reader advertises shrinks below the sender's MSS."""


# The server on a real port -------------------------------------------------------


class LiveServer:
    """A server listening on an ephemeral TCP port, and TCP clients for it."""

    def __init__(self, server: Server, store: MemoryStore, nursery: trio.Nursery) -> None:
        self.server = server
        self.store = store
        self.nursery = nursery
        [self.port] = server.ports
        self.raw_clients: list[RawClient] = []
        "Closed when the block ends, even if the test failed."

    async def connect(self, target: str, *, compress: bool = True) -> TestClient:
        """A WebSocket to ``target`` over TCP; nothing is read yet."""
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        return await TestClient.open(stream, target, self.nursery, compress=compress)

    async def raw(self, target: str, *, deflate: bool,
                  receive_buffer: int | None = None) -> RawClient:
        """A hand-made WebSocket client to ``target``; it reads only when asked to."""
        client = await RawClient.open(self.port, target, deflate=deflate,
                                      receive_buffer=receive_buffer)
        self.raw_clients.append(client)
        return client

    async def _seated(self, client: TestClient, expected: str) -> TestClient:
        first = await client.next("event")
        assert first["data"]["name"] == expected, first
        await client.next("event-cursor")
        return client

    async def create(self, name: str = "GM", *, compress: bool = True) -> TestClient:
        client = await self.connect(query(host="", name=name), compress=compress)
        return await self._seated(client, "session/created")

    async def join(self, code: str, name: str, *, compress: bool = True) -> TestClient:
        client = await self.connect(query(join=code, name=name), compress=compress)
        return await self._seated(client, "session/joined")

    async def resume(self, previous: TestClient, last_seen: int) -> TestClient:
        """Take ``previous``'s seat back (``session/reconnected`` read, not the cursor)."""
        client = await self.connect(query(reconnect=previous.room, token=previous.token,
                                          lastSeenSequence=last_seen))
        first = await client.next("event")
        assert first["data"]["name"] == "session/reconnected", first
        return client


@asynccontextmanager
async def live_server(**overrides: Any) -> AsyncIterator[LiveServer]:
    """Run ``serve`` on 127.0.0.1 and an ephemeral port for the block; drain it after."""
    config = Config(host="127.0.0.1", port=0, **overrides)
    store = MemoryStore(journal_retain=config.journal_retain)
    stopped = trio.Event()

    async def run(*, task_status: trio.TaskStatus[Server]) -> None:
        try:
            await serve(config, store=store, handle_signals=False, task_status=task_status)
        finally:
            stopped.set()

    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(run)
            live = LiveServer(server, store, nursery)
            try:
                yield live
            finally:
                with trio.CancelScope(shield=True):
                    for raw in live.raw_clients:
                        await raw.aclose()
                    server.shutdown()
                    with trio.fail_after(STOP_TIMEOUT):
                        await stopped.wait()  # a server that hangs on the way out fails here
                nursery.cancel_scope.cancel()


# A WebSocket client made by hand, to see frames as they are on the wire -------------


class RawFrame(NamedTuple):
    opcode: int
    rsv1: bool
    "Set on a compressed (permessage-deflate) message."
    payload: bytes
    "Decompressed when ``rsv1`` is set."

    def json(self) -> Any:
        assert self.opcode == Opcode.TEXT.value, self
        return orjson.loads(self.payload)

    @property
    def close_code(self) -> int:
        assert self.opcode == Opcode.CLOSE.value, self
        code: int = struct.unpack("!H", self.payload[:2])[0]
        return code


class RawClient:
    """Handshake by hand, read raw frame headers; reads only when asked to."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.headers: dict[str, str] = {}
        "Response headers of the handshake (lower-cased names)."
        self.inflate = zlib.decompressobj(wbits=-15)
        "One decompressor for the connection: the server keeps its context across messages."

    @classmethod
    async def open(cls, port: int, target: str, *, deflate: bool,
                   receive_buffer: int | None = None) -> RawClient:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:  # before connecting, so the window starts small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        await sock.connect(("127.0.0.1", port))
        client = cls(trio.SocketStream(sock))
        offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else ""
        await client.stream.send_all((
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\n{offer}\r\n").encode())
        while b"\r\n\r\n" not in client.buffer:
            assert await client._receive(), "closed during the handshake"
        head, _, rest = bytes(client.buffer).partition(b"\r\n\r\n")
        client.buffer = bytearray(rest)
        status, *lines = head.decode().split("\r\n")
        assert status.startswith("HTTP/1.1 101 "), status
        for line in lines:
            name, _, value = line.partition(":")
            client.headers[name.strip().lower()] = value.strip()
        return client

    async def _receive(self, max_bytes: int = 65536) -> bool:
        """Read once more; ``False`` at EOF (or a reset)."""
        try:
            data = await self.stream.receive_some(max_bytes)
        except trio.BrokenResourceError:
            return False
        self.buffer += data
        return bool(data)

    async def _fill(self, size: int) -> bool:
        while len(self.buffer) < size:
            if not await self._receive():
                return False
        return True

    async def frame(self) -> RawFrame | None:
        """The next frame, or ``None`` when the connection ended (mid-frame or not)."""
        if not await self._fill(2):
            return None
        first, second = self.buffer[0], self.buffer[1]
        assert not second & 0x80, "server frames are never masked"
        length, offset = second & 0x7F, 2
        if length == 126:
            if not await self._fill(4):
                return None
            (length,), offset = struct.unpack("!H", self.buffer[2:4]), 4
        elif length == 127:
            if not await self._fill(10):
                return None
            (length,), offset = struct.unpack("!Q", self.buffer[2:10]), 10
        if not await self._fill(offset + length):
            return None
        payload = bytes(self.buffer[offset:offset + length])
        del self.buffer[:offset + length]
        assert first & 0x80, "the server sends no fragmented messages"
        rsv1 = bool(first & 0x40)
        if rsv1:
            payload = self.inflate.decompress(payload + b"\x00\x00\xff\xff")
        return RawFrame(first & 0x0F, rsv1, payload)

    async def text(self) -> RawFrame:
        """The next text frame (control frames such as pings are skipped)."""
        while True:
            frame = await self.frame()
            assert frame is not None, "connection ended"
            if frame.opcode == Opcode.TEXT.value:
                return frame

    async def rest(self) -> list[RawFrame]:
        """Every frame still to come, until the connection ends."""
        frames = []
        while (frame := await self.frame()) is not None:
            frames.append(frame)
        return frames

    async def aclose(self) -> None:
        await self.stream.aclose()


# Helpers ----------------------------------------------------------------------------


async def acked(client: TestClient, name: str, data: dict[str, Any]) -> dict[str, Any]:
    """Send a durable event; the ``event-ack`` data once it is committed."""
    event_id = await client.send_event(name, data)
    ack: dict[str, Any] = (await client.until("event-ack", eventId=event_id))["data"]
    return ack


async def barrier(client: TestClient) -> None:
    """A round trip through the room answered at once (not gated on the store).

    When it returns, every frame the room sent ``client`` earlier has arrived.
    """
    event_id = await client.send_event("token/move", {"tokenId": "no-such-token",
                                                      "position": {"x": 0, "y": 0}})
    await client.until("error", eventId=event_id)


async def member_id(client: TestClient, name: str) -> str:
    """The id of the member called ``name``, from the ``session/join`` ``client`` saw."""
    while True:
        player = (await client.until("event", "session/join"))["data"]["player"]
        if player["name"] == name:
            return str(player["id"])


def chat_texts(frames: list[dict[str, Any]]) -> list[str]:
    return [f["data"]["message"]["text"] for f in frames
            if f.get("type") == "event" and f["data"].get("name") == "chat/message"]


def noise(index: int, size: int) -> str:
    """``size`` characters that deflate to about half (so frames stay big on the wire)."""
    rng = random.Random(index)
    return f"{index:05d}:" + "".join(rng.choice("0123456789abcdef") for _ in range(size - 6))


async def big_table(host: TestClient, scenes: int = 40) -> None:
    """Make the room state far bigger than ``compress_min_bytes``."""
    for index in range(scenes):
        await acked(host, "scene/create", {"scene": {"id": f"s{index}",
                                                     "name": f"Scene number {index}"}})


async def http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send a raw HTTP request; status, headers (lower-cased names) and body until EOF."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        chunks = []
        while chunk := await stream.receive_some():
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status.split(" ")[1]), headers, body


# Rooms end to end over TCP ----------------------------------------------------------


async def test_create_join_move_and_ack_end_to_end_over_tcp() -> None:
    async with live_server() as live:
        host = await live.create("GM")
        await acked(host, "scene/create", {"scene": {"id": "s1", "name": "Cave"}})
        await acked(host, "token/create", {"token": {"id": "t1", "sceneId": "s1",
                                                     "position": {"x": 0, "y": 0}}})
        ana = await live.join(host.room, "Ana")
        assert ana.session["state"]["tokens"]["t1"]["position"] == {"x": 0, "y": 0}
        joined = await host.until("event", "session/join")
        assert joined["data"]["player"]["id"] == ana.uuid

        event_id = await ana.send_event("token/move", {"tokenId": "t1",
                                                       "position": {"x": 5, "y": 7}})
        seen = await host.until("event", "token/move")
        assert seen["eventId"] == event_id
        assert seen["actorId"] == ana.uuid
        assert seen["data"]["position"] == {"x": 5, "y": 7}
        own = await ana.next("event")
        assert own["eventId"] == event_id
        ack = await ana.next("event-ack")
        assert ack["data"] == {"eventId": event_id, "serverSequence": seen["serverSequence"],
                               "duplicate": False}

        await host.cursor("s1", 10, 20)
        cursors = await ana.until("cursors")
        assert cursors["data"]["cursors"] == [{"userId": host.uuid, "userName": "GM",
                                               "sceneId": "s1", "position": {"x": 10, "y": 20}}]


async def test_durable_event_reaches_others_at_once_but_its_ack_waits_for_the_commit() -> None:
    async with live_server() as live:
        host = await live.create("GM")
        ana = await live.join(host.room, "Ana")
        await host.until("event", "session/join")

        live.store.pause()
        event_id = await host.send_event("chat/message", {"text": "held"})
        seen = await ana.until("event", "chat/message")
        assert seen["eventId"] == event_id
        await barrier(host)
        assert [f for f in host.frames if f.get("eventId") == event_id
                or f["data"].get("eventId") == event_id] == []

        live.store.resume()
        own = await host.next("event")
        assert own["eventId"] == event_id
        ack = await host.next("event-ack")
        assert ack["data"] == {"eventId": event_id, "serverSequence": seen["serverSequence"],
                               "duplicate": False}


# permessage-deflate -----------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
async def test_large_state_and_chat_arrive_whole_with_or_without_deflate(
        compress: bool) -> None:
    async with live_server(max_chat_length=20_000) as live:
        host = await live.create("GM")
        await big_table(host)
        ana = await live.join(host.room, "Ana", compress=compress)
        assert bool(ana.protocol.extensions) is compress
        assert sorted(ana.session["state"]["scenes"]) == sorted(f"s{i}" for i in range(40))

        text = noise(1, 15_000)
        await acked(host, "chat/message", {"text": text})
        assert chat_texts([await ana.until("event", "chat/message")]) == [text]


async def test_small_frames_go_uncompressed_and_large_ones_compressed_on_the_wire() -> None:
    async with live_server(compress_min_bytes=1024) as live:
        host = await live.create("GM")
        await big_table(host)
        raw = await live.raw(query(join=host.room, name="Raw"), deflate=True)
        assert raw.headers["sec-websocket-extensions"].startswith("permessage-deflate")

        joined = await raw.text()
        assert joined.rsv1
        assert len(joined.payload) > 1024
        assert len(joined.json()["data"]["state"]["scenes"]) == 40
        cursor = await raw.text()
        assert not cursor.rsv1
        assert cursor.json()["type"] == "event-cursor"

        await acked(host, "chat/message", {"text": "small"})
        small = await raw.text()
        assert not small.rsv1
        assert chat_texts([small.json()]) == ["small"]

        big = noise(2, 1500)
        await acked(host, "chat/message", {"text": big})
        large = await raw.text()
        assert large.rsv1
        assert chat_texts([large.json()]) == [big]  # inflated with the connection's context


async def test_nothing_is_compressed_when_the_client_does_not_offer_deflate() -> None:
    async with live_server(compress_min_bytes=1024) as live:
        host = await live.create("GM")
        await big_table(host)
        raw = await live.raw(query(join=host.room, name="Raw"), deflate=False)
        assert "sec-websocket-extensions" not in raw.headers

        joined = await raw.text()
        assert not joined.rsv1
        assert len(joined.json()["data"]["state"]["scenes"]) == 40
        big = noise(3, 1500)
        await acked(host, "chat/message", {"text": big})
        frames = [await raw.text(), await raw.text()]
        assert [f.rsv1 for f in frames] == [False, False]
        assert chat_texts([f.json() for f in frames]) == [big]


# Back-pressure through the direct write path --------------------------------------


async def test_client_that_stops_reading_is_shed_and_the_room_carries_on() -> None:
    async with live_server(outbox_frames=16, outbox_bytes=65536, close_timeout=0.5,
                           host_grace=600, rate_limit=10_000, rate_burst=10_000,
                           max_chat_length=8000, chat_history=10) as live:
        host = await live.create("GM")
        bob = await live.join(host.room, "Bob")
        slow = await live.raw(query(join=host.room, name="Slow"), deflate=False,
                              receive_buffer=SMALL_BUFFER)
        slow_id = await member_id(host, "Slow")
        await bob.until("event", "session/join")
        # From here on the slow client reads nothing: its socket fills, then its outbox.

        sent: list[str] = []
        while not [f for f in host.events("session/disconnected")
                   if f["data"]["uuid"] == slow_id]:
            assert len(sent) < 2000, "the slow consumer was never shed"
            sent.append(noise(len(sent), 6000))
            await acked(host, "chat/message", {"text": sent[-1]})

        assert chat_texts([await bob.until("event", "chat/message") for _ in sent]) == sent
        event_id = await bob.send_event("chat/message", {"text": "bob still here"})
        assert (await bob.until("event-ack", eventId=event_id))["data"]["duplicate"] is False
        assert chat_texts([await host.until("event", "chat/message")]) == ["bob still here"]

        # What the slow client gets when it reads again: an in-order prefix of the chat,
        # then either the backoff hint and a 1013 close, or the end of the stream.
        frames = await slow.rest()
        texts = [f.json() for f in frames if f.opcode == Opcode.TEXT.value]
        received = chat_texts(texts)
        assert received == sent[:len(received)]
        closes = [f for f in frames if f.opcode == Opcode.CLOSE.value]
        if closes:
            assert [f.close_code for f in closes] == [1013]
            assert texts[-1]["type"] == "backoff"
            assert texts[-1]["data"]["reason"] == "slow-consumer"

        late = await live.create("Late")
        assert (await acked(late, "chat/message", {"text": "served"}))["duplicate"] is False


@pytest.mark.parametrize("deflate", [False, True])
async def test_slow_but_steady_reader_gets_every_frame_once_and_in_order(
        deflate: bool) -> None:
    async with live_server(rate_limit=10_000, rate_burst=10_000, max_chat_length=8000,
                           chat_history=10) as live:
        host = await live.create("GM")
        reader = await live.raw(query(join=host.room, name="Reader"), deflate=deflate,
                                receive_buffer=SMALL_BUFFER)
        await host.until("event", "session/join")
        first = [(await reader.text()).json(), (await reader.text()).json()]
        assert [f["type"] for f in first] == ["event", "event-cursor"]

        sent = [noise(index, 3000) for index in range(120)]
        received: list[dict[str, Any]] = []
        for batch in range(0, len(sent), 10):
            for text in sent[batch:batch + 10]:
                await acked(host, "chat/message", {"text": text})
            for _ in range(4):  # reads less than was sent: the server's writes back up
                received.append((await reader.text()).json())
        while len(received) < len(sent):
            received.append((await reader.text()).json())

        assert chat_texts(received) == sent
        sequences = [f["serverSequence"] for f in received]
        assert sequences == list(range(sequences[0], sequences[0] + len(sent)))


# Heartbeat over TCP -------------------------------------------------------------------


async def test_ping_frame_reports_latency_and_quality_over_tcp() -> None:
    async with live_server(heartbeat_interval=0.2, heartbeat_timeout=5) as live:
        host = await live.create("GM")
        ping = await host.until("ping")
        latency = ping["data"]["latency"]
        assert isinstance(latency, int | float)
        assert latency >= 0
        assert ping["data"]["quality"] == quality_of(latency)
        await host.until("ping")  # and again, every interval


async def test_client_that_never_answers_pings_is_dropped_and_the_room_told() -> None:
    async with live_server(heartbeat_interval=0.2, heartbeat_timeout=0.5,
                           host_grace=600) as live:
        host = await live.create("GM")
        mute = await live.raw(query(join=host.room, name="Mute"), deflate=False)
        mute_id = await member_id(host, "Mute")
        gone = await host.until("event", "session/disconnected")
        assert gone["data"]["uuid"] == mute_id

        frames = await mute.rest()  # it was pinged, then cut off without a close frame
        opcodes = [f.opcode for f in frames]
        assert Opcode.PING.value in opcodes
        assert Opcode.CLOSE.value not in opcodes
        assert not host.closed.is_set()


# Abrupt disconnects and resume ----------------------------------------------------


async def test_abrupt_close_is_seen_by_others_and_resume_replays_what_was_missed() -> None:
    async with live_server(host_grace=600) as live:
        host = await live.create("GM")
        ana = await live.join(host.room, "Ana")
        await host.until("event", "session/join")
        seen = ana.last_sequence()
        ana.drop()  # the socket is closed without a close frame
        gone = await host.until("event", "session/disconnected")
        assert gone["data"]["uuid"] == ana.uuid

        missed = ["while", "you", "were away"]
        for text in missed:
            await acked(host, "chat/message", {"text": text})
        again = await live.resume(ana, last_seen=seen)
        assert again.uuid == ana.uuid
        cursor = await again.next("event-cursor")
        assert cursor["data"] == {"mode": "resume", "sequence": seen,
                                  "replayThrough": seen + 3}
        replay = [await again.next("event") for _ in missed]
        assert chat_texts(replay) == missed
        assert [f["serverSequence"] for f in replay] == [seen + 1, seen + 2, seen + 3]
        back = await host.until("event", "session/connected")
        assert back["data"]["uuid"] == ana.uuid


# HTTP and limits ----------------------------------------------------------------------


async def test_health_and_ready_answer_over_tcp() -> None:
    async with live_server() as live:
        status, headers, body = await http(live.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert orjson.loads(body)["status"] == "ok"

        status, _, body = await http(live.port, b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, orjson.loads(body)) == (200, {"ready": True})

        status, headers, body = await http(live.port,
                                           b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200
        assert int(headers["content-length"]) > 0
        assert body == b""


@pytest.mark.parametrize("compress", [True, False])
async def test_oversize_message_gets_frame_too_large_then_close_1009(compress: bool) -> None:
    async with live_server(max_message_bytes=1024) as live:
        host = await live.create("GM", compress=compress)
        # Highly compressible: with deflate the limit must apply to the inflated size.
        await host.send_json({"type": "event", "eventId": "big", "timestamp": 0,
                              "data": {"name": "chat/message", "text": "x" * 4000}})
        error = await host.next("error")
        assert error["data"]["code"] == "frame-too-large"
        assert await host.wait_closed() == 1009
        assert not host.events("chat/message")
