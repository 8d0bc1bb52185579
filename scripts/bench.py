"""Load benchmark: R rooms x P real WebSocket clients over loopback.

Starts ``nexus-actors serve`` as a separate process (pinned to one core when
``taskset`` exists), connects the clients from a load generator pinned to
another core, and for ``--seconds`` sends cursors at ``--cursor-hz`` per player
plus ``--moves`` durable token moves per player per second. Prints cursor
delivery latency, ack latency, delivered ratios and the server's CPU time per
delivered frame. Run it with ``scripts/bench``; it is not part of the test suite.

The load generator is ``scripts/loadgen/loadgen.mjs`` on Node.js (``--client
node``, the default when ``node`` is on PATH and ``npm ci`` can install its one
package), or the Trio clients in this file (``--client python``). The Python
clients are lean (raw frames, zero masking key, no compression) but at 50 rooms
x 10 players they use most of their core and their own event-loop jitter shows
in the tail latencies; the Node one does the same work with about half the CPU.
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
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import trio

CLOCK = time.monotonic
LOADGEN = Path(__file__).resolve().parent / "loadgen"
"The Node.js load generator's package (``loadgen.mjs``, ``package-lock.json``)."
SETTLE_SECONDS = 5.0
"How long after the window acks and deliveries of moves sent in it still count."


def summarize(values: list[float]) -> dict[str, Any]:
    """count, mean, p50, p99 and max of latencies in ms (the same rule as loadgen.mjs)."""
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)
    last = len(ordered) - 1

    def at(q: float) -> float:
        return ordered[min(last, max(0, round(q / 100 * last)))]

    return {"count": len(ordered), "mean": statistics.fmean(ordered), "p50": at(50),
            "p99": at(99), "max": ordered[last]}


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
    others: int = 0
    "Players who should receive each move (all but its sender)."
    settling: bool = False
    "The window is over: ``settled`` is set once every measured move is acked and delivered."
    settled: trio.Event = field(default_factory=trio.Event)

    def check(self) -> None:
        if (self.settling and self.acks >= self.moves_sent
                and self.moves_received >= self.moves_sent * self.others):
            self.settled.set()


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
                        stats.check()
                elif payload.startswith(b'{"type":"error"'):
                    stats.errors += 1
                elif b'"token/move"' in payload:
                    message = orjson.loads(payload)
                    if message.get("eventId") in stats.measured_moves and (
                            message.get("actorId") != self.session.get("uuid")):
                        stats.moves_received += 1
                        stats.check()
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
            # Each player moves at its own phase: durable writes arrive evenly over time.
            if move_every and (tick + room_index * len(clients) + index) % move_every == 0:
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


@dataclass
class Window:
    """The server's CPU time and the wall time over the measured window, its RSS at the end."""

    pid: int
    cpu: float = 0.0
    "Server CPU seconds (user + system) used in the window."
    wall: float = 0.0
    "Wall seconds of the window, as this process saw it."
    rss: float = float("nan")
    "Server RSS in MiB at the end of the window."

    def start(self) -> None:
        self.cpu, self.wall = -cpu_seconds(self.pid), -CLOCK()

    def stop(self) -> None:
        self.cpu += cpu_seconds(self.pid)
        self.wall += CLOCK()
        self.rss = rss_mib(self.pid)


async def bench_python(args: argparse.Namespace, port: int,
                       pid: int) -> tuple[dict[str, Any], Window]:
    """Drive the load from this process; return a summary shaped like loadgen.mjs's output."""
    stats = Stats(others=args.players - 1)
    window = Window(pid)
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
        window.start()
        own_start, wall_start = sum(os.times()[:2]), CLOCK()
        await trio.sleep(args.seconds)
        own_used, wall = sum(os.times()[:2]) - own_start, CLOCK() - wall_start
        window.stop()
        stats.measuring = False
        done.set()
        # Acks and deliveries of moves sent in the window still count if they arrive late.
        stats.settling = True
        stats.check()
        with trio.move_on_after(SETTLE_SECONDS):
            await stats.settled.wait()
        nursery.cancel_scope.cancel()
    return {
        "client": "python", "seconds": wall,
        "cursor_latency_ms": summarize(stats.cursor_latency),
        "ack_latency_ms": summarize(stats.ack_latency),
        "ack_inbound_ms": summarize(stats.ack_inbound),
        "ack_outbound_ms": summarize(stats.ack_outbound),
        "frames": stats.frames, "cursor_entries": stats.cursor_entries,
        "moves_sent": stats.moves_sent, "acks": stats.acks,
        "moves_received": stats.moves_received, "errors": stats.errors, "closes": stats.closes,
        "cpu_percent": 100 * own_used / wall, "loop_delay_ms": None,
    }, window


async def bench_node(args: argparse.Namespace, port: int, pid: int,
                     node: str) -> tuple[dict[str, Any], Window]:
    """Run loadgen.mjs pinned to the client core; sample the server at its window's edges."""
    command = [node, str(LOADGEN / "loadgen.mjs"), "--port", str(port),
               "--rooms", str(args.rooms), "--players", str(args.players),
               "--cursor-hz", str(args.cursor_hz), "--moves", str(args.moves),
               "--seconds", str(args.seconds), "--warmup", str(args.warmup)]
    taskset = shutil.which("taskset")
    if taskset:
        command = [taskset, "-c", args.client_cpu, *command]
    window = Window(pid)
    output = bytearray()

    async def read_stdout(stream: trio.abc.ReceiveStream) -> None:
        async for chunk in stream:
            output.extend(chunk)

    async def read_stderr(stream: trio.abc.ReceiveStream) -> None:
        pending = b""
        async for chunk in stream:
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if line == b"loadgen: window start":
                    window.start()
                elif line == b"loadgen: window end":
                    window.stop()
                else:
                    sys.stderr.buffer.write(line + b"\n")
                    sys.stderr.flush()
        if pending:
            sys.stderr.buffer.write(pending + b"\n")

    # Set-up may take up to 60 s in loadgen.mjs; then warm-up, the window and the settling.
    with trio.fail_after(90 + args.warmup + args.seconds + SETTLE_SECONDS):
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(partial(
                trio.run_process, command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                check=False))
            assert process.stdout is not None
            assert process.stderr is not None
            nursery.start_soon(read_stdout, process.stdout)
            nursery.start_soon(read_stderr, process.stderr)
    if process.returncode != 0:
        raise SystemExit(f"bench: loadgen.mjs exited with status {process.returncode}")
    loadgen: dict[str, Any] = orjson.loads(output)
    if loadgen["drops"] or loadgen["socket_errors"]:
        print(f"bench: {loadgen['drops']} connections dropped without a close frame, "
              f"{loadgen['socket_errors']} socket errors", file=sys.stderr)
    return loadgen, window


async def bench(args: argparse.Namespace, port: int, pid: int,
                node: str | None) -> dict[str, Any]:
    await wait_ready(port)
    if node is None:
        loadgen, window = await bench_python(args, port, pid)
    else:
        loadgen, window = await bench_node(args, port, pid, node)
    return report(args, loadgen, window)


def report(args: argparse.Namespace, loadgen: dict[str, Any], window: Window) -> dict[str, Any]:
    """The printed report, from a load generator's summary and the server's window."""

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    wall = loadgen["seconds"]
    cursor, ack = loadgen["cursor_latency_ms"], loadgen["ack_latency_ms"]
    inbound, outbound = loadgen["ack_inbound_ms"], loadgen["ack_outbound_ms"]
    sent, frames, entries = loadgen["moves_sent"], loadgen["frames"], loadgen["cursor_entries"]
    expected_moves = sent * (args.players - 1)
    lag = loadgen["loop_delay_ms"]
    return {
        "client": loadgen["client"],
        "rooms": args.rooms, "players": args.players, "cursor_hz": args.cursor_hz,
        "moves_per_s": args.moves, "seconds": round(float(wall), 1),
        "cursor_p50_ms": ms(cursor["p50"]),
        "cursor_p99_ms": ms(cursor["p99"]),
        "cursor_max_ms": ms(cursor["max"]),
        "ack_p50_ms": ms(ack["p50"]),
        "ack_p99_ms": ms(ack["p99"]),
        "ack_max_ms": ms(ack["max"]),
        "ack_inbound_p50_p99_ms": (ms(inbound["p50"]), ms(inbound["p99"])),
        "ack_outbound_p50_p99_ms": (ms(outbound["p50"]), ms(outbound["p99"])),
        "acks_received_ratio": round(loadgen["acks"] / sent, 4) if sent else 1,
        "moves_delivered_ratio": (round(loadgen["moves_received"] / expected_moves, 4)
                                  if expected_moves else 1),
        "frames_delivered_per_s": round(frames / wall),
        "cursor_updates_delivered_per_s": round(entries / wall),
        "server_cpu_percent": round(100 * window.cpu / window.wall, 1),
        "server_cpu_us_per_frame": round(1e6 * window.cpu / max(1, frames), 2),
        "server_cpu_us_per_update": round(
            1e6 * window.cpu / max(1, entries + loadgen["moves_received"]), 2),
        "server_rss_mib": round(window.rss, 1),
        "loadgen_cpu_percent": round(loadgen["cpu_percent"], 1),
        "loadgen_lag_p99_ms": ms(lag["p99"]) if lag else None,
        "closes": loadgen["closes"],
        "errors": loadgen["errors"],
        "cursor_latency_mean_ms": ms(cursor["mean"]),
    }


def node_client(*, explicit: bool) -> str | None:
    """``node`` once loadgen.mjs's packages are installed (``npm ci``), else None with a note."""

    def unavailable(reason: str) -> str | None:
        if explicit:
            raise SystemExit(f"bench: --client node: {reason}")
        print(f"bench: {reason}; using --client python", file=sys.stderr)
        return None

    node = shutil.which("node")
    if node is None:
        return unavailable("node is not on PATH")
    installed = LOADGEN / "node_modules" / ".package-lock.json"
    if installed.exists() and (
            installed.stat().st_mtime >= (LOADGEN / "package-lock.json").stat().st_mtime):
        return node
    npm = shutil.which("npm")
    if npm is None:
        return unavailable("npm is not on PATH to install scripts/loadgen")
    done = subprocess.run(
        [npm, "ci", "--prefix", str(LOADGEN), "--no-audit", "--no-fund", "--loglevel=error"],
        capture_output=True, text=True, check=False)
    if done.returncode != 0:
        said = [line for line in (done.stderr or done.stdout).strip().splitlines()
                if "complete log" not in line]
        return unavailable("npm ci --prefix scripts/loadgen failed: "
                           + (" / ".join(said)[:300] or f"status {done.returncode}"))
    return node


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", choices=("node", "python"),
                        help="load generator (default: node if it can be set up, else python)")
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--players", type=int, default=10)
    parser.add_argument("--cursor-hz", type=float, default=20.0)
    parser.add_argument("--moves", type=float, default=1.0, help="token moves per player per s")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--port", type=int, default=0, help="0: pick a free port")
    parser.add_argument("--database-url", default=os.environ.get("NEXUS_BENCH_DATABASE_URL"),
                        help="the server's DATABASE_URL: a PostgreSQL server (a fresh database "
                             "is created on it and dropped afterwards), or 'memory' "
                             "(default: $NEXUS_BENCH_DATABASE_URL, else an embedded PostgreSQL "
                             "in a temporary directory)")
    parser.add_argument("--server-cpu", default="0", help="core to pin the server to")
    parser.add_argument("--client-cpu", default="1", help="core to pin the load generator to")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    node = None if args.client == "python" else node_client(explicit=args.client == "node")
    port = args.port
    if port == 0:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    with database(args.database_url) as url:
        return run(args, port, url, node)


@contextmanager
def database(url: str | None) -> Iterator[str]:
    """A DATABASE_URL for the server: 'memory', or a fresh database dropped afterwards."""
    if url == "memory":
        yield url
        return
    from nexus_actors.testing.postgres import Databases, admin_url

    with admin_url() if url is None else nullcontext(url) as admin:
        databases = Databases(admin)
        try:
            yield databases.fresh()
        finally:
            databases.close()


def run(args: argparse.Namespace, port: int, database_url: str, node: str | None) -> int:
    # Every simulated player connects from 127.0.0.1: lift the per-address handshake limit.
    env = dict(os.environ, PORT=str(port), NEXUS_HOST="127.0.0.1", LOG_LEVEL="warning",
               DATABASE_URL=database_url, NEXUS_ADDRESS_CONNECT_RATE="100000",
               NEXUS_ADDRESS_CONNECT_BURST="100000")
    command = [sys.executable, "-m", "nexus_actors", "serve"]
    if os.environ.get("BENCH_SERVER_PREFIX"):
        command = [*os.environ["BENCH_SERVER_PREFIX"].split(), *command]
    taskset = shutil.which("taskset")
    if taskset:
        command = [taskset, "-c", args.server_cpu, *command]
        os.sched_setaffinity(0, {int(args.client_cpu)})
    server = subprocess.Popen(command, env=env)
    try:
        result = trio.run(bench, args, port, server.pid, node)
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
