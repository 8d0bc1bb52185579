"""GET /metrics (Prometheus exposition, optionally behind a bearer token) and GET /api/stats."""

from __future__ import annotations

import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from nexus_actors.testing import TestServer, open_server, query
from nexus_actors.testing.http import get


async def scrape(server: TestServer, **headers: str) -> dict[tuple[str, tuple[tuple[str, str],
                                                                         ...]], float]:
    """Every sample of ``/metrics``: ``(name, sorted labels)`` → value."""
    reply = await get(server, "/metrics", **headers)
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_what_a_session_does(autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=600, heartbeat_interval=5) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await host.until("event", "session/join")
        await host.send_event("scene/create", {"scene": {"id": "s1", "name": "Cave"}},
                              event_id="e1")
        await host.until("event-ack", eventId="e1")
        await host.send_event("scene/create", {"scene": {"id": "s1", "name": "Cave"}},
                              event_id="e1")  # the same eventId again
        await host.until("event-ack", eventId="e1")
        await ana.send_event("token/move", {"tokenId": "nope", "position": {"x": 1, "y": 2}},
                             event_id="e2")
        await ana.until("error", eventId="e2")
        await ana.send_text("{not json")
        await ana.until("error")
        await host.cursor("s1", 3, 4)
        await ana.until("cursors")
        await ana.next("ping")  # one heartbeat round trip
        seen = ana.last_sequence()
        ana.drop()
        await host.until("event", "session/disconnected")
        await host.send_event("chat/message", {"text": "missed"}, event_id="e3")
        await host.until("event-ack", eventId="e3")
        again = await server.resume(ana, last_seen=seen)
        await again.next("event-cursor")
        await host.send_event("session/transfer-host", {"newHostId": ana.uuid}, event_id="e4")
        await host.until("event-ack", eventId="e4")

        samples = await scrape(server)
        assert value(samples, "nexus_connections_open") == 2
        assert value(samples, "nexus_rooms_live") == 1
        assert value(samples, "nexus_members_connected") == 2
        assert value(samples, "nexus_rooms", status="active") == 1
        assert value(samples, "nexus_sessions_total", kind="connect") == 2
        assert value(samples, "nexus_sessions_total", kind="resume") == 1
        assert value(samples, "nexus_resumes_total", mode="replay") == 1
        assert value(samples, "nexus_replayed_events_total") == 1
        assert value(samples, "nexus_duplicate_events_total") == 1
        assert value(samples, "nexus_rejected_events_total", reason="not-found") == 1
        assert value(samples, "nexus_errors_sent_total", code="not-found") == 1
        assert value(samples, "nexus_errors_sent_total", code="invalid-json") == 1
        assert value(samples, "nexus_frames_in_total", type="malformed") == 1
        assert value(samples, "nexus_frames_in_total", type="scene/create") == 2
        assert value(samples, "nexus_frames_in_total", type="cursor/update") == 1
        assert value(samples, "nexus_frames_out_total", type="event-ack") == 4
        assert value(samples, "nexus_frames_out_total", type="cursors") >= 1
        assert value(samples, "nexus_cursor_ticks_total") >= 1
        assert value(samples, "nexus_host_migrations_total", kind="manual") == 1
        # Three joins/creates, the scene, the chat, the migration: all journaled.
        assert value(samples, "nexus_durable_events_total") == 5
        assert value(samples, "nexus_broadcasts_total") > 0
        assert value(samples, "nexus_broadcast_recipients_total") > 0
        assert value(samples, "nexus_heartbeat_rtt_seconds_count") >= 1
        assert value(samples, "nexus_store_commits_total") > 0
        assert value(samples, "nexus_commit_batch_writes_count") == value(
            samples, "nexus_store_commits_total")
        assert value(samples, "nexus_store_up") == 1


async def test_store_outage_is_counted(autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        server.store.fail_next(3)
        await host.send_event("chat/message", {"text": "hi"}, event_id="e1")
        await host.until("event-ack", eventId="e1")
        samples = await scrape(server)
        assert value(samples, "nexus_store_errors_total") == 3
        assert value(samples, "nexus_store_outage_seconds_total") > 0
        assert value(samples, "nexus_store_up") == 1


async def test_slow_consumer_and_rate_limits_are_counted_by_reason_and_code(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(rate_limit=1, rate_burst=2) as server:
        host = await server.create("GM")
        for index in range(4):
            await host.send_event("chat/message", {"text": f"m{index}"})
        await host.until("error")
        samples = await scrape(server)
        assert value(samples, "nexus_frames_in_total", type="rate-limited") == 2
        assert value(samples, "nexus_errors_sent_total", code="rate-limited") == 1

    async with open_server() as server:
        host = await server.create("GM")
        await server.running.crash_room(host.room)
        assert await host.wait_closed() == 1012
        samples = await scrape(server)
        assert value(samples, "nexus_backoffs_sent_total", reason="room-restart") == 1
        assert value(samples, "nexus_members_connected") == 0


async def test_metrics_behind_a_token_refuse_a_scrape_without_it(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(metrics_auth_token="s3cret") as server:
        assert (await get(server, "/metrics")).status == 401
        wrong = await get(server, "/metrics", Authorization="Bearer nope")
        assert wrong.status == 401
        assert wrong.headers["www-authenticate"].startswith("Bearer")
        assert b"s3cret" not in wrong.body
        samples = await scrape(server, Authorization="Bearer s3cret")
        assert value(samples, "nexus_connections_open") == 0


async def test_stats_report_rooms_players_memory_and_uptime(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(host_grace=5) as server:
        host = await server.create("GM")
        ana = await server.join(host.room, "Ana")
        await host.until("event", "session/join")
        quiet = await server.create("Solo")
        await quiet.close()
        await quiet.wait_closed()
        await trio.sleep(6)  # the second room hibernates
        await server.running.flush()

        reply = await get(server, "/api/stats")
        assert reply.status == 200
        stats = reply.json()
        assert stats["activeRooms"] == 1
        assert stats["hibernatingRooms"] == 1
        assert stats["totalPlayers"] == 2
        assert [(s["status"], s["roomCount"], s["totalPlayers"])
                for s in stats["roomStatsByStatus"]] == [("active", 1, 2), ("hibernating", 1, 0)]
        assert stats["liveRooms"] == 1
        assert stats["connections"] == 2
        assert stats["membersConnected"] == 2
        assert stats["memory"]["maxRssBytes"] > 0
        assert stats["uptime"] >= 6
        assert ana.uuid not in reply.body.decode()  # counts, never ids or tokens


async def test_stats_without_the_store_are_503_with_what_the_process_knows(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        await server.connect(query(host="", name="GM"))
        server.store.pause()
        reply = await get(server, "/api/stats")
        assert reply.status == 503
        body = reply.json()
        assert body["error"] == "store unavailable"
        assert body["connections"] == 1
        metrics = await get(server, "/metrics")  # still answers, without the store's counts
        assert metrics.status == 200
        assert b"nexus_rooms{" not in metrics.body
        server.store.resume()
