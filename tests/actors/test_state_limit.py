"""NEXUS_MAX_STATE_BYTES: a room's state cannot grow without bound; play goes on."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from nexus_actors.testing import TestClient, open_server

NOTES = "x" * 20_000


async def create_token(host: TestClient, token_id: str) -> dict[str, Any]:
    event_id = await host.send_event("token/create", {"token": {
        "id": token_id, "sceneId": "s1", "position": {"x": 0, "y": 0}, "notes": NOTES}})
    while True:
        frame = await host.next()
        if frame["type"] in ("event-ack", "error") and (
                frame["data"].get("eventId") == event_id):
            return frame


async def test_creates_beyond_the_state_limit_are_refused_and_deletes_make_room(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_server(max_state_bytes=65536, snapshot_every=1000) as server:
        host = await server.create("GM")
        event_id = await host.send_event("scene/create", {"scene": {"id": "s1", "name": "Map"}})
        await host.until("event-ack", eventId=event_id)
        answers = [await create_token(host, f"t{index}") for index in range(5)]
        kinds = [a["type"] for a in answers]
        assert kinds[:3] == ["event-ack"] * 3
        assert "error" in kinds
        refused = next(a for a in answers if a["type"] == "error")
        assert refused["data"]["code"] == "state-too-large"
        assert "65536" in refused["data"]["message"]

        # Play goes on: moves and chat are not growth.
        move = await host.send_event("token/move", {"tokenId": "t0",
                                                    "position": {"x": 5, "y": 5}})
        await host.until("event-ack", eventId=move)
        chat = await host.send_event("chat/message", {"text": "still here"})
        await host.until("event-ack", eventId=chat)

        for token_id in ("t0", "t1"):
            gone = await host.send_event("token/delete", {"tokenId": token_id})
            await host.until("event-ack", eventId=gone)
        again = await create_token(host, "t9")
        assert again["type"] == "event-ack"

        probe = await server.join(host.room, "Probe")  # the state stayed whole
        assert "t9" in probe.session["state"]["tokens"]
