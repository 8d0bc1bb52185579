"""Fan-out microbenchmark: server CPU per delivered WebSocket frame, by send path.

Compares what one Trio process spends to push the same ~200-byte JSON text frame
to N WebSocket clients, R times:

``trio-websocket``
    ``await ws.send_message(text)`` per recipient (skipped with a note when the
    ``trio-websocket`` package is not installed; it is not a project dependency).
``websockets-trio``
    websockets' native Trio server (``websockets.trio.server.serve``),
    ``await connection.send(text)`` per recipient.
``websockets-trio-broadcast``
    the same server, ``await websockets.trio.server.broadcast(connections, text)``
    once per round.
``sansio-oswrite``
    what nexus-actors does: websockets' sans-I/O ``ServerProtocol`` for the
    handshake, then per round the frame bytes are built once
    (``nexus_actors.protocol.wire.Wire(payload).frame``) and written to each
    client with one non-blocking ``os.write``; a client whose socket pushes back
    gets the rest from its own writer task (``send_all``).

Two opt-in diagnostic variants split that gain: ``sansio-sendall`` (frame built
once, ``await stream.send_all`` per recipient) and ``sansio-perclient-oswrite``
(one ``os.write`` per recipient, but framed per recipient by ``ServerProtocol``).

Each server variant runs as a subprocess pinned to core 0, the client process is
pinned to core 1 (``taskset``, when available). The client opens N raw TCP
WebSocket connections (hand-made handshake, no compression offered), reads and
discards everything and counts the text frames. Once N clients are connected the
server sends R rounds (``--rate`` rounds per second, or as fast as possible with
``await trio.sleep(0)`` between rounds) and reports its CPU time
(``time.process_time()``) from the first round until the client has confirmed
all N x R frames. Each run also reports core 0's softirq time and the share of core 0
other processes used (from ``/proc/stat``); runs above 10 % are flagged as contended,
and ``--wait-quiet`` waits for both cores to be idle before each run. Not part of
the test suite.

    .venv/bin/python scripts/bench_ws.py                  # N=100, R=2000, unpaced
    .venv/bin/python scripts/bench_ws.py --paced          # N=500, 20 rounds/s, 10 s
    .venv/bin/python scripts/bench_ws.py --variant sansio-oswrite --repeat 3
"""

from __future__ import annotations

import argparse
import base64
import functools
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import trio

VARIANTS = ("trio-websocket", "websockets-trio", "websockets-trio-broadcast", "sansio-oswrite")
DIAGNOSTIC = ("sansio-sendall", "sansio-perclient-oswrite")
"Opt-in variants that split the sansio-oswrite gain into its two parts."
HOST = "127.0.0.1"
CLOCK = time.monotonic
"System-wide monotonic clock: the client's last-frame time and the server's start compare."
RECEIVE_SIZE = 65536
CONTENDED = 0.10
"A run where other processes used more than this share of core 0 is flagged."


def payload(round_no: int) -> str:
    """The JSON text of one round's frame (a cursor update); the same length every round."""
    return json.dumps({
        "type": "cursors",
        "data": {
            "cursors": [{
                "userId": "6f1c2a9e-3b7d-4e15-9a4c-0d8e2f61b7a3",
                "userName": "Player 7",
                "sceneId": "b2e4c6a8",
                "position": {"x": 1234.5, "y": 678.25},
            }],
            "removed": [],
        },
        "timestamp": 1_700_000_000_000 + round_no,
    }, separators=(",", ":"))


PAYLOAD_BYTES = len(payload(0).encode())


def core_times(core: int) -> tuple[float, float, float] | None:
    """Seconds core ``core`` has been busy, in softirq, and in total (``/proc/stat``)."""
    try:
        with open("/proc/stat") as stat:
            for line in stat:
                if line.startswith(f"cpu{core} "):
                    ticks = [int(field) for field in line.split()[1:9]]
                    break
            else:
                return None
    except OSError:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = ticks
    busy = user + nice + system + irq + softirq + steal
    return busy / hz, softirq / hz, (busy + idle + iowait) / hz


def _own_core() -> int | None:
    cores = os.sched_getaffinity(0)
    return next(iter(cores)) if len(cores) == 1 else None


def wait_until_quiet(cores: list[int], limit: float, threshold: float = 0.15) -> bool:
    """Wait (up to ``limit`` s) until each of ``cores`` was under ``threshold`` busy for 1 s."""
    deadline = CLOCK() + limit
    while True:
        before = [core_times(core) for core in cores]
        time.sleep(1.0)
        after = [core_times(core) for core in cores]
        loads = [(b[0] - a[0]) / max(b[2] - a[2], 1e-9)
                 for a, b in zip(before, after, strict=True) if a is not None and b is not None]
        if all(load < threshold for load in loads):
            return True
        if CLOCK() >= deadline:
            return False


# Servers --------------------------------------------------------------------


class Variant:
    """One server implementation: listen, collect N clients, send one round to all."""

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.ready = trio.Event()
        "Set once ``clients`` WebSocket connections are open."
        self.fallbacks = 0
        "Writes the socket did not take at once (sansio-oswrite only)."

    async def listen(self, nursery: trio.Nursery) -> int:
        raise NotImplementedError

    async def send_round(self, text: str) -> None:
        raise NotImplementedError


class TrioWebsocket(Variant):
    def __init__(self, clients: int) -> None:
        super().__init__(clients)
        self.module: Any = importlib.import_module("trio_websocket")
        self.connections: list[Any] = []
        self.finished = trio.Event()

    async def _handler(self, request: Any) -> None:
        ws = await request.accept()
        self.connections.append(ws)
        if len(self.connections) == self.clients:
            self.ready.set()
        await self.finished.wait()

    async def listen(self, nursery: trio.Nursery) -> int:
        server = await nursery.start(self.module.serve_websocket, self._handler, HOST, 0, None)
        return int(server.port)

    async def send_round(self, text: str) -> None:
        for ws in self.connections:
            await ws.send_message(text)


class WebsocketsTrio(Variant):
    def __init__(self, clients: int) -> None:
        super().__init__(clients)
        from websockets.trio.server import ServerConnection

        self.connections: list[ServerConnection] = []
        self.finished = trio.Event()

    async def _handler(self, connection: Any) -> None:
        self.connections.append(connection)
        if len(self.connections) == self.clients:
            self.ready.set()
        await self.finished.wait()

    async def listen(self, nursery: trio.Nursery) -> int:
        from websockets.trio.server import Server, serve

        server: Server = await nursery.start(_serve_task(serve, self._handler))
        for listener in server.listeners:
            if isinstance(listener, trio.SocketListener):
                return int(listener.socket.getsockname()[1])
        raise RuntimeError("no TCP listener")

    async def send_round(self, text: str) -> None:
        for connection in self.connections:
            await connection.send(text)


class WebsocketsTrioBroadcast(WebsocketsTrio):
    async def send_round(self, text: str) -> None:
        from websockets.trio.server import broadcast

        await broadcast(self.connections, text)


def _serve_task(serve: Any, handler: Any) -> Any:
    """``serve`` bound to loopback, no compression, no keepalive pings, short close timeout."""

    async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await serve(handler, 0, host=HOST, compression=None, ping_interval=None,
                    close_timeout=1, max_queue=None, task_status=task_status)

    return run


class Client:
    """One client connection of the sansio-oswrite server."""

    __slots__ = ("pending", "protocol", "stream", "wake", "writing")

    def __init__(self, stream: trio.SocketStream, protocol: Any) -> None:
        self.stream = stream
        self.protocol = protocol
        self.pending = bytearray()
        "Bytes the socket did not take; the writer task sends them in order."
        self.wake = trio.Event()
        self.writing = False


class SansioOswrite(Variant):
    def __init__(self, clients: int) -> None:
        super().__init__(clients)
        from nexus_actors.protocol.wire import Wire

        self.wire = Wire
        self.connections: list[Client] = []
        self.finished = trio.Event()

    async def listen(self, nursery: trio.Nursery) -> int:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, host=HOST),
                                        self._handle, 0)
        return int(listeners[0].socket.getsockname()[1])

    async def _handle(self, stream: trio.SocketStream) -> None:
        from websockets.http11 import Request
        from websockets.server import ServerProtocol

        protocol = ServerProtocol(max_size=65536)
        request: Request | None = None
        while request is None:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                return
            protocol.receive_data(data)
            for event in protocol.events_received():
                if isinstance(event, Request):
                    request = event
        response = protocol.accept(request)
        protocol.send_response(response)
        await stream.send_all(b"".join(protocol.data_to_send()))
        if response.status_code != 101:
            return
        client = Client(stream, protocol)
        self.connections.append(client)
        if len(self.connections) == self.clients:
            self.ready.set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer, client)
            await self._reader(client)
            nursery.cancel_scope.cancel()

    async def _reader(self, client: Client) -> None:
        sock = client.stream.socket
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                data = os.read(sock.fileno(), RECEIVE_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:
                return
            client.protocol.receive_data(data)
            client.protocol.events_received()

    async def _writer(self, client: Client) -> None:
        while True:
            await client.wake.wait()
            client.wake = trio.Event()
            while client.pending:
                data = bytes(client.pending)
                client.pending.clear()
                client.writing = True
                try:
                    await client.stream.send_all(data)
                finally:
                    client.writing = False

    async def send_round(self, text: str) -> None:
        frame = self.wire(text.encode()).frame  # built once for every recipient
        size = len(frame)
        for client in self.connections:
            if client.pending or client.writing:
                client.pending += frame  # the writer task owns this socket for now
                continue
            try:
                sent = os.write(client.stream.socket.fileno(), frame)
            except BlockingIOError:
                sent = 0
            if sent < size:
                self.fallbacks += 1
                client.pending += frame[sent:]
                client.wake.set()


class SansioSendall(SansioOswrite):
    """Diagnostic: the frame built once, but ``await send_all`` per recipient."""

    async def send_round(self, text: str) -> None:
        frame = self.wire(text.encode()).frame
        for client in self.connections:
            await client.stream.send_all(frame)


class SansioPerclientOswrite(SansioOswrite):
    """Diagnostic: one non-blocking write per recipient, but framed per recipient
    by its ``ServerProtocol`` (``send_text`` + ``data_to_send``)."""

    async def send_round(self, text: str) -> None:
        data = text.encode()
        for client in self.connections:
            client.protocol.send_text(data)
            frame = b"".join(client.protocol.data_to_send())
            if client.pending or client.writing:
                client.pending += frame
                continue
            try:
                sent = os.write(client.stream.socket.fileno(), frame)
            except BlockingIOError:
                sent = 0
            if sent < len(frame):
                self.fallbacks += 1
                client.pending += frame[sent:]
                client.wake.set()


SERVERS: dict[str, type[Variant]] = {
    "trio-websocket": TrioWebsocket,
    "websockets-trio": WebsocketsTrio,
    "websockets-trio-broadcast": WebsocketsTrioBroadcast,
    "sansio-oswrite": SansioOswrite,
    "sansio-sendall": SansioSendall,
    "sansio-perclient-oswrite": SansioPerclientOswrite,
}


async def _wait_for_line() -> None:
    """Return when the orchestrator writes a line (or closes) on our stdin."""
    async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
        while True:
            data = await stdin.receive_some(4096)
            if not data or b"\n" in data:
                return


async def serve_main(variant: str, clients: int, rounds: int, rate: float) -> None:
    impl = SERVERS[variant](clients)
    async with trio.open_nursery() as nursery:
        port = await impl.listen(nursery)
        print(f"PORT {port}", flush=True)
        await impl.ready.wait()
        core = _own_core()
        core0 = core_times(core) if core is not None else None
        start_mono = CLOCK()
        start_trio = trio.current_time()
        cpu0 = time.process_time()
        for round_no in range(rounds):
            if rate > 0:
                await trio.sleep_until(start_trio + round_no / rate)
            else:
                await trio.lowlevel.checkpoint()  # what ``await trio.sleep(0)`` does
            await impl.send_round(payload(round_no))
        loop_cpu = time.process_time() - cpu0
        loop_wall = CLOCK() - start_mono
        await _wait_for_line()  # the client has everything (or gave up)
        cpu = time.process_time() - cpu0
        core1 = core_times(core) if core is not None else None
        busy = softirq = None
        if core0 is not None and core1 is not None:
            busy, softirq = core1[0] - core0[0], core1[1] - core0[1]
        print(json.dumps({"start": start_mono, "cpu": cpu, "loop_cpu": loop_cpu,
                          "loop_wall": loop_wall, "fallbacks": impl.fallbacks,
                          "core_busy": busy, "core_softirq": softirq}), flush=True)
        nursery.cancel_scope.cancel()


# Client ---------------------------------------------------------------------


class FrameCounter:
    """Counts the server frames arriving on one connection (parses headers only)."""

    __slots__ = ("buffer", "other", "text")

    def __init__(self, initial: bytes) -> None:
        self.buffer = bytearray()
        self.text = 0
        self.other = 0
        self.feed(initial)

    def feed(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos = 0
        end = len(buffer)
        while end - pos >= 2:
            first, second = buffer[pos], buffer[pos + 1]
            if second & 0x80:
                raise SystemExit("server sent a masked frame")
            length = second & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = int.from_bytes(buffer[pos + 2:pos + 4], "big")
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buffer[pos + 2:pos + 10], "big")
                head = 10
            if end - pos < head + length:
                break
            if first == 0x81:  # final text frame
                self.text += 1
            else:
                self.other += 1
            pos += head + length
        if pos:
            del buffer[:pos]


def _handshake(port: int) -> tuple[socket.socket, FrameCounter]:
    sock = socket.create_connection((HOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("server closed during the handshake")
        received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit(f"handshake refused: {head.splitlines()[0]!r}")
    sock.setblocking(False)
    return sock, FrameCounter(rest)


def client_main(port: int, clients: int, rounds: int, timeout: float) -> None:
    selector = selectors.DefaultSelector()
    counters: list[FrameCounter] = []
    for _ in range(clients):
        opened, counting = _handshake(port)
        counters.append(counting)
        selector.register(opened, selectors.EVENT_READ, counting)
    expected = clients * rounds
    received = sum(counter.text for counter in counters)
    received_bytes = 0
    first = last = None
    deadline = CLOCK() + timeout
    while received < expected and CLOCK() < deadline:
        for key, _ in selector.select(timeout=1.0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            counter: FrameCounter = key.data
            try:
                data = sock.recv(RECEIVE_SIZE)
            except BlockingIOError:
                continue
            if not data:
                selector.unregister(sock)
                continue
            now = CLOCK()
            if first is None:
                first = now
            last = now
            received_bytes += len(data)
            before = counter.text
            counter.feed(data)
            received += counter.text - before
    print(json.dumps({"frames": received, "expected": expected, "bytes": received_bytes,
                      "other_frames": sum(counter.other for counter in counters),
                      "first": first, "last": last}), flush=True)
    sys.stdin.readline()  # keep the connections open until the server has reported


# Orchestrator -----------------------------------------------------------------


def _pinned(core: int) -> list[str]:
    if shutil.which("taskset") and core in os.sched_getaffinity(0):
        return ["taskset", "-c", str(core)]
    return []


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def run_once(variant: str, clients: int, rounds: int, rate: float,
             timeout: float) -> dict[str, Any]:
    script = os.path.abspath(__file__)
    common = ["--clients", str(clients), "--rounds", str(rounds)]
    server = subprocess.Popen(
        [*_pinned(0), sys.executable, script, "_server", "--variant", variant, "--rate", str(rate),
         *common], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    client: subprocess.Popen[str] | None = None
    assert server.stdin is not None
    assert server.stdout is not None
    try:
        line = server.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"{variant}: server did not start")
        client = subprocess.Popen(
            [*_pinned(1), sys.executable, script, "_client", "--port", line.split()[1],
             "--timeout", str(timeout), *common],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert client.stdin is not None
        assert client.stdout is not None
        seen = json.loads(client.stdout.readline())
        server.stdin.write("done\n")
        server.stdin.flush()
        spent = json.loads(server.stdout.readline())
    finally:
        for process in (client, server):
            if process is None:
                continue
            if process.stdin is not None:
                process.stdin.close()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    wall = (seen["last"] - spent["start"]) if seen["last"] else float("nan")
    frames = seen["frames"]
    return {
        "variant": variant, "clients": clients, "rounds": rounds, "rate": rate,
        "frames": frames, "expected": seen["expected"], "other_frames": seen["other_frames"],
        "cpu": spent["cpu"], "loop_cpu": spent["loop_cpu"], "wall": wall,
        "us_per_frame": spent["cpu"] / frames * 1e6 if frames else float("nan"),
        "frames_per_s": frames / wall if frames and wall > 0 else float("nan"),
        "cpu_share": spent["cpu"] / wall if wall > 0 else float("nan"),
        "fallbacks": spent["fallbacks"],
        "core_softirq": spent["core_softirq"],
        # /proc/stat counts 10 ms ticks: too coarse for runs shorter than half a second.
        "others": ((spent["core_busy"] - spent["cpu"]) / wall
                   if spent["core_busy"] is not None and wall >= 0.5 else float("nan")),
    }


def _print_row(row: dict[str, Any]) -> None:
    others = max(row["others"], 0.0)  # 10 ms ticks: short runs can come out slightly negative
    lost = "" if row["frames"] == row["expected"] else f"  LOST {row['expected'] - row['frames']}"
    if others > CONTENDED:
        lost += "  (contended: other processes used core 0)"
    print(f"{row['variant']:<27}{row['frames']:>9}{row['cpu']:>10.2f}{row['us_per_frame']:>10.2f}"
          f"{row['frames_per_s']:>11.0f}{row['wall']:>8.2f}{row['cpu_share'] * 100:>6.0f}%"
          f"{row['fallbacks']:>7}{row['core_softirq'] or 0:>8.2f}{others * 100:>7.0f}%"
          f"{lost}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("mode", nargs="?", default="run", choices=("run", "_server", "_client"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--variant", action="append", choices=VARIANTS + DIAGNOSTIC,
                        help=f"variant to run (repeatable; default: {', '.join(VARIANTS)}; "
                             f"diagnostic, opt-in: {', '.join(DIAGNOSTIC)})")
    parser.add_argument("--clients", "-n", type=int, help="WebSocket clients (default 100)")
    parser.add_argument("--rounds", "-r", type=int, help="rounds (default 2000)")
    parser.add_argument("--rate", type=float,
                        help="rounds per second (default 0: as fast as possible)")
    parser.add_argument("--paced", action="store_true",
                        help="the real-load approximation: 500 clients, 20 rounds/s for 10 s")
    parser.add_argument("--repeat", type=int, default=2, help="runs per variant (default 2)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds the client waits for all frames (default 120)")
    parser.add_argument("--wait-quiet", type=float, default=120.0,
                        help="before each run, wait up to this many seconds for cores 0 and 1 "
                             "to be idle (default 120; 0: don't wait)")
    parser.add_argument("--json", action="store_true", help="also print every run as JSON")
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    clients = args.clients or (500 if args.paced else 100)
    rate = args.rate if args.rate is not None else (20.0 if args.paced else 0.0)
    rounds = args.rounds or (int(rate * 10) if args.paced else 2000)

    if args.mode == "_server":
        trio.run(serve_main, args.variant[0], clients, rounds, rate)
        return
    if args.mode == "_client":
        client_main(args.port, clients, rounds, args.timeout)
        return

    variants = args.variant or list(VARIANTS)
    print(f"python {platform.python_version()}, trio {_version('trio')}, websockets "
          f"{_version('websockets')}, trio-websocket {_version('trio-websocket')}, wsproto "
          f"{_version('wsproto')}; {os.cpu_count()} CPUs; server pinned: "
          f"{' '.join(_pinned(0)) or 'no'}, client pinned: {' '.join(_pinned(1)) or 'no'}")
    print(f"{clients} clients x {rounds} rounds of a {PAYLOAD_BYTES}-byte text frame, "
          f"{f'{rate:g} rounds/s' if rate else 'unpaced'}; server CPU from the first round "
          "until the client had every frame")
    print("columns: cpu s = server process CPU; us/frame = cpu s / frames; cpu = cpu s / wall; "
          "fallbk = writes handed to a writer task;\n  softirq = core-0 softirq s (loopback TCP "
          "work, part of cpu s); others = share of core 0 used by other processes")
    print(f"{'variant':<27}{'frames':>9}{'cpu s':>10}{'us/frame':>10}{'frames/s':>11}"
          f"{'wall s':>8}{'cpu':>7}{'fallbk':>7}{'softirq':>8}{'others':>8}")
    rows: list[dict[str, Any]] = []
    for variant in variants:
        if variant == "trio-websocket" and importlib.util.find_spec("trio_websocket") is None:
            print(f"{variant:<27}skipped: trio-websocket is not installed "
                  "(pip install trio-websocket to measure it)")
            continue
        for _ in range(args.repeat):
            if args.wait_quiet > 0 and not wait_until_quiet([0, 1], args.wait_quiet):
                print(f"{'':<27}(cores 0/1 still busy with other work after "
                      f"{args.wait_quiet:g} s; running anyway)")
            row = run_once(variant, clients, rounds, rate, args.timeout)
            rows.append(row)
            _print_row(row)
            if args.json:
                print(json.dumps(row))
    if args.repeat > 1:
        medians = []
        for variant in variants:
            values = [row["us_per_frame"] for row in rows if row["variant"] == variant]
            if values:
                medians.append(f"{variant} {statistics.median(values):.2f}")
        print("median us/frame (all runs): " + ", ".join(medians))


if __name__ == "__main__":
    main()
