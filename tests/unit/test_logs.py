"""Log lines: the JSON and human formats, ``auto``, and secrets never reaching a line."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from nexus_actors import logs

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
HUMAN = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+) ([\w.]+): (.*)$")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo what :func:`logs.configure` does to the process's loggers."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    quiet = {name: logging.getLogger(name).level for name in logs.QUIET_LOGGERS}
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
        for name, old in quiet.items():
            logging.getLogger(name).setLevel(old)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        return True


class Captured(logging.Handler):
    """Keeps the records it is given (after the filters of the handler before it)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def fail(error: Exception) -> None:
    raise error


def configured(fmt: str = "json", level: str = "debug",
               stream: io.StringIO | None = None) -> tuple[io.StringIO, logging.Logger]:
    stream = io.StringIO() if stream is None else stream
    logs.configure(level, fmt, stream)
    return stream, logging.getLogger("nexus_actors.test_logs")


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = stream.getvalue().splitlines()
    parsed = [orjson.loads(line) for line in lines]
    assert all(isinstance(item, dict) for item in parsed), lines
    return parsed


# JSON ------------------------------------------------------------------------------------


def test_json_line_has_utc_millisecond_time_level_logger_and_message() -> None:
    stream, log = configured()
    before = datetime.now(UTC)
    log.info("room %s created", "ABCD")
    after = datetime.now(UTC)
    [line] = json_lines(stream)
    assert set(line) == {"ts", "level", "logger", "message"}
    assert TS.match(line["ts"]), line["ts"]
    ts = datetime.fromisoformat(line["ts"])
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= ts <= after
    assert line["level"] == "info"
    assert line["logger"] == "nexus_actors.test_logs"
    assert line["message"] == "room ABCD created"


def test_json_exception_is_the_formatted_traceback_in_exc() -> None:
    stream, log = configured()
    try:
        fail(ValueError("boom"))
    except ValueError:
        log.exception("room %s crashed", "ABCD")
    [line] = json_lines(stream)
    assert line["level"] == "error"
    assert line["message"] == "room ABCD crashed"
    assert line["exc"].startswith("Traceback (most recent call last):\n")
    assert line["exc"].endswith("ValueError: boom")
    assert "test_json_exception_is_the_formatted_traceback_in_exc" in line["exc"]


def test_json_carries_extra_fields_and_writes_what_json_cannot_hold_as_text() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque thing"

    stream, log = configured()
    log.warning("outage", extra={
        "room": "ABCD", "connections": 3, "seconds": 1.5, "ok": False, "nothing": None,
        "codes": ["A", "B"], "detail": {"tries": 2, 7: "seven"}, "thing": Opaque(),
        "huge": 2**70, "level": "not the level"})
    [line] = json_lines(stream)
    assert line["room"] == "ABCD"
    assert line["connections"] == 3
    assert line["seconds"] == 1.5
    assert line["ok"] is False
    assert line["nothing"] is None
    assert line["codes"] == ["A", "B"]
    assert line["detail"] == {"tries": 2, "7": "seven"}
    assert line["thing"] == "opaque thing"
    assert line["huge"] == str(2**70)
    assert line["level"] == "warning"  # an extra field never replaces a standard one


def test_json_gives_exactly_one_line_per_record_whatever_the_message_holds() -> None:
    stream, log = configured()
    log.info("first\nsecond line\r\nthird")
    try:
        fail(RuntimeError("multi\nline"))
    except RuntimeError:
        log.error("failed", exc_info=True)
    log.debug("tab\there", extra={"text": "a\nb"})
    lines = json_lines(stream)
    assert [line["message"] for line in lines] == [
        "first\nsecond line\r\nthird", "failed", "tab\there"]
    assert "multi\nline" in lines[1]["exc"]
    assert lines[2]["text"] == "a\nb"
    assert stream.getvalue().count("\n") == 3


def test_json_keeps_unicode_as_it_is() -> None:
    stream, log = configured()
    log.info("Würfel 🎲 für %s", "Zoë", extra={"player": "ünïcødé ✓"})
    [line] = json_lines(stream)
    assert line["message"] == "Würfel 🎲 für Zoë"
    assert line["player"] == "ünïcødé ✓"
    assert "🎲" in stream.getvalue()  # written as UTF-8 text, not escaped


def test_json_line_even_for_a_call_whose_arguments_do_not_fit_the_template() -> None:
    record = logging.LogRecord("nexus_actors.x", logging.INFO, __file__, 1, "%d rooms",
                               ("many",), None)
    line = orjson.loads(logs.JsonFormatter().format(record))
    assert "%d rooms" in line["message"]
    assert "many" in line["message"]


# Human, auto, configure ---------------------------------------------------------------------


def test_human_format_is_time_level_logger_and_message() -> None:
    stream, log = configured("human")
    log.warning("store outage began: %s", "connection refused")
    match = HUMAN.match(stream.getvalue().rstrip("\n"))
    assert match is not None, stream.getvalue()
    assert match.groups() == ("WARNING", "nexus_actors.test_logs",
                              "store outage began: connection refused")


def test_human_format_puts_the_traceback_after_the_line() -> None:
    stream, log = configured("human")
    try:
        fail(KeyError("k"))
    except KeyError:
        log.exception("crashed")
    first, *rest = stream.getvalue().splitlines()
    assert first.endswith("ERROR nexus_actors.test_logs: crashed")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "KeyError: 'k'"


@pytest.mark.parametrize(("stream", "chosen"), [
    (Terminal(), "human"), (io.StringIO(), "json"), (object(), "json")])
def test_auto_is_human_on_a_terminal_and_json_otherwise(stream: object, chosen: str) -> None:
    assert logs.resolve_format("auto", stream) == chosen
    assert logs.resolve_format("human", io.StringIO()) == "human"
    assert logs.resolve_format("json", Terminal()) == "json"


def test_auto_writes_human_lines_to_a_terminal_and_json_to_a_file() -> None:
    terminal, log = configured("auto", stream=Terminal())
    log.info("hello")
    assert HUMAN.match(terminal.getvalue().rstrip("\n"))
    file, log = configured("auto", stream=io.StringIO())
    log.info("hello")
    assert json_lines(file)[0]["message"] == "hello"


def test_a_closed_stream_is_not_a_terminal() -> None:
    stream = Terminal()
    stream.close()
    assert not logs.is_terminal(stream)


def test_configure_sets_the_level_and_replaces_its_own_handler() -> None:
    first, log = configured("json", "warning")
    second, log = configured("json", "info")
    log.debug("not shown")
    log.info("shown once")
    assert first.getvalue() == ""
    assert [line["message"] for line in json_lines(second)] == ["shown once"]
    assert logging.getLogger().level == logging.INFO
    assert [h.get_name() for h in logging.getLogger().handlers].count(logs.HANDLER_NAME) == 1


@pytest.mark.parametrize(("level", "quiet"), [
    ("debug", logging.WARNING), ("info", logging.WARNING), ("error", logging.ERROR)])
def test_configure_quiets_the_chatty_libraries(level: str, quiet: int) -> None:
    stream, _ = configured("json", level)
    logging.getLogger("websockets.server").info("connection open")
    for name in logs.QUIET_LOGGERS:
        assert logging.getLogger(name).level == quiet
    assert stream.getvalue() == ""


@pytest.mark.parametrize(("level", "fmt"), [("verbose", "json"), ("info", "xml")])
def test_configure_refuses_unknown_levels_and_formats(level: str, fmt: str) -> None:
    with pytest.raises(ValueError, match="log"):
        logs.configure(level, fmt, io.StringIO())


# Redaction ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "shown"), [
    ("postgresql://user:secret@host", "postgresql://user:***@host"),
    ("connecting to postgres://admin:s3cr3t-pw@db.example.com:5433/app?sslmode=require",
     "connecting to postgres://admin:***@db.example.com:5433/app?sslmode=require"),
    ("postgresql://:pw@host/db", "postgresql://:***@host/db"),
    ("postgresql://u:p@ss/w:rd@db/app", "postgresql://u:***@db/app"),
    ("GET /?reconnect=ABCD&token=Zm9vYmFy-_x1&lastSeenSequence=4 HTTP/1.1",
     "GET /?reconnect=ABCD&token=***&lastSeenSequence=4 HTTP/1.1"),
    ("resume_token=abc; access_token=def", "resume_token=***; access_token=***"),
    ("host=db user=admin password=s3cr3t dbname=app",
     "host=db user=admin password=*** dbname=app"),
    ("host=db password='two words' dbname=app", "host=db password=*** dbname=app"),
    ("Authorization: Bearer eyJhbGciOi.eyJzdWIi.c2ln== (metrics)",
     "Authorization: Bearer *** (metrics)"),
    ("authorization: Basic dXNlcjpwYXNz", "authorization: Basic ***"),
    ("authorization=abc123", "authorization=***"),
    ("{'Authorization': 'Bearer abc'}", "{'Authorization': 'Bearer ***'}"),
    ("sent bearer abc.def", "sent bearer ***"),
    ('{"token": "23a7711a8133287637ebdcd9", "tokenHash": "9f86d0", "tokens": {}}',
     '{"token": "***", "tokenHash": "9f86d0", "tokens": {}}'),
    ("{'resumeToken': 'abc', 'name': 'GM'}", "{'resumeToken': '***', 'name': 'GM'}"),
])
def test_redact_masks_secrets(text: str, shown: str) -> None:
    assert logs.redact(text) == shown
    assert logs.redact(shown) == shown


@pytest.mark.parametrize("text", [
    "listening on 0.0.0.0:5000",
    "GET http://127.0.0.1:5000/health?verbose=1",
    "token/move by 36f675cc tokenId=36f675cc",
    "room ABCD: host 1b2c promoted after 3d4e left",
    "rooms are stored in PostgreSQL (dbname=app, host=db, user=admin)",
    "store outage ended after 2.5s",
])
def test_redact_leaves_ordinary_lines_alone(text: str) -> None:
    assert logs.redact(text) == text


def captured(fmt: str = "json") -> tuple[io.StringIO, logging.Logger, Captured]:
    """A configured logger, and a handler seeing records after the redaction filter."""
    stream, log = configured(fmt)
    assert logging.getLogger().handlers[-1].get_name() == logs.HANDLER_NAME
    seen = Captured()  # added after it: records reach it already redacted
    logging.getLogger().addHandler(seen)
    return stream, log, seen


def test_filter_redacts_arguments_and_keeps_the_template() -> None:
    stream, log, seen = captured()
    log.info("database %s unreachable (%s)", "postgresql://app:hunter2@db/app", 3)
    [line] = json_lines(stream)
    assert line["message"] == "database postgresql://app:***@db/app unreachable (3)"
    [record] = seen.records
    assert record.msg == "database %s unreachable (%s)"
    assert record.args == ("postgresql://app:***@db/app", 3)


def test_filter_redacts_arguments_given_by_name() -> None:
    stream, log, seen = captured()
    log.info("connect %(url)s", {"url": "postgresql://app:hunter2@db/app"})
    assert json_lines(stream)[0]["message"] == "connect postgresql://app:***@db/app"
    assert seen.records[0].args == {"url": "postgresql://app:***@db/app"}


def test_filter_redacts_objects_whose_text_shows_a_secret() -> None:
    stream, log, _ = captured()
    log.error("store refused: %s", OSError("bad URL postgresql://app:hunter2@db/app"))
    assert json_lines(stream)[0]["message"] == (
        "store refused: bad URL postgresql://app:***@db/app")


def test_filter_redacts_a_secret_spanning_the_template_and_an_argument() -> None:
    stream, log, seen = captured()
    log.info("got Authorization: Bearer %s", "eyJhbGciOi.eyJzdWIi")
    assert json_lines(stream)[0]["message"] == "got Authorization: Bearer ***"
    assert seen.records[0].args == ()
    log.info("reconnect=%s&token=%s", "ABCD", "c2VjcmV0")
    assert json_lines(stream)[1]["message"] == "reconnect=ABCD&token=***"


def test_filter_redacts_tracebacks_and_extra_fields() -> None:
    stream, log, _ = captured()
    try:
        fail(ConnectionError("could not reach postgresql://app:hunter2@db/app"))
    except ConnectionError:
        log.exception("outage", extra={"url": "postgresql://app:hunter2@db/app",
                                       "headers": {"Authorization": "Bearer abc"},
                                       "query": ["token=c2VjcmV0"]})
    text = stream.getvalue()
    assert "hunter2" not in text
    assert "c2VjcmV0" not in text
    [line] = json_lines(stream)
    assert "postgresql://app:***@db/app" in line["exc"]
    assert line["url"] == "postgresql://app:***@db/app"
    assert line["headers"] == {"Authorization": "Bearer ***"}
    assert line["query"] == ["token=***"]


def test_filter_redacts_human_lines_and_other_loggers_too() -> None:
    stream, _, _ = captured("human")
    logging.getLogger("psycopg.pool").warning("error connecting in %r: %s", "pool",
                                              "password=hunter2 host=db")
    assert "hunter2" not in stream.getvalue()
    assert stream.getvalue().rstrip("\n").endswith(
        "WARNING psycopg.pool: error connecting in 'pool': password=*** host=db")


def test_filter_leaves_records_without_secrets_untouched() -> None:
    _, log, seen = captured()
    arg = ["ABCD", 3]
    log.info("state %s", arg)
    [record] = seen.records
    assert record.msg == "state %s"
    assert isinstance(record.args, tuple)
    assert record.args[0] is arg


def test_filter_redacts_the_arguments_of_a_call_that_cannot_be_formatted() -> None:
    record = logging.LogRecord("nexus_actors.x", logging.INFO, __file__, 1,
                               "%d tries to postgresql://u:pw@db", ("token=c2VjcmV0",), None)
    assert logs.RedactSecrets().filter(record)
    assert record.msg == "%d tries to postgresql://u:***@db"
    assert record.args == ("token=***",)
