"""The built-in page across a server restart on PostgreSQL: SIGTERM (a drain), then a new
process on the same port and database. Both windows reconnect by themselves, resume,
send what they queued while the server was away, and show the same table as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from browser_support import (
    LATENCY,
    ServerProcess,
    expect,
    requires_browser,
    served,
    windows,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = requires_browser

RECONNECT_TIMEOUT = 20_000
"""Milliseconds the windows may take to come back: the server's retry hint (about 1 s),
backoff with full jitter while the new process starts, and slack for a busy CI."""


@pytest.fixture
def postgres_server(tmp_path: Path, database_url: str) -> Iterator[ServerProcess]:
    with served(tmp_path / "stderr.log", DATABASE_URL=database_url) as server:
        yield server


def test_after_a_restart_both_windows_reconnect_resume_and_agree(
        browser: Browser, postgres_server: ServerProcess) -> None:
    with windows(browser, postgres_server) as opened:
        gm = opened.open()
        code = gm.create("GM")
        ana = opened.open()
        ana.join(code, "Ana")
        ana.drag("A", 6, 5)
        gm.expect_at("A", 6, 5)
        gm.chat("before the restart")
        expect(ana.chat_texts().last).to_have_text("GM:before the restart")
        members = {window.member_id() for window in (gm, ana)}
        for window in (gm, ana):
            expect(window.badge).to_have_text(LATENCY)

        postgres_server.stop()  # SIGTERM: every page gets a backoff hint and close 1012
        for window in (gm, ana):
            expect(window.badge).to_have_text(re.compile(r"^Reconnecting… attempt \d+$"))
            expect(window.badge).to_have_attribute("data-status", "reconnecting")
        gm.chat("while the server was away")  # kept in the outbox, sent after the resume
        postgres_server.start()

        for window in (gm, ana):
            expect(window.badge).to_have_text(LATENCY, timeout=RECONNECT_TIMEOUT)
            # "Reconnected" alone: the missed events were replayed, no reload of the table.
            expect(window.toast(re.compile(r"^Reconnected$"))).to_be_visible()
        assert {window.member_id() for window in (gm, ana)} == members
        for window in (gm, ana):
            window.expect_at("A", 6, 5)
            expect(window.chat_texts()).to_have_text(
                ["GM:before the restart", "GM:while the server was away"])
            expect(window.player("GM").get_by_test_id("player-role")).to_have_text("Host")
            expect(window.player("Ana").get_by_test_id("player-connected")).to_have_text("online")
        assert gm.positions() == ana.positions()
        resumed = [window.evaluate("() => window.nexus.session.epoch") for window in (gm, ana)]
        assert resumed == [2, 2]  # every load from the store begins a new epoch

        ana.drag("B", 10, 7)  # and the table is live again
        gm.expect_at("B", 10, 7)
