"""TLS on the server's own port: wss:// and https:// with NEXUS_TLS_CERT / NEXUS_TLS_KEY,
over real sockets, and the configuration errors a wrong pair of files gives."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest
import trio
import trustme

from nexus_actors.actors.supervisor import Server, serve
from nexus_actors.config import Config
from nexus_actors.errors import ConfigError
from nexus_actors.store.memory import MemoryStore
from nexus_actors.testing import TestClient, query
from nexus_actors.tls import tls_context

TIMEOUT = 30.0


@pytest.fixture
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def pem_files(authority: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    certificate = authority.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.cert_chain_pems[0].write_to_path(str(cert))
    for extra in certificate.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    certificate.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


@asynccontextmanager
async def tls_server(cert: str, key: str) -> AsyncIterator[Server]:
    config = Config(host="127.0.0.1", port=0, tls_cert=cert, tls_key=key,
                    handshake_timeout=2.0)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(
                lambda task_status: serve(config, store=MemoryStore(), handle_signals=False,
                                          task_status=task_status))
            try:
                yield server
            finally:
                server.shutdown()


async def tls_stream(port: int, authority: trustme.CA) -> trio.SSLStream[trio.SocketStream]:
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    return trio.SSLStream(tcp, client_context, server_hostname="127.0.0.1",
                          https_compatible=True)


async def test_https_and_wss_are_served_on_one_port(pem_files: tuple[str, str],
                                                    authority: trustme.CA) -> None:
    async with tls_server(*pem_files) as server:
        [port] = server.ports
        async with await tls_stream(port, authority) as stream:
            await stream.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            while chunk := await stream.receive_some():
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert orjson.loads(body)["status"] == "ok"

        async with trio.open_nursery() as nursery:
            client = await TestClient.open(await tls_stream(port, authority),
                                           query(host="", name="GM"), nursery)
            first = await client.next("event")
            assert first["data"]["name"] == "session/created"
            event_id = await client.send_event("chat/message", {"text": "over TLS"})
            assert (await client.until("event-ack", eventId=event_id))["data"]["duplicate"] \
                is False
            await client.close()
            assert await client.wait_closed() == 1000


async def test_plain_tcp_to_the_tls_port_gets_nothing_and_the_server_carries_on(
        pem_files: tuple[str, str], authority: trustme.CA) -> None:
    async with tls_server(*pem_files) as server:
        [port] = server.ports
        async with await trio.open_tcp_stream("127.0.0.1", port) as plain:
            await plain.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            with trio.fail_after(10):
                reply = b""
                try:
                    while chunk := await plain.receive_some():
                        reply += chunk
                except trio.BrokenResourceError:
                    pass
        assert not reply.startswith(b"HTTP/1.1 200")
        async with await tls_stream(port, authority) as secure:
            await secure.send_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await secure.receive_some()).startswith(b"HTTP/1.1 200")


def test_only_one_of_the_two_files_is_a_configuration_error(
        pem_files: tuple[str, str]) -> None:
    cert, _ = pem_files
    with pytest.raises(ConfigError, match="must be set together"):
        tls_context(Config(tls_cert=cert))


def test_unreadable_files_are_a_one_line_configuration_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError) as caught:
        tls_context(Config(tls_cert=missing, tls_key=missing))
    assert "cannot load the TLS certificate" in caught.value.message
    assert "\n" not in caught.value.message


def test_without_files_the_server_serves_plain_tcp() -> None:
    assert tls_context(Config()) is None
