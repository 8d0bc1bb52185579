"""``nexus-actors client``: a line-oriented terminal client, to poke a server by hand.

It takes one seat with :func:`nexus_actors.client.connect` (create a room, join
one, or resume a seat with its token), prints one line per thing that happens
(``[12:00:01] Ana moved Rook to (3, 4)``, ``reconnecting (attempt 2, in 1.4 s)``,
``quality good 23 ms``) and reads commands from standard input, one per line
(``/help`` lists them; a line that is not a command is a chat message).

Parsing commands, finding members, scenes and tokens by name or id prefix, and
describing events are pure functions; the REPL at the end only moves lines.
Standard input is read with ``os.read`` in a worker thread, so the terminal's
own file description is never switched to non-blocking mode.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, tzinfo
from typing import Any, Final, Literal, Protocol, TextIO

import attrs
import trio

from .client import (
    ClientError,
    ClientEvent,
    ConnectFailed,
    ConnectionQuality,
    EventRefused,
    EventsLagged,
    Member,
    PresenceChanged,
    Reconnected,
    Reconnecting,
    ReconnectionFailed,
    Refused,
    Resynced,
    RoomEvent,
    ServerError,
    Session,
    SessionEnded,
    TokenRotated,
    UpdateRolledBack,
    connect,
)
from .client.connect import endpoint

HELP = """\
commands (MEMBER: a name or an id prefix; SCENE and TOKEN: a name, a label or an id prefix):
  TEXT                      send TEXT to the chat (also /chat TEXT)
  /move TOKEN X Y           move a token
  /token SCENE X Y [LABEL]  create a token in a scene
  /scene NAME               create a scene
  /activate SCENE           make a scene the active one
  /transfer MEMBER          make MEMBER the primary host
  /cohost MEMBER            make MEMBER a co-host
  /kick MEMBER              remove MEMBER's seat
  /who                      list the members
  /state                    show the room: hosts, scenes and tokens
  /leave                    give the seat up and exit
  /quit                     exit (the seat stays: resume it with --token)
  /help                     this list"""

SHORT_ID = 8
"Characters of an id shown where no name is known."
EXIT_FLUSH = 5.0
"Seconds to wait, when exiting, for the server to answer what was sent."


class CommandError(Exception):
    """A line that is not a valid command, or names nothing (the message says why)."""


# Commands --------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Chat:
    text: str


@attrs.frozen(kw_only=True)
class CreateScene:
    name: str


@attrs.frozen(kw_only=True)
class ActivateScene:
    scene: str
    "A scene's name or an id prefix."


@attrs.frozen(kw_only=True)
class CreateToken:
    scene: str
    "A scene's name or an id prefix."
    x: float
    y: float
    label: str | None = None


@attrs.frozen(kw_only=True)
class Move:
    token: str
    "A token's label or an id prefix."
    x: float
    y: float


@attrs.frozen(kw_only=True)
class MemberRequest:
    action: Literal["transfer", "cohost", "kick"]
    member: str
    "A member's name or an id prefix."


@attrs.frozen(kw_only=True)
class Show:
    what: Literal["who", "state", "help"]


@attrs.frozen(kw_only=True)
class Quit:
    leave: bool
    "Give the seat up (``/leave``) rather than keep it (``/quit``)."


Command = (Chat | CreateScene | ActivateScene | CreateToken | Move | MemberRequest | Show
           | Quit)

_MEMBER_VERBS: Final[dict[str, Literal["transfer", "cohost", "kick"]]] = {
    "transfer": "transfer", "cohost": "cohost", "kick": "kick"}
_SHOW_VERBS: Final[dict[str, Literal["who", "state", "help"]]] = {
    "who": "who", "state": "state", "help": "help"}


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CommandError(f"{what} must be a number, not {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise CommandError(f"{what} must be a finite number, not {text!r}")
    return value


def _words(rest: str, usage: str, count: int, optional: int = 0) -> list[str]:
    try:
        words = shlex.split(rest)
    except ValueError as exc:
        raise CommandError(f"{exc}; usage: {usage}") from None
    if not count <= len(words) <= count + optional:
        raise CommandError(f"usage: {usage}")
    return words


def parse_command(line: str) -> Command | None:
    """The command a line of input asks for (``None`` for a blank line).

    A line starting with ``/`` is a command (``/move Rook 3 4``); anything else is
    a chat message. Raises :class:`CommandError` for an unknown command or wrong
    arguments.
    """
    text = line.strip()
    if not text:
        return None
    if not text.startswith("/"):
        return Chat(text=text)
    verb, _, rest = text[1:].partition(" ")
    rest = rest.strip()
    verb = verb.lower()
    if verb == "chat":
        if not rest:
            raise CommandError("usage: /chat TEXT")
        return Chat(text=rest)
    if verb == "scene":
        if not rest:
            raise CommandError("usage: /scene NAME")
        return CreateScene(name=rest)
    if verb == "activate":
        [scene] = _words(rest, "/activate SCENE", 1)
        return ActivateScene(scene=scene)
    if verb == "move":
        token, x, y = _words(rest, "/move TOKEN X Y", 3)
        return Move(token=token, x=_number(x, "X"), y=_number(y, "Y"))
    if verb == "token":
        scene, x, y, *label = _words(rest, "/token SCENE X Y [LABEL]", 3, optional=1)
        return CreateToken(scene=scene, x=_number(x, "X"), y=_number(y, "Y"),
                           label=label[0] if label else None)
    if verb in _MEMBER_VERBS:
        [member] = _words(rest, f"/{verb} MEMBER", 1)
        return MemberRequest(action=_MEMBER_VERBS[verb], member=member)
    if verb in _SHOW_VERBS:
        return Show(what=_SHOW_VERBS[verb])
    if verb in ("quit", "exit"):
        return Quit(leave=False)
    if verb == "leave":
        return Quit(leave=True)
    raise CommandError(f"unknown command /{verb} (/help lists them)")


def find(candidates: Iterable[tuple[str, str]], query: str, kind: str) -> str:
    """The id of the one ``(id, name)`` that ``query`` names.

    An exact id wins, then a name (ignoring case), then an id prefix. Raises
    :class:`CommandError` when nothing matches or several do.
    """
    items = list(candidates)
    for wanted in (
            [i for i in items if i[0] == query],
            [i for i in items if i[1].casefold() == query.casefold()],
            [i for i in items if i[0].startswith(query)]):
        if len(wanted) == 1:
            return wanted[0][0]
        if len(wanted) > 1:
            some = ", ".join(f"{name} ({entity_id[:SHORT_ID]})" for entity_id, name in wanted)
            raise CommandError(f"{query!r} matches several {kind}s: {some}")
    raise CommandError(f"no {kind} matches {query!r}")


def token_name(token: Mapping[str, Any]) -> str:
    """How a token is called: its label, its name, else the start of its id."""
    for key in ("label", "name"):
        value = token.get(key)
        if isinstance(value, str) and value:
            return value
    return str(token.get("id", "?"))[:SHORT_ID]


def scene_name(scene: Mapping[str, Any]) -> str:
    value = scene.get("name")
    return value if isinstance(value, str) and value else str(scene.get("id", "?"))[:SHORT_ID]


def members_of(members: Iterable[Member]) -> list[tuple[str, str]]:
    return [(m.id, m.name) for m in members]


def tokens_of(state: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(token_id, token_name(token)) for token_id, token in state["tokens"].items()]


def scenes_of(state: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(scene_id, scene_name(scene)) for scene_id, scene in state["scenes"].items()]


# Describing what happens -------------------------------------------------------------------


@attrs.define
class Directory:
    """Names of members, scenes and tokens seen so far (kept after they are gone, so a
    ``session/leave`` or a ``token/delete`` can still be told by name)."""

    members: dict[str, str] = attrs.Factory(dict)
    scenes: dict[str, str] = attrs.Factory(dict)
    tokens: dict[str, str] = attrs.Factory(dict)

    def learn(self, members: Iterable[Member], state: Mapping[str, Any]) -> None:
        self.members.update(members_of(members))
        self.scenes.update(scenes_of(state))
        self.tokens.update(tokens_of(state))

    def member(self, member_id: str | None) -> str:
        if member_id is None:
            return "the server"
        return self.members.get(member_id, member_id[:SHORT_ID])

    def scene(self, scene_id: str) -> str:
        return self.scenes.get(scene_id, scene_id[:SHORT_ID])

    def token(self, token_id: str) -> str:
        return self.tokens.get(token_id, token_id[:SHORT_ID])


def number(value: Any) -> str:
    """A coordinate as a person writes it: ``3`` for 3.0, ``2.5``."""
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def point(position: Mapping[str, Any]) -> str:
    return f"({number(position.get('x'))}, {number(position.get('y'))})"


def describe_room_event(event: RoomEvent, names: Directory) -> str:
    """One journaled event, in words."""
    data = event.data
    who = names.member(event.actor_id)
    name = event.name
    if name == "token/move":
        return f"{who} moved {names.token(data['tokenId'])} to {point(data['position'])}"
    if name == "token/create":
        token = data["token"]
        return (f"{who} created token {token_name(token)} ({str(token['id'])[:SHORT_ID]}) "
                f"in {names.scene(token['sceneId'])} at {point(token['position'])}")
    if name == "token/update":
        changes = ", ".join(sorted(data["changes"]))
        return f"{who} changed {changes} of token {names.token(data['tokenId'])}"
    if name == "token/delete":
        return f"{who} deleted token {names.token(data['tokenId'])}"
    if name == "scene/create":
        scene = data["scene"]
        return f"{who} created scene {scene_name(scene)} ({str(scene['id'])[:SHORT_ID]})"
    if name == "scene/update":
        changes = ", ".join(sorted(data["changes"]))
        return f"{who} changed {changes} of scene {names.scene(data['sceneId'])}"
    if name == "scene/delete":
        return f"{who} deleted scene {names.scene(data['sceneId'])}"
    if name == "scene/activate":
        return f"{who} activated scene {names.scene(data['sceneId'])}"
    if name == "chat/message":
        message = data["message"]
        return f"{message['userName']}: {message['text']}"
    if name == "session/join":
        player = data["player"]
        return f"{player['name']} joined as {player['role']}"
    if name == "session/leave":
        return f"{names.member(data['uuid'])} left"
    if name == "session/kicked":
        return f"{names.member(data['playerId'])} was kicked by {names.member(data.get('by'))}"
    if name == "session/host-migrated":
        how = "by transfer" if data.get("manual") else "automatically"
        return (f"{names.member(data['newHostId'])} is now the host ({how}; was "
                f"{names.member(data.get('previousHostId'))})")
    if name == "session/co-host-added":
        return f"{names.member(data['coHostId'])} is now a co-host"
    if name == "session/co-host-removed":
        return f"{names.member(data['coHostId'])} is no longer a co-host"
    if name == "session/hibernated":
        return "the room went to sleep (nobody was connected)"
    if name in ("initiative/set", "initiative/next"):
        return f"{who} set the initiative: round {data.get('round')}, turn {data.get('turn')}"
    if name.startswith("character/"):
        character = data.get("character") or {}
        target = character.get("name") or str(
            character.get("id") or data.get("characterId") or "?")[:SHORT_ID]
        return f"{who}: {name} {target}"
    return f"{who}: {name}"


def describe(event: ClientEvent, names: Directory) -> str | None:
    """One line for an event worth showing (``None``: cursors, acks, optimistic
    bookkeeping and ``disconnected`` quality, which other lines already tell)."""
    match event:
        case RoomEvent():
            return describe_room_event(event, names)
        case PresenceChanged(member_id=member_id, connected=connected):
            return f"{names.member(member_id)} {'is back' if connected else 'disconnected'}"
        case ConnectionQuality(latency=latency, status=status) if latency is not None:
            return f"quality {status} {latency:.0f} ms"
        case Reconnecting(attempt=attempt, next_attempt_in=wait, reason=reason):
            return f"reconnecting (attempt {attempt}, in {wait:.1f} s): {reason}"
        case Reconnected(mode=mode, replayed=replayed):
            if mode == "resume":
                return f"reconnected ({replayed} missed events replayed)"
            return "reconnected (the room's state was replaced by the server's)"
        case ReconnectionFailed(attempts=attempts, code=code, message=message):
            return f"reconnection failed after {attempts} attempts: {code}: {message}"
        case SessionEnded(close_code=close_code, reason=reason):
            return f"session ended: {reason} ({close_code})"
        case Resynced(sequence=sequence):
            return f"the room's state was replaced by the server's (sequence {sequence})"
        case EventRefused(name=name, code=code, message=message):
            return f"refused {name}: {code}: {message}"
        case UpdateRolledBack(entity_id=entity_id, reason=reason):
            return f"change of {names.token(entity_id)} rolled back: {reason}"
        case ServerError(code=code, message=message):
            return f"server error {code}: {message}"
        case TokenRotated(token=token):
            return f"new resume token: {token}"
    return None


def stamp(text: str, at: float, tz: tzinfo | None = None) -> str:
    """``[12:00:01] text``: ``at`` in seconds since the epoch, local time unless ``tz``."""
    return f"[{datetime.fromtimestamp(at, tz).strftime('%H:%M:%S')}] {text}"


def when(event: ClientEvent, now: float) -> float:
    """When an event happened: the server's time for a journaled event, else ``now``."""
    if isinstance(event, RoomEvent) and event.timestamp:
        return event.timestamp / 1000.0
    return now


def format_members(members: Sequence[Member], me: str) -> list[str]:
    """``/who``: one line per seat, hosts first."""
    order = {"host": 0, "co-host": 1, "player": 2}
    lines = []
    for member in sorted(members, key=lambda m: order[m.role]):
        mark = "*" if member.id == me else " "
        presence = "connected" if member.connected else "disconnected"
        lines.append(f"{mark} {member.name} ({member.role}, {member.id[:SHORT_ID]}) "
                     f"{presence}")
    return lines


def format_state(state: Mapping[str, Any], members: Sequence[Member], *, room_code: str,
                 sequence: int) -> list[str]:
    """``/state``: the room's hosts, scenes and tokens."""
    hosts = [m.name for m in members if m.role == "host"]
    co_hosts = [m.name for m in members if m.role == "co-host"]
    lines = [f"room {room_code} at sequence {sequence}: host {', '.join(hosts) or 'none'}"
             + (f", co-hosts {', '.join(co_hosts)}" if co_hosts else "")]
    active = state.get("activeSceneId")
    tokens = state["tokens"]
    for scene_id, scene in state["scenes"].items():
        mark = " (active)" if scene_id == active else ""
        lines.append(f"scene {scene_name(scene)} ({scene_id[:SHORT_ID]}){mark}")
        for token_id, token in tokens.items():
            if token.get("sceneId") == scene_id:
                lines.append(f"  token {token_name(token)} ({token_id[:SHORT_ID]}) at "
                             f"{point(token['position'])} v{token.get('version')}")
    if not state["scenes"]:
        lines.append("no scenes yet (/scene NAME creates one)")
    return lines


# The REPL ----------------------------------------------------------------------------------


class Lines(Protocol):
    """Where commands come from: one line at a time, ``None`` at the end of input."""

    async def readline(self) -> str | None: ...


class FdLines:
    """Lines from a file descriptor (standard input), read in a worker thread.

    ``os.read`` in a thread leaves the descriptor blocking (a terminal shared with
    the shell stays as it was) and holds no lock of Python's, so a read still
    waiting when the program exits does not hold the exit up.
    """

    def __init__(self, fd: int = 0) -> None:
        self.fd = fd
        self._buffer = b""
        self._ended = False

    async def readline(self) -> str | None:
        while b"\n" not in self._buffer:
            if self._ended:
                if not self._buffer:
                    return None
                line, self._buffer = self._buffer, b""
                return line.decode("utf-8", errors="replace")
            chunk = await trio.to_thread.run_sync(os.read, self.fd, 65536,
                                                  abandon_on_cancel=True)
            if chunk:
                self._buffer += chunk
            else:
                self._ended = True
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", errors="replace")


@attrs.define
class Repl:
    """One seat driven from lines of input; prints what happens to ``out``."""

    session: Session
    out: TextIO
    clock: Callable[[], float] = time.time
    "Wall-clock seconds, for the time stamp of lines that are not journaled events."
    tz: tzinfo | None = None
    names: Directory = attrs.Factory(Directory)
    status: int = 0
    "The exit status: 1 once the server ended the session."
    leaving: bool = False

    def say(self, text: str, at: float | None = None) -> None:
        self.out.write(stamp(text, self.clock() if at is None else at, self.tz) + "\n")
        self.out.flush()

    def show(self, lines: Iterable[str]) -> None:
        for text in lines:
            self.out.write(text + "\n")
        self.out.flush()

    async def run(self, lines: Lines) -> int:
        session = self.session
        role = next((m.role for m in session.members if m.id == session.member_id), "player")
        self.names.learn(session.members, session.state)
        self.say(f"room {session.room_code}: you are {self.names.member(session.member_id)} "
                 f"({role}, {session.member_id[:SHORT_ID]}); /help lists the commands")
        self.say(f"resume this seat with: --join {session.room_code} --token {session.token}")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._print_events, nursery.cancel_scope)
            while (line := await lines.readline()) is not None:
                try:
                    command = parse_command(line)
                    if isinstance(command, Quit):
                        if command.leave:
                            self.leaving = True
                            with trio.move_on_after(session.options.close_timeout * 2):
                                await session.leave()
                        break
                    if command is not None:
                        await self.execute(command)
                except (CommandError, ClientError) as exc:
                    self.say(f"error: {exc}")
            if not self.leaving:
                with trio.move_on_after(EXIT_FLUSH):
                    await session.flush()  # what was typed last still reaches the room
            nursery.cancel_scope.cancel()
        return self.status

    async def _print_events(self, done: trio.CancelScope) -> None:
        session = self.session
        while True:
            try:
                async for event in session.events():
                    if isinstance(event, RoomEvent | Resynced | Reconnected):
                        self.names.learn(session.members, session.state)
                    text = describe(event, self.names)
                    if text is not None:
                        self.say(text, when(event, self.clock()))
                break
            except EventsLagged as exc:
                self.say(f"{exc.dropped} events were not shown (too many at once)")
        if not self.leaving:
            self.say("the session has ended")
            self.status = 1
        done.cancel()

    async def execute(self, command: Command) -> None:
        """Send or show what ``command`` asks for (raises CommandError, ClientError)."""
        session = self.session
        match command:
            case Chat(text=text):
                await session.chat(text)
            case CreateScene(name=name):
                await session.create_scene(name)
            case ActivateScene(scene=scene):
                await session.activate_scene(find(scenes_of(session.state), scene, "scene"))
            case CreateToken(scene=scene, x=x, y=y, label=label):
                scene_id = find(scenes_of(session.state), scene, "scene")
                fields = {} if label is None else {"label": label}
                await session.create_token(scene_id, x, y, **fields)
            case Move(token=token, x=x, y=y):
                await session.move_token(find(tokens_of(session.state), token, "token"), x, y)
            case MemberRequest(action=action, member=member):
                member_id = find(members_of(session.members), member, "member")
                send = {"transfer": session.transfer_host, "cohost": session.add_co_host,
                        "kick": session.kick}[action]
                await send(member_id)
            case Show(what="who"):
                self.show(format_members(session.members, session.member_id))
            case Show(what="state"):
                self.show(format_state(session.state, session.members,
                                       room_code=session.room_code, sequence=session.sequence))
            case Show(what="help"):
                self.show(HELP.splitlines())


# The command -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="the server, e.g. ws://127.0.0.1:5000 or "
                                    "wss://tables.example.com")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--join", metavar="CODE", help="join the room CODE (with --name), or "
                                                     "resume a seat in it (with --token)")
    what.add_argument("--host", metavar="CODE", nargs="?", const="",
                      help="create a room (the server picks the code unless CODE is given)")
    parser.add_argument("--name", help="your name in the room (to create or join)")
    parser.add_argument("--token", help="resume the seat this token belongs to (with --join)")


def target(args: argparse.Namespace) -> dict[str, Any]:
    """``connect`` arguments from the command line; raises ``ValueError`` with a message."""
    if args.token is not None:
        if args.join is None:
            raise ValueError("--token resumes a seat: give the room with --join CODE")
        return {"room": args.join, "token": args.token}
    if not args.name:
        raise ValueError("--name is needed to create or join a room")
    if args.host is not None:
        return {"room": args.host or None, "name": args.name, "role": "host"}
    return {"room": args.join, "name": args.name}


async def run_client(url: str, seat: Mapping[str, Any], lines: Lines, out: TextIO) -> int:
    """Take the seat, then run the REPL until ``/quit``, the end of input, or the end of
    the session; the exit status."""
    try:
        async with connect(url, **seat) as session:
            return await Repl(session, out).run(lines)
    except Refused as exc:
        print(f"nexus-actors client: refused: {exc.code}: {exc.message}", file=sys.stderr)
    except ConnectFailed as exc:
        print(f"nexus-actors client: {exc.message}", file=sys.stderr)
    return 1


def main(args: argparse.Namespace) -> int:
    try:
        seat = target(args)
        endpoint(args.url)
    except ValueError as exc:
        print(f"nexus-actors client: {exc}", file=sys.stderr)
        return 2
    try:
        return trio.run(run_client, args.url, seat, FdLines(sys.stdin.fileno()), sys.stdout)
    except KeyboardInterrupt:
        return 130
