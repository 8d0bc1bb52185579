"""Bad input: each malformed, unknown, oversize or flooding frame gets a clear error with a
stable code, and none crashes a task, reaches another member or changes the room.

Every test plays a table of two (the host ``GM`` and the player ``Ana``, who sends
the bad input) with one scene, then checks that the room state a fresh joiner
receives is unchanged, that the host saw nothing, and that Ana's connection
still works (unless the input must close it).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio
import trio.testing

from nexus_actors.protocol.inbound import MAX_DEPTH
from nexus_actors.testing import TestClient, TestServer, open_server, query

SCENE = {"id": "s1", "name": "Cave"}


async def open_table(server: TestServer) -> tuple[TestClient, TestClient]:
    """The host with one scene, and Ana joined after it (her session holds the state)."""
    host = await server.create("GM")
    event_id = await host.send_event("scene/create", {"scene": SCENE})
    await host.until("event-ack", eventId=event_id)
    ana = await server.join(host.room, "Ana")
    await host.until("event", "session/join")
    return host, ana


async def assert_state_unchanged(server: TestServer, ana: TestClient) -> TestClient:
    """A fresh joiner sees the state Ana joined with; only its own join was added."""
    probe = await server.join(ana.room, "Probe")
    assert probe.session["state"] == ana.session["state"]
    assert probe.session["sequence"] == ana.session["sequence"] + 1
    return probe


async def assert_unharmed(server: TestServer, host: TestClient, ana: TestClient) -> None:
    """Room unchanged, host saw nothing, and Ana's next valid event is applied and acked."""
    await assert_state_unchanged(server, ana)
    assert (await host.next("event"))["data"]["name"] == "session/join"  # strictly next
    assert (await ana.next("event"))["data"]["name"] == "session/join"
    event_id = await ana.send_event("chat/message", {"text": "still here"})
    own = await ana.next("event")
    assert (own["eventId"], own["data"]["message"]["text"]) == (event_id, "still here")
    ack = await ana.next("event-ack")
    assert ack["data"]["eventId"] == event_id
    assert ack["data"]["duplicate"] is False
    assert (await host.next("event"))["eventId"] == event_id


def event(name: str, event_id: str | None = "bad-1", **fields: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "event", "data": {"name": name, **fields}}
    if event_id is not None:
        frame["eventId"] = event_id
    return frame


def text(frame: Any) -> str:
    return orjson.dumps(frame).decode()


def nested(depth: int) -> str:
    """A JSON value ``depth`` objects deep: ``{"n": {"n": ... 1}}``."""
    return '{"n":' * depth + "1" + "}" * depth


# Frames the server cannot use ---------------------------------------------------------

BAD_FRAMES = [
    pytest.param("{not json", "invalid-json", "not valid JSON", None, id="malformed-json"),
    pytest.param('"\\ud800"', "invalid-json", "not valid JSON", None, id="lone-surrogate"),
    pytest.param("[1, 2]", "invalid-frame", "JSON object", None, id="array"),
    pytest.param("42", "invalid-frame", "JSON object", None, id="number"),
    pytest.param('{"data": {}}', "invalid-frame", "'type'", None, id="missing-type"),
    pytest.param('{"type": 7, "data": {}}', "invalid-frame", "'type'", None, id="type-not-str"),
    pytest.param(text({"type": "teleport", "data": {}}), "unknown-type", "'teleport'", None,
                 id="unknown-type"),
    pytest.param(text(event("token/teleport")), "unknown-event", "'token/teleport'", "bad-1",
                 id="unknown-event"),
    pytest.param(text(event("token/move", tokenId="t1", position={"x": "1", "y": 2})),
                 "invalid-field", "token/move: data.position.x: expected a number", "bad-1",
                 id="string-for-number"),
    pytest.param(text(event("chat/message", text=5)), "invalid-field",
                 "chat/message: data.text: expected a string", "bad-1", id="number-for-string"),
    pytest.param(text(event("initiative/set", order=[], round=True, turn=0)), "invalid-field",
                 "initiative/set: data.round: expected an integer", "bad-1",
                 id="bool-for-integer"),
    pytest.param(text(event("scene/update", sceneId="s1", changes=[])), "invalid-field",
                 "scene/update: data.changes: expected an object", "bad-1",
                 id="array-for-object"),
    pytest.param(text(event("token/move", tokenId="t1")), "invalid-field",
                 "token/move: data.position: required field missing", "bad-1",
                 id="missing-field"),
    pytest.param(text(event("chat/message", text="hi", colour="red")), "invalid-field",
                 "unexpected field 'colour'", "bad-1", id="extra-payload-field"),
    pytest.param(text({**event("chat/message", text="hi"), "bogus": 1}), "invalid-field",
                 "unexpected field 'bogus'", "bad-1", id="extra-envelope-field"),
    pytest.param(text({**event("chat/message", text="hi"), "clientSequence": -1}),
                 "invalid-field", "clientSequence", "bad-1", id="negative-client-sequence"),
    pytest.param(text(event("chat/message", event_id=None, text="hi")), "missing-event-id",
                 "chat/message is durable and needs an eventId", None, id="missing-event-id"),
    pytest.param(text(event("chat/message", event_id="x" * 65, text="hi")), "invalid-field",
                 "eventId", None, id="event-id-too-long"),
    pytest.param(text({"type": "heartbeat", "data": {"kind": "pong", "id": 1}}),
                 "invalid-field", "heartbeat", None, id="heartbeat-not-ping"),
    pytest.param(text(event("chat/message", event_id="deep", text="hi"))[:-1]
                 + ', "timestamp": ' + nested(MAX_DEPTH + 1) + "}",
                 "invalid-frame", f"more than {MAX_DEPTH} levels deep", None, id="too-deep"),
]


@pytest.mark.parametrize(("raw", "code", "message", "event_id"), BAD_FRAMES)
async def test_bad_frame_gets_an_error_and_changes_nothing(
        autojump_clock: trio.testing.MockClock, raw: str, code: str, message: str,
        event_id: str | None) -> None:
    async with open_server() as server:
        host, ana = await open_table(server)
        await ana.send_text(raw)
        error = await ana.next("error")
        assert error["data"]["code"] == code
        assert message in error["data"]["message"]
        assert error["data"].get("eventId") == event_id
        await assert_unharmed(server, host, ana)


async def test_binary_frame_gets_an_error_and_changes_nothing(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host, ana = await open_table(server)
        await ana.send_binary(text(event("chat/message", text="hi")).encode())
        error = await ana.next("error")
        assert error["data"]["code"] == "binary-frame"
        await assert_unharmed(server, host, ana)


async def test_rejected_event_does_not_use_up_its_event_id(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host, ana = await open_table(server)
        await ana.send_json(event("chat/message", event_id="e-1", text=5))
        assert (await ana.next("error"))["data"]["code"] == "invalid-field"
        await ana.send_event("chat/message", {"text": "fixed"}, event_id="e-1")
        await ana.next("event")
        ack = await ana.next("event-ack")
        assert ack["data"] == {"eventId": "e-1", "serverSequence": ana.last_sequence(),
                               "duplicate": False}
        assert (await host.next("event"))["data"]["message"]["text"] == "fixed"


# Deep, long and unusual but legal input -----------------------------------------------


async def test_deep_nesting_within_the_limit_is_accepted_and_relayed(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host, ana = await open_table(server)
        depth = MAX_DEPTH - 5  # the envelope and the character add the rest
        raw = ('{"type": "event", "eventId": "deep", "data": {"name": "character/create", '
               '"character": {"id": "c1", "notes": ' + nested(depth) + "}}}")
        await ana.send_text(raw)
        await ana.next("event")
        assert (await ana.next("event-ack"))["data"]["eventId"] == "deep"
        relayed = await host.next("event")
        assert relayed["data"]["character"]["notes"] == orjson.loads(nested(depth))
        probe = await server.join(host.room, "Probe")
        assert probe.session["state"]["characters"]["c1"]["notes"] == orjson.loads(nested(depth))


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 300, 1000])
async def test_nesting_beyond_the_limit_is_refused_without_harm(
        autojump_clock: trio.testing.MockClock, depth: int) -> None:
    async with open_server() as server:
        host, ana = await open_table(server)
        raw = ('{"type": "event", "eventId": "deep", "data": {"name": "character/create", '
               '"character": {"id": "c1", "notes": ' + nested(depth) + "}}}")
        await ana.send_text(raw)
        assert (await ana.next("error"))["data"]["code"] == "invalid-frame"
        await assert_unharmed(server, host, ana)


async def test_deeply_nested_heartbeat_id_is_refused_without_harm(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server() as server:
        host, ana = await open_table(server)
        await ana.send_text('{"type": "heartbeat", "data": {"kind": "ping", "id": '
                            + "[" * 300 + "]" * 300 + "}}")
        assert (await ana.next("error"))["data"]["code"] == "invalid-frame"
        await assert_unharmed(server, host, ana)


async def test_long_strings_within_the_limits_are_accepted(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(max_chat_length=2000) as server:
        host, ana = await open_table(server)
        long_chat = "🐉" * 2000  # 2000 characters, 8000 bytes
        await ana.send_event("chat/message", {"text": long_chat})
        await ana.next("event")
        await ana.next("event-ack")
        assert (await host.next("event"))["data"]["message"]["text"] == long_chat
        notes = "x" * 60_000  # most of the default 64 KiB message limit
        event_id = await ana.send_event("character/create",
                                        {"character": {"id": "c1", "notes": notes}})
        await ana.next("event")
        assert (await ana.next("event-ack"))["data"]["eventId"] == event_id
        assert (await host.next("event"))["data"]["character"]["notes"] == notes


async def test_chat_one_character_over_the_limit_is_refused(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(max_chat_length=100) as server:
        host, ana = await open_table(server)
        event_id = await ana.send_event("chat/message", {"text": "é" * 101})
        error = await ana.next("error")
        assert error["data"]["code"] == "invalid"
        assert error["data"]["eventId"] == event_id
        await assert_unharmed(server, host, ana)


CHAT_EDGE_CASES = [
    "🐉 dragons: 👩‍👩‍👧 family, 🇳🇿 flag, 👍🏽 skin tone",
    "e\u0301 combining accent, ﷽ ligature, \U0001d518\U0001d52b\U0001d526 math letters",
    "\u202eRTL override\u202c and עברית and العربية",
    "zero\u200bwidth\u200dand\ufeffBOM",
    'quotes " \\ and \u0000 NUL and \n newline',
]


@pytest.mark.parametrize("message", CHAT_EDGE_CASES)
async def test_unicode_chat_is_relayed_and_stored_exactly(
        autojump_clock: trio.testing.MockClock, message: str) -> None:
    async with open_server() as server:
        host, ana = await open_table(server)
        await ana.send_event("chat/message", {"text": message})
        assert (await host.next("event"))["data"]["message"]["text"] == message
        probe = await server.join(host.room, "Probe")
        assert probe.session["state"]["chat"][-1]["text"] == message


@pytest.mark.parametrize(("name", "stored"), [
    ("Zoë 🐉", "Zoë 🐉"),
    ("Zoe\u0308", "Zo\u00eb"),  # NFD arrives, NFC is kept
    ("  padded  ", "padded"),
    ("名前" * 25, "名前" * 25),  # exactly 50 characters
    ("\u05e9\u05e8\u05d4", "\u05e9\u05e8\u05d4"),
])
async def test_unicode_names_are_accepted_and_normalized(
        autojump_clock: trio.testing.MockClock, name: str, stored: str) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        player = await server.join(host.room, name)
        assert [p["name"] for p in player.session["players"]] == ["GM", stored]
        joined = await host.until("event", "session/join")
        assert joined["data"]["player"]["name"] == stored


@pytest.mark.parametrize("name", ["", "   ", "名" * 51, "bell\u0007", "bidi\u202e", "\ue000"])
async def test_bad_names_are_refused_before_joining(
        autojump_clock: trio.testing.MockClock, name: str) -> None:
    async with open_server() as server:
        host = await server.create("GM")
        client = await server.connect(query(join=host.room, name=name))
        assert (await client.next("error"))["data"]["code"] == "bad-request"
        assert await client.wait_closed() == 4400
        probe = await server.join(host.room, "Probe")
        assert [p["name"] for p in probe.session["players"]] == ["GM", "Probe"]


# Frames that must close the connection ---------------------------------------------------


async def test_oversize_message_gets_frame_too_large_then_close_1009(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(max_message_bytes=1024, host_grace=600) as server:
        host, ana = await open_table(server)
        await ana.send_event("chat/message", {"text": "x" * 2000})
        error = await ana.next("error")
        assert error["data"]["code"] == "frame-too-large"
        assert "1024" in error["data"]["message"]
        assert await ana.wait_closed() == 1009
        gone = await host.next("event")  # strictly next: the host saw only the disconnect
        assert gone["data"] == {"name": "session/disconnected", "uuid": ana.uuid}
        await assert_state_unchanged(server, ana)
        again = await server.resume(ana, last_seen=ana.last_sequence())
        assert again.uuid == ana.uuid


@pytest.mark.parametrize("fragments", [1, 2], ids=["whole", "fragmented"])
async def test_message_one_byte_over_the_limit_closes_1009(
        autojump_clock: trio.testing.MockClock, fragments: int) -> None:
    # The WebSocket library's own limit is a control frame's size above ours (so that a
    # ping between fragments never counts): the connection enforces the exact limit.
    async with open_server(max_message_bytes=1024, host_grace=600) as server:
        _host, ana = await open_table(server)
        head = b'{"type": "heartbeat", "data": {"kind": "ping", "id": "'
        message = head + b"x" * (1025 - len(head) - 3) + b'"}}'
        assert len(message) == 1025
        if fragments == 1:
            ana.protocol.send_text(message)
        else:
            ana.protocol.send_text(message[:1000], fin=False)
            ana.protocol.send_continuation(message[1000:], fin=True)
        await ana._flush()
        error = await ana.next("error")
        assert error["data"]["code"] == "frame-too-large"
        assert await ana.wait_closed() == 1009
        await assert_state_unchanged(server, ana)


async def test_message_just_under_the_size_limit_is_accepted(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(max_message_bytes=1024) as server:
        host, ana = await open_table(server)
        envelope = len(text({**event("chat/message", event_id="fits", text=""),
                             "timestamp": 0}))
        await ana.send_event("chat/message", {"text": "y" * (1024 - envelope)},
                             event_id="fits")
        await ana.next("event")
        assert (await ana.next("event-ack"))["data"]["eventId"] == "fits"
        assert (await host.next("event"))["eventId"] == "fits"


# Rate limits ---------------------------------------------------------------------------


def heartbeat(ping_id: Any) -> dict[str, Any]:
    return {"type": "heartbeat", "data": {"kind": "ping", "id": ping_id}}


async def test_burst_beyond_the_bucket_gets_one_rate_limited_error(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(rate_limit=1, rate_burst=10) as server:
        host, ana = await open_table(server)
        for ping_id in range(10):  # the whole burst
            await ana.send_json(heartbeat(ping_id))
        for ping_id in range(10):
            assert (await ana.next("heartbeat"))["data"]["id"] == ping_id
        await trio.sleep(0.0047)  # a fraction of a token: the hint is not a whole second
        for ping_id in range(10, 20):  # 10 beyond it
            await ana.send_json(heartbeat(ping_id))
        error = await ana.next("error")
        assert error["data"]["code"] == "rate-limited"
        assert 0 < error["data"]["retryAfterMs"] <= 1000

        await trio.sleep(error["data"]["retryAfterMs"] / 1000)  # the bucket refills
        await ana.send_json(heartbeat("after"))
        # Strictly next: the other nine dropped messages got no error of their own.
        assert (await ana.next("heartbeat"))["data"]["id"] == "after"
        await trio.sleep(10)
        await assert_unharmed(server, host, ana)


async def test_continued_flooding_is_closed_with_a_backoff_hint(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(rate_limit=1, rate_burst=10, overload_retry_ms=2000,
                           host_grace=600) as server:
        host, ana = await open_table(server)
        # The burst passes; three bursts' worth of dropped messages are tolerated.
        for index in range(10 + 3 * 10 + 1):
            await ana.send_json(event("chat/message", event_id=f"flood-{index}", text="spam"))
        assert await ana.wait_closed() == 1008
        assert ana.frames[-1]["type"] == "backoff"
        assert ana.frames[-1]["data"]["reason"] == "flooding"
        assert 5_000 <= ana.frames[-1]["data"]["retryAfterMs"] < 15_000  # 10 s, jittered
        limited = [f for f in ana.frames if f["type"] == "error"]
        assert len(limited) == 1  # at most once a second, not once per dropped message
        assert limited[0]["data"]["code"] == "rate-limited"

        relayed = []
        while (frame := await host.next("event"))["data"]["name"] == "chat/message":
            relayed.append(frame["eventId"])
        assert relayed == [f"flood-{index}" for index in range(10)]  # the burst, no more
        assert frame["data"] == {"name": "session/disconnected", "uuid": ana.uuid}


async def test_sustained_sending_at_twice_the_rate_is_closed_as_a_flood(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(rate_limit=10, rate_burst=5, host_grace=600) as server:
        _host, ana = await open_table(server)
        started = trio.current_time()
        for index in range(400):  # 20 per second: half of them are dropped
            await ana.send_json(event("chat/message", event_id=f"fast-{index}", text="x"))
            await trio.sleep(0.05)
            if ana.closed.is_set():
                break
        assert await ana.wait_closed() == 1008
        # 15 tolerated drops, forgiven at 1 per second: closed after about 1.7 s, not never.
        assert trio.current_time() - started < 5
        errors = [f for f in ana.frames if f["type"] == "error"]
        assert 1 <= len(errors) <= 3  # one per second of flooding


async def test_slightly_over_the_rate_is_limited_but_not_closed(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(rate_limit=10, rate_burst=5, host_grace=600) as server:
        _host, ana = await open_table(server)
        for index in range(324):  # 10.8 per second for 30 s: drops, but forgiven as fast
            await ana.send_json(event("chat/message", event_id=f"near-{index}", text="x"))
            await trio.sleep(1 / 10.8)
        await trio.sleep(1)  # a token for the probe below
        await ana.send_json({"type": "heartbeat", "data": {"kind": "ping", "id": "alive"}})
        assert (await ana.until("heartbeat"))["data"]["id"] == "alive"
        assert not ana.closed.is_set()
        limited = [f for f in ana.frames if f["type"] == "error"]
        assert limited
        assert all(f["data"]["code"] == "rate-limited" for f in limited)


async def test_client_within_the_rate_is_never_limited(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(rate_limit=10, rate_burst=5) as server:
        host, ana = await open_table(server)
        for index in range(50):  # 8 per second for about 6 seconds
            event_id = await ana.send_event("chat/message", {"text": f"msg {index}"})
            await ana.until("event-ack", eventId=event_id)
            await trio.sleep(0.12)
        assert [f for f in ana.frames if f["type"] == "error"] == []
        probe = await server.join(host.room, "Probe")
        assert len(probe.session["state"]["chat"]) == 50


async def test_binary_frames_count_against_the_rate_limit(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(rate_limit=1, rate_burst=3, host_grace=600) as server:
        _host, ana = await open_table(server)
        for _ in range(6):
            await ana.send_binary(b"\x01\x02")
        await ana.send_json({"type": "heartbeat", "data": {"kind": "ping", "id": "probe"}})
        codes = []
        with trio.move_on_after(0.5):
            while True:
                codes.append((await ana.next("error"))["data"]["code"])
        assert codes == ["binary-frame"] * 3 + ["rate-limited"]
