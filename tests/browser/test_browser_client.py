"""The browser client's rules, in Chromium, against a scripted WebSocket.

``nexus-client.js`` takes its WebSocket class as an argument (as the Python client
takes an ``opener``); here a fake one lets each test play the server frame by frame:
ordering by ``serverSequence``, a gap that makes the session resume, the server's
backoff hint and full jitter, terminal close codes, giving up after the last attempt,
the outbox sent again with the same ids, optimistic updates rolled back on timeout or
rebased on a rejection, token rotation kept in storage, and refused connects.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from browser_support import (
    ServerProcess,
    Table,
    requires_browser,
    windows,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = requires_browser

HARNESS = """
const m = await import("/static/nexus-client.js");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const until = async (check, ms = 5000) => {
    const end = performance.now() + ms;
    while (!check()) {
        if (performance.now() > end) throw new Error(`timed out waiting for ${check}`);
        await sleep(5);
    }
};
class FakeSocket {
    static sockets = [];
    static refuse = false;
    constructor(url) {
        this.url = url;
        this.readyState = 0;
        this.sent = [];
        this.closedWith = null;
        this.createdAt = performance.now();
        FakeSocket.sockets.push(this);
        setTimeout(() => {
            if (FakeSocket.refuse) { this.readyState = 3; this.onclose?.({code: 1006}); return; }
            this.readyState = 1;
            this.onopen?.({});
        }, 0);
    }
    get query() { return Object.fromEntries(new URL(this.url).searchParams); }
    send(text) { this.sent.push(JSON.parse(text)); }
    close(code) {
        if (this.readyState >= 2) return;
        this.readyState = 2;
        this.closedWith = code ?? 1005;
        setTimeout(() => { this.readyState = 3; this.onclose?.({code: code ?? 1005}); }, 0);
    }
    deliver(type, data, extra = {}) {
        this.onmessage?.({data: JSON.stringify({type, data, timestamp: 1, ...extra})});
    }
    serverClose(code) { this.readyState = 3; this.onclose?.({code}); }
}
const opened = async (index) => {
    await until(() => FakeSocket.sockets[index]?.readyState === 1);
    return FakeSocket.sockets[index];
};
const EMPTY = {scenes: {}, activeSceneId: null, tokens: {}, characters: {},
               initiative: {order: [], round: 0, turn: 0, version: 1}, chat: []};
const TOKEN = {id: "t1", sceneId: "s1", position: {x: 1, y: 1}, label: "Rook", version: 1};
const TABLE = {...EMPTY, scenes: {s1: {id: "s1", name: "Cave", version: 1}}, activeSceneId: "s1",
               tokens: {t1: TOKEN}};
const message = (sequence, text) => ({id: `m${sequence}`, userId: "gm", userName: "GM", text,
                                      timestamp: 1});
const welcome = (socket, {name = "session/joined", sequence = 2, epoch = 1, token = "tok-1",
                          state = EMPTY, mode = "baseline", from = sequence} = {}) => {
    socket.deliver("event", {name, roomCode: "K7PX", uuid: "ana", token, hostId: "gm",
        coHostIds: [], sequence, epoch, state,
        players: [{id: "gm", name: "GM", role: "host", connected: true},
                  {id: "ana", name: "Ana", role: "player", connected: true}]});
    socket.deliver("event-cursor", {mode, sequence: from, replayThrough: sequence});
};
const journaled = (socket, sequence, name, data, actorId = "gm") =>
    socket.deliver("event", {name, ...data}, {eventId: `e${sequence}`, serverSequence: sequence,
                                              actorId});
const chat = (socket, sequence, text) =>
    journaled(socket, sequence, "chat/message", {message: message(sequence, text)});
const record = (session, types) => {
    const log = [];
    for (const type of types) {
        session.addEventListener(type, (event) => log.push([type, event.detail]));
    }
    return log;
};
const memoryStorage = () => {
    const items = new Map();
    return {getItem: (k) => items.get(k) ?? null, setItem: (k, v) => items.set(k, String(v)),
            removeItem: (k) => items.delete(k)};
};
const open = async (target = {room: "K7PX", name: "Ana"}, options = {}) => {
    const session = new m.Session("ws://nexus.test", {storage: null, random: () => 0, ...target,
                                                       options, WebSocket: FakeSocket});
    const started = session.start();
    started.catch(() => {});
    const socket = await opened(0);
    return {session, started, socket};
};
"""


def run(page: Table, body: str) -> Any:
    """Run ``body`` (JavaScript statements ending in a ``return``) after the harness."""
    return page.evaluate(f"async () => {{ {HARNESS}\n{body} }}")


@pytest.fixture
def page(browser: Browser, memory_server: ServerProcess) -> Iterator[Table]:
    with windows(browser, memory_server) as opened:
        yield opened.open()


def test_events_are_applied_in_server_sequence_order(page: Table) -> None:
    result = run(page, """
        const {session, started, socket} = await open();
        welcome(socket);
        await started;
        const log = record(session, ["event"]);
        chat(socket, 4, "second");
        const held = session.sequence;
        chat(socket, 3, "first");
        chat(socket, 3, "first");  // a duplicate is ignored
        return {held, sequence: session.sequence,
                applied: log.map(([, d]) => [d.sequence, d.data.message.text, d.mine]),
                chat: session.state.chat.map((c) => c.text)};
    """)
    assert result == {"held": 2, "sequence": 4,
                      "applied": [[3, "first", False], [4, "second", False]],
                      "chat": ["first", "second"]}


def test_a_gap_that_does_not_fill_resumes_from_the_last_event_applied(page: Table) -> None:
    result = run(page, """
        const {session, started, socket} = await open(undefined, {gapTimeoutMs: 100});
        welcome(socket);
        await started;
        const log = record(session, ["reconnecting", "reconnected", "resynced"]);
        chat(socket, 4, "ahead");
        const second = await opened(1);
        welcome(second, {name: "session/reconnected", sequence: 4, mode: "resume", from: 2,
                         state: {...EMPTY, chat: [message(3, "missed"), message(4, "ahead")]}});
        chat(second, 3, "missed");
        chat(second, 4, "ahead");
        await until(() => log.length === 2);
        return {firstClosed: socket.closedWith !== null, query: second.query, log,
                sequence: session.sequence, chat: session.state.chat.map((c) => c.text)};
    """)
    assert result == {
        "firstClosed": True,
        "query": {"reconnect": "K7PX", "token": "tok-1", "lastSeenSequence": "2", "epoch": "1"},
        "log": [["reconnecting", {"attempt": 1, "nextAttemptInMs": 0, "reason": "gap"}],
                ["reconnected", {"attempt": 1, "mode": "resume", "replayed": 2}]],
        "sequence": 4, "chat": ["missed", "ahead"]}


@pytest.mark.parametrize(("jitter", "expected"), [(0.0, 300), (0.5, 500)])
def test_reconnecting_waits_for_the_server_hint_or_the_jittered_backoff_if_longer(
        page: Table, jitter: float, expected: int) -> None:
    result = run(page, f"""
        const {{session, started, socket}} = await open({{room: "K7PX", name: "Ana",
                                                         random: () => {jitter}}});
        welcome(socket);
        await started;
        socket.deliver("ping", {{latency: 1.0, quality: "excellent"}});
        const log = record(session, ["reconnecting", "connectionQuality"]);
        socket.deliver("backoff", {{retryAfterMs: 300, reason: "server-restart"}});
        const closedAt = performance.now();
        socket.serverClose(1012);
        const second = await opened(1);
        return {{log, waited: second.createdAt - closedAt}};
    """)
    assert result["log"] == [
        ["connectionQuality", {"latency": None, "status": "disconnected"}],
        ["reconnecting", {"attempt": 1, "nextAttemptInMs": expected, "reason": "1012"}]]
    assert result["waited"] >= expected - 5  # timers may fire a little early, never much


@pytest.mark.parametrize(("code", "reason"), [(1000, "left"), (4000, "superseded"),
                                              (4001, "kicked")])
def test_after_a_terminal_close_code_the_session_ends_without_reconnecting(
        page: Table, code: int, reason: str) -> None:
    result = run(page, f"""
        const storage = memoryStorage();
        const {{session, started, socket}} = await open({{room: "K7PX", name: "Ana", storage}});
        welcome(socket);
        await started;
        const log = record(session, ["ended", "reconnecting"]);
        socket.serverClose({code});
        await session.done;
        await sleep(200);
        return {{log, sockets: FakeSocket.sockets.length, ended: session.ended,
                 kept: storage.getItem("nexus-actors.seat") !== null}};
    """)
    assert result == {"log": [["ended", {"closeCode": code, "reason": reason}]], "sockets": 1,
                      "ended": True, "kept": reason == "superseded"}


def test_reconnecting_gives_up_after_the_last_attempt(page: Table) -> None:
    result = run(page, """
        const {session, started, socket} = await open(undefined,
            {backoff: {baseMs: 20, capMs: 40, maxAttempts: 3}});
        welcome(socket);
        await started;
        const log = record(session, ["reconnecting", "reconnectionFailed"]);
        FakeSocket.refuse = true;
        socket.serverClose(1006);
        await session.done;
        return {log: log.map(([type, d]) => [type, d.attempt ?? d.attempts, d.reason ?? d.code]),
                sockets: FakeSocket.sockets.length};
    """)
    assert result == {"log": [["reconnecting", 1, "dropped"], ["reconnecting", 2, "unreachable"],
                              ["reconnecting", 3, "unreachable"],
                              ["reconnectionFailed", 3, "attempts-exhausted"]],
                      "sockets": 4}


def test_unanswered_events_are_sent_again_with_the_same_ids_after_a_resume(page: Table) -> None:
    result = run(page, """
        const {session, started, socket} = await open();
        welcome(socket);
        await started;
        const {eventId} = session.chat("hello");
        await until(() => socket.sent.some((f) => f.eventId === eventId));
        const first = socket.sent.find((f) => f.eventId === eventId);
        socket.serverClose(1006);
        const second = await opened(1);
        const beforeSeat = second.sent.length;
        welcome(second, {name: "session/reconnected", mode: "resume"});
        await until(() => second.sent.some((f) => f.eventId === eventId));
        const again = second.sent.find((f) => f.eventId === eventId);
        const waiting = session.unanswered;
        second.deliver("event-ack", {eventId, serverSequence: 3, duplicate: true});
        return {beforeSeat, first, again, waiting, unanswered: session.unanswered,
                kinds: second.sent.map((f) => f.type)};
    """)
    assert result["beforeSeat"] == 0  # nothing is sent before the seat is granted
    assert result["again"] == result["first"]
    assert result["first"]["data"] == {"name": "chat/message", "text": "hello"}
    assert result["first"]["clientSequence"] == 1
    assert result["kinds"] == ["event", "heartbeat"]  # the outbox first, then a heartbeat
    assert (result["waiting"], result["unanswered"]) == (1, 0)


def test_an_unanswered_move_is_rolled_back_after_the_update_timeout(page: Table) -> None:
    result = run(page, """
        const {session, started, socket} = await open(undefined, {updateTimeoutMs: 100});
        welcome(socket, {state: TABLE});
        await started;
        const log = record(session, ["applied", "rolledBack"]);
        const sent = session.moveToken("t1", 5, 5);
        const shown = {...session.state.tokens.t1.position};
        await until(() => log.length === 2);
        return {shown, log: log.map(([type, d]) => [type, d.reason ?? null]),
                after: session.state.tokens.t1.position,
                sent: socket.sent.find((f) => f.data?.updateId === sent.updateId).data,
                stillQueued: session.unanswered};
    """)
    assert result["shown"] == {"x": 5, "y": 5}
    assert result["log"] == [["applied", None], ["rolledBack", "timeout"]]
    assert result["after"] == {"x": 1, "y": 1}
    assert result["sent"]["version"] == 1
    assert result["stillQueued"] == 1  # it may still be applied: it stays in the outbox


def test_a_rejected_move_shows_the_server_value_until_the_copy_catches_up(page: Table) -> None:
    result = run(page, """
        const {session, started, socket} = await open();
        welcome(socket, {state: TABLE});
        await started;
        const sent = session.moveToken("t1", 5, 5);
        socket.deliver("update-rejected", {updateId: sent.updateId, eventId: sent.eventId,
            reason: "version-conflict", code: "version-conflict", message: "stale",
            currentVersion: 3, current: {...TOKEN, position: {x: 7, y: 7}, version: 3}});
        const rebased = {...session.state.tokens.t1.position};
        const copy = {...session.room.tokens.t1.position};
        journaled(socket, 3, "token/move", {tokenId: "t1", position: {x: 6, y: 6}, version: 2});
        const middle = {...session.state.tokens.t1.position};
        journaled(socket, 4, "token/move", {tokenId: "t1", position: {x: 7, y: 7}, version: 3});
        const next = session.moveToken("t1", 8, 8);
        return {rebased, copy, middle, after: session.room.tokens.t1,
                nextVersion: socket.sent.at(-1).data.version ?? null,
                nextId: socket.sent.at(-1).data.updateId === next.updateId};
    """)
    assert result["rebased"] == {"x": 7, "y": 7}
    assert result["copy"] == {"x": 1, "y": 1}
    assert result["middle"] == {"x": 7, "y": 7}
    assert result["after"]["position"] == {"x": 7, "y": 7}
    assert result["after"]["version"] == 3
    assert (result["nextVersion"], result["nextId"]) == (3, True)


def test_a_rotated_token_is_stored_and_presented_at_the_next_resume(page: Table) -> None:
    result = run(page, """
        const storage = memoryStorage();
        const {session, started, socket} = await open({room: "K7PX", name: "Ana", storage});
        welcome(socket, {token: "tok-1"});
        await started;
        const seat = () => JSON.parse(storage.getItem("nexus-actors.seat"));
        const stored = [seat().token];
        const log = record(session, ["tokenRotated"]);
        socket.serverClose(1006);
        const second = await opened(1);
        welcome(second, {name: "session/reconnected", token: "tok-1", mode: "resume"});
        second.deliver("event", {name: "session/token", token: "tok-2"});
        stored.push(seat().token);
        second.serverClose(1006);
        const third = await opened(2);
        return {stored, log, second: second.query.token, third: third.query.token,
                seat: seat(), saved: m.savedSeat(storage)};
    """)
    assert result["stored"] == ["tok-1", "tok-2"]
    assert result["log"] == [["tokenRotated", {"token": "tok-2"}]]
    assert (result["second"], result["third"]) == ("tok-1", "tok-2")
    assert result["seat"] == result["saved"] == {"roomCode": "K7PX", "token": "tok-2",
                                                 "memberId": "ana", "name": "Ana"}


def test_a_refused_join_rejects_with_the_server_code_and_is_not_retried(page: Table) -> None:
    result = run(page, """
        const {session, started, socket} = await open({room: "zzzz", name: "Ana"});
        socket.deliver("error", {code: "room-not-found", message: "no room ZZZZ"});
        socket.serverClose(4404);
        const error = await started.then(() => null,
            (e) => ({name: e.name, code: e.code, closeCode: e.closeCode}));
        await sleep(100);
        return {error, sockets: FakeSocket.sockets.length, query: socket.query,
                ended: session.ended};
    """)
    assert result == {"error": {"name": "Refused", "code": "room-not-found", "closeCode": 4404},
                      "sockets": 1, "query": {"join": "ZZZZ", "name": "Ana"}, "ended": True}


def test_a_create_cut_before_the_answer_is_not_asked_again(page: Table) -> None:
    result = run(page, """
        const {session, started, socket} = await open({role: "host", name: "GM"});
        socket.serverClose(1006);  // the server may have made the room: asking again could make two
        const error = await started.then(() => null, (e) => ({name: e.name, code: e.code}));
        await sleep(100);
        return {error, sockets: FakeSocket.sockets.length, query: socket.query};
    """)
    assert result == {"error": {"name": "ConnectFailed", "code": "connect-failed"},
                      "sockets": 1, "query": {"host": "", "name": "GM"}}


def test_latency_comes_from_heartbeats_and_the_server_reports(page: Table) -> None:
    result = run(page, """
        const {session, started, socket} = await open();
        welcome(socket);
        await started;
        const log = record(session, ["connectionQuality"]);
        await until(() => socket.sent.some((f) => f.type === "heartbeat"));
        const ping = socket.sent.find((f) => f.type === "heartbeat");
        socket.deliver("heartbeat", {kind: "pong", id: ping.data.id});
        socket.deliver("ping", {latency: 250.0, quality: "fair"});
        return {ping: ping.data.kind, statuses: log.map(([, q]) => q.status),
                latency: session.quality.latency};
    """)
    assert result == {"ping": "ping", "statuses": ["excellent", "fair"], "latency": 250.0}
