"""How a batch of writes becomes durable: the engines behind `GroupCommitter`.

A running node uses one of two for its LMDB store, chosen by `[node] commit_engine`:

- `CommitThreadEngine` ("thread"): one long-lived thread in the node's process owns every write
  transaction. A commit hands it the ops through a queue and the trio task sleeps until the thread
  reports back through the trio token; nothing is encoded or sent through the kernel on the way,
  and LMDB takes the ops' bytes as they are.
- `WriterProcessEngine` ("process"): a child process fed over a pipe (`dynd.storage.writer`), whose
  disk waits and B-tree work never contend with the event loop for the GIL, at the price of
  encoding each batch, two pipe trips per commit and a second process's CPU.

Both acknowledge a batch only once its LMDB transaction has committed with sync on (so it is on
disk), apply a batch all or nothing, report a full map or a disk error as the DynError the store
raised, and finish the batch in flight before they stop.
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import sys
import threading
from typing import Any

import outcome
import trio

from dynd.protocol.errors import DynError, Internal, error_from_code
from dynd.protocol.framing import FrameDecoder
from dynd.storage.base import Store, WriteOp
from dynd.storage.writer import decode_outcome, encode_batch

log = logging.getLogger("dynd.committer")

OUTCOME_FRAME_BYTES_MAX = 64 * 1024
READ_CHUNK_BYTES = 64 * 1024


class ThreadEngine:
    """Writes on a worker thread: for the in-memory store and tests."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def commit(self, ops: list[WriteOp]) -> None:
        await trio.to_thread.run_sync(self.store.write, ops)

    async def aclose(self) -> None:
        pass


class CommitThreadEngine:
    """Writes on one long-lived thread of the node's process (see the module docstring).

    One batch is in flight at a time (the committer awaits each commit). `commit` parks the calling
    task without a trio Event or `to_thread` machinery: the thread reschedules it through the trio
    token with the batch's outcome. The task cannot be cancelled out of a commit it started, since
    the transaction goes on regardless; it always learns how the batch ended.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._requests: _Requests = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        """Start the thread and check the store takes a (empty) transaction."""
        await self.commit([])

    def _ensure_thread(self) -> None:
        if self._thread is None:
            # Each thread has a queue of its own, so a thread started after `aclose` never takes
            # the stop meant for the one before it. A daemon thread: should the node exit without
            # `aclose`, the interpreter must not wait on it forever (whatever it had not committed
            # was never acknowledged).
            self._requests = queue.SimpleQueue()
            args = (self._requests, trio.lowlevel.current_trio_token())
            self._thread = threading.Thread(target=self._serve, args=args, name="dynd-commit", daemon=True)
            self._thread.start()

    async def commit(self, ops: list[WriteOp]) -> None:
        self._ensure_thread()
        self._requests.put((ops, trio.lowlevel.current_task()))
        await trio.lowlevel.wait_task_rescheduled(_cannot_abort)  # raises what the thread's outcome holds

    def _serve(self, requests: _Requests, token: trio.lowlevel.TrioToken) -> None:
        while True:
            request = requests.get()
            if request is None:
                return
            ops, task = request
            result: outcome.Outcome[Any]
            try:
                self.store.write(ops)
                result = outcome.Value(None)
            except DynError as exc:
                result = outcome.Error(exc)
            except BaseException as exc:  # a storage bug must not strand the waiting task
                log.exception("the commit thread failed on a batch of %d writes", len(ops))
                result = outcome.Error(Internal(f"commit failed: {exc!r}"))
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:
                return  # the event loop is gone; so is everyone who waited for this batch

    async def aclose(self) -> None:
        """Stop the thread once the batch in flight (if any) has committed."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._requests.put(None)
        await trio.to_thread.run_sync(thread.join)


_Requests = queue.SimpleQueue[tuple[list[WriteOp], trio.lowlevel.Task] | None]  # None: stop


def _cannot_abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


class WriterProcessEngine:
    """Writes through a child process running `python -m dynd.storage.writer` (see its docstring).

    One batch is in flight at a time: group commit gathers the next while this one commits. If the
    child dies, the batch in flight fails as indeterminate and the next commit starts a new child.
    """

    def __init__(self, lmdb_path: str, map_bytes: int) -> None:
        self._argv = [sys.executable, "-m", "dynd.storage.writer", lmdb_path, str(map_bytes)]
        self._process: trio.Process | None = None
        self._decoder = FrameDecoder(OUTCOME_FRAME_BYTES_MAX)

    async def start(self) -> None:
        """Start the child and check it can open the environment (an empty batch round trip)."""
        await self.commit([])

    async def _ensure_process(self) -> trio.Process:
        if self._process is None or self._process.returncode is not None:
            self._process = await trio.lowlevel.open_process(self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            self._decoder = FrameDecoder(OUTCOME_FRAME_BYTES_MAX)
            log.info("started writer process %d", self._process.pid)
        return self._process

    async def commit(self, ops: list[WriteOp]) -> None:
        process = await self._ensure_process()
        stdin, stdout = process.stdin, process.stdout
        assert isinstance(stdin, trio.lowlevel.FdStream) and isinstance(stdout, trio.lowlevel.FdStream)
        try:
            await self._send(stdin, encode_batch(ops))
            frames = await self._receive(stdout.fileno())
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            await self._reap()
            raise Internal(f"the writer process is gone ({exc}); the batch may or may not be durable") from None
        except Internal:
            await self._reap()
            raise
        outcome = decode_outcome(frames[0])
        if outcome is not None:
            raise error_from_code(*outcome)

    # The pipe ends are non-blocking. A batch usually fits the pipe at once, and the outcome is one
    # small frame, so plain os.write and os.read do the work; the trio streams' own send and
    # receive would add a pass through the scheduler each, on every commit.

    @staticmethod
    async def _send(stdin: trio.lowlevel.FdStream, data: bytes) -> None:
        try:
            sent = os.write(stdin.fileno(), data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            await stdin.send_all(memoryview(data)[sent:])

    async def _receive(self, fd: int) -> list[bytes]:
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                chunk = os.read(fd, READ_CHUNK_BYTES)
            except BlockingIOError:
                continue
            if not chunk:
                raise Internal("the writer process exited mid-commit; the batch may or may not be durable")
            frames = self._decoder.feed(chunk)
            if frames:
                return frames

    async def _reap(self) -> None:
        if self._process is not None:
            with trio.move_on_after(5):
                await self._process.wait()
            if self._process.returncode is None:
                self._process.kill()
                await self._process.wait()
            log.error("writer process %d exited with %s", self._process.pid, self._process.returncode)
            self._process = None

    async def aclose(self) -> None:
        """Close the child's input; it exits once its last batch is done."""
        process = self._process
        if process is None:
            return
        self._process = None
        if process.stdin is not None:
            await process.stdin.aclose()
        with trio.move_on_after(30):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


