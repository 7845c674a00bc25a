"""The daemon's logs: text or JSON lines on stderr, and the level changed while it runs.

`log_format = "text"` (the default) writes what dynd always wrote:

    2026-12-05 13:01:06,123 INFO dynd: node n1 serving on 127.0.0.1:7400 (...)

`log_format = "json"` writes one JSON object per line, for a log shipper to parse:

    {"time": "2026-12-05T13:01:06.123Z", "level": "INFO", "node": "n1", "logger": "dynd",
     "event": "node n1 serving on 127.0.0.1:7400 (...)", "fields": {}}

- `time`: RFC 3339, UTC, milliseconds. `level`: DEBUG, INFO, WARNING, ERROR or CRITICAL.
  `node`: this node's name. `logger`: the module's logger (`dynd.server`, ...).
- `event`: the message with its arguments formatted; or, where the call site names a stable event
  (`extra={"event": "slow_request"}`), that name, and the formatted message moves to
  `fields["message"]` so nothing is lost.
- `fields`: the call site's structured facts: a `fields` dict in `extra`
  (`log.warning("slow get ...", ..., extra={"event": "slow_request", "fields": {"op": "get", ...}})`),
  together with any other name passed in `extra`. Values that JSON cannot hold are written as text.
  The message must still say everything a person needs: text logs show it and not the fields.
- `error`: only when the record carries an exception (`log.exception`): its traceback as one string.

Python warnings are routed into the log in JSON mode, so every line of stderr parses.

The level: `configure_logging` sets it at start (`log_level`); a `log_level` request from an admin
(`dynctl log-level DEBUG`) changes it through `handle_log_level_set`, which the server consults
before the node (`Server(shell_handlers=...)`): the level is the process's state, not the node's.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from dynd.protocol import messages
from dynd.protocol.errors import BadRequest
from dynd.protocol.messages import error_reply

TEXT = "text"
JSON = "json"
LOG_FORMATS = (TEXT, JSON)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The levels an operator may choose, at start or at runtime (the protocol's LogLevelSet names them so).
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

log = logging.getLogger("dynd.logs")

# Attributes every LogRecord has; whatever else a record carries came from the call site's `extra`.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
_EVENT = "event"
_FIELDS = "fields"


def rfc3339_utc_ms(created: float) -> str:
    """`created` (seconds since the epoch) as 2026-12-05T13:01:06.123Z."""
    whole = int(created)
    millis = int((created - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (JSON escapes the newlines of a traceback)."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        fields = record_fields(record)
        event = getattr(record, _EVENT, None)
        if isinstance(event, str) and event:
            fields.setdefault("message", message)
        else:
            event = message
        document: dict[str, Any] = {
            "time": rfc3339_utc_ms(record.created),
            "level": record.levelname,
            "node": self.node,
            "logger": record.name,
            "event": event,
            "fields": fields,
        }
        error = self.error_text(record)
        if error:
            document["error"] = error
        try:
            return json.dumps(document, default=str, allow_nan=False, ensure_ascii=False)
        except ValueError:  # a NaN or infinity among the fields, or a circular value: written as text
            document["fields"] = {name: repr(value) for name, value in fields.items()}
            return json.dumps(document, default=str, ensure_ascii=False)

    def error_text(self, record: logging.LogRecord) -> str:
        parts = []
        if record.exc_info:
            parts.append(self.formatException(record.exc_info))
        elif record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(self.formatStack(record.stack_info))
        return "\n".join(parts)


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The call site's facts: its `fields` dict, then any other name it passed in `extra`."""
    given = getattr(record, _FIELDS, None)
    fields: dict[str, Any] = {str(name): value for name, value in given.items()} if isinstance(given, dict) else {}
    for name, value in record.__dict__.items():
        if name not in _RECORD_ATTRIBUTES and name not in (_EVENT, _FIELDS):
            fields.setdefault(name, value)
    return fields


def configure_logging(level: str, log_format: str, node: str, stream: TextIO | None = None) -> logging.Handler:
    """Send every log record to `stream` (stderr) in `log_format`, at `level` (a name, any case).
    Replaces handlers set before, so a second call does not double every line. Returns the handler."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(node) if log_format == JSON else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(parse_level(level))
    # A Python warning printed as is would be the one line of stderr a JSON reader cannot parse.
    logging.captureWarnings(log_format == JSON)
    return handler


def parse_level(name: str) -> int:
    """The logging level called `name` (any case); ValueError naming the choices otherwise."""
    upper = name.strip().upper()
    if upper not in LEVELS:
        raise ValueError(f"unknown log level {name!r}: choose one of {', '.join(LEVELS)}")
    return logging.getLevelName(upper)  # type: ignore[no-any-return]


def current_level() -> str:
    return logging.getLevelName(logging.getLogger().getEffectiveLevel())


def set_level(name: str) -> tuple[str, str]:
    """Set the process's log level; return (the new level, the one before). An unknown name
    raises ValueError and changes nothing.

    The change is itself logged (at INFO, through whichever of the two levels shows more, so an
    operator who turns logs up or down sees who did what in the log it leaves)."""
    level = parse_level(name)
    root = logging.getLogger()
    previous = root.getEffectiveLevel()
    new_name, previous_name = logging.getLevelName(level), logging.getLevelName(previous)
    announce = functools.partial(
        log.info, "log level set to %s (was %s)", new_name, previous_name, extra={_EVENT: "log_level_set", _FIELDS: {"level": new_name, "previous": previous_name}}
    )
    if level >= previous:  # becoming quieter: say so while the more verbose level is still in force
        announce()
        root.setLevel(level)
    else:
        root.setLevel(level)
        announce()
    return new_name, previous_name


def handle_log_level_set(request: messages.LogLevelSet, reply: Callable[[Any], None]) -> None:
    """The `log_level` request (admin role, checked by the server before this is called)."""
    try:
        level, previous = set_level(request.level)
    except ValueError as exc:
        reply(error_reply(request.id, BadRequest(str(exc))))
        return
    reply(messages.LogLevelOk(id=request.id, level=level, previous=previous))


SHELL_HANDLERS: dict[type, Callable[[Any, Callable[[Any], None]], None]] = {messages.LogLevelSet: handle_log_level_set}
