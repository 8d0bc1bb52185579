"""Small pure rules: host succession, resume points, cursor ticks, rate limiting, frame bytes."""

from __future__ import annotations

import ipaddress
from typing import Any

import orjson
import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from nexus_actors.protocol.limits import PerAddress, TokenBucket, forwarded_client, host_of
from nexus_actors.protocol.wire import Wire, encode, text_frame_header
from nexus_actors.room.cursors import CursorBoard
from nexus_actors.room.hosts import successor
from nexus_actors.room.permissions import CO_HOST
from nexus_actors.room.resume import resume_point
from nexus_actors.room.state import RoomState, Seat

# Host succession ----------------------------------------------------------


def room(*seats: str, host: str = "h", co_hosts: tuple[str, ...] = ()) -> RoomState:
    state = RoomState(code="K7PX", host_id=host)
    for member_id in (host, *seats):
        state.seats[member_id] = Seat(id=member_id, name=member_id.upper(), token_hash="")
    for member_id in co_hosts:
        state.co_host_ids.append(member_id)
        state.co_host_permissions[member_id] = CO_HOST
    return state


def test_the_earliest_added_connected_co_host_is_promoted_first() -> None:
    state = room("a", "b", "c", co_hosts=("c", "b"))
    connected = {"a": 1.0, "b": 5.0, "c": 9.0}
    assert successor(state, connected, leaving="h") == "c"


def test_a_disconnected_co_host_is_skipped() -> None:
    state = room("a", "b", "c", co_hosts=("c", "b"))
    assert successor(state, {"a": 1.0, "b": 5.0}, leaving="h") == "b"


def test_without_co_hosts_the_longest_connected_player_is_promoted() -> None:
    state = room("a", "b", "c")
    assert successor(state, {"a": 7.0, "b": 3.0, "c": 5.0}, leaving="h") == "b"


def test_ties_in_connection_time_go_to_the_earlier_seat() -> None:
    state = room("a", "b", "c")
    assert successor(state, {"c": 2.0, "b": 2.0, "a": 4.0}, leaving="h") == "b"


def test_the_leaving_member_is_never_its_own_successor() -> None:
    state = room("a", co_hosts=("a",))
    assert successor(state, {"h": 0.0, "a": 1.0}, leaving="a") == "h"
    assert successor(state, {"h": 0.0}, leaving="h") is None


def test_nobody_connected_means_no_successor() -> None:
    assert successor(room("a", "b"), {}, leaving="h") is None


def test_allow_disconnected_falls_back_to_the_earliest_co_host_then_the_earliest_seat() -> None:
    assert successor(room("a", "b", co_hosts=("b",)), {}, leaving="h",
                     allow_disconnected=True) == "b"
    assert successor(room("a", "b"), {}, leaving="h", allow_disconnected=True) == "a"
    assert successor(room(), {}, leaving="h", allow_disconnected=True) is None


def test_allow_disconnected_still_prefers_connected_members() -> None:
    assert successor(room("a", "b", co_hosts=("a",)), {"b": 1.0}, leaving="h",
                     allow_disconnected=True) == "b"


# Resume points ------------------------------------------------------------


def point(last_seen: int | None, epoch: int | None = None, *, sequence: int = 30,
          epochs: tuple[tuple[int, int], ...] = ((1, 1),), first_retained: int = 1) -> int | None:
    return resume_point(last_seen, epoch, sequence=sequence, epochs=epochs,
                        first_retained=first_retained)


def test_no_last_seen_sequence_means_a_baseline() -> None:
    assert point(None) is None


def test_a_last_seen_sequence_within_the_journal_is_replayed_after() -> None:
    assert point(0) == 0
    assert point(12) == 12
    assert point(30) == 30


def test_a_client_ahead_of_the_room_gets_a_baseline() -> None:
    assert point(31) is None


def test_a_client_older_than_the_retained_journal_gets_a_baseline() -> None:
    assert point(9, first_retained=10) == 9
    assert point(8, first_retained=10) is None


def test_the_current_epoch_resumes_anywhere_in_the_journal() -> None:
    epochs = ((1, 1), (2, 11))
    assert point(25, 2, epochs=epochs) == 25
    assert point(5, 2, epochs=epochs) == 5


def test_an_older_epoch_resumes_only_up_to_the_next_epochs_first_sequence_minus_one() -> None:
    epochs = ((1, 1), (2, 11), (3, 21))
    assert point(10, 1, epochs=epochs) == 10
    assert point(11, 1, epochs=epochs) is None
    assert point(20, 2, epochs=epochs) == 20
    assert point(21, 2, epochs=epochs) is None
    assert point(15, 1, epochs=epochs) is None


def test_an_unknown_epoch_gets_a_baseline() -> None:
    assert point(5, 9, epochs=((1, 1), (2, 11))) is None


def test_without_an_epoch_only_the_sequence_is_checked() -> None:
    assert point(15, None, epochs=((1, 1), (2, 11))) == 15
    assert point(15, 4, epochs=()) == 15


# Cursor board -------------------------------------------------------------


def cursors_of(wire: Wire) -> tuple[list[str], list[str]]:
    frame = orjson.loads(wire.payload)
    assert frame["type"] == "cursors"
    assert frame["timestamp"] == 1000
    return [c["userId"] for c in frame["data"]["cursors"]], frame["data"]["removed"]


def pending(board: CursorBoard) -> bool:
    """Whether the next tick has anything to send (a call, so mypy does not narrow it)."""
    return board.pending


def flush(board: CursorBoard, *recipients: str) -> dict[str, Wire]:
    return dict(board.flush(recipients, 1000))


def test_a_cursor_frame_carries_user_scene_and_position() -> None:
    board = CursorBoard()
    board.update("a", "Ana", "s1", 1.5, -2.0)
    frames = flush(board, "b")
    assert orjson.loads(frames["b"].payload)["data"] == {
        "cursors": [{"userId": "a", "userName": "Ana", "sceneId": "s1",
                     "position": {"x": 1.5, "y": -2.0}}],
        "removed": [],
    }


def test_each_mover_gets_the_others_cursors_but_never_its_own() -> None:
    board = CursorBoard()
    board.update("a", "A", "s", 1, 1)
    board.update("b", "B", "s", 2, 2)
    frames = flush(board, "a", "b", "c")
    assert cursors_of(frames["a"]) == (["b"], [])
    assert cursors_of(frames["b"]) == (["a"], [])
    assert cursors_of(frames["c"]) == (["a", "b"], [])


def test_members_who_did_not_move_share_one_frame() -> None:
    board = CursorBoard()
    board.update("a", "A", "s", 1, 1)
    frames = flush(board, "a", "b", "c", "d")
    assert frames["b"] is frames["c"] is frames["d"]


def test_a_lone_mover_gets_no_frame() -> None:
    board = CursorBoard()
    board.update("a", "A", "s", 1, 1)
    assert list(flush(board, "a")) == []


def test_only_the_latest_position_in_a_tick_is_sent() -> None:
    board = CursorBoard()
    board.update("a", "A", "s", 1, 1)
    board.update("a", "A", "s", 9, 8)
    data = orjson.loads(flush(board, "b")["b"].payload)["data"]
    assert [c["position"] for c in data["cursors"]] == [{"x": 9, "y": 8}]


def test_flush_resets_the_tick() -> None:
    board = CursorBoard()
    assert not pending(board)
    board.update("a", "A", "s", 1, 1)
    assert pending(board)
    flush(board, "b")
    assert not pending(board)


def test_a_removed_cursor_is_listed_once() -> None:
    board = CursorBoard()
    board.update("a", "A", "s", 1, 1)
    flush(board, "a", "b")
    board.remove("a")
    assert pending(board)
    assert cursors_of(flush(board, "b")["b"]) == ([], ["a"])
    assert not pending(board)
    board.update("c", "C", "s", 0, 0)
    assert cursors_of(flush(board, "b")["b"]) == (["c"], [])


def test_a_mover_still_hears_about_removals() -> None:
    board = CursorBoard()
    board.update("a", "A", "s", 1, 1)
    board.update("b", "B", "s", 1, 1)
    flush(board, "a", "b")
    board.update("a", "A", "s", 2, 2)
    board.remove("b")
    assert cursors_of(flush(board, "a")["a"]) == ([], ["b"])


def test_removing_a_cursor_moved_in_the_same_tick_sends_only_the_removal() -> None:
    board = CursorBoard()
    board.update("a", "A", "s", 1, 1)
    board.remove("a")
    assert cursors_of(flush(board, "b")["b"]) == ([], ["a"])


def test_removing_a_member_without_a_cursor_changes_nothing() -> None:
    board = CursorBoard()
    board.remove("ghost")
    assert not pending(board)


def test_moving_again_after_removal_cancels_the_removal() -> None:
    board = CursorBoard()
    board.update("a", "A", "s", 1, 1)
    flush(board, "b")
    board.remove("a")
    board.update("a", "A", "s", 3, 3)
    assert cursors_of(flush(board, "b")["b"]) == (["a"], [])


def test_a_new_member_gets_every_current_cursor_but_its_own() -> None:
    board = CursorBoard()
    assert board.baseline("new", 1000) is None
    board.update("a", "A", "s", 1, 1)
    board.update("b", "B", "s", 2, 2)
    flush(board, "a", "b")
    board.remove("b")
    baseline = board.baseline("new", 1000)
    assert baseline is not None
    assert cursors_of(baseline) == (["a"], [])
    assert board.baseline("a", 1000) is None


# Token bucket -------------------------------------------------------------


def test_a_full_bucket_allows_a_burst_then_refuses() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]


def test_tokens_refill_at_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    for _ in range(3):
        bucket.take(0.0)
    assert not bucket.take(0.25)
    assert bucket.take(0.5)
    assert not bucket.take(0.5)


def test_refill_never_exceeds_the_burst() -> None:
    bucket = TokenBucket(rate=100.0, burst=2, updated=5.0)
    assert [bucket.take(1000.0) for _ in range(3)] == [True, True, False]


def test_retry_after_says_when_the_next_token_comes() -> None:
    bucket = TokenBucket(rate=4.0, burst=1)
    assert bucket.retry_after() == 0.0
    bucket.take(0.0)
    assert bucket.retry_after() == pytest.approx(0.25)
    assert not bucket.take(0.2)
    assert bucket.retry_after() == pytest.approx(0.05)
    assert bucket.take(0.25)


# Wire frames --------------------------------------------------------------


def parse_frame(data: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = reader.read_exact
    generator = Frame.parse(parser, mask=False)
    try:
        next(generator)
    except StopIteration as done:
        result: Frame = done.value
        return result
    raise AssertionError("frame is incomplete")


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_wire_frames_are_valid_unmasked_final_text_frames(length: int) -> None:
    payload = b"x" * length
    wire = Wire(payload, "event")
    frame = parse_frame(wire.frame)
    assert frame.opcode is Opcode.TEXT
    assert frame.fin
    assert (frame.rsv1, frame.rsv2, frame.rsv3) == (False, False, False)
    assert frame.data == payload
    assert len(wire.frame) == len(text_frame_header(length)) + length


@pytest.mark.parametrize(("length", "header_size"), [(0, 2), (125, 2), (126, 4), (65535, 4),
                                                     (65536, 10)])
def test_header_size_follows_the_payload_length(length: int, header_size: int) -> None:
    assert len(text_frame_header(length)) == header_size


def test_a_wire_frame_is_built_once_and_shared() -> None:
    wire = Wire(b"{}")
    assert wire.frame is wire.frame
    assert len(wire) == 2


def test_encode_puts_type_data_extras_and_timestamp_in_one_object() -> None:
    wire = encode("event", {"name": "chat/message"}, 1234, eventId="e", serverSequence=3)
    message: dict[str, Any] = orjson.loads(wire.payload)
    assert message == {"type": "event", "data": {"name": "chat/message"}, "eventId": "e",
                       "serverSequence": 3, "timestamp": 1234}
    assert wire.kind == "event"
    assert parse_frame(wire.frame).data == wire.payload


def test_per_address_buckets_are_separate_and_allows_takes_nothing() -> None:
    limits = PerAddress(rate=1.0, burst=2)
    assert limits.take("10.0.0.1", 0.0)
    assert limits.take("10.0.0.1", 0.0)
    assert not limits.take("10.0.0.1", 0.0)
    assert limits.retry_after("10.0.0.1") == pytest.approx(1.0)
    assert limits.allows("10.0.0.2", 0.0)
    assert limits.allows("10.0.0.2", 0.0)  # looking does not spend
    assert not limits.allows("10.0.0.1", 0.5)
    assert limits.allows("10.0.0.1", 1.0)


def test_per_address_forgets_the_least_recently_used_beyond_its_bound() -> None:
    limits = PerAddress(rate=0.001, burst=1, max_addresses=2)
    assert limits.take("a", 0.0)
    assert limits.take("b", 0.0)
    assert not limits.take("a", 0.0)  # "a" is now the most recent
    assert limits.take("c", 0.0)  # "b" is forgotten
    assert limits.take("b", 0.0)  # starts again with a full bucket
    assert not limits.take("c", 0.0)


def test_host_of_drops_the_port_for_every_address_form() -> None:
    assert host_of("192.0.2.7:51234") == "192.0.2.7"
    assert host_of("::1:51234") == "::1"
    assert host_of("memory") == "memory"


def test_a_trusted_proxy_is_counted_under_the_client_it_forwards_for() -> None:
    trusted = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32"))
    # The right-most address a trusted proxy did not add itself: the client.
    assert forwarded_client("10.1.2.3:5000", "198.51.100.7", trusted) == "198.51.100.7:0"
    assert forwarded_client("127.0.0.1:4000", "203.0.113.9, 10.9.9.9",
                            trusted) == "203.0.113.9:0"
    # What a client writes to the left of it counts for nothing.
    assert forwarded_client("10.1.2.3:5000", "1.1.1.1, 198.51.100.7",
                            trusted) == "198.51.100.7:0"
    assert forwarded_client("10.1.2.3:5000", "2001:db8::7", trusted) == "[2001:db8::7]:0"
    assert host_of(forwarded_client("10.1.2.3:5000", "2001:db8::7", trusted)) == "[2001:db8::7]"
    # An untrusted peer is itself, headers or not; so is a proxy's malformed chain.
    assert forwarded_client("198.51.100.1:5000", "10.0.0.1", trusted) == "198.51.100.1:5000"
    assert forwarded_client("10.1.2.3:5000", "not-an-ip", trusted) == "10.1.2.3:5000"
    assert forwarded_client("10.1.2.3:5000", None, trusted) == "10.1.2.3:5000"
    assert forwarded_client("10.1.2.3:5000", "10.2.2.2", trusted) == "10.1.2.3:5000"
    assert forwarded_client("10.1.2.3:5000", "198.51.100.7", ()) == "10.1.2.3:5000"
    assert forwarded_client("memory", "198.51.100.7", trusted) == "memory"
