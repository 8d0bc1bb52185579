"""Scale-out benchmark: failover time, relay overhead, throughput with 1, 2 and 3 processes.

Runs real ``nexus-actors serve`` processes on one PostgreSQL behind a real
HAProxy (``nexus_actors.testing.cluster``, ``deploy/haproxy/haproxy.cfg``) on
loopback, and prints what it measured (``--json``: one JSON object). Run it with
``scripts/bench scaling``; it is not part of the test suite.

- **failover**: ``--kills`` times, a room of two players (``nexus_actors.client``
  sessions through HAProxy) whose process is killed with SIGKILL at a random moment of
  its leases' renewal cycle (``--fresh-lease``: just after the claim); the time from
  the kill to both players resumed elsewhere (their ``reconnected`` events), and
  that the room works there. The killed process is started again between kills.
- **relay**: two processes; ``--relay-rooms`` rooms owned by the first, each with
  its host and a player connected to it directly and a second player connected
  to the other process (relayed). The host says something every 50 ms: the
  relayed player hears it later than the direct one by the relay's extra
  latency. Every member sends its cursor at 10 Hz. The relaying process's CPU
  time per relayed frame, against the owner's per frame it writes.
- **throughput**: ``scripts/loadgen/loadgen.mjs`` (Node) through HAProxy,
  ``--rooms`` x ``--players`` at ``--cursor-hz`` with one move per player per
  second, rooms named by the load generator so HAProxy's hash puts every
  member of a room on its process; with 1, 2 and 3 server processes.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
import psycopg
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import cpu_seconds, database, node_client, summarize

from nexus_actors.client import (
    Backoff,
    Options,
    Reconnected,
    RoomEvent,
    Session,
    connect,
)
from nexus_actors.testing.cluster import Cluster, open_cluster
from nexus_actors.testing.processes import scrape

LOADGEN = Path(__file__).resolve().parent / "loadgen" / "loadgen.mjs"
UNLIMITED = {"NEXUS_ADDRESS_CONNECT_RATE": "100000", "NEXUS_ADDRESS_CONNECT_BURST": "100000",
             "NEXUS_ADDRESS_FAILURE_RATE": "100000", "NEXUS_ADDRESS_FAILURE_BURST": "100000",
             "LOG_LEVEL": "warning"}
"Every simulated player comes from 127.0.0.1: the per-address limits are lifted."
PATIENT = Options(backoff=Backoff(max_attempts=10))


async def owner_of(c: Cluster, code: str) -> int:
    def fetch() -> str:
        with psycopg.connect(c.database_url) as conn:
            row = conn.execute("SELECT owner_url FROM room_leases WHERE room_code = %s",
                               (code,)).fetchone()
        assert row is not None, f"room {code} has no lease"
        return str(row[0])

    url = await trio.to_thread.run_sync(fetch)
    return next(s.index for s in c.servers if s.url == url)


async def reconnected_after(session: Session, since: float) -> float:
    """When ``session`` next reports ``reconnected`` (trio time)."""
    async for batch in session.event_batches():
        for event in batch:
            if isinstance(event, Reconnected):
                now = trio.current_time()
                if now > since:
                    return now
    raise SystemExit(f"bench scaling: a session gave up reconnecting: {session.room_code}")


async def note_reconnection(session: Session, since: float, times: list[float]) -> None:
    times.append(await reconnected_after(session, since))


# Failover -------------------------------------------------------------------------------------


async def failover(args: argparse.Namespace, database_url: str, logs: Path) -> dict[str, Any]:
    settings = {**UNLIMITED, "NEXUS_LEASE_TTL": str(args.lease_ttl)}
    resumed: list[float] = []
    first: list[float] = []
    rng = random.Random(args.seed)
    async with open_cluster(database_url, logs, settings=settings) as c:
        for kill in range(args.kills):
            async with connect(c.url, name=f"GM{kill}", role="host", options=PATIENT) as gm, \
                    connect(c.url, room=gm.room_code, name="Ana", options=PATIENT) as ana:
                await gm.chat("before")
                await gm.flush()
                victim = c.servers[await owner_of(c, gm.room_code)]
                if not args.fresh_lease:
                    # A crash comes at any moment of the leases' renewal cycle.
                    await trio.sleep(rng.uniform(0, args.lease_ttl))
                killed = trio.current_time()
                await victim.kill()
                times: list[float] = []
                async with trio.open_nursery() as nursery:
                    for session in (gm, ana):
                        nursery.start_soon(note_reconnection, session, killed, times)
                resumed.append(max(times) - killed)
                first.append(min(times) - killed)
                await ana.chat("after")
                await ana.flush()
            await victim.start()
            await c.until_up({0, 1, 2})
            print(f"bench scaling: kill {kill + 1}/{args.kills}: resumed in "
                  f"{resumed[-1]:.2f} s", file=sys.stderr)
    ms = [1000 * t for t in resumed]
    return {"kills": args.kills, "lease_ttl_s": args.lease_ttl,
            "kill_moment": "just after the claim" if args.fresh_lease else "random",
            "resumed_ms": summarize(ms), "first_member_ms": summarize([1000 * t for t in first])}


# Relay overhead ---------------------------------------------------------------------------


async def relay(args: argparse.Namespace, database_url: str, logs: Path) -> dict[str, Any]:
    async with open_cluster(database_url, logs, count=2, settings=UNLIMITED) as c:
        owner, relayer = c.servers
        heard: dict[str, dict[str, float]] = {}
        async with trio.open_nursery() as nursery:
            stop = trio.Event()
            sessions: list[tuple[Session, str]] = []
            cms = []
            for index in range(args.relay_rooms):
                gm_cm = connect(owner.url, name="GM", role="host", options=PATIENT)
                gm = await gm_cm.__aenter__()
                cms.append(gm_cm)
                direct_cm = connect(owner.url, room=gm.room_code, name="Direct",
                                    options=PATIENT)
                relayed_cm = connect(relayer.url, room=gm.room_code, name="Relayed",
                                     options=PATIENT)
                direct = await direct_cm.__aenter__()
                relayed = await relayed_cm.__aenter__()
                cms += [direct_cm, relayed_cm]
                scene = await gm.create_scene("Map")
                await gm.flush()
                sessions += [(gm, "gm"), (direct, "direct"), (relayed, "relayed")]
                for session, role in sessions[-3:]:
                    nursery.start_soon(listen, session, role, heard)
                    nursery.start_soon(cursors, session, scene.entity_id, stop)
                nursery.start_soon(talk, gm, index, stop)
            await trio.sleep(1.0)  # warm up
            cpu = {s.index: cpu_seconds(pid(s)) for s in (owner, relayer)}
            before = {s.index: await scrape(s.port) for s in (owner, relayer)}
            began = trio.current_time()
            await trio.sleep(args.seconds)
            elapsed = trio.current_time() - began
            cpu = {s.index: cpu_seconds(pid(s)) - cpu[s.index] for s in (owner, relayer)}
            after = {s.index: await scrape(s.port) for s in (owner, relayer)}
            stop.set()
            for cm in reversed(cms):
                await cm.__aexit__(None, None, None)
            nursery.cancel_scope.cancel()
    relayed_frames = sum(after[1].get(f'nexus_relayed_frames_total{{direction="{d}"}}', 0)
                         - before[1].get(f'nexus_relayed_frames_total{{direction="{d}"}}', 0)
                         for d in ("up", "down"))
    written = sum(v - before[0].get(k, 0) for k, v in after[0].items()
                  if k.startswith("nexus_frames_out_total"))
    extra = [1000 * (times["relayed"] - times["direct"]) for times in heard.values()
             if "relayed" in times and "direct" in times]
    return {
        "rooms": args.relay_rooms, "seconds": round(elapsed, 1),
        "extra_latency_ms": summarize(extra),
        "relayed_frames_per_s": round(relayed_frames / elapsed),
        "relay_cpu_percent": round(100 * cpu[1] / elapsed, 1),
        "relay_cpu_us_per_frame": round(1e6 * cpu[1] / max(1, relayed_frames), 1),
        "owner_frames_written_per_s": round(written / elapsed),
        "owner_cpu_percent": round(100 * cpu[0] / elapsed, 1),
        "owner_cpu_us_per_frame_written": round(1e6 * cpu[0] / max(1, written), 1),
    }


async def listen(session: Session, role: str, heard: dict[str, dict[str, float]]) -> None:
    async for batch in session.event_batches():
        now = trio.current_time()
        for event in batch:
            if isinstance(event, RoomEvent) and event.name == "chat/message":
                heard.setdefault(event.event_id, {})[role] = now


async def cursors(session: Session, scene_id: str, stop: trio.Event) -> None:
    x = 0.0
    while not stop.is_set():
        x += 1
        await session.update_cursor(scene_id, x % 100, 1)
        with trio.move_on_after(0.1):
            await stop.wait()


async def talk(session: Session, index: int, stop: trio.Event) -> None:
    while not stop.is_set():
        await session.chat(f"room {index}")
        with trio.move_on_after(0.05):
            await stop.wait()


def pid(server: Any) -> int:
    assert server.process is not None
    return int(server.process.pid)


# Throughput -----------------------------------------------------------------------------------


async def throughput(args: argparse.Namespace, database_url: str, logs: Path,
                     node: str, count: int) -> dict[str, Any]:
    async with open_cluster(database_url, logs, count=count, settings=UNLIMITED) as c:
        pids = [pid(s) for s in c.servers]
        command = [node, str(LOADGEN), "--host", "127.0.0.1", "--port", str(c.port),
                   "--rooms", str(args.rooms), "--players", str(args.players),
                   "--cursor-hz", str(args.cursor_hz), "--moves", "1",
                   "--seconds", str(args.seconds), "--warmup", "3",
                   "--named-rooms", str(count)]  # codes of their own in each run
        process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE,
                                                   stderr=subprocess.PIPE)
        assert process.stdout is not None
        assert process.stderr is not None
        window: dict[str, Any] = {}
        output = b""

        async def read_stdout() -> None:
            nonlocal output
            assert process.stdout is not None
            while chunk := await process.stdout.receive_some():
                output += chunk

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_stdout)
            buffer = b""
            while chunk := await process.stderr.receive_some():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line == b"loadgen: window start":
                        window["start"] = (trio.current_time(), [cpu_seconds(p) for p in pids],
                                           cpu_seconds(c.haproxy.pid))
                    elif line == b"loadgen: window end":
                        window["end"] = (trio.current_time(), [cpu_seconds(p) for p in pids],
                                         cpu_seconds(c.haproxy.pid))
                    elif line:
                        print(f"loadgen: {line.decode()}", file=sys.stderr)
            await process.wait()
    if process.returncode != 0 or "start" not in window or "end" not in window:
        raise SystemExit(f"bench scaling: loadgen.mjs exited with status {process.returncode}")
    report = orjson.loads(output)
    (t0, cpu0, proxy0), (t1, cpu1, proxy1) = window["start"], window["end"]
    span = t1 - t0
    servers = [round(100 * (b - a) / span, 1) for a, b in zip(cpu0, cpu1, strict=True)]
    cursor, ack = report["cursor_latency_ms"], report["ack_latency_ms"]
    return {
        "processes": count, "rooms": args.rooms, "players": args.players,
        "cursor_p50_p99_ms": (cursor["p50"], cursor["p99"]),
        "ack_p50_p99_ms": (ack["p50"], ack["p99"]),
        "acks_received_ratio": round(report["acks"] / max(1, report["moves_sent"]), 4),
        "frames_delivered_per_s": round(report["frames"] / report["seconds"]),
        "server_cpu_percent": servers,
        "server_cpu_percent_total": round(sum(servers), 1),
        "haproxy_cpu_percent": round(100 * (proxy1 - proxy0) / span, 1),
        "loadgen_cpu_percent": round(report["cpu_percent"], 1),
        "closes": report["closes"], "errors": report["errors"],
    }


# Main -----------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, database_url: str, node: str | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="nexus-bench-scaling-") as root:
        logs = Path(root)
        if "failover" in args.parts:
            results["failover"] = await failover(args, database_url, logs / "failover")
        if "relay" in args.parts:
            results["relay"] = await relay(args, database_url, logs / "relay")
        if "throughput" in args.parts:
            if node is None:
                print("bench scaling: throughput needs node (scripts/loadgen); skipped",
                      file=sys.stderr)
            else:
                results["throughput"] = [
                    await throughput(args, database_url, logs / f"throughput-{n}", node, n)
                    for n in (1, 2, 3)]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="*", default=["failover", "relay", "throughput"],
                        choices=["failover", "relay", "throughput"])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--lease-ttl", type=float, default=15.0)
    parser.add_argument("--fresh-lease", action="store_true",
                        help="kill just after the room's lease was claimed (the worst case) "
                             "instead of at a random moment of its renewal cycle")
    parser.add_argument("--seed", type=int, default=1, help="of the random kill moments")
    parser.add_argument("--relay-rooms", type=int, default=20)
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--players", type=int, default=10)
    parser.add_argument("--cursor-hz", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--database-url",
                        help="a PostgreSQL server, on which a fresh database is created and "
                             "dropped afterwards (default: $NEXUS_BENCH_DATABASE_URL, else an "
                             "embedded PostgreSQL)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    node = node_client(explicit=False) if "throughput" in args.parts else None
    with database(args.database_url or os.environ.get("NEXUS_BENCH_DATABASE_URL")) as url:
        results = trio.run(run, args, url, node)
    if args.json:
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    else:
        for part, value in results.items():
            for item in value if isinstance(value, list) else [value]:
                print(f"[{part}]")
                for key, shown in item.items():
                    print(f"  {key:32} {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
