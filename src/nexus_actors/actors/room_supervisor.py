"""Supervision of one room: restart it from the store after a crash, contain the damage.

An exception in a room actor is logged; the room's clients are sent away with a
jittered ``room-restart`` backoff hint (close 1012) so they resume; everything
the room queued for the store is flushed (so nothing it broadcast is lost); and
the room restarts from the store with the same mailbox. When the store refused
some of the room's writes, the events they carried are lost: the restarted room
begins a new epoch so clients that saw them start over from a baseline. More than
:data:`MAX_CRASHES` crashes within :data:`CRASH_WINDOW` seconds stop the room;
the next connection starts it afresh. Other rooms never notice.

A room whose lease another process has taken (:class:`~.room.Moved`) is not
restarted: its clients are sent away at once with a short ``room-moved`` hint,
and reconnect to wherever the room lives now. A room that stops otherwise
releases its lease.
"""

from __future__ import annotations

import logging
from collections import deque

import trio

from ..errors import Code
from .messages import RoomExited, RoomMsg
from .persistence import Flush
from .room import LostWrites, Moved, Room, Shell, send_away
from .services import Services

log = logging.getLogger("nexus_actors.room")

MAX_CRASHES = 3
CRASH_WINDOW = 60.0


async def run_room(services: Services, code: str, generation: int,
                   inbox: trio.MemoryReceiveChannel[RoomMsg],
                   notify: trio.MemorySendChannel[RoomMsg], *,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run room ``code`` until it stops, restarting it from the store after a crash."""
    shell = Shell()
    crashes: deque[float] = deque()
    task_status.started()
    try:
        with inbox, notify:
            flushed = False
            while True:
                room = Room(services, code, generation, shell, notify, flushed=flushed)
                lost = False
                try:
                    await room.run(inbox)
                    room.refuse_unsure("room-restart")
                    room.release()
                    log.info("room %s stopped", code)
                    return
                except Moved as exc:
                    log.warning("%s; sending its clients there", exc)
                    room.refuse_unsure("room-moved")
                    room.lost()
                    _send_away(services, shell, "room-moved")
                    room.refuse_all(inbox, Code.UNAVAILABLE, "the room moved; try again")
                    return
                except LostWrites as exc:
                    log.error("room %s: %s; restarting it from the store", code, exc)
                    room.refuse_unsure("room-restart")
                    lost = True
                except Exception:
                    log.exception("room %s crashed; restarting it from the store", code)
                    room.refuse_unsure("room-restart")
                now = trio.current_time()
                crashes.append(now)
                while crashes and crashes[0] < now - CRASH_WINDOW:
                    crashes.popleft()
                _send_away(services, shell, "room-restart")
                # Wait until the store has taken (or refused) everything this room wrote:
                # whatever starts next, here or as a new generation, loads it.
                done = trio.Event()
                await services.persist.send(Flush(done=done))
                await done.wait()
                if len(crashes) > MAX_CRASHES:
                    log.error("room %s crashed %d times in %.0fs; stopping it", code,
                              len(crashes), CRASH_WINDOW)
                    room.release()
                    room.refuse_all(inbox, Code.UNAVAILABLE, "the room is unavailable")
                    return
                # Everything it broadcast is durable now, unless the store refused some of
                # it: then clients may have seen events that are gone (a new epoch).
                flushed = not lost
    finally:
        try:
            services.registry.send_nowait(RoomExited(code=code, generation=generation))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            log.warning("room %s could not report its exit", code)


def _send_away(services: Services, shell: Shell, reason: str) -> None:
    """Close every client of the room with a jittered hint: they resume by themselves."""
    send_away(services, shell.peers.values(), reason)
    shell.peers.clear()
