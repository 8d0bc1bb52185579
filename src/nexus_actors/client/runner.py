"""The trio shell of a session: one connection at a time, reconnection, timers.

Two tasks run beside the application. The *supervisor* serves one connection
at a time and, when it ends, asks :class:`~nexus_actors.client.core.SessionCore`
whether to reconnect and how long the server asked to wait, then waits (backoff
with full jitter). The *timer* task runs the core's deadlines (update timeouts,
gaps, resends). Every rule lives in the core; this module moves bytes and waits.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable

import trio

from ..protocol.limits import TokenBucket
from .backoff import TERMINAL_CLOSE_CODES
from .core import SessionCore, Verdict
from .errors import ClientError, ConnectFailed, Refused
from .events import ClientEvent, Reconnecting, ReconnectionFailed, SessionEnded
from .feed import EventFeed
from .options import Options
from .transport import HandshakeFailed, Link

Opener = Callable[[], Awaitable[trio.abc.Stream]]
"Opens a byte stream to the server (a TCP connection, an in-memory pipe in tests)."

_UNREACHABLE = (OSError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError)


class Runner:
    """Keeps a session's seat: connects, serves, reconnects, and runs its timers."""

    def __init__(self, core: SessionCore, *, base: str, opener: Opener, rng: random.Random,
                 options: Options) -> None:
        self.core = core
        self.base = base
        "The WebSocket URL without its query (``ws://host:port/ws``)."
        self.opener = opener
        self.rng = rng
        self.options = options
        self.feed = EventFeed(options.event_buffer)
        self.link: Link | None = None
        self.ready = trio.Event()
        "Set once the first connection is seated, or has failed (see ``failure``)."
        self.failure: ClientError | None = None
        self.done = trio.Event()
        "Set once the session has ended."
        self.changed = trio.Event()
        "Set (and replaced) whenever the core may have changed."
        self._closing = False
        self._timer_wake = trio.Event()
        self._timer_at = -math.inf
        "When the timer task wakes next (before it first runs: at once)."

    # Between the core and the world ------------------------------------------------------

    def pump(self) -> None:
        """Hand what the core produced to the application and to the connection."""
        core = self.core
        for event in core.take_events():
            self.feed.put(event)
        frames = core.take_frames()
        link = self.link
        if link is not None:
            link.send(frames)
            if core.resume_reason is not None:
                link.abort(core.resume_reason)
        deadline = core.next_deadline()
        if deadline is not None and deadline < self._timer_at:
            self._timer_wake.set()  # only for a deadline sooner than the one it waits for
        self.changed.set()
        self.changed = trio.Event()

    def cursor_moved(self) -> None:
        """A new cursor position waits: the connection sends it when its pacing allows."""
        if self.link is not None:
            self.link.nudge()

    def finish(self, event: ClientEvent | None) -> None:
        """The session is over: tell the application (``event``) and end its stream."""
        if self.core.ended:
            return
        self.core.ended = True
        self.pump()
        if event is not None:
            self.feed.put(event)
        self.feed.close()
        self.done.set()
        self.ready.set()

    async def close(self) -> None:
        """End the session from this side: a clean close, bounded by ``close_timeout``."""
        self._closing = True
        link = self.link
        if link is not None and not self.core.ended:
            link.close(1000)
            with trio.move_on_after(self.options.close_timeout):
                await self.done.wait()
        self.finish(None)

    # Tasks ---------------------------------------------------------------------------

    async def timers(self) -> None:
        while True:
            self.core.tick(trio.current_time())
            self.pump()
            self._timer_wake = trio.Event()
            deadline = self.core.next_deadline()
            self._timer_at = math.inf if deadline is None else deadline
            with trio.move_on_at(self._timer_at):
                await self._timer_wake.wait()

    async def supervise(self) -> None:
        core = self.core
        backoff = self.options.backoff
        attempt = 0
        first = True
        "Not seated yet: failures go to the caller of ``connect``, not to events."
        delay = 0.0
        while True:
            if delay > 0:
                await trio.sleep(delay)
            verdict, seated, opened = await self._connection(attempt)
            if self._closing:
                self.finish(None)
                return
            if seated:
                attempt, first = 0, False
            elif first and opened and verdict.refusal is None and core.token is None:
                # The server may have granted the create or join without our hearing of
                # it: asking again could take a second seat.
                self._give_up(verdict, seated=False, first=True, attempts=attempt)
                return
            if not verdict.retry:
                self._give_up(verdict, seated=seated, first=first, attempts=attempt)
                return
            attempt += 1
            if attempt > backoff.max_attempts:
                self._give_up(verdict, seated=False, first=first, attempts=attempt - 1,
                              exhausted=True)
                return
            delay = (0.0 if verdict.immediate and attempt == 1
                     else backoff.delay(attempt, self.rng, hint=verdict.hint))
            if not first:
                core.emit(Reconnecting(attempt=attempt, next_attempt_in=delay,
                                       reason=verdict.reason))
                self.pump()

    def _give_up(self, verdict: Verdict, *, seated: bool, first: bool, attempts: int,
                 exhausted: bool = False) -> None:
        closed = TERMINAL_CLOSE_CODES.get(verdict.close_code, str(verdict.close_code))
        if first:
            self.failure = verdict.refusal or ConnectFailed(
                f"could not connect ({verdict.reason})")
            self.finish(None)
        elif seated:
            self.finish(SessionEnded(close_code=verdict.close_code, reason=closed))
        elif exhausted:
            self.finish(ReconnectionFailed(
                attempts=attempts, code="attempts-exhausted",
                message=f"no connection after {attempts} attempts (last: {verdict.reason})"))
        else:
            refusal = verdict.refusal
            self.finish(ReconnectionFailed(
                attempts=attempts, code=refusal.code if refusal is not None else closed,
                message=refusal.message if refusal is not None else f"closed: {closed}"))

    async def _connection(self, attempt: int) -> tuple[Verdict, bool, bool]:
        """Open one connection and serve it until it ends; whether it was seated, and
        whether the WebSocket opened (the server read the request)."""
        core, options = self.core, self.options
        uri = f"{self.base}?{core.query()}"
        try:
            with trio.fail_after(options.connect_timeout):
                stream = await self.opener()
                try:
                    link = await Link.open(
                        stream, uri, compress=options.compress,
                        idle_timeout=options.idle_timeout,
                        pacing=TokenBucket(options.send_rate, options.send_burst,
                                           updated=trio.current_time()),
                        cursor_interval=1.0 / options.cursor_hz, take_cursor=core.take_cursor,
                        cursor_waiting=core.cursor_waiting)
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
        except HandshakeFailed as exc:
            return _handshake_verdict(exc), False, False
        except _UNREACHABLE:
            return Verdict(retry=True, immediate=False, hint=0.0, close_code=1006,
                           reason="unreachable", refusal=None), False, False
        core.opened(attempt)
        self.link = link
        seated = False
        with trio.CancelScope(deadline=trio.current_time() + options.connect_timeout) as scope:

            def deliver(message: bytes) -> None:
                nonlocal seated
                core.receive(message, trio.current_time())
                if core.seated and not seated:
                    seated = True
                    scope.deadline = math.inf
                    self.ready.set()
                self.pump()

            self.pump()
            await link.run(deliver, close_timeout=options.close_timeout)
        self.link = None
        verdict = core.closed(link.close_code, "timeout" if scope.cancelled_caught
                              else link.reason)
        self.pump()
        return verdict, seated, True


def _handshake_verdict(exc: HandshakeFailed) -> Verdict:
    """An HTTP answer instead of a WebSocket: 429 and 5xx are worth retrying."""
    status = exc.status
    if status is None or status == 429 or status >= 500:
        return Verdict(retry=True, immediate=False, hint=exc.retry_after or 0.0,
                       close_code=1006, reason="unreachable" if status is None
                       else f"http-{status}", refusal=None)
    refusal = Refused(str(exc), code=f"http-{status}")
    return Verdict(retry=False, immediate=False, hint=0.0, close_code=1006,
                   reason=f"http-{status}", refusal=refusal)
