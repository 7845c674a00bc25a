"""The supervisor of one host's workers (`dynd --workers K`, K > 1): one process, one systemd unit.

It starts K node processes (`dynd ... --worker-index i`, each its own member: `dynd.workers`) and:
- tells the service manager `READY=1` once every worker serves (each says so over its end of a
  socket pair, `dynd.shell.readiness`), and STATUS= lines as workers come and go;
- restarts a worker that dies, after a backoff, logging how it died (`dynd.shell.worker_restarts`);
  a worker that exits 2 (a configuration or data directory no restart can fix) or dies too often
  stops the whole host, and the supervisor exits with that status (2, else 1) so systemd does what
  its unit says for a node that cannot start;
- forwards SIGHUP (reread the credentials) to every worker; on SIGTERM or SIGINT stops every worker
  with SIGTERM, waits up to worker_stop_timeout_ms, kills what is left, and exits 0 when every
  worker stopped cleanly, else 1.

Workers run in process groups of their own, so a ^C at a terminal reaches the supervisor alone and
each worker is told once. A worker whose supervisor dies (even by SIGKILL) sees its end of the
socket pair close and stops cleanly; under systemd, KillMode=mixed sends the stop signal to the
supervisor alone and kills whatever is left of the unit after TimeoutStopSec.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import trio

from dynd.shell.readiness import READY_BYTE, sd_notify
from dynd.shell.worker_restarts import RestartPolicy

log = logging.getLogger("dynd.supervisor")

EXIT_CONFIG = 2  # a worker exiting so could not start and no retry can help (dynd.cli.EXIT_CONFIG)
EXIT_FAILED = 1


@dataclass(frozen=True)
class SupervisorSettings:
    names: tuple[str, ...]  # worker i's member name, for the logs
    command: Callable[[int, int], list[str]]  # (worker index, its socket's fd) -> argv
    restart_backoff_ms: int
    restart_backoff_max_ms: int
    restarts_max: int
    restart_window_ms: int
    stop_timeout_ms: int


@dataclass
class _Worker:
    index: int
    name: str
    policy: RestartPolicy
    process: trio.Process | None = None
    ready: bool = False
    starts: int = 0


class Supervisor:
    def __init__(self, settings: SupervisorSettings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.environ = dict(os.environ if environ is None else environ)
        self.workers = [
            _Worker(
                index,
                name,
                RestartPolicy(settings.restart_backoff_ms, settings.restart_backoff_max_ms, settings.restarts_max, settings.restart_window_ms),
            )
            for index, name in enumerate(settings.names)
        ]
        self.exit_code = 0
        self.stopping = False
        self.notified_ready = False
        self._stop = trio.Event()
        self._keepers_left = len(self.workers)
        self._keepers_done = trio.Event()
        self._listening = trio.CancelScope()

    # ---- the whole host ----

    async def run(self) -> int:
        """Keep the workers up until SIGTERM or SIGINT (or a worker that cannot be kept up); return
        the exit status."""
        log.info("supervising %d workers: %s", len(self.workers), ", ".join(w.name for w in self.workers))
        async with trio.open_nursery() as keepers:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                for worker in self.workers:
                    keepers.start_soon(self._keep, worker)
                with self._listening:
                    async for signum in signals:
                        if signum == signal.SIGHUP:
                            log.info("received SIGHUP: passing it to every worker")
                            self._signal_all(signal.SIGHUP)
                            continue
                        log.info("received %s: stopping every worker", signal.Signals(signum).name)
                        break
                await self._stop_all()  # still inside the receiver: a second signal must not kill us now
        return self.exit_code

    async def _stop_all(self) -> None:
        self.stopping = True
        self._stop.set()
        sd_notify("STOPPING=1", self.environ)
        self._signal_all(signal.SIGTERM)
        with trio.move_on_after(self.settings.stop_timeout_ms / 1000):
            await self._keepers_done.wait()
        if not self._keepers_done.is_set():
            late = [w for w in self.workers if self._running(w)]
            log.error(
                "%s still running %g s after SIGTERM (worker_stop_timeout_ms): killing them",
                ", ".join(w.name for w in late),
                self.settings.stop_timeout_ms / 1000,
            )
            self._signal_all(signal.SIGKILL)
            self.exit_code = max(self.exit_code, EXIT_FAILED)
            await self._keepers_done.wait()
        log.info("every worker stopped")

    def _give_up(self, code: int) -> None:
        self.exit_code = max(self.exit_code, code)
        self._listening.cancel()

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers:
            if self._running(worker):
                assert worker.process is not None
                worker.process.send_signal(signum)

    @staticmethod
    def _running(worker: _Worker) -> bool:
        return worker.process is not None and worker.process.returncode is None

    def _status(self) -> None:
        serving = [w for w in self.workers if w.ready]
        down = [w.name for w in self.workers if not w.ready]
        status = f"{len(serving)} of {len(self.workers)} workers serving" + (f"; waiting for {', '.join(down)}" if down else "")
        if not down and not self.notified_ready:
            self.notified_ready = True
            log.info("all %d workers serving", len(self.workers))
            sd_notify(f"READY=1\nSTATUS={status}", self.environ)
        else:
            sd_notify(f"STATUS={status}", self.environ)

    # ---- one worker ----

    async def _keep(self, worker: _Worker) -> None:
        try:
            while not self.stopping:
                code = await self._run_once(worker)
                if self.stopping:
                    # A worker still starting has no handler for SIGTERM yet and dies of it: that
                    # is a clean stop too (a start writes nothing until it is complete).
                    if code not in (0, -signal.SIGTERM):
                        log.error("worker %s %s while stopping", worker.name, describe_exit(code))
                        self.exit_code = max(self.exit_code, EXIT_FAILED)
                    return
                how = describe_exit(code)
                if code == EXIT_CONFIG:
                    log.error("worker %s %s: a setting or data directory no restart can fix (its log says which); stopping the host", worker.name, how)
                    self._give_up(EXIT_CONFIG)
                    return
                delay_ms = worker.policy.after_death(int(trio.current_time() * 1000))
                window_s = self.settings.restart_window_ms / 1000
                if delay_ms is None:
                    log.error(
                        "worker %s %s: it died %d times within %g s, more than worker_restarts_max (%d): stopping the host",
                        worker.name, how, worker.policy.recent_deaths, window_s, self.settings.restarts_max,
                    )
                    self._give_up(EXIT_FAILED)
                    return
                log.warning(
                    "worker %s %s; restarting it in %g s (%d of at most %d deaths within %g s)",
                    worker.name, how, delay_ms / 1000, worker.policy.recent_deaths, self.settings.restarts_max, window_s,
                )
                self._status()
                with trio.move_on_after(delay_ms / 1000):
                    await self._stop.wait()
        finally:
            self._keepers_left -= 1
            if self._keepers_left == 0:
                self._keepers_done.set()

    async def _run_once(self, worker: _Worker) -> int:
        """Start the worker and wait for it to exit; return its exit status (negative: the signal
        that killed it; 127: it could not be started at all)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            env = {key: value for key, value in self.environ.items() if key != "NOTIFY_SOCKET"}  # readiness goes through us
            argv = self.settings.command(worker.index, theirs.fileno())
            try:
                worker.process = await trio.lowlevel.open_process(argv, pass_fds=(theirs.fileno(),), env=env, process_group=0)
            except OSError as exc:
                log.error("cannot start worker %s: %s", worker.name, exc)
                return 127
            finally:
                theirs.close()
            worker.starts += 1
            log.info("started worker %s (pid %d%s)", worker.name, worker.process.pid, "" if worker.starts == 1 else f", start {worker.starts}")
            if self.stopping:  # the stop came while it was being started: it missed the SIGTERM
                worker.process.send_signal(signal.SIGTERM)
            async with trio.open_nursery() as watching:
                watching.start_soon(self._watch_readiness, worker, trio.socket.from_stdlib_socket(ours))
                code = await worker.process.wait()
                watching.cancel_scope.cancel()
            worker.ready = False
            return code
        finally:
            ours.close()

    async def _watch_readiness(self, worker: _Worker, sock: trio.socket.SocketType) -> None:
        while True:
            try:
                data = await sock.recv(64)
            except OSError:
                return
            if not data:
                return
            if READY_BYTE in data and not worker.ready:
                worker.ready = True
                if worker.starts > 1:
                    log.info("worker %s serving again", worker.name)
                self._status()


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    if code == 127:
        return "could not be started"
    return f"exited with status {code}"


def run_supervisor(settings: SupervisorSettings) -> int:
    """Supervise until stopped; the exit status for the `dynd` process."""
    return trio.run(Supervisor(settings).run)

