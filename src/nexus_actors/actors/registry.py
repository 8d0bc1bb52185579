"""The room registry: room code → live room actor; starts rooms lazily, stops idle ones.

It never blocks on a room or the store: a room is started as a task and the
connection's ``Attach`` is queued in its fresh mailbox at once (the room loads
from the store, then answers). An idle room stops only through a handshake:
it reports how many attaches it has taken, and the registry agrees only if
that is every attach it forwarded, so a connection can never be handed to a
room that is about to exit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ..config import Config
from ..errors import Code
from ..protocol import outbound
from ..protocol.connect import CODE_ALPHABET, CODE_LENGTH, CreateRoom
from . import peer as close
from .messages import (
    Attach,
    Crash,
    CrashRoom,
    Drain,
    DrainRooms,
    Inspect,
    InspectRoom,
    OpenSession,
    QueryRooms,
    Refused,
    RegistryMsg,
    RoomExited,
    RoomIdle,
    RoomMsg,
    Stop,
)
from .room_supervisor import run_room
from .services import Services

log = logging.getLogger("nexus_actors.registry")


@attrs.define
class _Entry:
    generation: int
    inbox: trio.MemorySendChannel[RoomMsg]
    forwarded: int = 0
    "``Attach`` messages sent to this room."


async def run_registry(services: Services, inbox: trio.MemoryReceiveChannel[RegistryMsg], *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    config = services.config
    rooms: dict[str, _Entry] = {}
    generations = 0
    draining: trio.Event | None = None
    async with trio.open_nursery() as nursery:
        task_status.started()

        def refuse(m: OpenSession, code: Code, message: str, close_code: int,
                   reason: str | None = None) -> None:
            hint = None
            if reason is not None:
                retry = config.retry_ms(reason)
                hint = outbound.backoff(reason, outbound.jitter(retry, services.deps.random),
                                        services.deps.wall_ms())
            try:
                m.reply.send_nowait(Refused(code=code, message=message, close_code=close_code,
                                            backoff=hint))
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        def start(code: str) -> _Entry:
            nonlocal generations
            generations += 1
            send, receive = trio.open_memory_channel[RoomMsg](config.room_inbox)
            entry = _Entry(generation=generations, inbox=send)
            rooms[code] = entry
            nursery.start_soon(run_room, services, code, generations, receive, send.clone(),
                               name=f"room {code}")
            return entry

        def pick_code() -> str | None:
            for _ in range(100):
                code = "".join(services.deps.random.choice(CODE_ALPHABET)
                               for _ in range(CODE_LENGTH))
                if code not in rooms:
                    return code
            return None

        def open_session(m: OpenSession) -> None:
            if draining is not None:
                refuse(m, Code.UNAVAILABLE, "the server is restarting", close.SERVICE_RESTART,
                       "server-restart")
                return
            request = m.request
            code = request.code if not isinstance(request, CreateRoom) or request.code else None
            if code is None:
                code = pick_code()
                if code is None:
                    refuse(m, Code.OVERLOADED, "no free room code", close.TRY_AGAIN_LATER,
                           "overloaded")
                    return
            entry = rooms.get(code)
            if entry is None:
                if len(rooms) >= config.max_rooms:
                    refuse(m, Code.OVERLOADED, "this server has no room for more rooms",
                           close.TRY_AGAIN_LATER, "overloaded")
                    return
                entry = start(code)
            try:
                entry.inbox.send_nowait(Attach(request=request, peer=m.peer, reply=m.reply,
                                               inbox=entry.inbox.clone(), relayed=m.relayed))
            except trio.WouldBlock:
                refuse(m, Code.OVERLOADED, "the room is busy", close.TRY_AGAIN_LATER,
                       "overloaded")
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # The room exited between its last message and this one: start it again.
                rooms.pop(code, None)
                entry = start(code)
                entry.inbox.send_nowait(Attach(request=request, peer=m.peer, reply=m.reply,
                                               inbox=entry.inbox.clone(), relayed=m.relayed))
            entry.forwarded += 1

        def tell(entry: _Entry, message: RoomMsg) -> None:
            try:
                entry.inbox.send_nowait(message)
            except trio.WouldBlock:
                nursery.start_soon(_send_later, entry.inbox.clone(), message)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        with inbox:
            async for m in inbox:
                if isinstance(m, OpenSession):
                    open_session(m)
                elif isinstance(m, RoomIdle):
                    entry = rooms.get(m.code)
                    if (entry is not None and entry.generation == m.generation
                            and entry.forwarded == m.attaches):
                        del rooms[m.code]
                        tell(entry, Stop())
                        entry.inbox.close()
                elif isinstance(m, RoomExited):
                    entry = rooms.get(m.code)
                    if entry is not None and entry.generation == m.generation:
                        del rooms[m.code]
                        entry.inbox.close()
                    if draining is not None and not rooms:
                        draining.set()
                elif isinstance(m, DrainRooms):
                    draining = m.done
                    log.info("draining %d rooms", len(rooms))
                    nursery.start_soon(_drain_in_batches, config, list(rooms.values()), tell)
                    if not rooms:
                        draining.set()
                elif isinstance(m, CrashRoom):
                    entry = rooms.get(m.code)
                    if entry is not None:
                        tell(entry, Crash())
                elif isinstance(m, InspectRoom):
                    entry = rooms.get(m.code)
                    if entry is not None:
                        tell(entry, Inspect(reply=m.reply))
                    else:
                        try:
                            m.reply.send_nowait(None)
                        except (trio.WouldBlock, trio.BrokenResourceError,
                                trio.ClosedResourceError):
                            pass
                elif isinstance(m, QueryRooms):
                    info: dict[str, Any] = {"rooms": sorted(rooms)}
                    try:
                        m.reply.send_nowait(info)
                    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                services.metrics.rooms_live = len(rooms)
            nursery.cancel_scope.cancel()


async def _drain_in_batches(config: Config, entries: list[_Entry],
                            tell: Callable[[_Entry, RoomMsg], None]) -> None:
    """Tell rooms to drain ``drain_batch`` at a time, the batches spread evenly over
    ``drain_spread`` (at most a quarter of the drain timeout): clients are sent away, and
    reconnect elsewhere, in waves instead of all at once."""
    batch = config.drain_batch
    count = -(-len(entries) // batch)
    spread = min(config.drain_spread, config.drain_timeout / 4)
    began = trio.current_time()
    for index in range(count):
        await trio.sleep_until(began + spread * index / count)
        for entry in entries[index * batch:(index + 1) * batch]:
            tell(entry, Drain())


async def _send_later(channel: trio.MemorySendChannel[RoomMsg], message: RoomMsg) -> None:
    with channel:
        try:
            await channel.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
