"""Per-address limits: handshakes per second, and failed joins and reconnects (room codes
are four characters: guessing them must be slow)."""

from __future__ import annotations

import trio
import trio.testing

from nexus_actors.testing import TestClient, open_server, query
from nexus_actors.testing.http import exchange, parse

UPGRADE = (b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


async def refused_with(client: TestClient) -> tuple[int | None, list[str]]:
    """The close code and the error codes a refused connection got."""
    code = await client.wait_closed()
    return code, [f["data"]["code"] for f in client.frames if f["type"] == "error"]


async def test_handshakes_beyond_the_rate_of_one_address_get_429_with_retry_after(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(address_connect_rate=1, address_connect_burst=3) as server:
        for index in range(3):
            await server.create(f"GM{index}")
        reply = parse(await exchange(server, b"GET /ws?host&name=X HTTP/1.1\r\nHost: x\r\n"
                                              + UPGRADE + b"\r\n"))
        assert reply.status == 429
        body = reply.json()
        assert body["code"] == "rate-limited"
        assert 0 < body["retryAfterMs"] <= 1000
        assert reply.headers["retry-after"] == "1"
        assert len(await server.running.rooms()) == 3

        await trio.sleep(1)
        await server.create("Later")  # the bucket refilled


async def test_failed_joins_from_one_address_are_slowed_down_then_allowed_again(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(address_failure_rate=0.1, address_failure_burst=3) as server:
        host = await server.create("GM")
        for code in ("ZZZZ", "YYYY", "XXXX"):
            guess = await server.connect(query(join=code, name="Eve"))
            assert await refused_with(guess) == (4404, ["room-not-found"])

        blocked = await server.connect(query(join=host.room, name="Eve"))  # even a real code
        assert await refused_with(blocked) == (1008, ["rate-limited"])
        [error] = [f for f in blocked.frames if f["type"] == "error"]
        assert 0 < error["data"]["retryAfterMs"] <= 10_000
        assert [p["name"] for p in host.session["players"]] == ["GM"]
        await server.create("Still")  # creating a room is not a guess

        await trio.sleep(10)
        await server.join(host.room, "Ana")


async def test_wrong_resume_tokens_count_as_failures(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(address_failure_rate=0.1, address_failure_burst=2,
                           host_grace=600) as server:
        host = await server.create("GM")
        for attempt in range(2):
            guess = await server.connect(query(reconnect=host.room, token=f"guess{attempt}",
                                               lastSeenSequence=0))
            _, errors = await refused_with(guess)
            assert errors == ["invalid-token"]
        blocked = await server.connect(query(reconnect=host.room, token=host.token,
                                             lastSeenSequence=0))
        assert await refused_with(blocked) == (1008, ["rate-limited"])
