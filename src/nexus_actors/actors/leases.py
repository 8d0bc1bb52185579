"""The lease actor: keeps this process's room leases alive, and notices when one is lost.

A room claims its lease itself when it starts (``Store.claim``, before it loads)
and then tells this actor (:class:`Hold`); when it stops it releases the lease
through the persistence actor and tells this actor (:class:`Let`). Every third of
``NEXUS_LEASE_TTL`` this actor renews every lease held, in one statement. A
lease the store no longer counts as ours (another process claimed it after it
expired: this process was paused, or cut off from the database) is lost: its
room is told at once (:class:`~nexus_actors.actors.messages.LeaseLost`) and
stops, sending its clients to resume wherever the room lives now. The fencing
in every commit makes the loss safe even before this actor notices it.
"""

from __future__ import annotations

import logging

import trio

from ..errors import StoreError
from .messages import Hold, LeaseLost, LeaseMsg
from .services import Services

log = logging.getLogger("nexus_actors.leases")

RETRY = 1.0
"Seconds before a renewal that failed (the store was unreachable) is tried again."


async def run_leases(services: Services, inbox: trio.MemoryReceiveChannel[LeaseMsg], *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Renew the leases held until ``inbox`` is closed."""
    config, node, metrics = services.config, services.node, services.metrics
    held: dict[str, Hold] = {}
    metrics.gauge("leases_held", "Room leases this process holds.", lambda: len(held))
    interval = config.lease_ttl / 3
    due = trio.current_time() + interval
    task_status.started()
    with inbox:
        while True:
            with trio.move_on_at(due):
                try:
                    message = await inbox.receive()
                except trio.EndOfChannel:
                    break
                if isinstance(message, Hold):
                    previous = held.pop(message.code, None)
                    if previous is not None:
                        previous.room.close()
                    held[message.code] = message
                elif (current := held.get(message.code)) is not None \
                        and current.fence == message.fence:
                    del held[message.code]
                    current.room.close()
                continue
            if not held:
                due = trio.current_time() + interval
                continue
            asked = {code: hold.fence for code, hold in held.items()}
            try:
                kept = await services.store.renew(node.id, asked, config.lease_ttl)
            except StoreError as exc:
                log.warning("could not renew %d room leases: %s", len(asked), exc.message)
                due = trio.current_time() + RETRY
                continue
            due = trio.current_time() + interval
            for code, fence in asked.items():
                hold = held.get(code)
                if code in kept or hold is None or hold.fence != fence:
                    continue
                del held[code]
                metrics.leases_lost += 1
                log.warning("room %s: its lease was taken by another process; stopping it",
                            code)
                with hold.room:
                    try:
                        hold.room.send_nowait(LeaseLost(fence=fence))
                    except (trio.WouldBlock, trio.BrokenResourceError,
                            trio.ClosedResourceError):
                        pass  # a room that is stopping, or so busy that its writes are fenced
    for hold in held.values():
        hold.room.close()
