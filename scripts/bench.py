"""Load benchmark: R rooms x P real WebSocket clients over loopback.

Starts ``nexus-actors serve`` as a separate process (pinned to one core when
``taskset`` exists), connects the clients from this process (pinned to another
core), and for ``--seconds`` sends cursors at ``--cursor-hz`` per player plus
``--moves`` durable token moves per player per second. Prints cursor delivery
latency, ack latency, delivered ratios and the server's CPU time per delivered
frame. Run it with ``scripts/bench``; it is not part of the test suite.

The clients are deliberately lean (raw frames, zero masking key, no
compression) so that the load generator is not the bottleneck.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio

CLOCK = time.monotonic


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def text_frame(payload: bytes) -> bytes:
    """A client text frame with an all-zero masking key (the payload needs no masking)."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x81, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, length)
    return header + b"\x00\x00\x00\x00" + payload


@dataclass
class Stats:
    cursor_latency: list[float] = field(default_factory=list)
    ack_latency: list[float] = field(default_factory=list)
    ack_inbound: list[float] = field(default_factory=list)
    "Wall ms from sending a move to the server applying it (the ack's timestamp)."
    ack_outbound: list[float] = field(default_factory=list)
    "Wall ms from the server applying a move to its ack arriving (commit and delivery)."
    frames: int = 0
    cursor_entries: int = 0
    moves_sent: int = 0
    moves_received: int = 0
    acks: int = 0
    closes: int = 0
    errors: int = 0
    measuring: bool = False
    measured_moves: set[str] = field(default_factory=set)
    "eventIds of moves sent during the window: their acks and deliveries are counted."


class BenchClient:
    def __init__(self, stream: trio.SocketStream, stats: Stats) -> None:
        self.stream = stream
        self.stats = stats
        self.buffer = bytearray()
        self.session: dict[str, Any] = {}
        self.pending_acks: dict[str, float] = {}
        self.seq = 0

    @classmethod
    async def open(cls, port: int, target: str, stats: Stats) -> BenchClient:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   f"Sec-WebSocket-Version: 13\r\n\r\n")
        await stream.send_all(request.encode())
        client = cls(stream, stats)
        while b"\r\n\r\n" not in client.buffer:
            data = await stream.receive_some(65536)
            if not data:
                raise RuntimeError("closed during handshake")
            client.buffer += data
        head, _, rest = bytes(client.buffer).partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"handshake failed: {head[:200]!r}")
        client.buffer = bytearray(rest)
        return client

    def frames(self) -> list[tuple[int, bytes]]:
        """Complete frames in the buffer as ``(opcode, payload)``."""
        out = []
        buf = self.buffer
        while len(buf) >= 2:
            length = buf[1] & 0x7F
            offset = 2
            if length == 126:
                if len(buf) < 4:
                    break
                length = struct.unpack_from("!H", buf, 2)[0]
                offset = 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length = struct.unpack_from("!Q", buf, 2)[0]
                offset = 10
            if len(buf) < offset + length:
                break
            opcode = buf[0] & 0x0F
            out.append((opcode, bytes(buf[offset:offset + length])))
            del buf[:offset + length]
            if opcode == 0x8:
                self.stats.closes += 1
        return out

    async def first_frame(self) -> dict[str, Any]:
        while True:
            for opcode, payload in self.frames():
                if opcode == 0x1:
                    return dict(orjson.loads(payload))
            data = await self.stream.receive_some(65536)
            if not data:
                raise RuntimeError("closed")
            self.buffer += data

    async def wait_for(self, marker: bytes) -> None:
        """Read frames until one containing ``marker`` (set-up only)."""
        while True:
            for opcode, payload in self.frames():
                if opcode == 0x1 and marker in payload:
                    return
                if opcode == 0x1 and payload.startswith(b'{"type":"error"'):
                    raise RuntimeError(payload.decode())
            data = await self.stream.receive_some(65536)
            if not data:
                raise RuntimeError("closed")
            self.buffer += data

    async def reader(self) -> None:
        stats = self.stats
        while True:
            try:
                data = await self.stream.receive_some(262144)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            self.buffer += data
            now = CLOCK() * 1000
            for opcode, payload in self.frames():
                if opcode == 0x9:  # ping: answer with a pong
                    await self.stream.send_all(struct.pack("!BB", 0x8A, 0x80 | len(payload))
                                               + b"\x00\x00\x00\x00" + payload)
                    continue
                if opcode != 0x1:
                    continue
                if payload.startswith(b'{"type":"event-ack"'):
                    message = orjson.loads(payload)
                    sent = self.pending_acks.pop(message["data"]["eventId"], None)
                    if sent is not None:
                        stats.acks += 1
                        stats.ack_latency.append(now - sent)
                        wall = time.time() * 1000
                        applied = message["timestamp"]
                        stats.ack_inbound.append(applied - (wall - (now - sent)))
                        stats.ack_outbound.append(wall - applied)
                elif payload.startswith(b'{"type":"error"'):
                    stats.errors += 1
                elif b'"token/move"' in payload:
                    message = orjson.loads(payload)
                    if message.get("eventId") in stats.measured_moves and (
                            message.get("actorId") != self.session.get("uuid")):
                        stats.moves_received += 1
                if not stats.measuring:
                    continue
                stats.frames += 1
                if payload.startswith(b'{"type":"cursors"'):
                    message = orjson.loads(payload)
                    for cursor in message["data"]["cursors"]:
                        stats.cursor_entries += 1
                        stats.cursor_latency.append(now - cursor["position"]["x"])

    async def send(self, message: dict[str, Any]) -> None:
        await self.stream.send_all(text_frame(orjson.dumps(message)))


async def run_room(port: int, room_index: int, args: argparse.Namespace, stats: Stats,
                   nursery: trio.Nursery, ready: trio.Event, go: trio.Event,
                   done: trio.Event) -> None:
    host = await BenchClient.open(port, "/ws?host&name=gm", stats)
    host.session = (await host.first_frame())["data"]
    code = host.session["roomCode"]
    clients = [host]
    for index in range(1, args.players):
        client = await BenchClient.open(port, f"/ws?join={code}&name=p{index}", stats)
        client.session = (await client.first_frame())["data"]
        clients.append(client)
    scene = {"type": "event", "data": {"name": "scene/create",
                                       "scene": {"id": f"s{room_index}", "name": "bench"}},
             "eventId": f"scene-{room_index}"}
    await host.send(scene)
    await host.wait_for(b'"event-ack"')
    for index, client in enumerate(clients):
        await client.send({"type": "event", "data": {"name": "token/create", "token": {
            "id": f"t{room_index}-{index}", "sceneId": f"s{room_index}",
            "position": {"x": 0, "y": 0}}}, "eventId": f"tok-{room_index}-{index}"})
        await client.wait_for(b'"event-ack"')
    for client in clients:
        nursery.start_soon(client.reader)
    ready.set()
    await go.wait()
    interval = 1.0 / args.cursor_hz
    move_every = max(1, round(args.cursor_hz / args.moves)) if args.moves else 0
    tick = 0
    next_at = trio.current_time() + room_index * interval / max(1, args.rooms)
    while not done.is_set():
        await trio.sleep_until(next_at)
        next_at += interval
        tick += 1
        now = CLOCK() * 1000
        for index, client in enumerate(clients):
            frames = [text_frame(orjson.dumps({"type": "event", "data": {
                "name": "cursor/update", "sceneId": f"s{room_index}",
                "position": {"x": now, "y": float(index)}}}))]
            if move_every and (tick + index) % move_every == 0:
                client.seq += 1
                event_id = f"m{room_index}-{index}-{client.seq}"
                if stats.measuring:
                    client.pending_acks[event_id] = now
                    stats.measured_moves.add(event_id)
                    stats.moves_sent += 1
                frames.append(text_frame(orjson.dumps({"type": "event", "data": {
                    "name": "token/move", "tokenId": f"t{room_index}-{index}",
                    "position": {"x": float(client.seq), "y": 1.0}}, "eventId": event_id})))
            try:
                await client.stream.send_all(b"".join(frames))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def wait_ready(port: int) -> None:
    with trio.fail_after(30):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.1)
                continue
            await stream.aclose()
            return


async def bench(args: argparse.Namespace, port: int, pid: int) -> dict[str, Any]:
    stats = Stats()
    await wait_ready(port)
    go, done = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        readies = []
        for room_index in range(args.rooms):
            ready = trio.Event()
            readies.append(ready)
            nursery.start_soon(run_room, port, room_index, args, stats, nursery, ready, go, done)
        with trio.fail_after(60):
            for ready in readies:
                await ready.wait()
        go.set()
        await trio.sleep(args.warmup)
        stats.measuring = True
        cpu_start, wall_start = cpu_seconds(pid), CLOCK()
        own_start = sum(os.times()[:2])
        await trio.sleep(args.seconds)
        cpu_used, wall = cpu_seconds(pid) - cpu_start, CLOCK() - wall_start
        own_used = sum(os.times()[:2]) - own_start
        stats.measuring = False
        rss = rss_mib(pid)
        done.set()
        # Acks and deliveries of moves sent in the window still count if they arrive late.
        with trio.move_on_after(5.0):
            while stats.acks < stats.moves_sent:  # noqa: ASYNC110 - polling a counter the readers bump
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    expected_moves = stats.moves_sent * (args.players - 1)
    return {
        "rooms": args.rooms, "players": args.players, "cursor_hz": args.cursor_hz,
        "moves_per_s": args.moves, "seconds": round(wall, 1),
        "cursor_p50_ms": round(percentile(stats.cursor_latency, 50), 1),
        "cursor_p99_ms": round(percentile(stats.cursor_latency, 99), 1),
        "ack_p50_ms": round(percentile(stats.ack_latency, 50), 1),
        "ack_p99_ms": round(percentile(stats.ack_latency, 99), 1),
        "ack_inbound_p50_p99_ms": (round(percentile(stats.ack_inbound, 50), 1),
                                   round(percentile(stats.ack_inbound, 99), 1)),
        "ack_outbound_p50_p99_ms": (round(percentile(stats.ack_outbound, 50), 1),
                                    round(percentile(stats.ack_outbound, 99), 1)),
        "acks_received_ratio": round(stats.acks / stats.moves_sent, 4) if stats.moves_sent else 1,
        "moves_delivered_ratio": (round(stats.moves_received / expected_moves, 4)
                                  if expected_moves else 1),
        "frames_delivered_per_s": round(stats.frames / wall),
        "cursor_updates_delivered_per_s": round(stats.cursor_entries / wall),
        "server_cpu_percent": round(100 * cpu_used / wall, 1),
        "server_cpu_us_per_frame": round(1e6 * cpu_used / max(1, stats.frames), 2),
        "server_cpu_us_per_update": round(
            1e6 * cpu_used / max(1, stats.cursor_entries + stats.moves_received), 2),
        "server_rss_mib": round(rss, 1),
        "loadgen_cpu_percent": round(100 * own_used / wall, 1),
        "closes": stats.closes,
        "errors": stats.errors,
        "cursor_latency_mean_ms": round(statistics.fmean(stats.cursor_latency), 1)
        if stats.cursor_latency else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--players", type=int, default=10)
    parser.add_argument("--cursor-hz", type=float, default=20.0)
    parser.add_argument("--moves", type=float, default=1.0, help="token moves per player per s")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--port", type=int, default=0, help="0: pick a free port")
    parser.add_argument("--server-cpu", default="0", help="core to pin the server to")
    parser.add_argument("--client-cpu", default="1", help="core to pin this load generator to")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    port = args.port
    if port == 0:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    env = dict(os.environ, PORT=str(port), NEXUS_HOST="127.0.0.1", LOG_LEVEL="warning")
    command = [sys.executable, "-m", "nexus_actors", "serve"]
    if os.environ.get("BENCH_SERVER_PREFIX"):
        command = [*os.environ["BENCH_SERVER_PREFIX"].split(), *command]
    taskset = shutil.which("taskset")
    if taskset:
        command = [taskset, "-c", args.server_cpu, *command]
        os.sched_setaffinity(0, {int(args.client_cpu)})
    server = subprocess.Popen(command, env=env)
    try:
        result = trio.run(bench, args, port, server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        width = max(len(k) for k in result)
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
