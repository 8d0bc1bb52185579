"""A peer's outbox: what counts as a client falling behind."""

from __future__ import annotations

from nexus_actors.actors.peer import Peer
from nexus_actors.protocol.wire import Wire


def make_peer(overflows: list[Peer], *, max_frames: int = 4,
              max_bytes: int = 1 << 20) -> Peer:
    return Peer(1, "test", max_frames=max_frames, max_bytes=max_bytes,
                on_overflow=overflows.append)


def frame(size: int = 10) -> Wire:
    return Wire(b"x" * size)


def test_frames_queued_in_one_turn_do_not_count_until_they_are_offered() -> None:
    overflows: list[Peer] = []
    peer = make_peer(overflows)
    assert all(peer.queue(frame()) for _ in range(10))  # one commit's acks, say
    assert overflows == []
    assert len(peer.take()) == 10  # the client read them


def test_frames_offered_and_not_taken_close_a_slow_consumer() -> None:
    overflows: list[Peer] = []
    peer = make_peer(overflows)
    for _ in range(4):
        peer.queue(frame())
    peer.flush()  # offered; nobody takes them
    assert peer.queue(frame()) is False
    assert overflows == [peer]
    assert peer.queued == 0


def test_bytes_offered_and_not_taken_count_too() -> None:
    overflows: list[Peer] = []
    peer = make_peer(overflows, max_frames=100, max_bytes=100)
    peer.queue(frame(150))
    assert overflows == []
    peer.flush()
    assert peer.queue(frame()) is False
    assert overflows == [peer]


def test_a_frame_sent_directly_is_offered_at_once() -> None:
    overflows: list[Peer] = []
    peer = make_peer(overflows, max_frames=2)
    assert peer.send(frame())
    assert peer.send(frame())
    assert peer.send(frame()) is False  # two offered, none taken
    assert overflows == [peer]
