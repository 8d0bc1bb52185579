"""Plain HTTP on the WebSocket port: /health, /ready (and why it is not ready), 404, 405,
426 for a plain GET to /ws, no upgrade elsewhere, and malformed requests that must not
hurt the server."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import trio
import trio.testing

from nexus_actors.errors import StoreError
from nexus_actors.store.base import Write
from nexus_actors.store.memory import MemoryStore
from nexus_actors.testing import TestServer, open_server, query
from nexus_actors.testing.http import exchange, get, parse, read_to_eof

UPGRADE = (b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


async def assert_still_serving(server: TestServer) -> None:
    assert (await get(server, "/health")).status == 200
    host = await server.create("GM")
    await host.send_event("chat/message", {"text": "hi"}, event_id="hi")
    await host.until("event-ack", eventId="hi")


class FailureSignal(MemoryStore):
    """A memory store that sets :attr:`failed` when a commit raises."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = trio.Event()

    async def commit(self, writes: Sequence[Write], *,
                     fences: Mapping[str, int] | None = None) -> frozenset[str]:
        try:
            return await super().commit(writes, fences=fences)
        except StoreError:
            self.failed.set()
            raise


async def test_health_is_200_json_with_status_ok_and_the_connection_count(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        await server.create("GM")
        reply = await get(server, "/health")
        assert reply.status == 200
        assert reply.headers["content-type"] == "application/json"
        assert int(reply.headers["content-length"]) == len(reply.body)
        body = reply.json()
        assert body["status"] == "ok"
        assert body["connections"] == 1


async def test_ready_is_200_when_the_server_can_take_rooms(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        reply = await get(server, "/ready")
        assert reply.status == 200
        assert reply.json() == {"ready": True}


async def test_ready_is_503_while_draining(autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        early = server.listener.connect()  # accepted before the drain stops accepting:
        assert (await get(server, "/health")).status == 200  # a later one was served
        server.store.pause()  # holds the drain at its final flush
        server.running.shutdown()
        assert (await host.until("backoff"))["data"]["reason"] == "server-restart"

        await early.send_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = parse(await read_to_eof(early))
        assert reply.status == 503
        assert reply.json() == {"ready": False, "reasons": ["draining"]}
        server.store.resume()


async def test_ready_is_503_after_a_failed_commit_until_one_succeeds(
        autojump_clock: trio.testing.MockClock) -> None:
    store = FailureSignal()
    async with open_server(store=store) as server:
        host = await server.create("GM")
        store.fail_next(5)
        await host.send_event("chat/message", {"text": "hi"}, event_id="hi")
        await store.failed.wait()
        assert not server.running.health.store_ok

        reply = await get(server, "/ready")
        assert reply.status == 503
        body = reply.json()
        assert body["ready"] is False
        [reason] = body["reasons"]
        assert reason.startswith("store unavailable")
        assert (await get(server, "/health")).status == 200  # liveness is not readiness

        await host.until("event-ack", eventId="hi")
        assert (await get(server, "/ready")).json() == {"ready": True}


async def test_unknown_path_is_404(autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        reply = await get(server, "/metrics-nope?x=1")
        assert reply.status == 404
        assert reply.json() == {"error": "not found", "path": "/metrics-nope"}


async def test_methods_other_than_get_and_head_are_405(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        for method in (b"POST", b"PUT", b"DELETE"):
            reply = parse(await exchange(
                server, method + b" /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"))
            assert reply.status == 405
            assert reply.headers["allow"] == "GET, HEAD, OPTIONS"


async def test_head_answers_the_get_headers_without_a_body(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        raw = await exchange(server, b"HEAD /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"Content-Length: 14" in head  # the length of {"ready":true}
        assert body == b""


async def test_request_with_a_body_is_closed_without_an_answer(
        autojump_clock: trio.testing.MockClock) -> None:
    # websockets' request parser refuses any body, so no 405 can be sent.
    async with open_server() as server:
        raw = await exchange(server, b"POST /health HTTP/1.1\r\nHost: x\r\n"
                                     b"Content-Length: 5\r\n\r\nhello")
        assert raw == b""
        await assert_still_serving(server)


async def test_websocket_handshake_to_another_path_is_not_upgraded(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        raw = await exchange(server, b"GET /socket?host= HTTP/1.1\r\nHost: x\r\n"
                                     + UPGRADE + b"\r\n")
        reply = parse(raw)
        assert reply.status == 404
        assert "upgrade" not in reply.headers
        assert server.running.listener.open_connections == 0


async def test_plain_get_to_ws_is_426(autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        reply = await get(server, "/ws?host=")
        assert reply.status == 426
        assert reply.headers["upgrade"].lower() == "websocket"


async def test_overlong_request_line_is_refused_and_the_server_keeps_serving(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        reply = parse(await exchange(
            server, b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"))
        assert reply.status == 414
        await assert_still_serving(server)


async def test_garbage_is_closed_and_the_server_keeps_serving(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        assert await exchange(server, b"\x00\x01\xffnot http at all\r\n\r\n") == b""
        await assert_still_serving(server)


async def test_unfinished_request_is_closed_after_the_handshake_timeout(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(handshake_timeout=10) as server:
        stream = server.listener.connect()
        await stream.send_all(b"GET /hea")
        with trio.move_on_after(9):
            await stream.receive_some()
            raise AssertionError("closed before the handshake timeout")
        assert await read_to_eof(stream) == b""
        await assert_still_serving(server)


# Origins and CORS --------------------------------------------------------------


async def test_websocket_from_an_origin_not_allowed_is_refused_403(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(cors_origin=frozenset({"https://table.example.com"})) as server:
        reply = parse(await exchange(server, (
            b"GET /ws?host&name=GM HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\n"
            + UPGRADE + b"\r\n")))
        assert reply.status == 403
        assert reply.json() == {"error": "origin not allowed", "code": "forbidden"}
        assert "access-control-allow-origin" not in reply.headers

        allowed = await server.connect(query(host="", name="GM"),
                                       origin="https://Table.Example.com/")
        assert (await allowed.next("event"))["data"]["name"] == "session/created"
        no_origin = await server.connect(query(host="", name="Bot"))  # not a browser
        assert (await no_origin.next("event"))["data"]["name"] == "session/created"


async def test_http_routes_carry_cors_headers_for_allowed_origins_only(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(cors_origin=frozenset({"https://table.example.com"})) as server:
        ok = await get(server, "/health", Origin="https://table.example.com")
        assert ok.headers["access-control-allow-origin"] == "https://table.example.com"
        assert ok.headers["vary"] == "Origin"
        other = await get(server, "/health", Origin="https://evil.example")
        assert other.status == 200  # answered, but a browser will not let the page read it
        assert "access-control-allow-origin" not in other.headers
        preflight = parse(await exchange(server, (
            b"OPTIONS /metrics HTTP/1.1\r\nHost: x\r\nOrigin: https://table.example.com\r\n"
            b"Access-Control-Request-Method: GET\r\n\r\n")))
        assert preflight.status == 204
        assert preflight.headers["access-control-allow-methods"] == "GET, HEAD, OPTIONS"
        assert preflight.headers["access-control-allow-headers"] == "Authorization"

    async with open_server() as server:  # no allowlist: any origin
        anyone = await get(server, "/api/stats", Origin="https://anywhere.example")
        assert anyone.headers["access-control-allow-origin"] == "*"
        page = await server.connect(query(host="", name="GM"), origin="https://anywhere.example")
        assert (await page.next("event"))["data"]["name"] == "session/created"
