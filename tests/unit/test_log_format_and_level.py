"""The daemon's log formats and its runtime log level (`dynd.shell.logs`), in this process.

The formatter is fed real LogRecords through a real logger; the level is changed through the
`log_level` request as the server hands it over, and the server's role check is exercised with
the same in-process `Server` and socketpair connections as tests/unit/test_hello.py.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
from collections.abc import Iterator
from typing import Any

import pytest

from dynd.core.limits import Limits
from dynd.protocol import auth, messages
from dynd.shell import logs
from dynd.shell.server import Server
from tests.unit.test_hello import ADMIN_TOKEN, CLIENT_TOKEN, FakeNode, hello, remote_connection, security

RFC3339_UTC_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
KEYS = {"time", "level", "node", "logger", "event", "fields"}


@pytest.fixture
def root_logging() -> Iterator[None]:
    """`configure_logging` and `set_level` change the process's root logger: give pytest's back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def json_logger(stream: io.StringIO, node: str = "n7") -> logging.Logger:
    """A logger of its own writing JSON lines to `stream` (not the root: pytest's capture stays)."""
    logger = logging.getLogger(f"tests.logs.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter(node))
    logger.handlers[:] = [handler]
    return logger


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


# ---- the JSON formatter ----


def test_a_plain_message_is_the_event_with_its_arguments_formatted() -> None:
    stream = io.StringIO()
    json_logger(stream).info("node %s serving on %s", "n7", "127.0.0.1:7400")
    (line,) = lines(stream)
    assert set(line) == KEYS
    assert line["level"] == "INFO" and line["node"] == "n7"
    assert line["event"] == "node n7 serving on 127.0.0.1:7400"
    assert line["fields"] == {}
    assert RFC3339_UTC_MS.match(line["time"]), line["time"]


def test_a_named_event_keeps_the_message_among_its_fields() -> None:
    stream = io.StringIO()
    logger = json_logger(stream)
    logger.warning(
        "slow %s: %d ms", "get", 812, extra={"event": "slow_request", "fields": {"op": "get", "ms": 812, "asked": ["n1", "n2"]}, "peer": "n3"}
    )
    (line,) = lines(stream)
    assert line["event"] == "slow_request"
    assert line["fields"] == {"op": "get", "ms": 812, "asked": ["n1", "n2"], "peer": "n3", "message": "slow get: 812 ms"}


def test_an_exception_is_an_error_string_with_its_traceback_on_one_line() -> None:
    stream = io.StringIO()
    try:
        raise RuntimeError("disk on fire")
    except RuntimeError:
        json_logger(stream).exception("tick failed")
    assert stream.getvalue().count("\n") == 1  # the traceback's newlines are escaped inside the JSON
    (line,) = lines(stream)
    assert line["event"] == "tick failed" and line["level"] == "ERROR"
    assert line["error"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: disk on fire" in line["error"]


def test_values_json_cannot_hold_are_written_as_text() -> None:
    stream = io.StringIO()
    logger = json_logger(stream)
    logger.info("odd values", extra={"fields": {"key": b"\x00k", "ratio": math.nan, "who": {"n1"}}})
    logger.info("multi\nline message with \"quotes\"")
    first, second = lines(stream)
    assert first["fields"] == {"key": repr(b"\x00k"), "ratio": "nan", "who": "{'n1'}"}
    assert second["event"] == 'multi\nline message with "quotes"'


def test_the_time_is_utc_with_milliseconds() -> None:
    assert logs.rfc3339_utc_ms(0.0) == "1970-01-01T00:00:00.000Z"
    assert logs.rfc3339_utc_ms(1_796_475_666.1239) == "2026-12-05T13:01:06.123Z"


# ---- configuring the process ----


def test_text_stays_as_it_was(root_logging: None) -> None:
    stream = io.StringIO()
    logs.configure_logging("info", "text", "n7", stream)
    logging.getLogger("dynd.test").info("hello %s", "there", extra={"fields": {"x": 1}})
    logging.getLogger("dynd.test").debug("not shown at info")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO dynd\.test: hello there\n", stream.getvalue()), stream.getvalue()


def test_json_replaces_the_handlers_and_takes_in_python_warnings(root_logging: None) -> None:
    stream = io.StringIO()
    logs.configure_logging("warning", "json", "n7", io.StringIO())
    logs.configure_logging("DEBUG", "json", "n7", stream)  # a second call does not double the lines
    logging.getLogger("dynd.test").debug("one")
    import warnings

    warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
    first, second = lines(stream)
    assert first["event"] == "one" and first["level"] == "DEBUG"
    assert second["logger"] == "py.warnings" and "deprecated thing" in second["event"]


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log_format must be one of text, json"):
        logs.configure_logging("info", "xml", "n7", io.StringIO())


# ---- the level at runtime ----


def ask(level: str) -> Any:
    replies: list[Any] = []
    logs.handle_log_level_set(messages.LogLevelSet(id=5, level=level), replies.append)
    (reply,) = replies
    return reply


def test_the_level_changes_in_any_case_and_the_reply_names_the_one_before(root_logging: None) -> None:
    stream = io.StringIO()
    logs.configure_logging("info", "json", "n7", stream)
    assert ask("debug") == messages.LogLevelOk(id=5, level="DEBUG", previous="INFO")
    assert logging.getLogger("dynd.anything").isEnabledFor(logging.DEBUG)
    assert ask("Warning") == messages.LogLevelOk(id=5, level="WARNING", previous="DEBUG")
    assert not logging.getLogger("dynd.anything").isEnabledFor(logging.INFO)
    # Both changes are in the log, the second said while DEBUG was still in force.
    changes = [line["fields"] for line in lines(stream) if line["event"] == "log_level_set"]
    assert [(c["level"], c["previous"]) for c in changes] == [("DEBUG", "INFO"), ("WARNING", "DEBUG")]


@pytest.mark.parametrize("level", ["LOUD", "", "critical", "10", "debug "])
def test_an_unknown_level_is_a_bad_request_and_changes_nothing(root_logging: None, level: str) -> None:
    logs.configure_logging("info", "text", "n7", io.StringIO())
    reply = ask(level)
    if level == "debug ":  # surrounding blanks are forgiven, as a shell script might leave them
        assert reply == messages.LogLevelOk(id=5, level="DEBUG", previous="INFO")
        return
    assert isinstance(reply, messages.ErrorReply) and reply.code == "bad_request" and reply.id == 5
    assert "DEBUG, INFO, WARNING, ERROR" in reply.message
    assert logs.current_level() == "INFO"


# ---- through the server: the shell answers, and only an admin may ask ----


async def test_the_server_hands_log_level_to_the_shell_and_only_for_an_admin(root_logging: None) -> None:
    logs.configure_logging("info", "text", "n7", io.StringIO())
    node = FakeNode()
    asked: list[Any] = []

    def shell_log_level(request: Any, reply: Any) -> None:
        asked.append(request)
        logs.handle_log_level_set(request, reply)

    tokens = f"admin {ADMIN_TOKEN}\nclient {CLIENT_TOKEN}\n"
    server = Server(node, Limits(), security(tokens=tokens), shell_handlers={messages.LogLevelSet: shell_log_level})  # type: ignore[arg-type]
    async with remote_connection(server) as conn:
        await conn.send(hello(token=CLIENT_TOKEN))
        assert (await conn.receive()).roles == [auth.CLIENT]
        await conn.send(messages.LogLevelSet(id=1, level="DEBUG"))
        refused = await conn.receive()
        assert isinstance(refused, messages.ErrorReply) and refused.code == "unauthorized", refused
        assert "log_level needs an admin token" in refused.message
    assert asked == [] and logs.current_level() == "INFO"
    async with remote_connection(server) as conn:
        await conn.send(hello(token=ADMIN_TOKEN))
        await conn.receive()
        await conn.send(messages.LogLevelSet(id=2, level="DEBUG"))
        assert await conn.receive() == messages.LogLevelOk(id=2, level="DEBUG", previous="INFO")
        await conn.send(messages.Get(id=3, key=b"k"))  # everything else still goes to the node
        assert isinstance(await conn.receive(), messages.Pong)
    assert [type(m) for m in asked] == [messages.LogLevelSet]
    assert [type(m) for m in node.handled] == [messages.Get]
