"""Shared pieces of the browser tests: the server as a real process, Chromium through
Playwright, and a small page object for the built-in table page.

The tests drive Debian's Chromium (``/usr/bin/chromium``) with Playwright's sync API;
Playwright never downloads a browser of its own. Every wait is bounded: Playwright's
auto-waiting ``expect`` (a timeout per assertion) and deadlines for the server process.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest

from nexus_actors.testing.processes import free_port, server_environment

try:
    from playwright.sync_api import (
        Browser,
        BrowserContext,
        Locator,
        Page,
        Playwright,
        Request,
        expect as expect,
        sync_playwright,
    )
except ImportError:  # every module importing this one is skipped, with this message
    pytest.skip("playwright is not installed (pip install -e '.[test]'); browser tests skipped",
                allow_module_level=True)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

requires_browser = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason=f"Chromium is not installed at {CHROMIUM} "
                              "(apt-get install chromium); browser tests skipped"),
]
"``pytestmark`` of every browser test module."

START_TIMEOUT = 20.0
"Seconds the server process may take to answer /health."
STOP_TIMEOUT = 15.0
"Seconds the server process may take to drain and exit after SIGTERM."
UI_TIMEOUT = 10_000
"Milliseconds an action or an expectation may wait unless told (twice Playwright's default)."
HOST_GRACE = 2.0
"NEXUS_HOST_GRACE of the servers under test: host migration after 2 s."
LATENCY = re.compile(r"^\d+ ms$")
"The status badge while connected."


# The server as a process -------------------------------------------------------------


def _health(port: int) -> int | None:
    """The status of ``GET /health``, or ``None`` while nothing answers on the port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
            status: int = reply.status
            return status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


@attrs.define
class ServerProcess:
    """``python -m nexus_actors serve`` on a fixed port; stopped and started again on the
    same port and store by :meth:`restart`."""

    log: Path
    settings: dict[str, str]
    port: int = attrs.Factory(free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = server_environment(PORT=str(self.port), NEXUS_HOST="127.0.0.1", LOG_LEVEL="info",
                                 **self.settings)
        with self.log.open("ab") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nexus_actors", "serve"], env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + START_TIMEOUT
        # Polling is the only way to see an external process start listening.
        while _health(self.port) != 200:
            if self.process.poll() is not None:
                pytest.fail(f"server exited with {self.process.returncode}: "
                            f"{self.log.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                pytest.fail(f"server did not answer /health within {START_TIMEOUT} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (a drain: clients get a ``server-restart`` backoff) and wait for the exit."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=STOP_TIMEOUT) == 0, self.log.read_text(errors="replace")

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


@contextmanager
def served(log: Path, **settings: str) -> Iterator[ServerProcess]:
    """A running server process, killed afterwards if it is still up."""
    server = ServerProcess(log=log, settings={"NEXUS_HOST_GRACE": str(HOST_GRACE), **settings})
    try:
        server.start()
        yield server
    finally:
        server.kill()


# Chromium ------------------------------------------------------------------------------


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright (which downloads nothing)."""
    expect.set_options(timeout=UI_TIMEOUT)
    with sync_playwright() as playwright:
        browser = _launch(playwright)
        try:
            yield browser
        finally:
            browser.close()


def _launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


@attrs.define
class Windows:
    """Browser windows (one context each: separate storage, like separate people) on one
    server; records page errors and any request that leaves the server's origin."""

    browser: Browser
    server: ServerProcess
    contexts: list[BrowserContext] = attrs.Factory(list)
    page_errors: list[str] = attrs.Factory(list)
    foreign_requests: list[str] = attrs.Factory(list)

    def open(self, *, width: int = 1280, height: int = 800) -> Table:
        context = self.browser.new_context(viewport={"width": width, "height": height})
        context.set_default_timeout(UI_TIMEOUT)
        self.contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("request", lambda request: self._request(request))
        page.goto(self.server.url)
        return Table(page)

    def _request(self, request: Request) -> None:
        origin = self.server.origin
        if not request.url.startswith((origin + "/", origin.replace("http", "ws", 1) + "/")):
            self.foreign_requests.append(request.url)

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@contextmanager
def windows(browser: Browser, server: ServerProcess) -> Iterator[Windows]:
    """Windows for one test; afterwards, no page may have thrown and nothing may have been
    fetched from anywhere but the server."""
    opened = Windows(browser=browser, server=server)
    try:
        yield opened
    finally:
        opened.close()
    assert opened.page_errors == []
    assert opened.foreign_requests == []


# The page --------------------------------------------------------------------------------


@attrs.define
class Table:
    """One window on the table page."""

    page: Page

    def testid(self, testid: str) -> Locator:
        return self.page.get_by_test_id(testid)

    # Start screen.

    def create(self, name: str) -> str:
        """Create a room as ``name``; the room code shown."""
        self.page.get_by_label("Your name").first.fill(name)
        self.page.get_by_role("button", name="Create room").click()
        code = self.testid("room-code")
        expect(code).to_have_text(re.compile(r"^[A-Z0-9]{4}$"))
        expect(self.tokens()).to_have_count(3)
        return code.inner_text()

    def join(self, code: str, name: str) -> None:
        self.page.get_by_label("Room code").fill(code)
        self.page.locator("#join-name").fill(name)
        self.page.get_by_role("button", name="Join").click()
        expect(self.testid("table")).to_be_visible()

    # The table.

    @property
    def badge(self) -> Locator:
        return self.testid("status-badge")

    def tokens(self) -> Locator:
        return self.testid("token")

    def token(self, label: str) -> Locator:
        return self.page.locator(f'[data-testid="token"][data-label="{label}"]')

    def player(self, name: str) -> Locator:
        return self.page.locator(f'[data-testid="player"][data-name="{name}"]')

    def cursor(self, name: str) -> Locator:
        return self.page.locator(f'[data-testid="cursor"][data-name="{name}"]')

    def toast(self, text: str | re.Pattern[str]) -> Locator:
        return self.testid("toast").filter(has_text=text)

    def cell_center(self, x: float, y: float) -> tuple[float, float]:
        box = self.testid("grid").bounding_box()
        assert box is not None
        columns = int(self.testid("grid").evaluate(
            "grid => getComputedStyle(grid).getPropertyValue('--cols')"))
        rows = int(self.testid("grid").evaluate(
            "grid => getComputedStyle(grid).getPropertyValue('--rows')"))
        return (box["x"] + (x + 0.5) * box["width"] / columns,
                box["y"] + (y + 0.5) * box["height"] / rows)

    def drag(self, label: str, x: int, y: int) -> None:
        """Drag token ``label`` with the mouse and drop it on cell (x, y)."""
        self.token(label).hover()  # waits until the token stands still (no transition)
        mouse = self.page.mouse
        mouse.down()
        mouse.move(*self.cell_center(x, y), steps=8)
        mouse.up()

    def hover_cell(self, x: float, y: float) -> None:
        self.page.mouse.move(*self.cell_center(x, y), steps=4)

    def expect_at(self, label: str, x: int, y: int, timeout: float = UI_TIMEOUT) -> None:
        token = self.token(label)
        expect(token).to_have_attribute("data-x", str(x), timeout=timeout)
        expect(token).to_have_attribute("data-y", str(y), timeout=timeout)

    def positions(self) -> dict[str, tuple[str | None, str | None]]:
        """Label → (data-x, data-y) of every token shown."""
        return {token.get_attribute("data-label") or "?":
                (token.get_attribute("data-x"), token.get_attribute("data-y"))
                for token in self.tokens().all()}

    def chat(self, text: str) -> None:
        self.page.get_by_label("Message").fill(text)
        self.page.get_by_role("button", name="Send").click()

    def chat_texts(self) -> Locator:
        return self.testid("chat-message")

    def evaluate(self, script: str, argument: Any = None) -> Any:
        return self.page.evaluate(script, argument)

    def member_id(self) -> str:
        member: str = self.evaluate("() => window.nexus.session.memberId")
        return member

