"""The built-in page in Chromium, against a real server process: two or three windows
(separate browser contexts: separate people) at one table.

Each test creates its own room on a shared in-memory server started with a 2 s host
grace period. What is asserted is what a person at the table sees: the room code,
the players and their roles, tokens moving, other people's cursors, toasts, host
controls, the connection badge.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from browser_support import (
    LATENCY,
    Windows,
    expect,
    requires_browser,
)

if TYPE_CHECKING:
    pass

pytestmark = requires_browser

MIGRATION_TIMEOUT = 15_000
"Milliseconds to wait for a host migration: the 2 s grace period, and slack for a busy CI."


def test_create_shows_a_code_that_another_window_joins_with(open_windows: Windows) -> None:
    gm = open_windows.open()
    code = gm.create("GM")
    expect(gm.badge).to_have_text(LATENCY)
    expect(gm.player("GM").get_by_test_id("player-role")).to_have_text("Host")

    ana = open_windows.open(width=390, height=844)  # a phone
    ana.join(code.lower(), "Ana")  # codes are case-insensitive
    expect(ana.testid("room-code")).to_have_text(code)
    expect(ana.badge).to_have_text(LATENCY)
    for window in (gm, ana):
        expect(window.testid("player")).to_have_count(2)
        expect(window.player("Ana").get_by_test_id("player-role")).to_have_text("Player")
        expect(window.player("Ana").get_by_test_id("player-connected")).to_have_text("online")
        expect(window.tokens()).to_have_count(3)
    expect(gm.toast("Ana joined")).to_be_visible()
    assert ana.positions() == gm.positions()

    ana.chat("hello from the phone")
    expect(gm.chat_texts().last).to_have_text("Ana:hello from the phone")
    # A player sees no host controls and no scene switcher; the host does.
    expect(ana.testid("make-host")).to_have_count(0)
    expect(ana.testid("scene-select")).to_be_hidden()
    expect(gm.player("Ana").get_by_role("button", name="Make Ana the host")).to_be_visible()
    expect(gm.testid("scene-select")).to_be_visible()


def test_a_code_without_a_room_is_refused_on_the_start_screen(open_windows: Windows) -> None:
    window = open_windows.open()
    window.page.get_by_label("Room code").fill("ZZZZ")
    window.page.locator("#join-name").fill("Ana")
    window.page.get_by_role("button", name="Join").click()
    expect(window.testid("start-error")).to_have_text("There is no room with that code.")
    expect(window.testid("table")).to_be_hidden()


def test_a_token_dragged_in_one_window_moves_in_the_other(open_windows: Windows) -> None:
    gm = open_windows.open()
    code = gm.create("GM")
    ana = open_windows.open()
    ana.join(code, "Ana")
    gm.expect_at("A", 1, 1)

    ana.drag("A", 6, 5)
    ana.expect_at("A", 6, 5)  # at once: optimistic
    gm.expect_at("A", 6, 5)

    gm.token("B").focus()
    gm.page.keyboard.press("ArrowRight")  # the keyboard moves a focused token by one cell
    ana.expect_at("B", 4, 2)
    gm.expect_at("B", 4, 2)
    expect(ana.token("B")).to_have_attribute("aria-label", "Token B at column 5, row 3")


def test_cursors_show_names_and_go_when_their_member_leaves(open_windows: Windows) -> None:
    gm = open_windows.open()
    code = gm.create("GM")
    ana = open_windows.open()
    ana.join(code, "Ana")
    bo = open_windows.open()
    bo.join(code, "Bo")

    ana.hover_cell(7, 3)
    bo.hover_cell(2, 6)
    expect(gm.cursor("Ana")).to_have_text("Ana")
    expect(gm.cursor("Bo")).to_have_text("Bo")
    expect(bo.cursor("Ana")).to_be_visible()
    expect(ana.cursor("Ana")).to_have_count(0)  # nobody sees their own cursor

    ana.page.close()  # closing the tab keeps the seat, but the cursor goes
    expect(gm.cursor("Ana")).to_have_count(0)
    expect(bo.cursor("Ana")).to_have_count(0)
    expect(gm.player("Ana").get_by_test_id("player-connected")).to_have_text("offline")

    bo.testid("leave").click()  # leaving gives the seat up
    expect(bo.testid("start")).to_be_visible()
    expect(gm.cursor("Bo")).to_have_count(0)
    expect(gm.player("Bo")).to_have_count(0)
    expect(gm.toast("Bo left")).to_be_visible()


def test_the_host_closing_the_tab_makes_the_other_window_host_after_the_grace_period(
        open_windows: Windows) -> None:
    gm = open_windows.open()
    code = gm.create("GM")
    ana = open_windows.open()
    ana.join(code, "Ana")
    expect(ana.testid("kick")).to_have_count(0)

    gm.page.close()
    expect(ana.player("GM").get_by_test_id("player-connected")).to_have_text("offline")
    expect(ana.toast("You are now the host")).to_be_visible(timeout=MIGRATION_TIMEOUT)
    expect(ana.player("Ana").get_by_test_id("player-role")).to_have_text("Host")
    expect(ana.player("GM").get_by_test_id("player-role")).to_have_text("Player")
    # Host controls for the old host's seat (it is offline, so it cannot be made host).
    expect(ana.player("GM").get_by_role("button", name="Make GM a co-host")).to_be_visible()
    expect(ana.player("GM").get_by_role("button", name="Remove GM from the room")).to_be_visible()
    expect(ana.player("GM").get_by_role("button", name="Make GM the host")).to_have_count(0)
    expect(ana.testid("scene-select")).to_be_visible()


def test_the_host_adds_a_co_host_and_hands_the_room_over(open_windows: Windows) -> None:
    gm = open_windows.open()
    code = gm.create("GM")
    ana = open_windows.open()
    ana.join(code, "Ana")
    bo = open_windows.open()
    bo.join(code, "Bo")

    gm.player("Ana").get_by_role("button", name="Make Ana a co-host").click()
    expect(ana.toast("You are now a co-host")).to_be_visible()
    expect(bo.toast("Ana is now a co-host")).to_be_visible()
    for window in (gm, ana, bo):
        expect(window.player("Ana").get_by_test_id("player-role")).to_have_text("Co-host")
    # A co-host edits scenes but manages nobody.
    expect(ana.testid("scene-select")).to_be_visible()
    expect(ana.testid("kick")).to_have_count(0)
    expect(ana.testid("make-host")).to_have_count(0)
    ana.testid("new-scene").click()
    expect(bo.testid("scene-name")).to_have_text("Scene 2")
    expect(bo.tokens()).to_have_count(0)

    gm.player("Bo").get_by_role("button", name="Make Bo the host").click()
    expect(bo.toast("You are now the host")).to_be_visible()
    expect(ana.toast("Bo is now the host")).to_be_visible()
    for window in (gm, ana, bo):
        expect(window.player("Bo").get_by_test_id("player-role")).to_have_text("Host")
        expect(window.player("GM").get_by_test_id("player-role")).to_have_text("Player")
        expect(window.player("Ana").get_by_test_id("player-role")).to_have_text("Co-host")
    expect(bo.player("GM").get_by_role("button", name="Remove GM from the room")).to_be_visible()
    expect(gm.testid("kick")).to_have_count(0)
    expect(gm.testid("make-host")).to_have_count(0)
    expect(gm.testid("scene-select")).to_be_hidden()


def test_a_move_based_on_an_old_version_is_shown_then_rolled_back(open_windows: Windows) -> None:
    gm = open_windows.open()
    code = gm.create("GM")
    ana = open_windows.open()
    ana.join(code, "Ana")
    gm.drag("A", 6, 5)
    ana.expect_at("A", 6, 5)
    expect(ana.token("A")).to_have_attribute("data-version", "2")

    # Ana's client moves the token as if it had not seen GM's move (version 1).
    outcome = ana.evaluate("""async () => {
        const session = window.nexus.session;
        const token = Object.values(session.state.tokens).find((t) => t.label === "A");
        const rolledBack = new Promise((resolve) => session.addEventListener(
            "rolledBack", (event) => resolve(event.detail), {once: true}));
        session.moveToken(token.id, 9, 6, {version: 1});
        const shown = {...session.state.tokens[token.id].position};
        const detail = await rolledBack;
        return {shown, reason: detail.reason, currentVersion: detail.currentVersion,
                current: detail.current.position,
                after: {...session.state.tokens[token.id].position}};
    }""")
    assert outcome == {"shown": {"x": 9, "y": 6}, "reason": "version-conflict",
                       "currentVersion": 2, "current": {"x": 6, "y": 5},
                       "after": {"x": 6, "y": 5}}
    expect(ana.toast("Move refused: someone else moved it first")).to_be_visible()
    ana.expect_at("A", 6, 5)
    gm.expect_at("A", 6, 5)

    ana.drag("A", 8, 2)  # the next move is based on the version now shown
    gm.expect_at("A", 8, 2)


def test_a_reload_takes_the_same_seat_back_with_a_new_token(open_windows: Windows) -> None:
    gm = open_windows.open()
    code = gm.create("GM")
    ana = open_windows.open()
    ana.join(code, "Ana")
    member = ana.member_id()
    first_token = ana.evaluate(
        "() => JSON.parse(sessionStorage.getItem('nexus-actors.seat')).token")
    ana.drag("C", 0, 7)

    ana.page.reload()
    expect(ana.testid("table")).to_be_visible()
    expect(ana.badge).to_have_text(LATENCY)
    assert ana.member_id() == member
    ana.expect_at("C", 0, 7)
    expect(gm.testid("player")).to_have_count(2)
    expect(gm.player("Ana").get_by_test_id("player-connected")).to_have_text("online")
    # The server rotates the token on every reconnect; the page keeps the newest.
    ana.page.wait_for_function(
        "first => JSON.parse(sessionStorage.getItem('nexus-actors.seat')).token !== first",
        arg=first_token)
    assert ana.evaluate("() => window.nexus.session.token") != first_token
