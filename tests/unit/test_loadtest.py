"""``nexus-actors loadtest``: the plan's bounds, counting from events, percentiles, the report
and its checks, the churn's choices; then a whole run against the in-memory server under
MockClock, connections cut under the sessions."""

from __future__ import annotations

import io
import random
import resource
from typing import Any

import orjson
import pytest
import trio
from rich.console import Console

from nexus_actors.client import (
    Cursor,
    CursorsMoved,
    EventAcked,
    EventRefused,
    Reconnected,
    Reconnecting,
    ReconnectionFailed,
    Resynced,
    RoomEvent,
    ServerError,
    UpdateApplied,
    UpdateConfirmed,
    UpdateRolledBack,
)
from nexus_actors.loadtest import Plan, PlanError, PlayerTally, Tally
from nexus_actors.loadtest.churn import CuttableOpener, victims
from nexus_actors.loadtest.histogram import Histogram
from nexus_actors.loadtest.plan import descriptor_limit
from nexus_actors.loadtest.report import behind, build_report, failed_checks, render, summarize
from nexus_actors.loadtest.runner import Display, LoadTest
from nexus_actors.testing import open_server

# The plan -----------------------------------------------------------------------------------


def test_defaults_are_the_target_load() -> None:
    plan = Plan(url="ws://127.0.0.1:5000")
    assert (plan.rooms, plan.players, plan.connections, plan.cursor_hz,
            plan.moves_per_sec) == (50, 10, 500, 20.0, 1.0)


@pytest.mark.parametrize(("changes", "message"), [
    ({"url": "http//nowhere"}, "--url: 'http//nowhere' is not a ws:// or wss:// URL"),
    ({"rooms": 0}, "--rooms must be at least 1 and at most 10000 (got 0)"),
    ({"players": 101}, "--players must be at least 1 and at most 100 (got 101)"),
    ({"rooms": 1000, "players": 50}, "--rooms x --players is 50000 connections"),
    ({"duration": 0}, "--duration must be more than 0"),
    ({"duration": float("nan")}, "--duration must be more than 0"),
    ({"cursor_hz": -1}, "--cursor-hz must be at least 0"),
    ({"cursor_hz": 45, "moves_per_sec": 10}, "--cursor-hz + --moves-per-sec is 55"),
    ({"churn": 1.5}, "--churn must be at least 0 and at most 1"),
    ({"churn_interval": 0.01}, "--churn-interval must be at least 0.1"),
    ({"settle": 1000}, "--settle must be at least 0 and at most 600"),
    ({"processes": 0}, "--processes must be at least 1 and at most 64 (got 0)"),
    ({"rooms": 2, "processes": 3}, "--processes (3) must be at most --rooms (2)"),
])
def test_absurd_plans_are_refused_with_the_flag_named(changes: dict[str, Any],
                                                      message: str) -> None:
    with pytest.raises(PlanError) as refused:
        Plan(**{"url": "ws://127.0.0.1:5000", **changes})
    assert message in str(refused.value)


def test_descriptor_limit() -> None:
    infinity = resource.RLIM_INFINITY
    assert descriptor_limit(600, 1024, 4096) is None
    assert descriptor_limit(600, infinity, infinity) is None
    assert descriptor_limit(5000, 1024, 8192) == 5000
    assert descriptor_limit(5000, 1024, infinity) == 5000
    with pytest.raises(PlanError, match=r"at most 4096 .* raise it"):
        descriptor_limit(5000, 1024, 4096)


# Churn --------------------------------------------------------------------------------------


def test_victims_are_the_fraction_rounded_up_and_seeded() -> None:
    players = list(range(500))
    first = victims(random.Random(7), players, 0.05)
    assert len(first) == 25
    assert len(set(first)) == 25
    assert first == victims(random.Random(7), players, 0.05)
    assert first != victims(random.Random(8), players, 0.05)
    assert len(victims(random.Random(1), list(range(6)), 0.05)) == 1
    assert len(victims(random.Random(1), list(range(6)), 0.5)) == 3
    assert sorted(victims(random.Random(1), list(range(6)), 1.0)) == list(range(6))
    assert victims(random.Random(1), list(range(6)), 0.0) == []
    assert victims(random.Random(1), [], 0.5) == []


async def test_a_cut_resets_the_socket_under_the_stream() -> None:
    left, right = trio.socket.socketpair()
    opener = CuttableOpener(lambda: _stream(trio.SocketStream(left)))
    assert opener.cut() is False  # nothing opened yet
    stream = await opener()
    assert opener.opened == 1
    assert opener.cut() is True
    assert left.fileno() == -1
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"x")
    with right:
        assert await right.recv(10) == b""
    assert opener.cut() is False  # already cut


async def _stream(stream: trio.abc.Stream) -> trio.abc.Stream:
    return stream


# Counting -----------------------------------------------------------------------------------


def cursors(*moved: tuple[str, float]) -> CursorsMoved:
    return CursorsMoved(cursors=tuple(Cursor(user_id=user, user_name=user, scene_id="s", x=x,
                                             y=0.0) for user, x in moved), removed=())


def applied(sequence: int, event_id: str, *, name: str = "token/move",
            mine: bool = False) -> RoomEvent:
    return RoomEvent(name=name, data={}, sequence=sequence, event_id=event_id, actor_id="a",
                     timestamp=0, mine=mine, replayed=False)


def applied_update(event_id: str) -> UpdateApplied:
    return UpdateApplied(update_id=f"u-{event_id}", event_id=event_id, name="token/move",
                         entity_id="t", value={}, previous={})


def test_a_move_that_could_not_be_queued_is_not_waited_for() -> None:
    tally = Tally(origin=0.0)
    player = PlayerTally(room=0)
    tally.sending_move(player, now=1.0)
    tally.sending_move(player, now=2.0)
    tally.move_not_sent(player, "outbox-full")
    tally.move_sent()
    tally.on_event(player, applied_update("m0"), now=3.0)
    assert player.outstanding == {"m0": 1.0}
    assert (tally.moves_sent, dict(tally.errors)) == (1, {"send: outbox-full": 1})


def test_cursor_latency_counts_each_position_once() -> None:
    tally = Tally(origin=100.0)
    player = PlayerTally(room=0)
    assert tally.clock_ms(100.25) == 250.0
    tally.cursor_sent(others=2)
    tally.cursor_sent(others=2)
    assert (tally.cursors_sent, tally.cursors_expected) == (2, 4)
    tally.on_event(player, cursors(("a", 200.0), ("b", 210.0)), now=100.25)
    tally.on_event(player, cursors(("a", 200.0)), now=100.5)  # resent after a reconnect
    tally.on_event(player, cursors(("a", 150.0)), now=100.5)  # older than one seen
    tally.on_event(player, cursors(("a", 260.0)), now=100.3)
    assert tally.cursors_received == 3
    assert tally.cursor_latency.summary() == {"count": 3, "p50": 40.0, "p95": 50.0,
                                              "p99": 50.0, "max": 50.0}


def test_moves_are_answered_by_confirmation_ack_own_event_or_refusal() -> None:
    tally = Tally(origin=0.0)
    player = PlayerTally(room=0)
    for _ in range(6):
        tally.sending_move(player, now=1.0)
        tally.move_sent()
    assert player.waiting()
    for number in range(6):  # read later than sent: the send time counts
        tally.on_event(player, applied_update(f"m{number}"), now=1.005)
    tally.on_event(player, UpdateConfirmed(update_id="u", event_id="m0", sequence=1,
                                           version=2), now=1.010)
    tally.on_event(player, EventAcked(event_id="m1", sequence=2, duplicate=True), now=1.020)
    tally.on_event(player, UpdateRolledBack(update_id="u", event_id="m2", entity_id="t",
                                            reason="timeout", current_version=None,
                                            current=None), now=6.0)
    tally.on_event(player, applied(3, "m2", mine=True), now=7.0)  # applied after the timeout
    tally.on_event(player, UpdateRolledBack(update_id="u", event_id="m3", entity_id="t",
                                            reason="version-conflict", current_version=4,
                                            current=None), now=1.1)
    tally.on_event(player, EventRefused(event_id="m4", name="token/move", code="not-found",
                                        message="", detail={}), now=1.1)
    tally.on_event(player, UpdateConfirmed(update_id="u", event_id="m0", sequence=1,
                                           version=2), now=1.2)  # answered already
    assert (tally.moves_sent, tally.acked, tally.timeouts) == (6, 3, 1)
    assert dict(tally.rejected) == {"version-conflict": 1, "not-found": 1}
    assert tally.ack_latency.summary() == {"count": 3, "p50": 20.0, "p95": 6000.0,
                                           "p99": 6000.0, "max": 6000.0}
    assert player.outstanding == {"m5": 1.0}
    assert player.waiting()
    tally.finish(player, unanswered=1)
    assert (tally.lost, tally.unreported) == (1, 0)


def test_a_move_answered_after_its_timeout_without_an_event_is_not_lost() -> None:
    tally = Tally(origin=0.0)
    player = PlayerTally(room=0)
    tally.sending_move(player, now=1.0)
    tally.move_sent()
    tally.on_event(player, applied_update("m0"), now=1.0)
    assert player.waiting()
    tally.on_event(player, UpdateRolledBack(update_id="u", event_id="m0", entity_id="t",
                                            reason="timeout", current_version=None,
                                            current=None), now=6.0)
    assert not player.waiting()  # its answer may come without an event
    tally.finish(player, unanswered=0)  # the outbox had its answer: a late refusal
    assert (tally.lost, tally.unreported) == (0, 1)


def test_duplicates_are_an_event_applied_twice_or_journaled_twice() -> None:
    tally = Tally(origin=0.0)
    ana, bo, cy = PlayerTally(room=0), PlayerTally(room=0), PlayerTally(room=1)
    tally.on_event(ana, applied(1, "e1"), now=0)
    tally.on_event(ana, applied(2, "e2"), now=0)
    tally.on_event(bo, applied(1, "e1"), now=0)
    tally.on_event(cy, applied(1, "e1"), now=0)  # another room: its own journal
    assert tally.duplicates == 0
    tally.on_event(ana, applied(2, "e2"), now=0)  # the same sequence again
    assert tally.duplicates == 1
    tally.on_event(bo, applied(3, "e2"), now=0)  # one event id at two sequences
    assert tally.duplicates == 2
    tally.on_event(ana, Resynced(sequence=10, epoch=1), now=0)
    tally.on_event(ana, applied(11, "e11"), now=0)
    assert (tally.duplicates, tally.resyncs) == (2, 1)


def test_host_migrations_are_counted_once_per_room() -> None:
    tally = Tally(origin=0.0)
    ana, bo = PlayerTally(room=0), PlayerTally(room=0)
    for player in (ana, bo):
        tally.on_event(player, applied(1, "h1", name="session/host-migrated"), now=0)
    tally.on_event(ana, applied(2, "h2", name="session/host-migrated"), now=0)
    assert tally.host_migrations == 2


def test_a_reconnection_runs_from_the_first_attempt_to_its_outcome() -> None:
    tally = Tally(origin=0.0)
    player = PlayerTally(room=0)
    tally.on_event(player, Reconnecting(attempt=1, next_attempt_in=0.4, reason="dropped"),
                   now=10.0)
    tally.on_event(player, Reconnecting(attempt=2, next_attempt_in=1.2, reason="unreachable"),
                   now=10.5)
    tally.on_event(player, Reconnected(attempt=2, mode="resume", replayed=3), now=11.75)
    tally.on_event(player, Reconnecting(attempt=1, next_attempt_in=0.1, reason="dropped"),
                   now=20.0)
    tally.on_event(player, ReconnectionFailed(attempts=5, code="attempts-exhausted",
                                              message=""), now=50.0)
    tally.on_event(player, ServerError(code="rate-limited", message="", detail={}), now=50.0)
    assert (tally.reconnects_attempted, tally.reconnects_succeeded,
            tally.reconnects_failed) == (2, 1, 1)
    assert tally.reconnect_time.summary()["max"] == 1750.0
    assert dict(tally.ended) == {"attempts-exhausted": 1}
    assert dict(tally.errors) == {"rate-limited": 1}


def test_tallies_from_several_processes_add_up_to_one() -> None:
    def played(tally: Tally, player: PlayerTally, offset: float) -> None:
        tally.opened()
        tally.connect_failed("room-full")
        tally.cursor_sent(others=2)
        tally.on_event(player, cursors(("a", 10.0 + offset)), now=0.05 + offset / 1000)
        tally.sending_move(player, now=1.0)
        tally.move_sent()
        tally.on_event(player, applied_update(f"m{offset}"), now=1.0)
        tally.on_event(player, EventAcked(event_id=f"m{offset}", sequence=1, duplicate=False),
                       now=1.0 + offset / 1000)
        tally.tick(due=1.0, now=1.0)

    whole, first, second = Tally(origin=0.0), Tally(origin=0.0), Tally(origin=0.0)
    played(whole, PlayerTally(room=0), 5.0)
    played(whole, PlayerTally(room=1), 30.0)
    played(first, PlayerTally(room=0), 5.0)
    played(second, PlayerTally(room=1), 30.0)
    merged = Tally(origin=0.0)
    for part in (first, second):
        merged.merge(orjson.loads(orjson.dumps(part.to_data())))  # as sent between processes
    assert merged.to_data() == whole.to_data()
    assert merged.ack_latency.summary() == whole.ack_latency.summary()
    assert (merged.sessions_opened, merged.acked, dict(merged.connect_failures)) == (
        2, 2, {"room-full": 2})


async def test_a_shard_takes_every_nth_room_and_plays_it_as_the_whole_run_would() -> None:
    plan = Plan(url="ws://127.0.0.1:5000", rooms=5, players=2, seed=9, processes=2)
    whole = LoadTest(plan)
    shards = [LoadTest(plan, shard=(index, 2)) for index in range(2)]
    assert [room.index for room in shards[0].rooms] == [0, 2, 4]
    assert [room.index for room in shards[1].rooms] == [1, 3]
    by_index = {room.index: room for shard in shards for room in shard.rooms}
    for room in whole.rooms:
        assert by_index[room.index].phase == room.phase
        assert [p.rng.random() for p in by_index[room.index].players] == [
            p.rng.random() for p in room.players]


# Percentiles, the report and its checks -------------------------------------------------


def test_summarize_uses_nearest_rank_percentiles() -> None:
    assert summarize([]) == {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
    values = [float(v) for v in range(100, 0, -1)]  # 1..100, unordered
    assert summarize(values) == {"count": 100, "p50": 51.0, "p95": 95.0, "p99": 99.0,
                                 "max": 100.0}
    assert summarize([7.25]) == {"count": 1, "p50": 7.2, "p95": 7.2, "p99": 7.2, "max": 7.2}


def test_a_histogram_gives_the_percentiles_of_its_samples_to_a_tenth_of_a_millisecond(
) -> None:
    rng = random.Random(4)
    for size in (1, 2, 3, 10, 99, 100, 1001):
        samples = [round(rng.expovariate(0.05), 1) for _ in range(size)]
        histogram = Histogram()
        histogram.extend(samples)
        assert histogram.summary() == summarize(samples)
    histogram = Histogram()
    histogram.extend([-0.2, 1.04, 1.06])  # a clock step can make a tiny negative latency
    assert histogram.summary() == {"count": 3, "p50": 1.0, "p95": 1.1, "p99": 1.1, "max": 1.1}


def a_report(**counts: Any) -> dict[str, Any]:
    plan = Plan(url="ws://127.0.0.1:5000", rooms=2, players=3, seed=5)
    tally = Tally(origin=0.0)
    for name, value in counts.items():
        if isinstance(getattr(tally, name), Histogram):
            getattr(tally, name).extend(value)
        else:
            setattr(tally, name, value)
    return build_report(plan, tally, elapsed=4.04, rooms=2)


def test_a_clean_run_passes() -> None:
    report = a_report(sessions_opened=6, moves_sent=24, acked=24, ack_latency=[5.0] * 24,
                      reconnects_attempted=20, reconnects_succeeded=19, cuts=20,
                      cursors_sent=480, cursors_expected=960, cursors_received=720,
                      tick_lag=[0.5] * 146)
    assert report["passed"] is True
    assert report["failed_checks"] == []
    assert report["plan"]["seed"] == 5
    assert report["elapsed_s"] == 4.0
    assert report["events"]["ack_latency_ms"]["p99"] == 5.0
    assert report["cursors"]["delivered_ratio"] == 0.75
    assert report["reconnections"]["success_rate"] == 0.95
    assert report["generator"]["kept_up"] is True
    assert behind(report) is None


def test_a_generator_that_fell_behind_says_so_without_failing() -> None:
    # 2 rooms at 20 rounds a second for 4.04 s: 162 rounds due.
    report = a_report(sessions_opened=6, moves_sent=12, acked=12,
                      tick_lag=[400.0, 500.0, 600.0] * 27)
    assert report["passed"] is True
    assert report["generator"]["round_rate"] == 0.5
    assert behind(report) == ("no: its rooms ran 81 of 162 sending rounds (50%), starting "
                              "them 500 ms late at the median")


def test_each_failed_check_is_named() -> None:
    report = a_report(sessions_opened=6, moves_sent=10, acked=8, lost=2, duplicates=1,
                      reconnects_attempted=10, reconnects_succeeded=9)
    assert report["passed"] is False
    assert failed_checks(report) == report["failed_checks"] == [
        "lost: 2 durable events never got an answer (of 10 sent)",
        "duplicates: 1 events were applied twice",
        "reconnections: 9 of 10 succeeded (90.0%; the goal is 95%)",
    ]
    assert failed_checks(a_report()) == ["connections: no session could be seated"]


def test_the_table_shows_the_numbers_and_the_verdict() -> None:
    report = a_report(sessions_opened=6, moves_sent=10, acked=8, lost=2,
                      cursor_latency=[10.0, 20.0, 30.0])
    out = io.StringIO()
    Console(file=out, width=120).print(render(report))
    text = out.getvalue()
    assert "2 rooms x 3 players" in text
    assert "│ cursor latency │ 20.0 │ 30.0 │ 30.0 │ 30.0 │     3 │" in text
    assert "FAILED: lost: 2 durable events" in text


# A whole run against the in-memory server ------------------------------------------------


async def test_a_run_with_churn_loses_nothing(autojump_clock: trio.testing.MockClock) -> None:
    plan = Plan(url="ws://test", rooms=2, players=3, duration=9.0, churn=0.5,
                churn_interval=2.0, seed=3)
    async with open_server() as server:
        async def opener() -> trio.abc.Stream:
            return server.listener.connect()

        with trio.fail_after(120):
            out = io.StringIO()
            report = await LoadTest(plan, opener=opener).run(Display(Console(file=out)))
    assert report["failed_checks"] == []
    assert report["generator"]["kept_up"] is True
    assert report["connections"]["opened"] == 6
    events, reconnections = report["events"], report["reconnections"]
    assert events["sent"] >= 45
    assert events["acked"] == events["sent"]
    assert events["unreported"] == events["rejected"] == 0
    assert (events["lost"], events["duplicates"]) == (0, 0)
    assert reconnections["cuts"] == 4 * 3  # at 2, 4, 6 and 8 s, half of 6 sessions
    assert reconnections["attempted"] == reconnections["succeeded"] == 12
    assert report["cursors"]["received"] > 0
    assert report["cursors"]["latency_ms"]["p50"] is not None
    assert "loadtest: running" in out.getvalue()
