"""The browser client applies journaled events by the server's own rules.

``nexus-client.js`` ports the apply side of ``nexus_actors.room.events``. Here the
module served by the server runs in Chromium on the same session frame and journal
as :func:`nexus_actors.room.events.apply` in Python: every event name has a rule,
the resulting rooms are equal, and the events Python cannot apply (an entity that
does not exist, a sequence out of order) are exactly those the port refuses.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from browser_support import (
    Table,
    Windows,
    requires_browser,
)

from nexus_actors.room import events as ev
from nexus_actors.room.permissions import CO_HOST
from nexus_actors.room.state import RoomState

if TYPE_CHECKING:
    pass

pytestmark = requires_browser

CHAT_HISTORY = 3
"A short history, so that trimming is exercised."

SESSION: dict[str, Any] = {
    "name": "session/created", "roomCode": "K7PX", "uuid": "gm", "token": "t", "hostId": "gm",
    "coHostIds": [], "sequence": 1, "epoch": 1,
    "players": [{"id": "gm", "name": "GM", "role": "host", "connected": True}],
    "state": {"scenes": {}, "activeSceneId": None, "tokens": {}, "characters": {},
              "initiative": {"order": [], "round": 0, "turn": 0, "version": 1}, "chat": []},
}


def _chat(number: int, user: str) -> tuple[str, dict[str, Any]]:
    return "chat/message", {"message": {"id": f"m{number}", "userId": user,
                                        "userName": user.title(), "text": f"line {number}",
                                        "timestamp": 1_000 + number}}


JOURNAL: list[tuple[str, dict[str, Any]]] = [
    ("session/join", {"player": {"id": "ana", "name": "Ana", "role": "player"}}),
    ("session/join", {"player": {"id": "bo", "name": "Bo", "role": "player"}}),
    ("scene/create", {"scene": {"id": "s1", "name": "Cave", "grid": 5, "version": 1}}),
    ("scene/create", {"scene": {"id": "s2", "name": "Hall", "version": 1}}),
    ("scene/activate", {"sceneId": "s1"}),
    ("token/create", {"token": {"id": "t1", "sceneId": "s1", "position": {"x": 2.0, "y": 3.0},
                                "label": "Rook", "version": 1}}),
    ("token/create", {"token": {"id": "t2", "sceneId": "s2", "position": {"x": 0.5, "y": 1.0},
                                "version": 1}}),
    ("token/move", {"tokenId": "t1", "position": {"x": 4.0, "y": 3.0}, "version": 2,
                    "updateId": "u1"}),
    ("token/update", {"tokenId": "t1", "changes": {"label": "Queen", "hp": {"max": 3}},
                      "version": 3}),
    ("scene/update", {"sceneId": "s1", "changes": {"name": "Deep cave", "grid": None},
                      "version": 2}),
    ("character/create", {"character": {"id": "c1", "name": "Zed", "version": 1}}),
    ("character/update", {"characterId": "c1", "changes": {"name": "Zed II"}, "version": 2}),
    ("initiative/set", {"order": ["gm", "ana", {"token": "t1"}], "round": 1, "turn": 0,
                        "version": 2}),
    ("initiative/next", {"round": 1, "turn": 1, "version": 3, "updateId": "u2"}),
    _chat(1, "gm"), _chat(2, "ana"), _chat(3, "bo"), _chat(4, "gm"),
    ("session/co-host-added", {"coHostId": "ana", "permissions": CO_HOST.to_json()}),
    ("session/co-host-added", {"coHostId": "bo", "permissions": CO_HOST.to_json()}),
    ("session/co-host-removed", {"coHostId": "bo"}),
    ("session/host-migrated", {"newHostId": "ana", "previousHostId": "gm", "manual": True}),
    ("session/co-host-added", {"coHostId": "bo", "permissions": CO_HOST.to_json()}),
    ("scene/activate", {"sceneId": "s2"}),
    ("scene/delete", {"sceneId": "s2", "updateId": "u3"}),
    ("token/delete", {"tokenId": "t1"}),
    ("character/delete", {"characterId": "c1"}),
    ("session/kicked", {"playerId": "bo", "by": "ana"}),
    ("session/leave", {"uuid": "ana", "reason": "left"}),  # the host left: no host
    ("session/join", {"player": {"id": "cy", "name": "Cy", "role": "host"}}),  # so Cy is
    ("session/host-migrated", {"newHostId": "gm", "previousHostId": "cy", "manual": True}),
    ("session/hibernated", {"reconnectWindow": 600_000}),
]
"A journal that uses every rule, in the order the server could have written it."

UNAPPLICABLE: list[tuple[str, dict[str, Any]]] = [
    ("token/move", {"tokenId": "ghost", "position": {"x": 1.0, "y": 1.0}, "version": 2}),
    ("token/update", {"tokenId": "ghost", "changes": {"label": "x"}, "version": 2}),
    ("token/delete", {"tokenId": "ghost"}),
    ("scene/update", {"sceneId": "ghost", "changes": {"name": "x"}, "version": 2}),
    ("scene/delete", {"sceneId": "ghost"}),
    ("character/update", {"characterId": "ghost", "changes": {"name": "x"}, "version": 2}),
    ("character/delete", {"characterId": "ghost"}),
    ("session/co-host-removed", {"coHostId": "cy"}),
    ("session/co-host-removed", {"coHostId": "bo"}),
    ("dice/roll", {"sides": 20}),
]
"Events naming what does not exist after the journal: a copy that gets one is broken."

RUN_IN_PAGE = """async ({session, journal, unapplicable, chatHistory}) => {
    const m = await import("/static/nexus-client.js");
    const views = [];
    const replay = () => {
        const state = m.RoomState.fromSession(session);
        views.length = 0;
        journal.forEach(([name, data], i) => {
            m.applyEvent(state, {sequence: session.sequence + 1 + i, name,
                                 data: structuredClone(data)}, chatHistory);
            views.push(structuredClone(state.clientView()));
        });
        return state;
    };
    const applies = (event) => {
        try { m.applyEvent(replay(), event, chatHistory); return true; } catch { return false; }
    };
    const next = session.sequence + journal.length + 1;
    replay();
    const steps = [...views];
    return {
        rules: Object.keys(m.APPLIERS).sort(),
        steps,
        unapplicable: unapplicable.map(([name, data]) => applies({sequence: next, name, data})),
        outOfOrder: applies({sequence: next + 1, name: "session/hibernated", data: {}}),
    };
}"""


def _python_replay(steps: list[Any] | None = None) -> RoomState:
    """The room after the journal; ``steps`` gets its client view after each event."""
    state = RoomState.from_session(copy.deepcopy(SESSION))
    for index, (name, data) in enumerate(JOURNAL):
        event = ev.Event(sequence=SESSION["sequence"] + 1 + index, name=name,
                         data=copy.deepcopy(data), event_id=f"e{index}", actor_id=None,
                         timestamp=0)
        ev.apply(state, event, chat_history=CHAT_HISTORY)
        if steps is not None:
            steps.append(orjson.loads(orjson.dumps(state.client_view())))
    return state


def _python_applies(name: str, data: dict[str, Any], sequence: int) -> bool:
    event = ev.Event(sequence=sequence, name=name, data=copy.deepcopy(data), event_id="x",
                     actor_id=None, timestamp=0)
    try:
        ev.apply(_python_replay(), event, chat_history=CHAT_HISTORY)
    except (KeyError, ValueError):
        return False
    return True


@pytest.fixture
def page(open_windows: Windows) -> Table:
    return open_windows.open()


def test_the_browser_client_has_a_rule_for_every_journaled_event(page: Table) -> None:
    result = page.evaluate(RUN_IN_PAGE, {"session": SESSION, "journal": JOURNAL,
                                         "unapplicable": UNAPPLICABLE,
                                         "chatHistory": CHAT_HISTORY})
    assert result["rules"] == sorted(ev.DURABLE_EVENT_NAMES)
    assert {name for name, _ in JOURNAL} == ev.DURABLE_EVENT_NAMES  # the journal uses each


def test_the_browser_client_and_the_server_apply_each_event_of_a_journal_alike(
        page: Table) -> None:
    result = page.evaluate(RUN_IN_PAGE, {"session": SESSION, "journal": JOURNAL,
                                         "unapplicable": UNAPPLICABLE,
                                         "chatHistory": CHAT_HISTORY})
    steps: list[Any] = []
    _python_replay(steps)
    for (name, _), ours, theirs in zip(JOURNAL, result["steps"], steps, strict=True):
        assert ours == theirs, f"after {name}"
    expected = steps[-1]
    assert [m["text"] for m in expected["state"]["chat"]] == ["line 2", "line 3", "line 4"]
    assert expected["hostId"] == "gm"
    assert expected["state"]["activeSceneId"] is None  # its scene was deleted


def test_the_browser_client_refuses_exactly_the_events_the_server_cannot_apply(
        page: Table) -> None:
    result = page.evaluate(RUN_IN_PAGE, {"session": SESSION, "journal": JOURNAL,
                                         "unapplicable": UNAPPLICABLE,
                                         "chatHistory": CHAT_HISTORY})
    following = SESSION["sequence"] + len(JOURNAL) + 1
    assert result["unapplicable"] == [_python_applies(name, data, following)
                                      for name, data in UNAPPLICABLE]
    assert result["unapplicable"] == [False] * len(UNAPPLICABLE)
    assert result["outOfOrder"] is _python_applies("session/hibernated", {}, following + 1)
    assert result["outOfOrder"] is False
