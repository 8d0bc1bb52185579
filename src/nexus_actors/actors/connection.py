"""The connection actor: one WebSocket, three tasks (reader, writer, heartbeat).

This module is the only seam onto the WebSocket library: it drives
``websockets``' sans-I/O ``ServerProtocol`` from a small Trio shell, the way
hypercorn drives h11 and wsproto. That gives permessage-deflate, Origin
checks, size limits and a correct closing handshake, while writing stays
ours: everything queued for the client goes out in ONE write, reusing the
frame bytes a broadcast built once for every recipient. On a plain TCP socket
that write is attempted at once, without blocking, when the room flushes
(:meth:`Connection.write_now`); the writer task only runs when the socket
pushes back or for the connection's own frames. Frames smaller than
``compress_min_bytes`` are sent uncompressed even when deflate was
negotiated (RFC 7692 allows it per message).

The reader parses and validates frames (``protocol.inbound``) and forwards
events to the room's mailbox; when the room's mailbox is full it stops
reading, so TCP pushes back on the client instead of memory growing.
"""

from __future__ import annotations

import email.utils
import http
import logging
import math
import os
import struct
from collections.abc import Awaitable, Callable
from typing import TypeVar

import orjson
import trio
from websockets.datastructures import Headers
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from .. import netio
from ..config import Config
from ..deps import Deps
from ..errors import Code, FrameError
from ..metrics import Metrics
from ..protocol import inbound, outbound
from ..protocol.connect import CreateRoom, OpenRequest
from ..protocol.http import HttpReply
from ..protocol.limits import PerAddress, TokenBucket, host_of
from ..protocol.wire import Wire
from . import peer as close
from .mailbox import CursorMailbox
from .messages import (
    Attached,
    CursorsPending,
    Detach,
    Inbound,
    OpenSession,
    Refused,
    RegistryMsg,
    Relay,
    RoomMsg,
    SessionResult,
)
from .peer import Peer
from .relay import UNREACHABLE, Upstream, unreachable_frames
from .services import Node

log = logging.getLogger("nexus_actors.connection")

T = TypeVar("T")

RECEIVE_SIZE = 65536
CREATE_ATTEMPTS = 5
"Server-picked room codes tried before giving up (a picked code may exist in the store)."
FLOOD_TOLERANCE = 3
"A flood closes after this many bursts of dropped messages (forgiven at a tenth of the rate)."
NOTICE_INTERVAL = 1.0
"Seconds between two ``rate-limited`` errors to one connection (no error storm)."
CONTROL_PAYLOAD = 125
"""Largest payload of a control frame (RFC 6455 5.5). The protocol's own size limit is
this much above the message limit, which the connection enforces itself: the library
counts a ping arriving between two fragments against what is left of the message."""


class Handshake:
    """A new stream's HTTP request, read by the WebSocket library's parser.

    The listener routes on :attr:`method` and :attr:`target`, then either answers
    with :meth:`respond` or calls :meth:`upgrade` and hands the handshake to
    :func:`run_connection`.
    """

    def __init__(self, stream: trio.abc.Stream, protocol: ServerProtocol,
                 request: Request) -> None:
        self.stream = stream
        self.protocol = protocol
        self.request = request

    @classmethod
    async def read(cls, stream: trio.abc.Stream, config: Config) -> Handshake | None:
        """Read the request (the caller bounds the time); ``None`` if there is none."""
        protocol = ServerProtocol(
            extensions=[ServerPerMessageDeflateFactory(
                server_max_window_bits=12, client_max_window_bits=12,
                compress_settings={"memLevel": 5})],
            max_size=config.max_message_bytes + CONTROL_PAYLOAD,
        )
        while True:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                protocol.receive_eof()
                return None
            protocol.receive_data(data)
            for event in protocol.events_received():
                if isinstance(event, Request):
                    return cls(stream, protocol, event)
            if protocol.handshake_exc is not None:  # malformed: answered (414, 431) or not
                await _flush(stream, protocol)
                return None

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def target(self) -> str:
        """The request target: path and query string."""
        return self.request.path

    @property
    def address(self) -> str:
        return _address(self.stream)

    def header(self, name: str) -> str | None:
        return self.request.headers.get(name)

    async def respond(self, reply: HttpReply) -> None:
        """Answer a plain HTTP request with JSON and end the stream."""
        payload = reply.body if isinstance(reply.body, bytes) else orjson.dumps(reply.body)
        headers = Headers([
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Type", reply.content_type),
            ("Content-Length", str(len(payload))),
            ("Cache-Control", "no-store"),
        ])
        for key, value in reply.headers.items():
            if key in headers:  # ``Headers`` keeps every value set: replace the default
                del headers[key]
            headers[key] = value
        body = b"" if self.method == "HEAD" else payload
        self.protocol.send_response(
            Response(reply.status, http.HTTPStatus(reply.status).phrase, headers, body))
        await _flush(self.stream, self.protocol)

    async def upgrade(self) -> bool:
        """Accept the WebSocket handshake (or send the library's refusal); true if open."""
        response = self.protocol.accept(self.request)
        self.protocol.send_response(response)
        await _flush(self.stream, self.protocol)
        return response.status_code == 101


async def _flush(stream: trio.abc.Stream, protocol: ServerProtocol) -> None:
    for chunk in protocol.data_to_send():
        if chunk:
            await stream.send_all(chunk)


def _address(stream: trio.abc.Stream) -> str:
    socket_stream = stream
    while isinstance(socket_stream, trio.SSLStream):
        socket_stream = socket_stream.transport_stream
    if isinstance(socket_stream, trio.SocketStream):
        try:
            host, port, *_ = socket_stream.socket.getpeername()
        except OSError:
            return "?"
        return f"{host}:{port}"
    return "memory"


class Connection:
    """State shared by the three tasks of one connection actor."""

    def __init__(self, stream: trio.abc.Stream, protocol: ServerProtocol, peer: Peer,
                 config: Config, deps: Deps) -> None:
        self.stream = stream
        self.protocol = protocol
        self.peer = peer
        self.config = config
        self.deps = deps
        self.deflate = bool(protocol.extensions)
        self.fragments: list[bytes] = []
        self.fragments_size = 0
        "Bytes of the message being assembled."
        self.failed = False
        "The connection was failed for a message over the limit; nothing more is read."
        self.binary = False
        "The message being assembled is a binary one."
        self.room: trio.MemorySendChannel[RoomMsg] | None = None
        self.cursors: CursorMailbox | None = None
        self.upstream: Upstream | None = None
        "The room's owner, when this connection is relayed to another process."
        self.left = False
        "The client went (EOF, or a close frame) before it was given its seat."
        self.pongs: dict[bytes, trio.Event] = {}
        now = trio.current_time()
        self.bucket = TokenBucket(config.rate_limit, config.rate_burst, updated=now)
        self.abuse = TokenBucket(config.rate_limit / 10, FLOOD_TOLERANCE * config.rate_burst,
                                 updated=now)
        "Each dropped message takes a token; a client that empties it is flooding."
        self.next_notice = now
        self.socket = netio.plain_socket(stream)
        "The TCP socket to read and write directly, or ``None`` (TLS, in-memory streams)."
        self.writing = False
        "The writer task is in the middle of a write."
        self.leftover = b""
        "The unsent tail of a direct write; the writer sends it first."

    # Writer -------------------------------------------------------------

    def write_now(self) -> bool:
        """Write what is queued without blocking; ``False``: the writer task must finish."""
        peer = self.peer
        if (self.socket is None or self.writing or self.leftover or peer.closing is not None
                or peer.aborted or self.protocol.writes):
            return False
        frames = peer.take()
        if len(frames) == 1:
            data = self._frame_bytes(frames[0])
        else:
            data = b"".join([self._frame_bytes(wire) for wire in frames])
        try:
            # fileno() is -1 once the socket is closed: never a reused descriptor.
            sent = os.write(self.socket.fileno(), data)
        except BlockingIOError:
            sent = 0
        except OSError:
            peer.abort()
            return True
        if sent == len(data):
            return True
        self.leftover = data[sent:]
        return False

    def _frame_bytes(self, wire: Wire) -> bytes:
        if self.deflate and len(wire.payload) >= self.config.compress_min_bytes:
            return Frame(Opcode.TEXT, wire.payload).serialize(
                mask=False, extensions=self.protocol.extensions)
        return wire.frame

    async def writer(self, cancel: trio.CancelScope) -> None:
        """Write everything queued, once per wake-up, until the close handshake ends."""
        peer = self.peer
        protocol = self.protocol
        close_sent = False
        while True:
            await peer.wait()
            if peer.aborted:
                cancel.cancel()
                return
            buffer = bytearray(self.leftover)
            self.leftover = b""
            for wire in peer.take():
                buffer += self._frame_bytes(wire)
            request = peer.closing
            if request is not None and not close_sent and protocol.state is OPEN:
                for wire in request.final:
                    buffer += self._frame_bytes(wire)
                protocol.send_close(request.code, request.reason)
                close_sent = True
            eof = False
            for chunk in protocol.data_to_send():
                if chunk:
                    buffer += chunk
                else:
                    eof = True
            self.writing = True
            try:
                if buffer:
                    await self.stream.send_all(buffer)
                if eof:
                    await self.stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                cancel.cancel()
                return
            finally:
                self.writing = False
            if eof:
                cancel.cancel()
                return

    # Reader -------------------------------------------------------------

    async def reader(self) -> None:
        """Feed received bytes to the protocol and handle what comes out, until EOF."""
        protocol = self.protocol
        await self._dispatch(self._handle_events())  # frames that came with the handshake
        while True:
            try:
                data = await self._receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if not data:
                protocol.receive_eof()
                self.peer.wake()
                return
            protocol.receive_data(data)
            await self._dispatch(self._handle_events())
            if protocol.writes:
                self.peer.wake()
            if protocol.parser_exc is not None:
                self._report_parser_error()
                return
            if self.failed:
                return

    async def _receive(self) -> bytes | bytearray:
        """The next bytes from the client (``b""`` at EOF): on a plain TCP socket, one
        read once it is readable (a client sends a frame at a time)."""
        return await netio.receive(self.stream, self.socket, RECEIVE_SIZE)

    def _handle_events(self) -> list[bytes | None]:
        """Complete messages received (``None`` for a binary one); answers pongs."""
        messages: list[bytes | None] = []
        for event in self.protocol.events_received():
            if not isinstance(event, Frame):
                continue
            opcode = event.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY or opcode is Opcode.CONT:
                if opcode is not Opcode.CONT:
                    self.fragments = []
                    self.fragments_size = 0
                    self.binary = opcode is Opcode.BINARY
                self.fragments_size += len(event.data)
                if self.fragments_size > self.config.max_message_bytes:
                    self._too_big()
                    self.protocol.fail(close.TOO_BIG, "message too big")
                    self.failed = True
                    break
                self.fragments.append(bytes(event.data))
                if event.fin:
                    messages.append(None if self.binary else b"".join(self.fragments))
                    self.fragments = []
            elif opcode is Opcode.PONG:
                waiter = self.pongs.pop(bytes(event.data), None)
                if waiter is not None:
                    waiter.set()
            elif opcode is Opcode.PING:
                pass  # the protocol queued the pong; the reader wakes the writer
        return messages

    def _report_parser_error(self) -> None:
        if self.protocol.close_sent is not None and self.protocol.close_sent.code == close.TOO_BIG:
            self._too_big()

    def _too_big(self) -> None:
        """The reason for a 1009 close, sent before the close frame the protocol queues."""
        self.peer.send(outbound.error(
            Code.FRAME_TOO_LARGE, f"messages are limited to {self.config.max_message_bytes} bytes",
            self.deps.wall_ms()))
        self.peer.wake()

    async def _dispatch(self, messages: list[bytes | None]) -> None:
        for raw in messages:
            now = trio.current_time()
            if not self.bucket.take(now):
                self._count_in("rate-limited")
                self._rate_limited(now)
                continue
            if raw is None:
                self._count_in("binary")
                self.peer.send(outbound.error(
                    Code.BINARY_FRAME, "binary frames are not part of protocol v1",
                    self.deps.wall_ms()))
                continue
            if self.upstream is not None:
                self.upstream.up(raw)  # the owner validates it, as for its own clients
                continue
            try:
                message = inbound.decode(raw)
            except FrameError as exc:
                self._count_in("malformed")
                self.peer.send(outbound.error(exc.code, exc.message, self.deps.wall_ms(),
                                              event_id=exc.event_id))
                continue
            self._count_in("heartbeat" if isinstance(message, inbound.Heartbeat)
                           else message.name)
            if isinstance(message, inbound.Heartbeat):
                self.peer.send(outbound.heartbeat_pong(message.id, self.deps.wall_ms()))
                continue
            payload = message.payload
            if isinstance(payload, inbound.CursorUpdate):
                if self.cursors is not None and self.cursors.put(
                        self.peer.id, payload.scene_id, payload.position.x, payload.position.y):
                    await self._to_room(CursorsPending())
                continue
            await self._to_room(Inbound(peer_id=self.peer.id, frame=message))

    def _count_in(self, kind: str) -> None:
        if self.peer.metrics is not None:
            self.peer.metrics.frames_in[kind] += 1

    def _rate_limited(self, now: float) -> None:
        """Drop a message over the rate: tell the client (at most once a second); close floods."""
        if now >= self.next_notice:
            self.next_notice = now + NOTICE_INTERVAL
            retry = max(1, math.ceil(self.bucket.retry_after() * 1000))  # enough, never short
            self.peer.send(outbound.error(Code.RATE_LIMITED, "too many messages; slow down",
                                          self.deps.wall_ms(), retryAfterMs=retry))
        if not self.abuse.take(now):
            log.info("connection %s is flooding; closing", self.peer.id)
            self.peer.close(close.POLICY, "flooding",
                            self._backoff("flooding", self.config.overload_retry_ms * 5),
                            discard_pending=True)

    async def _to_room(self, message: RoomMsg) -> None:
        room = self.room
        if room is None:
            return
        try:
            room.send_nowait(message)
            return
        except trio.WouldBlock:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._room_gone()
            return
        # The room is behind: stop reading (TCP pushes back), but not for ever.
        with trio.move_on_after(self.config.heartbeat_timeout) as waited:
            try:
                await room.send(message)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._room_gone()
                return
        if waited.cancelled_caught:
            self.peer.close(close.TRY_AGAIN_LATER, "room overloaded",
                            self._backoff("overloaded", self.config.overload_retry_ms))

    def _backoff(self, reason: str, base_ms: int) -> Wire:
        return outbound.backoff(reason, outbound.jitter(base_ms, self.deps.random),
                                self.deps.wall_ms())

    def _room_gone(self) -> None:
        self.peer.close(close.SERVICE_RESTART, "room restart",
                        self._backoff("room-restart", self.config.restart_retry_ms))

    # Heartbeat ----------------------------------------------------------

    async def heartbeat(self) -> None:
        """Ping every interval; a pong late by more than the timeout means a dead peer."""
        counter = 0
        while True:
            await trio.sleep(self.config.heartbeat_interval)
            if self.peer.closing is not None or self.protocol.state is not OPEN:
                return
            counter += 1
            payload = struct.pack("!I", counter)
            waiter = self.pongs[payload] = trio.Event()
            sent = trio.current_time()
            self.protocol.send_ping(payload)
            self.peer.wake()
            with trio.move_on_after(self.config.heartbeat_timeout):
                await waiter.wait()
            if not waiter.is_set():
                log.info("connection %s missed its pong; closing", self.peer.id)
                self.peer.abort()
                return
            rtt = trio.current_time() - sent
            latency_ms = rtt * 1000
            if self.peer.metrics is not None:
                self.peer.metrics.rtt.observe(rtt)
            self.peer.send(outbound.ping(latency_ms, self.deps.wall_ms()))


async def _open_session(registry: trio.MemorySendChannel[RegistryMsg], request: OpenRequest,
                        peer: Peer, relayed: bool) -> SessionResult:
    """Ask the registry for a seat; retry server-picked codes that turned out to be taken."""
    result: SessionResult | None = None
    for _ in range(CREATE_ATTEMPTS):
        result = None
        reply_send, reply_receive = trio.open_memory_channel[SessionResult](1)
        with reply_receive:
            try:
                await registry.send(OpenSession(request=request, peer=peer, reply=reply_send,
                                                relayed=relayed))
                result = await reply_receive.receive()
            finally:
                if result is None:
                    _give_back(reply_receive, peer)
        retry_code = (isinstance(request, CreateRoom) and request.code is None
                      and isinstance(result, Refused) and result.code is Code.ROOM_EXISTS)
        if not retry_code:
            return result
    assert result is not None
    return result


GUESSES = frozenset({Code.ROOM_NOT_FOUND, Code.INVALID_TOKEN})
"Refusals that count as a failed guess of a room code or a resume token."


async def run_connection(handshake: Handshake, request: OpenRequest | Refused, peer: Peer,
                         config: Config, deps: Deps,
                         registry: trio.MemorySendChannel[RegistryMsg],
                         failures: PerAddress, node: Node, *, relayed: bool = False) -> None:
    """Serve one upgraded WebSocket until it closes (``Refused``: explain and close).

    ``failures`` counts failed joins and reconnects per address; an address out of
    tokens is refused ``rate-limited`` before any room is asked. A room another process
    owns is relayed to it (unless the connection was ``relayed`` here already).
    """
    stream = handshake.stream
    conn = Connection(stream, handshake.protocol, peer, config, deps)
    host = host_of(peer.address)
    guessing = not isinstance(request, (Refused, CreateRoom))
    try:
        async with trio.open_nursery() as nursery:
            cancel = nursery.cancel_scope
            peer.bind(cancel, config.close_timeout,
                      conn.write_now if conn.socket is not None else None)
            nursery.start_soon(conn.writer, cancel)
            result: SessionResult | None = request if isinstance(request, Refused) else None
            if guessing and not failures.allows(host, trio.current_time()):
                retry = max(1, math.ceil(failures.retry_after(host) * 1000))
                peer.close(close.POLICY, "too many failed joins", outbound.error(
                    Code.RATE_LIMITED, "too many failed joins from this address; wait",
                    deps.wall_ms(), retryAfterMs=retry))
                await conn.reader()
                return
            with trio.move_on_after(config.handshake_timeout) as joining:
                if result is None:
                    assert not isinstance(request, Refused)
                    result = await _while_the_client_stays(
                        conn, _open_session(registry, request, peer, relayed))
            if conn.left:  # it went while it waited: its seat is not taken in its name
                cancel.cancel()
                return
            if result is None or joining.cancelled_caught:
                peer.close(close.TRY_AGAIN_LATER, "join timed out",
                           outbound.error(Code.UNAVAILABLE, "the room did not answer in time",
                                          deps.wall_ms()),
                           conn._backoff("unavailable", config.overload_retry_ms))
                await conn.reader()
                return
            if isinstance(result, Relay):
                await _relay(conn, result, handshake.target, node, nursery)
                return
            if not isinstance(result, Attached):
                if guessing and result.code in GUESSES:
                    failures.take(host, trio.current_time())
                frames = [outbound.error(result.code, result.message, deps.wall_ms())]
                if result.backoff is not None:
                    frames.append(result.backoff)
                peer.close(result.close_code, str(result.code)[:120], *frames)
                await conn.reader()
                return
            conn.room = result.room
            conn.cursors = result.cursors
            nursery.start_soon(conn.heartbeat)
            await conn.reader()
            # The client closed or vanished: let the writer answer a close, then stop.
            cancel.deadline = min(cancel.deadline, trio.current_time() + config.close_timeout)
    finally:
        peer.closed = True
        room = conn.room
        if room is not None:
            _detach(room, peer)
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await stream.aclose()


async def _while_the_client_stays(conn: Connection, waiting: Awaitable[T]) -> T | None:
    """``waiting``, unless the client leaves first (EOF, or a close frame): then ``None``
    and ``conn.left``. What it sends meanwhile is kept for the reader. A seat asked for by
    a client that has gone must not be taken: it would supersede, and rotate the token
    of, the connection that client opened since (a room loading slowly, a relay to a
    room's owner through a process that waited for the database)."""
    result: T | None = None  # stays None if the client left first
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_for_leaving, conn, nursery.cancel_scope)
        result = await waiting
        nursery.cancel_scope.cancel()
    return result


async def _watch_for_leaving(conn: Connection, wait: trio.CancelScope) -> None:
    protocol = conn.protocol
    kept = 0
    while kept <= conn.config.max_message_bytes:  # then TCP pushes back, as before
        try:
            data = await conn._receive()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            data = b""
        kept += len(data)
        if data:
            protocol.receive_data(data)
        else:
            protocol.receive_eof()
        if not data or protocol.close_rcvd is not None or protocol.parser_exc is not None:
            conn.left = True
            wait.cancel()
            return


async def _relay(conn: Connection, relay: Relay, target: str, node: Node,
                 nursery: trio.Nursery) -> None:
    """Serve the connection by relaying it to the room's owner."""
    peer, config, deps = conn.peer, conn.config, conn.deps
    metrics = peer.metrics
    url = relay.url

    async def open_upstream() -> Upstream | None:
        """The relay's connection to the owner; ``None`` if the owner cannot be reached."""
        try:
            with trio.fail_after(config.handshake_timeout):
                stream = await deps.dial(url)
                try:
                    return await Upstream.open(
                        stream, url, target, peer=peer, node=node,
                        idle_timeout=config.heartbeat_interval + config.heartbeat_timeout)
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
        except UNREACHABLE:
            return None

    reached = await _while_the_client_stays(conn, open_upstream())
    if conn.left:  # the client went meanwhile: nothing more is asked in its name
        if reached is not None:
            await trio.aclose_forcefully(reached.link.stream)
        nursery.cancel_scope.cancel()
        return
    if reached is None:
        if metrics is not None:
            metrics.relays["unreachable"] += 1
        # Come back once its lease may have expired (then the room moves), not before.
        retry = outbound.after_lease(relay.remaining, config.restart_retry_ms, deps.random)
        peer.close(close.TRY_AGAIN_LATER, "room unavailable",
                   *unreachable_frames(url, retry, deps.wall_ms()))
        await conn.reader()
        return
    upstream = reached
    if metrics is not None:
        metrics.relays["opened"] += 1
        metrics.relays_open += 1
    try:
        conn.upstream = upstream
        nursery.start_soon(conn.heartbeat)
        async with trio.open_nursery() as relaying:
            relaying.start_soon(upstream.pump, config.close_timeout,
                                conn._backoff("room-restart", config.restart_retry_ms))
            await conn.reader()
            received = conn.protocol.close_rcvd
            upstream.close(received.code if received is not None else 1000)
            # The owner answers the close (bounded): then the pump closes the client.
            relaying.cancel_scope.deadline = trio.current_time() + config.close_timeout
    finally:
        if metrics is not None:
            metrics.relays_open -= 1


def _give_back(replies: trio.MemoryReceiveChannel[SessionResult], peer: Peer) -> None:
    """Cancelled while waiting for a seat: if it was granted anyway, give it back."""
    try:
        late = replies.receive_nowait()
    except (trio.WouldBlock, trio.EndOfChannel):
        return
    if isinstance(late, Attached):
        _detach(late.room, peer)


def _detach(room: trio.MemorySendChannel[RoomMsg], peer: Peer) -> None:
    try:
        room.send_nowait(Detach(peer_id=peer.id))
    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the room's sweep notices ``peer.closed``
    room.close()


def peer_factory(config: Config, deps: Deps,
                 metrics: Metrics | None = None) -> Callable[[int, str], Peer]:
    """Peers whose overflow closes them as slow consumers with a backoff hint."""

    def on_overflow(peer: Peer) -> None:
        log.info("connection %s is a slow consumer; closing", peer.id)
        peer.close(close.TRY_AGAIN_LATER, "slow consumer",
                   outbound.backoff("slow-consumer",
                                    outbound.jitter(config.overload_retry_ms, deps.random),
                                    deps.wall_ms()))

    def make(peer_id: int, address: str) -> Peer:
        return Peer(peer_id, address, max_frames=config.outbox_frames,
                    max_bytes=config.outbox_bytes, on_overflow=on_overflow, metrics=metrics)

    return make
