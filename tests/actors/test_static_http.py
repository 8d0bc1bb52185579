"""The built-in page through the real listener: ``GET /`` and ``GET /static/<file>`` on the
WebSocket port, ``HEAD`` without a body, 404 for anything else, and the origin check the
page's own WebSocket goes through (with and without ``CORS_ORIGIN``)."""

from __future__ import annotations

import trio
import trio.testing

from nexus_actors.protocol.static import StaticSite
from nexus_actors.testing import open_server, query
from nexus_actors.testing.http import exchange, get, parse

UPGRADE = ("Upgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")
PAGE_ORIGIN = "http://table.example.com:5000"
"Where an operator's server is reached, hence the Origin of its own page's WebSocket."


async def test_root_is_the_page_that_loads_the_app_from_static(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        reply = await get(server, "/")
        assert reply.status == 200
        assert reply.headers["content-type"] == "text/html; charset=utf-8"
        assert int(reply.headers["content-length"]) == len(reply.body)
        assert reply.body == StaticSite.from_package().routes["/"].body
        assert b'<script type="module" src="/static/app.js">' in reply.body
        assert "connect-src 'self'" in reply.headers["content-security-policy"]
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert reply.headers["cache-control"] == "no-cache"  # replaces the default no-store


async def test_the_client_module_and_the_styles_are_served_with_their_types(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        client = await get(server, "/static/nexus-client.js?v=1")  # the query is ignored
        assert client.status == 200
        assert client.headers["content-type"] == "text/javascript; charset=utf-8"
        assert b"export class Session extends EventTarget" in client.body
        assert b"export async function connect(" in client.body
        styles = await get(server, "/static/style.css")
        assert styles.status == 200
        assert styles.headers["content-type"] == "text/css; charset=utf-8"


async def test_head_answers_the_headers_of_get_without_the_body(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        full = await get(server, "/static/app.js")
        raw = await exchange(server, b"HEAD /static/app.js HTTP/1.1\r\nHost: x\r\n\r\n")
        head = parse(raw)
        assert head.status == 200
        assert head.body == b""
        assert head.headers["content-length"] == str(len(full.body))
        assert head.headers["content-type"] == full.headers["content-type"]


async def test_paths_outside_the_page_are_404_and_nothing_is_read_from_disk(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        for path in ("/static/../pyproject.toml", "/static/%2e%2e/__init__.py",
                     "/static/..%2f..%2fpyproject.toml", "/static/missing.js", "/static/",
                     "/index.html", "/static/.hidden"):
            reply = await get(server, path)
            assert reply.status == 404, path
            assert reply.json()["error"] == "not found"


async def test_a_websocket_handshake_to_the_page_is_404_not_the_page(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        for path in ("/", "/static/app.js"):
            reply = parse(await exchange(server, (
                f"GET {path} HTTP/1.1\r\nHost: x\r\n{UPGRADE}\r\n").encode()))
            assert reply.status == 404, path
            assert reply.json() == {"error": "not found", "path": path}
            assert "upgrade" not in reply.headers
        assert server.running.listener.open_connections == 0


async def test_other_methods_on_the_page_are_405(autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        reply = parse(await exchange(
            server, b"DELETE / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"))
        assert reply.status == 405


async def test_the_page_works_on_any_origin_when_no_allowlist_is_set(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        assert (await get(server, "/", Origin=PAGE_ORIGIN)).status == 200
        page = await server.connect(query(host="", name="GM"), origin=PAGE_ORIGIN)
        assert (await page.next("event"))["data"]["name"] == "session/created"


async def test_with_an_allowlist_the_page_connects_only_if_its_own_origin_is_listed(
        autojump_clock: trio.testing.MockClock) -> None:
    elsewhere = frozenset({"https://client.example.com"})
    async with open_server(cors_origin=elsewhere) as server:
        assert (await get(server, "/")).status == 200  # the page itself is still served
        refused = parse(await exchange(server, (
            f"GET /ws?host&name=GM HTTP/1.1\r\nHost: x\r\nOrigin: {PAGE_ORIGIN}\r\n"
            f"{UPGRADE}\r\n").encode()))
        assert refused.status == 403
        assert refused.json() == {"error": "origin not allowed", "code": "forbidden"}

    async with open_server(cors_origin=elsewhere | {PAGE_ORIGIN}) as server:
        page = await server.connect(query(host="", name="GM"), origin=PAGE_ORIGIN)
        assert (await page.next("event"))["data"]["name"] == "session/created"
