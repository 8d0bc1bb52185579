"""The janitor: abandons rooms that hibernated past the timeout, deletes old abandoned ones.

A hibernating room has no actor, so nothing else would notice that its time is
up (a room that is touched again checks for itself when it loads). Abandoned
rooms are deleted from the store after ``NEXUS_ABANDONED_RETENTION``.
"""

from __future__ import annotations

import logging

import trio

from ..errors import StoreError
from .services import Services

log = logging.getLogger("nexus_actors.janitor")

MAX_INTERVAL = 60.0
"Seconds between sweeps at most."


async def run_janitor(services: Services, *,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    config = services.config
    interval = min(MAX_INTERVAL, config.hibernation_timeout / 2)
    task_status.started()
    while True:
        await trio.sleep(interval)
        now = services.deps.wall_ms()
        try:
            codes = await services.store.abandon_idle(
                now - int(config.hibernation_timeout * 1000))
            deleted = await services.store.delete_abandoned(
                now - int(config.abandoned_retention * 1000))
        except StoreError as exc:
            log.warning("could not sweep hibernating rooms: %s", exc.message)
            continue
        if codes:
            log.info("abandoned %d rooms hibernating for more than %.0fs", len(codes),
                     config.hibernation_timeout)
        if deleted:
            log.info("deleted %d rooms abandoned for more than %.0fs", deleted,
                     config.abandoned_retention)
