"""The WebSocket URL's query string: which room, which seat, who.

``/ws?host`` (or ``host=1``) creates a room with a code the server picks;
``host=CODE`` creates one with that code; ``join=CODE`` takes a new seat;
``reconnect=CODE&token=T&lastSeenSequence=N`` takes a seat back.
"""

from __future__ import annotations

import unicodedata
from typing import Final
from urllib.parse import parse_qsl, urlsplit

import attrs

from ..errors import Code, Refusal

CODE_ALPHABET: Final = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
"Room code characters: no I/L/1 or O/0 look-alikes."
CODE_LENGTH: Final = 4
MAX_TOKEN_LENGTH: Final = 128


@attrs.frozen(kw_only=True)
class CreateRoom:
    code: str | None
    "The code asked for, or ``None`` to let the server pick a free one."
    name: str


@attrs.frozen(kw_only=True)
class JoinRoom:
    code: str
    name: str


@attrs.frozen(kw_only=True)
class ResumeSeat:
    code: str
    token: str
    last_seen: int | None = None
    "The last ``serverSequence`` the client applied; ``None`` asks for a fresh baseline."
    epoch: int | None = None
    "The room epoch the client's ``last_seen`` belongs to, when it knows one."


OpenRequest = CreateRoom | JoinRoom | ResumeSeat


def _bad(message: str) -> Refusal:
    return Refusal(message, code=Code.BAD_REQUEST)


def normalize_code(text: str) -> str:
    code = text.strip().upper()
    if len(code) != CODE_LENGTH or not code.isascii() or not code.isalnum():
        raise _bad(f"room codes are {CODE_LENGTH} letters or digits")
    return code


def validate_name(text: str, max_length: int) -> str:
    name = unicodedata.normalize("NFC", text).strip()
    if not name:
        raise _bad("name is required (1 or more characters)")
    if len(name) > max_length:
        raise _bad(f"name is longer than {max_length} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in name):
        raise _bad("name contains control or unassigned characters")
    return name


def _int_param(params: dict[str, str], key: str) -> int | None:
    text = params.get(key)
    if text is None or text == "":
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise _bad(f"{key} must be a non-negative integer")
    return int(text)


def parse_connect(target: str, *, max_name_length: int) -> OpenRequest:
    """Parse the request target (``/ws?join=K7PX&name=Ana``). Raises :class:`Refusal`."""
    query = urlsplit(target).query
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False,
                          max_num_fields=16, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise _bad("query string is not valid") from None
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise _bad(f"{key} is given more than once")
        params[key] = value
    modes = [key for key in ("host", "join", "reconnect") if key in params]
    if len(modes) != 1:
        raise _bad("give exactly one of host, join or reconnect")
    mode = modes[0]
    if mode == "host":
        requested = params["host"].strip()
        code: str | None = None
        if requested not in ("", "1"):
            code = normalize_code(requested)
            if any(ch not in CODE_ALPHABET for ch in code):
                raise _bad(f"room codes use only the characters {CODE_ALPHABET}")
        return CreateRoom(code=code, name=validate_name(params.get("name", ""), max_name_length))
    if mode == "join":
        return JoinRoom(code=normalize_code(params["join"]),
                        name=validate_name(params.get("name", ""), max_name_length))
    token = params.get("token", "")
    if not token:
        raise Refusal("reconnect needs the seat's token", code=Code.INVALID_TOKEN)
    if len(token) > MAX_TOKEN_LENGTH:
        raise Refusal("token is not valid", code=Code.INVALID_TOKEN)
    return ResumeSeat(code=normalize_code(params["reconnect"]), token=token,
                      last_seen=_int_param(params, "lastSeenSequence"),
                      epoch=_int_param(params, "epoch"))
