"""The supervisor: starts every actor in one nursery and runs the drain on shutdown.

``serve(config, ...)`` is callable from tests: give it in-memory listeners, a
memory store and seeded deps, and it runs the real server under MockClock.
"""

from __future__ import annotations

import logging
import secrets
import signal
import socket
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ..config import Config
from ..deps import Deps
from ..errors import StoreError
from ..metrics import Metrics
from ..store.base import Store
from ..store.memory import MemoryStore
from ..tls import tls_context
from .health import Health
from .janitor import run_janitor
from .leases import run_leases
from .listener import Listener
from .messages import CrashRoom, DrainRooms, InspectRoom, LeaseMsg, QueryRooms, RegistryMsg
from .persistence import Flush, PersistMsg, run_persistence
from .registry import run_registry
from .services import Node, Services

log = logging.getLogger("nexus_actors")

REGISTRY_INBOX = 4096
RETRY_SECRET_MAX = 5.0
"Seconds between attempts to read the relay secret from a store that does not answer."


@attrs.define(kw_only=True)
class Server:
    """A running server, as returned by ``nursery.start(serve, ...)``."""

    config: Config
    health: Health
    store: Store
    listeners: list[trio.abc.Listener[trio.abc.Stream]]
    listener: Listener
    _registry: trio.MemorySendChannel[RegistryMsg]
    _persist: trio.MemorySendChannel[PersistMsg]
    _stop: trio.Event

    node: Node
    "This process among those sharing the store."

    @property
    def ports(self) -> list[int]:
        """TCP ports listened on (for servers started with ``port=0``)."""
        return _ports(self.listeners)

    def shutdown(self) -> None:
        """Begin the drain, as SIGTERM does."""
        self._stop.set()

    async def crash_room(self, code: str) -> None:
        """Fault injection: make a live room actor raise."""
        await self._registry.send(CrashRoom(code=code))

    async def inspect(self, code: str) -> dict[str, Any] | None:
        """A live room's state (``snapshot``, ``connected``, ``epoch``...), or ``None``."""
        send, receive = trio.open_memory_channel[dict[str, Any] | None](1)
        await self._registry.send(InspectRoom(code=code, reply=send))
        with receive, trio.move_on_after(5):  # a room stopping may drop the question
            return await receive.receive()
        return None

    async def rooms(self) -> list[str]:
        """Codes of the live room actors."""
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        await self._registry.send(QueryRooms(reply=send))
        with receive:
            info = await receive.receive()
        rooms: list[str] = info["rooms"]
        return rooms

    async def flush(self) -> None:
        """Wait until every write queued so far is committed."""
        done = trio.Event()
        await self._persist.send(Flush(done=done))
        await done.wait()


class Interrupted(Exception):
    """A second SIGTERM or SIGINT came during the drain: the server stopped without it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


async def _watch_signals(stop: trio.Event, abort: Callable[[int], None]) -> None:
    """The first SIGTERM or SIGINT begins the drain; a second one aborts it."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not stop.is_set():
                log.info("received %s; draining", name)
                stop.set()
            else:
                log.warning("received %s again; exiting without finishing the drain", name)
                abort(signum)
                return


async def serve(
    config: Config,
    *,
    deps: Deps | None = None,
    store: Store | None = None,
    listeners: list[trio.abc.Listener[trio.abc.Stream]] | None = None,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until SIGTERM or SIGINT (``handle_signals``) or :meth:`Server.shutdown`; drain.

    A second signal during the drain cancels it: :class:`Interrupted` is raised once every
    task has stopped (a commit in progress finishes; nothing else is waited for).
    """
    deps = deps or Deps.production()
    store = store if store is not None else MemoryStore(journal_retain=config.journal_retain)
    health = Health(started_at=trio.current_time())
    if listeners is None:
        context = tls_context(config)
        if context is None:
            listeners = list(await trio.open_tcp_listeners(config.port, host=config.host))
        else:
            listeners = list(await trio.open_ssl_over_tcp_listeners(
                config.port, context, host=config.host, https_compatible=True))
    ports = _ports(listeners)
    node = Node(id=config.node_id or _node_id(ports),
                url=config.advertise_url or _advertised(config, ports))
    persist_send, persist_receive = trio.open_memory_channel[PersistMsg](config.persist_queue)
    registry_send, registry_receive = trio.open_memory_channel[RegistryMsg](REGISTRY_INBOX)
    leases_send, leases_receive = trio.open_memory_channel[LeaseMsg](2 * config.max_rooms + 64)
    metrics = Metrics()
    services = Services(config=config, deps=deps, store=store, health=health,
                        persist=persist_send, registry=registry_send, leases=leases_send,
                        metrics=metrics, node=node)
    listener = Listener.create(services)
    _observe(metrics, health, listener, persist_send)
    stop = trio.Event()
    server = Server(config=config, health=health, store=store, listeners=listeners,
                    listener=listener, registry=registry_send, persist=persist_send, stop=stop,
                    node=node)
    interrupted: list[int] = []
    async with trio.open_nursery() as root:

        def abort(signum: int) -> None:
            interrupted.append(signum)
            root.cancel_scope.cancel()

        root.start_soon(_read_relay_secret, store, node)
        await root.start(run_persistence, store, persist_receive, config, health, metrics)
        await root.start(run_leases, services, leases_receive)
        await root.start(run_registry, services, registry_receive)
        await root.start(run_janitor, services)
        accepting = trio.CancelScope()
        connections = await root.start(_nursery_forever)
        root.start_soon(_accept, listener, listeners, connections, accepting)
        if handle_signals:
            root.start_soon(_watch_signals, stop, abort)
        scheme = "https/wss" if config.tls_cert else "http/ws"
        for port in server.ports:
            log.info("listening on %s:%d (%s)", config.host, port, scheme)
        log.info("node %s, reached by other processes at %s", node.id, node.url or "-")
        if config.cors_origin is None:
            log.warning("CORS_ORIGIN is not set: pages on any origin may open WebSockets "
                        "here; set it to the origins that serve your client")
        task_status.started(server)
        await stop.wait()
        await _drain(server, accepting, registry_send, persist_send, listener)
        root.cancel_scope.cancel()
    if interrupted:
        raise Interrupted(interrupted[0])
    log.info("stopped")


def _observe(metrics: Metrics, health: Health, listener: Listener,
             persist: trio.MemorySendChannel[PersistMsg]) -> None:
    """Gauges read at each scrape from the objects that own the values."""
    metrics.gauge("connections_open", "WebSocket connections being served.",
                  lambda: listener.open_connections)
    metrics.gauge("persist_queue_depth", "Writes waiting for the persistence actor.",
                  lambda: persist.statistics().current_buffer_used)
    metrics.gauge("store_up", "1 while the store answers, 0 during an outage.",
                  lambda: 1 if health.store_ok else 0)
    metrics.gauge("store_outage_current_seconds", "Seconds the current outage has lasted.",
                  lambda: (trio.current_time() - health.outage_since
                           if health.outage_since is not None else 0.0))
    metrics.gauge("draining", "1 while the server drains.", lambda: 1 if health.draining else 0)
    metrics.gauge("uptime_seconds", "Seconds since the server started.",
                  lambda: trio.current_time() - health.started_at)


def _ports(listeners: list[trio.abc.Listener[trio.abc.Stream]]) -> list[int]:
    found = []
    for item in listeners:
        if isinstance(item, trio.SSLListener):
            item = item.transport_listener
        if isinstance(item, trio.SocketListener):
            found.append(item.socket.getsockname()[1])
    return found


def _node_id(ports: list[int]) -> str:
    """The default node id: the host name (a container's id, a pod's name) and the port.
    No two live processes share both (a port has one listener), and a process restarted
    in place gets its own id back, so it takes its rooms back at once after a crash.
    Without a TCP port (in-memory tests), random digits stand in for it."""
    host = "".join(c for c in socket.gethostname() if c.isalnum() or c in "-.")[:60]
    return f"{host or 'nexus'}:{ports[0] if ports else secrets.token_hex(4)}"


async def _read_relay_secret(store: Store, node: Node) -> None:
    """Read the cluster's relay secret into ``node``, retrying while the store cannot be
    reached (the server serves meanwhile; it only cannot relay)."""
    delay = 0.1
    while True:
        try:
            node.relay_secret = await store.relay_secret()
            return
        except StoreError as exc:
            log.warning("cannot read the relay secret yet: %s", exc.message)
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_SECRET_MAX)


def _advertised(config: Config, ports: list[int]) -> str | None:
    """``ws://`` (``wss://`` with TLS) with the listening address and port; for a
    wildcard address, the address this host uses to reach others. ``None`` without a
    TCP listener (in-memory tests)."""
    if not ports:
        return None
    host = config.host
    if host in ("", "0.0.0.0", "::"):
        host = _own_address()
    if ":" in host:
        host = f"[{host}]"
    return f"{'wss' if config.tls_cert else 'ws'}://{host}:{ports[0]}"


def _own_address() -> str:
    """The address of the interface this host would use to reach another (no packet is
    sent: connecting a UDP socket only picks the route)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))
            address: str = probe.getsockname()[0]
            return address
    except OSError:
        return "127.0.0.1"


async def _nursery_forever(*, task_status: trio.TaskStatus[trio.Nursery]) -> None:
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()


async def _accept(listener: Listener, listeners: list[trio.abc.Listener[trio.abc.Stream]],
                  connections: trio.Nursery, scope: trio.CancelScope) -> None:
    with scope:
        await trio.serve_listeners(listener.handle, listeners, handler_nursery=connections)


async def _drain(server: Server, accepting: trio.CancelScope,
                 registry: trio.MemorySendChannel[RegistryMsg],
                 persist: trio.MemorySendChannel[PersistMsg], listener: Listener) -> None:
    """Stop accepting, send every client away with a hint, flush, within the deadline."""
    config = server.config
    server.health.draining = True
    log.info("draining: %d connections", listener.open_connections)
    began = trio.current_time()
    with trio.move_on_after(config.drain_timeout) as deadline:
        accepting.cancel()
        rooms_done = trio.Event()
        await registry.send(DrainRooms(done=rooms_done))
        await rooms_done.wait()
        flushed = trio.Event()
        await persist.send(Flush(done=flushed))
        await flushed.wait()
        with trio.move_on_after(config.close_timeout + 1.0):
            await listener.wait_all_closed()
    if deadline.cancelled_caught:
        log.warning("drain did not finish within %.1fs; exiting anyway", config.drain_timeout)
    else:
        log.info("drained in %.1fs", trio.current_time() - began)
