"""The real server over in-memory streams, for tests and the simulation.

``async with open_server() as server:`` runs :func:`nexus_actors.serve` with
a :class:`MemoryListener`, a :class:`~nexus_actors.store.MemoryStore` and
seeded :class:`~nexus_actors.deps.Deps`. Under
``MockClock(autojump_threshold=0)`` heartbeats, grace periods and hibernation
timeouts that span minutes run in milliseconds, deterministically.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import trio

from ..actors.supervisor import Server, serve
from ..config import Config
from ..deps import Deps, Dial
from ..store.memory import MemoryStore
from .client import TestClient, query
from .streams import DEFAULT_CAPACITY, MemoryListener


class TestServer:
    """A running in-memory server and the means to connect to it."""

    __test__ = False

    def __init__(self, config: Config, deps: Deps, store: MemoryStore,
                 nursery: trio.Nursery) -> None:
        # One node id for every start: a restarted server takes its rooms' leases back at
        # once, as a process restarted with the same NEXUS_NODE_ID does.
        self.config = config if config.node_id else config.evolve(node_id="memory-server")
        self.deps = deps
        self.store = store
        self.nursery = nursery
        self.server: Server | None = None
        self.listener = MemoryListener()
        self._stopped = trio.Event()
        self._scope = trio.CancelScope()

    async def start(self) -> None:
        self.listener = MemoryListener()
        self._stopped = trio.Event()
        self._scope = trio.CancelScope()
        self.server = await self.nursery.start(self._run)

    async def _run(self, *, task_status: trio.TaskStatus[Server]) -> None:
        try:
            with self._scope:
                await serve(self.config, deps=self.deps, store=self.store,
                            listeners=[self.listener], handle_signals=False,
                            task_status=task_status)
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """Drain the server as SIGTERM would, and wait until it has exited."""
        if self.server is not None:
            self.server.shutdown()
            await self._stopped.wait()
            self.server = None

    async def kill(self) -> None:
        """Stop the server at once, as ``kill -9`` would: no drain, nothing flushed.

        Whatever the store had not committed is lost; clients see their connections drop.
        """
        if self.server is not None:
            self._scope.cancel()
            await self._stopped.wait()
            self.server = None

    async def restart(self) -> None:
        """Drain, then start a fresh server process on the same store."""
        await self.stop()
        await self.start()

    @property
    def running(self) -> Server:
        assert self.server is not None, "server is not running"
        return self.server

    # Clients -------------------------------------------------------------

    async def connect(self, target: str, *, capacity: int = DEFAULT_CAPACITY,
                      compress: bool = True, origin: str | None = None,
                      headers: dict[str, str] | None = None) -> TestClient:
        """Open a WebSocket to ``target`` (``/ws?...``); nothing is read yet."""
        stream = self.listener.connect(capacity)
        return await TestClient.open(stream, target, self.nursery, compress=compress,
                                     origin=origin, headers=headers)

    async def _seated(self, client: TestClient, expected: str) -> TestClient:
        first = await client.next("event")
        if first["data"].get("name") != expected:
            raise AssertionError(f"expected {expected}, got {first}")
        await client.next("event-cursor")
        return client

    async def create(self, name: str = "Host", code: str | None = None,
                     **options: Any) -> TestClient:
        """A client that created a room (``session/created`` and cursor already read)."""
        client = await self.connect(query(host=code or "", name=name), **options)
        return await self._seated(client, "session/created")

    async def join(self, code: str, name: str = "Player", **options: Any) -> TestClient:
        client = await self.connect(query(join=code, name=name), **options)
        return await self._seated(client, "session/joined")

    async def resume(self, previous: TestClient, *, last_seen: int | None = None,
                     epoch: int | None = None, **options: Any) -> TestClient:
        """Take ``previous``'s seat back (reading ``session/reconnected``, not the cursor)."""
        client = await self.connect(query(reconnect=previous.room, token=previous.token,
                                          lastSeenSequence=last_seen, epoch=epoch), **options)
        first = await client.next("event")
        if first["data"].get("name") != "session/reconnected":
            raise AssertionError(f"expected session/reconnected, got {first}")
        return client


@asynccontextmanager
async def open_server(config: Config | None = None, *, seed: int = 0,
                      store: MemoryStore | None = None, dial: Dial | None = None,
                      **overrides: Any) -> AsyncIterator[TestServer]:
    """Run a server over in-memory streams for the duration of the block (``dial``: how
    it reaches other servers on the same ``store`` to relay to them)."""
    config = (config or Config()).evolve(**overrides) if overrides else (config or Config())
    store = store if store is not None else MemoryStore(journal_retain=config.journal_retain)
    deps = Deps.seeded(seed)
    if dial is not None:
        deps = attrs.evolve(deps, dial=dial)
    async with trio.open_nursery() as nursery:
        harness = TestServer(config, deps, store, nursery)
        await harness.start()
        try:
            yield harness
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(config.drain_timeout + 5):
                await harness.stop()
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_servers(count: int, config: Config | None = None, *, seed: int = 0,
                       **overrides: Any) -> AsyncIterator[list[TestServer]]:
    """``count`` servers on one memory store, as processes sharing one database: server
    *i* is node ``node-i``, advertised at ``ws://node-i.test``, and reaches the others
    there (relays go through their in-memory listeners)."""
    store = MemoryStore(journal_retain=(config or Config()).journal_retain)
    servers: dict[str, TestServer] = {}

    async def dial(url: str) -> trio.abc.Stream:
        server = servers.get(url)
        if server is None or server.server is None:
            raise OSError(f"connection refused: {url}")
        return server.listener.connect()

    async with AsyncExitStack() as stack:
        for index in range(count):
            url = f"ws://node-{index}.test"
            servers[url] = await stack.enter_async_context(open_server(
                config, seed=seed + index, store=store, dial=dial, node_id=f"node-{index}",
                advertise_url=url, **overrides))
        yield list(servers.values())
