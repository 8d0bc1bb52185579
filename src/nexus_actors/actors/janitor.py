"""The janitor: abandons rooms that hibernated past the timeout, deletes old abandoned ones.

A hibernating room has no actor, so nothing else would notice that its time is
up (a room that is touched again checks for itself when it loads). Every
``NEXUS_CLEANUP_INTERVAL`` it also deletes rooms abandoned for longer than
``NEXUS_ABANDONED_RETENTION``, with their journals, snapshots and seats.
"""

from __future__ import annotations

import logging

import trio

from ..errors import StoreError
from .services import Services

log = logging.getLogger("nexus_actors.janitor")

MAX_SWEEP_INTERVAL = 60.0
"Seconds between checks for rooms to abandon, at most."


async def run_janitor(services: Services, *,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    config = services.config
    sweep_every = min(MAX_SWEEP_INTERVAL, config.hibernation_timeout / 2)
    next_sweep = trio.current_time() + sweep_every
    next_cleanup = trio.current_time() + config.cleanup_interval
    task_status.started()
    while True:
        await trio.sleep_until(min(next_sweep, next_cleanup))
        now = trio.current_time()
        try:
            if now >= next_sweep:
                next_sweep = now + sweep_every
                await _abandon(services)
            if now >= next_cleanup:
                next_cleanup = now + config.cleanup_interval
                await _clean_up(services)
        except StoreError as exc:
            log.warning("janitor could not reach the store: %s", exc.message)


async def _abandon(services: Services) -> None:
    timeout = services.config.hibernation_timeout
    codes = await services.store.abandon_idle(services.deps.wall_ms() - int(timeout * 1000))
    if codes:
        log.info("abandoned %d rooms hibernating for more than %.0fs", len(codes), timeout)


async def _clean_up(services: Services) -> None:
    retention = services.config.abandoned_retention
    deleted = await services.store.delete_abandoned(
        services.deps.wall_ms() - int(retention * 1000))
    if deleted:
        log.info("deleted %d rooms abandoned for more than %.0fs", deleted, retention)
