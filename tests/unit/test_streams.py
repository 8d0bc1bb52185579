"""The in-memory streams: bounded like a socket, and a link that can be slowed down."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from nexus_actors.testing import stream_pair


async def test_writer_blocks_when_the_reader_falls_behind(
        autojump_clock: trio.testing.MockClock) -> None:
    client, server = stream_pair(capacity=4)
    await client.send_all(b"abcd")
    with trio.move_on_after(1) as waited:
        await client.send_all(b"e")
    assert waited.cancelled_caught
    assert await server.receive_some() == b"abcd"


async def test_lag_delays_bytes_in_both_directions_and_keeps_their_order(
        autojump_clock: trio.testing.MockClock) -> None:
    client, server = stream_pair()
    client.lag(0.5)
    start = trio.current_time()
    await client.send_all(b"one")
    on_the_way = client.in_transit
    assert on_the_way
    client.lag(0.1)  # a faster link later never lets new bytes overtake old ones
    await client.send_all(b"two")
    received = b""
    while len(received) < 6:
        received += await server.receive_some()
    assert received == b"onetwo"
    assert trio.current_time() - start == pytest.approx(0.5)
    assert not client.in_transit

    await server.send_all(b"back")
    assert await client.receive_some() == b"back"
    assert trio.current_time() - start == pytest.approx(0.6)


async def test_lagged_bytes_count_against_the_capacity(
        autojump_clock: trio.testing.MockClock) -> None:
    client, _server = stream_pair(capacity=4)
    client.lag(1.0)
    await client.send_all(b"abcd")
    with trio.move_on_after(0.5) as waited:
        await client.send_all(b"e")
    assert waited.cancelled_caught


async def test_close_after_lagged_bytes_is_read_after_them(
        autojump_clock: trio.testing.MockClock) -> None:
    client, server = stream_pair()
    client.lag(0.2)
    await client.send_all(b"last words")
    await client.send_eof()
    assert await server.receive_some() == b"last words"
    assert await server.receive_some() == b""
