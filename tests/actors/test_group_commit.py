"""Group commit: a lone event waits up to the flush interval for company; events that
queue while a batch commits go in the next batch at once."""

from __future__ import annotations

import trio
import trio.testing

from nexus_actors.testing import open_server


async def test_a_lone_event_lingers_then_queued_ones_commit_back_to_back(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(persist_flush_interval=1.0) as server:
        host = await server.create("GM")
        server.store.latency = 0.5  # each commit takes half a second
        start = trio.current_time()
        await host.send_event("chat/message", {"text": "first"}, event_id="first")
        await trio.sleep(1.2)  # the first batch is committing now
        await host.send_event("chat/message", {"text": "second"}, event_id="second")
        await host.until("event-ack", eventId="first")
        first_acked = trio.current_time()
        await host.until("event-ack", eventId="second")
        second_acked = trio.current_time()
    # The first waited out the flush interval, then its commit.
    assert first_acked - start == 1.0 + 0.5
    # The second queued during that commit: its batch started as soon as it ended.
    assert second_acked - first_acked == 0.5
