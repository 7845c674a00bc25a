"""The one object through which dynctl writes anything.

Rules, so scripts can trust stdout:
- Data goes to stdout: raw value bytes, context tokens, one JSON document per command with --json,
  and tables only when stdout is a terminal (a human asked for them).
- Everything else (notes, warnings, errors, progress) goes to stderr, whatever --json says.
- Expected failures call `abort(message, exit_code)`; the exit codes are the `ExitCode` table, which
  the --help epilog and the man page repeat.

rich is imported only when something needs it (a table, a progress bar, a diagnostic on a
terminal, where it adds colour): `dynctl get` in a script never loads it.
"""

from __future__ import annotations

import contextlib
import enum
import os
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table


class ExitCode(enum.IntEnum):
    OK = 0
    NOT_FOUND = 1
    USAGE = 2
    UNREACHABLE = 3  # also: the node is not a member any more (not_a_member): ask another
    REFUSED = 4
    SIBLINGS = 5
    UNAUTHORIZED = 6
    UNHEALTHY = 7  # `dynctl health`: at least one check failed (each on its own line)
    # 128 + SIGPIPE, what a shell reports when a reader such as `head` closes the pipe early.
    BROKEN_PIPE = 141


# "\b" keeps click from rewrapping the table into one paragraph.
EXIT_CODES_HELP = """\b
Exit status:
  0  success
  1  not found (the key has no live value)
  2  usage error (bad option, argument or context token; nothing was sent)
  3  node unreachable: nothing accepts connections at --node, what answers
     is not a dynd node, no reply came within --timeout, or the node left
     the cluster
  4  refused by the node (its error code and message go to stderr)
  5  siblings: the key has concurrent values; resolve them with get --context, then put
  6  unauthorized: the node wants a token (--token-file) or a connection from its own host
  7  unhealthy: `health` found a failed check (one line each)
"""


class Output:
    """Writes data to stdout and diagnostics to stderr; `json_mode` selects machine output."""

    def __init__(self, *, json_mode: bool = False) -> None:
        self.json_mode = json_mode
        self._consoles: dict[str, Console] = {}

    def _console(self, stream: str) -> Console:
        console = self._consoles.get(stream)
        if console is None:
            from rich.console import Console

            if stream == "stderr":
                console = Console(stderr=True, highlight=False, soft_wrap=True)
            else:
                console = Console(highlight=False)
            self._consoles[stream] = console
        return console

    # ---- where we are writing ----

    @property
    def stdout_is_terminal(self) -> bool:
        return sys.stdout.isatty()

    @property
    def stderr_is_terminal(self) -> bool:
        return sys.stderr.isatty()

    # ---- data (stdout) ----

    def write_bytes(self, data: bytes) -> None:
        """Raw bytes exactly as given: no newline, no encoding."""
        with self._stdout_guard():
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()

    def write_line(self, text: str) -> None:
        """One line of plain text (tokens, for example) without rich markup or wrapping."""
        with self._stdout_guard():
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def write_json(self, document: Mapping[str, Any]) -> None:
        """One JSON document on one line, so `jq` and line-oriented tools both read it."""
        import json

        self.write_line(json.dumps(document, ensure_ascii=False, separators=(",", ":")))

    def write_table(self, table: Table) -> None:
        with self._stdout_guard():
            self._console("stdout").print(table)

    # ---- diagnostics (stderr) ----

    def note(self, message: str) -> None:
        self._diagnostic("", "", message)

    def warn(self, message: str) -> None:
        self._diagnostic("warning: ", "bold yellow", message)

    def error(self, message: str) -> None:
        self._diagnostic("error: ", "bold red", message)

    def _diagnostic(self, label: str, style: str, message: str) -> None:
        if not self.stderr_is_terminal:  # no colour to add: the same line rich would write, without rich
            sys.stderr.write(f"{label}{message}\n")
            sys.stderr.flush()
            return
        from rich.text import Text

        self._console("stderr").print(Text.assemble((label, style), message))

    def abort(self, message: str, exit_code: ExitCode, *, hint: str | None = None) -> NoReturn:
        """Report an expected failure (and what to do about it) on stderr and leave with `exit_code`."""
        self.error(message)
        if hint:
            self.note(hint)
        raise typer.Exit(int(exit_code))

    def progress(self) -> contextlib.AbstractContextManager[Progress | None]:
        """A progress bar on stderr when a person is watching it, else None (so logs stay clean)."""
        if not self.stderr_is_terminal:
            return contextlib.nullcontext()
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeRemainingColumn(),
            console=self._console("stderr"),
            transient=True,
        )

    # ---- internals ----

    @contextlib.contextmanager
    def _stdout_guard(self) -> Iterator[None]:
        try:
            yield
        except BrokenPipeError:
            # The reader went away (`dynctl get k | head -c 10`): stop quietly, and point stdout at
            # /dev/null so the interpreter's final flush does not raise a second time.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(int(ExitCode.BROKEN_PIPE)) from None
