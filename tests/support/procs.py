"""Real `dynd` processes for integration and fault tests, on 127.0.0.1 only.

    node = DyndProcess(tmp_path / "n1", name="n1", config_text="[limits]\\nframe_timeout_ms = 1000\\n")
    node.start()                 # returns once the node answers hello and ping
    ... open_client(node.address) ...
    node.kill9(); node.start()   # or node.restart(): same data dir, same port
    node.stop()                  # SIGTERM, SIGKILL after a deadline; returns the exit code

Readiness is a poll under a deadline (TCP connect, hello, ping through `dynd.client`), never a bare
sleep. The node's stderr is appended to a log file in its directory across restarts, so a failing
test can print it (`stderr_tail()`). Every started process is killed at interpreter exit if a test
forgot to stop it.

For other servers (the benchmark echo server, say), `wait_for_port(address, deadline_s, proc=...)`
polls for a TCP accept under a deadline and `stop_process(proc)` stops one as `DyndProcess.stop` does.
"""

from __future__ import annotations

import atexit
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import trio

from dynd.client import open_client
from dynd.protocol.address import format_address, parse_address

LOOPBACK = "127.0.0.1"
WILDCARD_HOSTS = ("0.0.0.0", "::")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 1.0
PROBE_INTERVAL_S = 0.02
BIND_ATTEMPTS = 3

_live: dict[int, subprocess.Popen[bytes]] = {}


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live.values()):
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def free_port() -> int:
    """A loopback port that was free a moment ago (the kernel picks it; a race is possible but rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def dynd_command(*args: str) -> list[str]:
    """The argv that runs `dynd`: the test interpreter's `-m dynd`, or $DYND_COMMAND when set
    (shell words, for running the suite against another build)."""
    override = os.environ.get("DYND_COMMAND")
    base = shlex.split(override) if override else [sys.executable, "-m", "dynd"]
    return [*base, *args]


def run_dynd(*args: str, timeout_s: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run `dynd` with `args` to completion (for commands expected to exit, such as config errors)."""
    return subprocess.run(dynd_command(*args), capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)


def probe(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """Connect, hello and ping through `dynd.client`; return the node's name or raise what failed.

    Runs trio in a private thread, so it works from plain tests and from inside a trio test alike.
    """
    outcome: list[object] = []

    async def ask() -> str:
        async with open_client(address, timeout_s=timeout_s, agent="tests.support.probe") as client:
            return await client.ping(timeout_s=timeout_s)

    def run() -> None:
        try:
            outcome.append(trio.run(ask))
        except BaseException as exc:  # noqa: BLE001  (handed back to the calling thread)
            outcome.append(exc)

    thread = threading.Thread(target=run, name="dynd-probe", daemon=True)
    thread.start()
    thread.join()
    (result,) = outcome
    if isinstance(result, BaseException):
        raise result
    assert isinstance(result, str)
    return result


class NotReady(AssertionError):
    """Nothing accepted connections at an address in time, or the process meant to listen there exited."""


def wait_for_port(address: str, deadline_s: float = START_TIMEOUT_S, *, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll until something accepts a TCP connection at `address` ("host:port"); raise NotReady after
    `deadline_s` seconds, or as soon as `proc` (the process expected to listen there, if given) exits."""
    host, port = parse_address(address)
    deadline = time.monotonic() + deadline_s
    last_error: OSError | None = None
    while True:
        if proc is not None and (code := proc.poll()) is not None:
            raise NotReady(f"process {proc.pid} exited with code {code} before accepting connections on {address}")
        try:
            with socket.create_connection((host, port), timeout=min(PROBE_TIMEOUT_S, max(0.05, deadline - time.monotonic()))):
                return
        except OSError as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            raise NotReady(f"nothing accepting connections on {address} within {deadline_s:g} s (last error: {last_error!r})")
        time.sleep(PROBE_INTERVAL_S)  # poll interval; readiness itself is the connect above


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, wait, SIGKILL (and reap) if it is still running at the deadline; return the exit code.

    Safe to call on an exited process.
    """
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    _live.pop(proc.pid, None)
    return proc.returncode


class DyndError(AssertionError):
    """A dynd process did not start or stop as expected; the message carries its stderr."""


class DyndProcess:
    """One `dynd` node: its directory (data, config, stderr log), port and process.

    `directory` defaults to a fresh temporary directory, removed by `cleanup()`. The port is picked
    once and kept across restarts, as is the data directory.
    """

    def __init__(
        self,
        directory: Path | str | None = None,
        *,
        name: str = "n1",
        config_text: str | None = None,
        port: int | None = None,
        data_dir: Path | str | None = None,
        extra_args: tuple[str, ...] = (),
        host: str = LOOPBACK,
        wrapper: tuple[str, ...] = (),
    ) -> None:
        """`host` and `wrapper` place the node elsewhere than loopback: an address in a network
        namespace, and the command that runs it there (`ip netns exec NS`)."""
        self._owns_directory = directory is None
        self.directory = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix=f"dynd-{name}-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.host = host
        self.wrapper = tuple(wrapper)
        self._port_fixed = port is not None
        self.port = port if port is not None else free_port()
        self.data_dir = Path(data_dir) if data_dir is not None else self.directory / "data"
        self.stderr_path = self.directory / "dynd.stderr.log"
        self.config_path: Path | None = None
        if config_text is not None:
            self.config_path = self.directory / "dynd.toml"
            self.config_path.write_text(config_text)
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # ---- identity ----

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise DyndError(f"dynd {self.name} was never started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def argv(self) -> list[str]:
        args = ["--name", self.name, "--listen", self.address, "--data-dir", str(self.data_dir)]
        if self.host in WILDCARD_HOSTS:  # every address of this host: tell the others the loopback one
            args += ["--advertise", format_address(LOOPBACK, self.port)]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        return [*self.wrapper, *dynd_command(*args, *self.extra_args)]

    # ---- logs ----

    @property
    def stderr(self) -> Path:
        """The log file that collects the node's stderr (and stdout) across restarts."""
        return self.stderr_path

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr_tail(self, lines: int = 40) -> str:
        return "\n".join(self.stderr_text().splitlines()[-lines:])

    def _describe(self, what: str) -> str:
        return f"dynd {self.name} ({self.address}, data {self.data_dir}): {what}\n--- stderr tail ---\n{self.stderr_tail()}"

    # ---- lifecycle ----

    def start(self, timeout_s: float = START_TIMEOUT_S) -> DyndProcess:
        """Start the process and return once it answers hello and ping; raise DyndError otherwise.

        On the first start only, a port taken by someone else between `free_port` and the bind is
        replaced by a fresh one; a restart keeps the port, as a real node would.
        """
        if self.running:
            raise DyndError(self._describe("already running"))
        may_move = self.starts == 0 and not self._port_fixed
        for attempt in range(BIND_ATTEMPTS):
            try:
                return self._start_once(timeout_s)
            except DyndError as exc:
                if not (may_move and "address in use" in str(exc)) or attempt == BIND_ATTEMPTS - 1:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start_once(self, timeout_s: float) -> DyndProcess:
        self.spawn()
        self.wait_ready(timeout_s)
        return self

    def spawn(self) -> None:
        """Start the process and return at once (for a start expected to fail: `wait` for it)."""
        self.starts += 1
        with open(self.stderr_path, "ab") as log:
            log.write(f"=== start {self.starts}: {' '.join(self.argv())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a ^C at the terminal reaches pytest, which stops us cleanly
            )
        _live[self.proc.pid] = self.proc

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """Poll until the node answers hello and ping; return its name."""
        deadline = time.monotonic() + timeout_s
        last_error: BaseException | None = None
        while True:
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                _live.pop(self.proc.pid, None)
                raise DyndError(self._describe(f"exited with code {code} before it was ready"))
            try:
                name = probe(self.address, timeout_s=min(PROBE_TIMEOUT_S, max(0.05, deadline - time.monotonic())))
            except BaseException as exc:  # noqa: BLE001  (not ready yet: keep polling)
                last_error = exc
            else:
                if name != self.name:
                    raise DyndError(self._describe(f"answered as {name!r}: another process holds the port"))
                return name
            if time.monotonic() >= deadline:
                raise DyndError(self._describe(f"not ready within {timeout_s:g} s (last probe: {last_error!r})"))
            time.sleep(PROBE_INTERVAL_S)

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout_s: float) -> int:
        """Wait for the process to exit; return its exit code (negative: killed by that signal)."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise DyndError(self._describe(f"still running {timeout_s:g} s after it was told to stop")) from None
        _live.pop(self.proc.pid, None)
        return code

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait, SIGKILL if it is still running at the deadline; return the exit code.

        Returns None if the process was never started. Safe to call on an exited process.
        """
        if self.proc is None:
            return None
        return stop_process(self.proc, timeout_s)

    def kill9(self) -> int:
        """SIGKILL the process (no chance to flush anything) and reap it; return its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.signal(signal.SIGKILL)
        code = self.proc.wait()
        _live.pop(self.proc.pid, None)
        return code

    def restart(self, timeout_s: float = START_TIMEOUT_S) -> DyndProcess:
        """Stop (SIGTERM) if running, then start again on the same data dir and port."""
        self.stop()
        return self.start(timeout_s)

    def cleanup(self) -> None:
        """Stop the process and, if this object made its directory, remove the directory."""
        self.stop()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> DyndProcess:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        state = f"pid {self.proc.pid}" if self.running and self.proc is not None else "stopped"
        return f"DyndProcess({self.name!r}, {self.address}, {state})"


# The `dynd_factory` fixture (tests/conftest.py): make(name="n1", *, config_text=None, start=True, **kwargs)
DyndFactory = Callable[..., DyndProcess]
