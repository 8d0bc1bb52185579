"""The client's rules without I/O: frames in, frames and events out, time passed in."""

from __future__ import annotations

import itertools
import random
from typing import Any
from urllib.parse import parse_qs

import orjson
import pytest
import trio
import trio.testing

from nexus_actors.client import (
    Backoff,
    EventAcked,
    EventRefused,
    EventsLagged,
    Options,
    OutboxFull,
    Reconnected,
    Resynced,
    RoomEvent,
    ServerError,
    TokenRotated,
    UnknownEntity,
    UpdateApplied,
    UpdateRolledBack,
)
from nexus_actors.client.backoff import TERMINAL_CLOSE_CODES, may_retry
from nexus_actors.client.core import SessionCore, Target
from nexus_actors.client.events import ClientEvent
from nexus_actors.client.feed import EventFeed
from nexus_actors.client.outbox import Outbox

GM = "gm-id"
ANA = "ana-id"


def counter_ids() -> Any:
    numbers = itertools.count(1)
    return lambda: f"id-{next(numbers)}"


def room_state(**tokens: dict[str, Any]) -> dict[str, Any]:
    return {"scenes": {"s1": {"id": "s1", "name": "Cave", "version": 1}},
            "activeSceneId": None, "tokens": dict(tokens), "characters": {},
            "initiative": {"order": [], "round": 0, "turn": 0, "version": 1}, "chat": []}


def token(x: float, version: int) -> dict[str, Any]:
    return {"id": "t1", "sceneId": "s1", "position": {"x": x, "y": 0.0}, "version": version}


def session_frame(name: str, *, sequence: int, token_: str = "secret-1", epoch: int = 1,
                  state: dict[str, Any] | None = None) -> bytes:
    return orjson.dumps({"type": "event", "data": {
        "name": name, "roomCode": "K7PX", "uuid": ANA, "token": token_, "hostId": GM,
        "coHostIds": [],
        "players": [{"id": GM, "name": "GM", "role": "host", "connected": True},
                    {"id": ANA, "name": "Ana", "role": "player", "connected": True}],
        "state": state or room_state(t1=token(0.0, 1)), "sequence": sequence,
        "epoch": epoch}, "timestamp": 0})


def cursor_frame(mode: str, sequence: int, through: int) -> bytes:
    return orjson.dumps({"type": "event-cursor", "data": {
        "mode": mode, "sequence": sequence, "replayThrough": through}, "timestamp": 0})


def chat(sequence: int, text: str, *, event_id: str | None = None,
         actor: str = GM) -> bytes:
    return orjson.dumps({"type": "event", "data": {"name": "chat/message", "message": {
        "id": f"m{sequence}", "userId": actor, "userName": "GM", "text": text,
        "timestamp": 0}}, "eventId": event_id or f"e{sequence}", "serverSequence": sequence,
        "actorId": actor, "timestamp": 0})


def move(sequence: int, x: float, version: int, *, event_id: str, actor: str = GM,
         update_id: str | None = None) -> bytes:
    data: dict[str, Any] = {"name": "token/move", "tokenId": "t1",
                            "position": {"x": x, "y": 0.0}, "version": version}
    if update_id is not None:
        data["updateId"] = update_id
    return orjson.dumps({"type": "event", "data": data, "eventId": event_id,
                         "serverSequence": sequence, "actorId": actor, "timestamp": 0})


def frame(kind: str, **data: Any) -> bytes:
    return orjson.dumps({"type": kind, "data": data, "timestamp": 0})


def seated(*, options: Options | None = None, sequence: int = 2) -> SessionCore:
    """A player's core that has joined room K7PX (state at ``sequence``)."""
    core = SessionCore(target=Target(room="K7PX", name="Ana"), options=options or Options(),
                       new_id=counter_ids())
    core.opened(0)
    core.receive(session_frame("session/joined", sequence=sequence), 0.0)
    core.receive(cursor_frame("baseline", sequence, sequence), 0.0)
    assert core.seated
    core.take_frames()
    core.take_events()
    return core


def sent(core: SessionCore) -> list[dict[str, Any]]:
    return [orjson.loads(f) for f in core.take_frames()]


def of(events: list[ClientEvent], kind: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def resume_reason(core: SessionCore) -> str | None:
    """Read through a call, so a type checker does not carry an earlier narrowing over."""
    return core.resume_reason


def query(core: SessionCore) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(core.query(), keep_blank_values=True).items()}


# Connecting -------------------------------------------------------------------------


def test_targets_name_what_the_connect_request_needs() -> None:
    with pytest.raises(ValueError, match="room code"):
        Target(name="Ana")
    with pytest.raises(ValueError, match="name"):
        Target(room="K7PX")
    with pytest.raises(ValueError, match="room code"):
        Target(token="t")
    Target(name="GM", role="host")


def test_the_query_creates_joins_or_resumes_with_the_latest_token_and_position() -> None:
    ids = counter_ids()
    options = Options()
    assert query(SessionCore(target=Target(name="GM", role="host"), options=options,
                             new_id=ids)) == {"host": "", "name": "GM"}
    assert query(SessionCore(target=Target(room="K7PX", name="GM", role="host"),
                             options=options, new_id=ids)) == {"host": "K7PX", "name": "GM"}
    assert query(SessionCore(target=Target(room="K7PX", token="old"), options=options,
                             new_id=ids)) == {"reconnect": "K7PX", "token": "old"}
    core = seated(sequence=5)
    assert query(core) == {"reconnect": "K7PX", "token": "secret-1",
                           "lastSeenSequence": "5", "epoch": "1"}
    # The server gives a new token in each session/reconnected: the next resume uses it.
    core.closed(None, "dropped")
    core.opened(1)
    core.receive(session_frame("session/reconnected", sequence=5, token_="secret-2",
                               epoch=2), 1.0)
    core.receive(cursor_frame("resume", 5, 5), 1.0)
    assert query(core) == {"reconnect": "K7PX", "token": "secret-2",
                           "lastSeenSequence": "5", "epoch": "2"}
    # Even a connection that ends before its event-cursor leaves the newest token.
    core.closed(None, "dropped")
    core.opened(1)
    core.receive(session_frame("session/reconnected", sequence=5, token_="secret-3"), 2.0)
    core.closed(None, "dropped")
    assert query(core)["token"] == "secret-3"


def test_a_rotated_token_from_the_session_token_notice_is_kept_and_announced() -> None:
    core = seated(sequence=5)
    core.closed(None, "dropped")
    core.opened(1)
    core.receive(session_frame("session/reconnected", sequence=5), 1.0)  # as presented
    core.receive(cursor_frame("resume", 5, 5), 1.0)
    assert not of(core.take_events(), TokenRotated)
    core.receive(orjson.dumps({"type": "event", "data": {
        "name": "session/token", "token": "secret-2"}, "timestamp": 0}), 1.5)
    assert of(core.take_events(), TokenRotated) == [TokenRotated(token="secret-2")]
    assert query(core)["token"] == "secret-2"
    assert core.replica is not None
    assert core.replica.sequence == 5  # a notice, not a journaled event


def test_close_codes_decide_whether_to_come_back() -> None:
    for code in (1000, 4000, 4001, 4400, 4401, 4404, 4409, 4429):
        assert not may_retry(code)
        core = seated()
        verdict = core.closed(code, "")
        assert not verdict.retry
        assert verdict.close_code == code
    for code in (1006, 1008, 1009, 1011, 1012, 1013):
        assert may_retry(code)
    assert TERMINAL_CLOSE_CODES[4001] == "kicked"
    core = seated()
    core.receive(frame("backoff", retryAfterMs=1310, reason="server-restart"), 1.0)
    verdict = core.closed(1012, "")
    assert verdict.retry
    assert verdict.hint == pytest.approx(1.31)
    assert verdict.reason == "1012"
    dropped = seated().closed(None, "dropped")
    assert dropped.retry
    assert dropped.close_code == 1006
    assert dropped.reason == "dropped"


def test_a_refused_connect_is_reported_with_the_servers_code() -> None:
    core = SessionCore(target=Target(room="K7PX", name="Ana"), options=Options(),
                       new_id=counter_ids())
    core.opened(0)
    core.receive(frame("error", code="room-not-found", message="no room K7PX"), 0.0)
    verdict = core.closed(4404, "room-not-found")
    assert not verdict.retry
    assert verdict.refusal is not None
    assert (verdict.refusal.code, verdict.refusal.close_code) == ("room-not-found", 4404)
    core.opened(0)
    core.receive(frame("error", code="unavailable", message="draining"), 0.0)
    core.receive(frame("backoff", retryAfterMs=800, reason="server-restart"), 0.0)
    verdict = core.closed(1012, "")
    assert verdict.retry
    assert verdict.hint == pytest.approx(0.8)
    assert verdict.refusal is not None
    assert verdict.refusal.retry_after == pytest.approx(0.8)


# Backoff ----------------------------------------------------------------------------


def test_backoff_is_full_jitter_capped_and_never_shorter_than_the_hint() -> None:
    backoff = Backoff(base=1.0, cap=30.0, max_attempts=5)
    assert [backoff.ceiling(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    rng = random.Random(7)
    for attempt in range(1, 8):
        delays = [backoff.delay(attempt, rng) for _ in range(500)]
        assert min(delays) >= 0.0
        assert max(delays) <= backoff.ceiling(attempt)
        assert max(delays) > 0.9 * backoff.ceiling(attempt)  # the whole range is used
        assert min(delays) < 0.1 * backoff.ceiling(attempt)
    assert all(backoff.delay(1, rng, hint=5.0) == 5.0 for _ in range(100))
    assert backoff.delay(1, random.Random(3)) == backoff.delay(1, random.Random(3))


# Outbox and resends -------------------------------------------------------------------


def test_the_outbox_refuses_when_full_and_keeps_ids_for_resends() -> None:
    outbox = Outbox(limit=2, new_id=counter_ids())
    first = outbox.add("chat/message", {"text": "a"})
    second = outbox.add("chat/message", {"text": "b"})
    with pytest.raises(OutboxFull) as full:
        outbox.add("chat/message", {"text": "c"})
    assert full.value.code == "outbox-full"
    assert [e.client_sequence for e in outbox] == [1, 2]
    assert orjson.loads(first.frame()) == {
        "type": "event", "data": {"name": "chat/message", "text": "a"},
        "eventId": "id-1", "clientSequence": 1}
    assert outbox.settle(first.event_id) == first
    assert outbox.settle(first.event_id) is None
    third = outbox.add("chat/message", {"text": "c"})
    assert [e.event_id for e in outbox] == [second.event_id, third.event_id]
    assert third.client_sequence == 3


def test_unanswered_events_are_sent_again_with_the_same_ids_after_a_resume() -> None:
    core = seated()
    a = core.send("chat/message", {"text": "a"})
    b = core.send("chat/message", {"text": "b"})
    assert [f["eventId"] for f in sent(core)] == [a.event_id, b.event_id]
    core.receive(frame("event-ack", eventId=a.event_id, serverSequence=3, duplicate=False), 1)
    core.closed(None, "dropped")
    c = core.send("chat/message", {"text": "c"})  # while away: queued, not sent
    assert sent(core) == []
    core.opened(1)
    core.receive(session_frame("session/reconnected", sequence=3), 2.0)
    core.receive(cursor_frame("resume", 2, 3), 2.0)
    frames = sent(core)
    events = [f for f in frames if f["type"] == "event"]
    assert [(f["eventId"], f["clientSequence"]) for f in events] == [
        (b.event_id, b.client_sequence), (c.event_id, c.client_sequence)]
    assert frames[-1]["type"] == "heartbeat"


def test_overloaded_and_rate_limited_events_are_sent_again_later_not_dropped() -> None:
    core = seated()
    entry = core.send("chat/message", {"text": "a"})
    sent(core)
    core.receive(frame("error", code="overloaded", message="busy", eventId=entry.event_id,
                       retryAfterMs=500), 1.0)
    assert len(core.outbox) == 1
    assert core.next_deadline() == pytest.approx(1.5)
    core.tick(1.4)
    assert sent(core) == []
    core.tick(1.5)
    assert [f["eventId"] for f in sent(core)] == [entry.event_id]
    core.receive(frame("error", code="rate-limited", message="slow down",
                       retryAfterMs=1000), 2.0)
    assert of(core.take_events(), ServerError)[0].code == "rate-limited"
    core.tick(3.0)
    assert [f["eventId"] for f in sent(core)] == [entry.event_id]


def test_a_refused_event_is_reported_and_forgotten() -> None:
    core = seated()
    entry = core.send("scene/create", {"scene": {"name": "X"}})
    core.receive(frame("error", code="forbidden", message="no", eventId=entry.event_id), 1.0)
    [refused] = of(core.take_events(), EventRefused)
    assert (refused.event_id, refused.name, refused.code) == (
        entry.event_id, "scene/create", "forbidden")
    assert len(core.outbox) == 0


# Ordering and gaps ---------------------------------------------------------------------


def test_events_apply_in_sequence_order_and_a_gap_waits() -> None:
    core = seated()
    assert core.replica is not None
    core.receive(chat(4, "later"), 1.0)
    assert core.replica.sequence == 2
    assert not of(core.take_events(), RoomEvent)
    core.receive(chat(3, "first", actor=ANA), 1.5)
    applied = of(core.take_events(), RoomEvent)
    assert [(e.sequence, e.mine) for e in applied] == [(3, True), (4, False)]
    assert [m["text"] for m in core.replica.state.chat] == ["first", "later"]
    assert core.replica.gap_since() is None
    core.receive(chat(3, "first", actor=ANA), 2.0)  # seen already: ignored
    assert core.take_events() == []


def test_a_gap_that_stays_open_asks_for_a_resume() -> None:
    core = seated(options=Options(gap_timeout=4.0))
    core.receive(chat(4, "later"), 10.0)
    assert core.next_deadline() == pytest.approx(14.0)
    core.tick(13.9)
    assert resume_reason(core) is None
    core.tick(14.0)
    assert core.resume_reason == "gap"
    verdict = core.closed(None, "dropped")
    assert verdict.retry
    assert verdict.immediate
    assert verdict.reason == "gap"
    assert query(core)["lastSeenSequence"] == "2"


def test_a_gap_that_moves_on_gets_its_full_time_again() -> None:
    core = seated(options=Options(gap_timeout=4.0))
    core.receive(chat(4, "a"), 10.0)
    core.receive(chat(6, "c"), 10.0)
    core.receive(chat(3, "first", actor=ANA), 12.0)  # 3 and 4 apply; 5 is missing now
    assert core.replica is not None
    assert core.replica.sequence == 4
    assert core.next_deadline() == pytest.approx(16.0)
    core.tick(14.0)
    assert resume_reason(core) is None


def test_too_many_events_behind_a_gap_ask_for_a_resume_at_once() -> None:
    core = seated(options=Options(max_held=2))
    core.receive(chat(4, "a"), 1.0)
    core.receive(chat(5, "b"), 1.0)
    assert resume_reason(core) is None
    core.receive(chat(6, "c"), 1.0)
    assert core.resume_reason == "gap"


def test_a_resume_replays_onto_the_copy_and_a_baseline_replaces_it() -> None:
    core = seated()
    core.closed(None, "dropped")
    core.opened(1)
    core.receive(session_frame("session/reconnected", sequence=4, state={
        **room_state(t1=token(0.0, 1)),
        "chat": [{"id": "m3", "userId": GM, "userName": "GM", "text": "a", "timestamp": 0},
                 {"id": "m4", "userId": GM, "userName": "GM", "text": "b", "timestamp": 0}]}),
        5.0)
    core.receive(cursor_frame("resume", 2, 4), 5.0)
    assert not of(core.take_events(), Reconnected)  # not before the replay is applied
    core.receive(chat(3, "a"), 5.0)
    core.receive(chat(4, "b"), 5.0)
    events = core.take_events()
    assert [(e.sequence, e.replayed) for e in of(events, RoomEvent)] == [(3, True), (4, True)]
    [back] = of(events, Reconnected)
    assert (back.attempt, back.mode, back.replayed) == (1, "resume", 2)
    assert not of(events, Resynced)

    core.closed(None, "dropped")
    core.opened(1)
    core.receive(session_frame("session/reconnected", sequence=9, epoch=2,
                               state=room_state(t1=token(5.0, 3))), 6.0)
    core.receive(cursor_frame("baseline", 9, 9), 6.0)
    events = core.take_events()
    assert of(events, Resynced) == [Resynced(sequence=9, epoch=2)]
    assert of(events, Reconnected)[0].mode == "baseline"
    assert core.replica is not None
    assert core.replica.state.tokens["t1"]["position"] == {"x": 5.0, "y": 0.0}


def test_a_replay_that_does_not_reproduce_the_servers_state_is_replaced_by_it() -> None:
    core = seated()
    core.closed(None, "dropped")
    core.opened(1)
    core.receive(session_frame("session/reconnected", sequence=3,
                               state=room_state(t1=token(8.0, 2))), 5.0)
    core.receive(cursor_frame("resume", 2, 3), 5.0)
    core.receive(chat(3, "not what the state says"), 5.0)
    assert of(core.take_events(), Resynced) == [Resynced(sequence=3, epoch=1)]
    assert core.replica is not None
    assert core.replica.state.chat == []
    assert core.replica.state.tokens["t1"]["version"] == 2


# Optimistic updates ---------------------------------------------------------------------


def test_an_update_shows_at_once_and_chains_versions() -> None:
    core = seated()
    first = core.update("token/move", "token", "t1", {"position": {"x": 1.0, "y": 0.0}},
                        {"position": {"x": 1.0, "y": 0.0}}, force=False, now=0.0)
    second = core.update("token/move", "token", "t1", {"position": {"x": 2.0, "y": 0.0}},
                         {"position": {"x": 2.0, "y": 0.0}}, force=False, now=0.0)
    frames = sent(core)
    assert [(f["data"]["version"], f["data"]["updateId"]) for f in frames] == [
        (1, first.update_id), (2, second.update_id)]
    applied = of(core.take_events(), UpdateApplied)
    assert applied[0].previous["position"] == {"x": 0.0, "y": 0.0}
    assert applied[1].previous["position"] == {"x": 1.0, "y": 0.0}
    assert applied[1].value["version"] == 3
    assert core.replica is not None
    view = core.updates.view(core.replica.state)
    assert view["tokens"]["t1"]["position"] == {"x": 2.0, "y": 0.0}
    assert core.replica.state.tokens["t1"]["position"] == {"x": 0.0, "y": 0.0}
    forced = core.update("token/move", "token", "t1", {"position": {"x": 3.0, "y": 0.0}},
                         {"position": {"x": 3.0, "y": 0.0}}, force=True, now=0.0)
    assert "version" not in sent(core)[0]["data"]
    assert forced.update_id is not None
    with pytest.raises(UnknownEntity) as unknown:
        core.update("token/move", "token", "ghost", {}, {}, force=False, now=0.0)
    assert unknown.value.code == "not-found"


def test_a_rejected_update_shows_the_servers_current_value_until_the_copy_has_it() -> None:
    core = seated()
    entry = core.update("token/move", "token", "t1", {"position": {"x": 1.0, "y": 0.0}},
                        {"position": {"x": 1.0, "y": 0.0}}, force=False, now=0.0)
    core.take_events()
    current = token(7.0, 2)
    core.receive(frame("update-rejected", updateId=entry.update_id, eventId=entry.event_id,
                       reason="version-conflict", code="version-conflict", message="",
                       currentVersion=2, current=current), 1.0)
    [rolled] = of(core.take_events(), UpdateRolledBack)
    assert (rolled.reason, rolled.current_version, rolled.current) == (
        "version-conflict", 2, current)
    assert len(core.outbox) == 0
    assert core.replica is not None
    # The move that made version 2 has not reached this copy yet (it waits behind a gap):
    # the server's value is shown, not the stale one.
    assert core.replica.state.tokens["t1"]["version"] == 1
    view = core.updates.view(core.replica.state)
    assert view["tokens"]["t1"]["position"] == {"x": 7.0, "y": 0.0}
    core.receive(move(3, 7.0, 2, event_id="gm-move"), 1.5)
    assert core.updates.view(core.replica.state) == core.replica.state.public()


def test_an_error_for_an_update_rolls_it_back_and_a_late_answer_is_its_events_own() -> None:
    core = seated(options=Options(update_timeout=5.0))
    a = core.update("token/move", "token", "t1", {"position": {"x": 1.0, "y": 0.0}},
                    {"position": {"x": 1.0, "y": 0.0}}, force=False, now=0.0)
    b = core.update("token/move", "token", "t1", {"position": {"x": 2.0, "y": 0.0}},
                    {"position": {"x": 2.0, "y": 0.0}}, force=False, now=1.0)
    core.take_events()
    core.receive(frame("error", code="invalid", message="eventId used", eventId=a.event_id),
                 2.0)
    [rolled] = of(core.take_events(), UpdateRolledBack)
    assert (rolled.update_id, rolled.reason) == (a.update_id, "invalid")
    assert core.next_deadline() == pytest.approx(6.0)
    core.tick(6.0)
    [late] = of(core.take_events(), UpdateRolledBack)
    assert (late.update_id, late.reason) == (b.update_id, "timeout")
    assert len(core.outbox) == 1  # still owed an answer
    core.receive(move(3, 2.0, 2, event_id=b.event_id, actor=ANA, update_id=b.update_id), 7.0)
    core.receive(frame("event-ack", eventId=b.event_id, serverSequence=3, duplicate=False), 7)
    core.receive(frame("update-confirmed", updateId=b.update_id, eventId=b.event_id,
                       serverSequence=3, version=2), 7.0)
    events = core.take_events()
    assert not of(events, UpdateRolledBack)
    assert [type(e).__name__ for e in events] == ["RoomEvent", "EventAcked"]
    assert len(core.outbox) == 0


@pytest.mark.parametrize("answer", ["update-confirmed", "update-rejected"])
def test_an_answer_after_the_timeout_rolled_an_update_back_is_reported_once(
        answer: str) -> None:
    core = seated(options=Options(update_timeout=5.0))
    entry = core.update("token/move", "token", "t1", {"position": {"x": 1.0, "y": 0.0}},
                        {"position": {"x": 1.0, "y": 0.0}}, force=False, now=0.0)
    core.tick(5.0)
    [rolled] = of(core.take_events(), UpdateRolledBack)
    assert rolled.reason == "timeout"
    assert entry.update_id is not None
    if answer == "update-confirmed":
        core.receive(frame(answer, updateId=entry.update_id, eventId=entry.event_id,
                           serverSequence=3, version=2), 9.0)
        [late] = core.take_events()
        assert late == EventAcked(event_id=entry.event_id, sequence=3, duplicate=False)
    else:
        core.receive(frame(answer, updateId=entry.update_id, eventId=entry.event_id,
                           reason="version-conflict", code="version-conflict",
                           message="stale", currentVersion=4, current=token(9.0, 4)), 9.0)
        [late] = core.take_events()
        assert isinstance(late, EventRefused)
        assert (late.event_id, late.name, late.code, late.message) == (
            entry.event_id, "token/move", "version-conflict", "stale")
        assert late.detail["currentVersion"] == 4
    assert len(core.outbox) == 0
    core.receive(frame(answer, updateId=entry.update_id, eventId=entry.event_id,
                       serverSequence=3, version=2, reason="invalid"), 9.5)
    assert core.take_events() == []  # answered already


# The application's event stream ------------------------------------------------------------


async def test_a_slow_reader_is_told_how_many_events_it_missed() -> None:
    feed = EventFeed(capacity=2)
    events = [Resynced(sequence=n, epoch=1) for n in range(5)]
    for event in events:
        feed.put(event)
    assert await feed.__anext__() == events[0]
    feed.put(Resynced(sequence=99, epoch=1))  # still lagging: dropped too
    assert await feed.__anext__() == events[1]
    with pytest.raises(EventsLagged) as lagged:
        await feed.__anext__()
    assert (lagged.value.dropped, lagged.value.code) == (4, "events-lagged")
    feed.put(events[4])
    feed.close()
    assert [event async for event in feed] == [events[4]]


async def test_the_event_stream_waits_for_events() -> None:
    feed = EventFeed(capacity=10)
    got: list[Any] = []

    async def read() -> None:
        got.extend([event async for event in feed])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        feed.put(Resynced(sequence=1, epoch=1))
        feed.close()
    assert got == [Resynced(sequence=1, epoch=1)]


async def test_batches_hold_everything_that_arrived_and_report_a_lag_after_them() -> None:
    feed = EventFeed(capacity=3)
    events = [Resynced(sequence=n, epoch=1) for n in range(5)]
    for event in events[:2]:
        feed.put(event)
    batches = feed.batches()
    assert await batches.__anext__() == events[:2]
    for event in events[2:]:
        feed.put(event)
    feed.put(Resynced(sequence=99, epoch=1))  # past the capacity: dropped
    assert await batches.__anext__() == events[2:]
    with pytest.raises(EventsLagged) as lagged:
        await batches.__anext__()
    assert lagged.value.dropped == 1
    feed.put(events[0])
    feed.close()
    assert [batch async for batch in feed.batches()] == [[events[0]]]


async def test_a_batch_reader_wakes_once_for_a_burst() -> None:
    feed = EventFeed(capacity=10)
    got: list[list[Any]] = []

    async def read() -> None:
        got.extend([batch async for batch in feed.batches()])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        for n in range(3):
            feed.put(Resynced(sequence=n, epoch=1))
        await trio.testing.wait_all_tasks_blocked()
        feed.close()
    assert got == [[Resynced(sequence=n, epoch=1) for n in range(3)]]
