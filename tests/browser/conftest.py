"""Fixtures every browser test module shares: one Chromium and one in-memory server per
module (each test makes its own rooms), and a set of windows per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from browser_support import ServerProcess, Windows, chromium, served, windows

if TYPE_CHECKING:
    from playwright.sync_api import Browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def memory_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server keeping rooms in memory, with a 2 s host grace period."""
    with served(tmp_path_factory.mktemp("server") / "stderr.log", DATABASE_URL="memory") as server:
        yield server


@pytest.fixture
def open_windows(browser: Browser, memory_server: ServerProcess) -> Iterator[Windows]:
    with windows(browser, memory_server) as opened:
        yield opened
