"""The node's side of `dynctl backup`: a consistent copy of its store, streamed to an admin.

    BackupStart        one read snapshot of the LMDB environment is copied (LMDB's compacting
                       copy, in a thread) into data_dir/backup-ID.partial and hashed (SHA-256) as
                       it goes; the reply names the backup at once
    BackupRead(offset) up to backup_chunk_bytes of that file from any offset up to what is copied
                       so far (a lost reply can be asked again); the reader that has caught up waits
                       up to backup_read_wait_ms for more; once done, every reply has size and digest
    BackupEnd          the copy stops if still running, and its file is deleted

A backup ends on BackupEnd, after backup_idle_timeout_ms with no request naming it (its client went
away), when its copy failed (the next read gets the error), or when the node stops. Ending stops
the copy (the pump thread stops reading the pipe, so LMDB's copy gets EPIPE at its next write),
waits for both threads and any read in progress, then deletes the file; only then does the backup
stop counting against backups_max. A node killed mid-backup leaves a file behind, removed at the
next start (`BackupService.run`).

Why a file in between rather than the pipe straight to the client: the LMDB snapshot (a reader slot,
which keeps every page it sees from reuse, so the store grows under writes while it is held) lasts
as long as the local copy takes, not as long as a slow client takes to download; and a read may be
repeated. The cost is free space in the data directory for one compacted copy, checked at the start
against the store's used size (an upper bound of the copy).

Which snapshot: the copy's read transaction starts just after the reply's `taken_ms` is read, so
`taken_ms` is never later than the snapshot; what it holds is every write committed by then (a
write is acknowledged only once committed, so every write acknowledged before `taken_ms`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from dynd.core.limits import Limits
from dynd.protocol import messages
from dynd.protocol.errors import BadRequest, DynError, Internal, Overloaded, ShuttingDown, StorageFull
from dynd.protocol.messages import error_reply
from dynd.storage.lmdb_store import LmdbStore

log = logging.getLogger("dynd.backup")

FILE_PREFIX = "backup-"
FILE_SUFFIX = ".partial"
PIPE_BYTES = 1024 * 1024  # asked of the kernel for the copy's pipe (Linux's default is 64 KiB)
NOTIFY_BYTES = 256 * 1024  # the pump tells the event loop about progress this often, and at the end
ID_BITS = 62

Reply = Callable[[Any], None]


class _Stopped(Exception):
    """The backup ended while its copy was still running."""


@dataclass(eq=False)
class _Backup:
    """One backup in progress. The event loop owns every field but `stop`, which the pump reads."""

    id: int
    path: str
    fd: int  # the copy's file: the pump appends with os.write, reads use os.pread
    taken_ms: int
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    stop: threading.Event = field(default_factory=threading.Event)
    copied: int = 0
    size: int | None = None  # known once the copy is complete
    sha256: bytes | None = None
    error: DynError | None = None
    ended: bool = False
    reads: int = 0  # reads in progress
    end_reason: str = "no request named it within backup_idle_timeout_ms"
    progressed: trio.Event = field(default_factory=trio.Event)  # replaced after each wake-up
    threads_done: trio.Event = field(default_factory=trio.Event)
    nursery: trio.Nursery | None = None  # its reads run here, so ending it waits for them

    def wake_readers(self) -> None:
        self.progressed.set()
        self.progressed = trio.Event()


class BackupService:
    """Answers BackupStart, BackupRead and BackupEnd (`handlers`, for the server's shell handlers);
    `run` in a nursery of the node's that outlives the server and ends before the store closes."""

    def __init__(self, store: LmdbStore, data_dir: str, limits: Limits, *, identity: Callable[[], tuple[str, str]], wall_ms: Callable[[], int]) -> None:
        """`identity`: this node's name and its cluster's id, now. `wall_ms`: the wall clock."""
        self._store = store
        self._data_dir = data_dir
        self._limits = limits
        self._identity = identity
        self._wall_ms = wall_ms
        self._backups: dict[int, _Backup] = {}
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self.handlers: dict[type, Callable[[Any, Reply], None]] = {
            messages.BackupStart: self.start,
            messages.BackupRead: self.read,
            messages.BackupEnd: self.end,
        }

    @property
    def in_progress(self) -> int:
        return len(self._backups)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._remove_leftovers()
        self._token = trio.lowlevel.current_trio_token()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    # ---- requests ----

    def start(self, request: messages.BackupStart, reply: Reply) -> None:
        if self._nursery is None:
            reply(error_reply(request.id, ShuttingDown("the node is stopping")))
            return
        limits = self._limits
        if len(self._backups) >= limits.backups_max:
            reply(error_reply(request.id, Overloaded(
                f"{len(self._backups)} backup(s) already in progress (backups_max={limits.backups_max}): wait for it to finish, "
                f"or, if its client went away, for backup_idle_timeout_ms={limits.backup_idle_timeout_ms}"
            )))
            return
        stat = self._store.stat()
        estimate = (stat["last_page"] + 1) * stat["page_bytes"]
        try:
            disk = os.statvfs(self._data_dir)
        except OSError as exc:
            reply(error_reply(request.id, Internal(f"cannot check free space in {self._data_dir}: {exc.strerror}")))
            return
        free = disk.f_bavail * disk.f_frsize
        if free < estimate:
            reply(error_reply(request.id, StorageFull(
                f"the backup's copy needs up to {estimate} bytes in {self._data_dir}, which has {free} free"
            )))
            return
        backup_id = self._new_id()
        path = os.path.join(self._data_dir, f"{FILE_PREFIX}{backup_id:016x}{FILE_SUFFIX}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            reply(error_reply(request.id, Internal(f"cannot create {path}: {exc.strerror}")))
            return
        backup = _Backup(backup_id, path, fd, taken_ms=self._wall_ms())
        self._backups[backup_id] = backup
        self._touch(backup)
        node, cluster = self._identity()
        log.info("backup %016x started: a copy of up to %d bytes into %s", backup_id, estimate, path)
        started = messages.BackupStartOk(
            id=request.id,
            backup=backup_id,
            node=node,
            cluster=cluster,
            taken_ms=backup.taken_ms,
            estimate_bytes=estimate,
            chunk_bytes=limits.backup_chunk_bytes,
            idle_timeout_ms=limits.backup_idle_timeout_ms,
            read_wait_ms=limits.backup_read_wait_ms,
        )
        self._nursery.start_soon(self._begin, backup, started, reply)

    async def _begin(self, backup: _Backup, started: messages.BackupStartOk, reply: Reply) -> None:
        """Answer only once the backup's task runs, so the first read finds the backup in place."""
        assert self._nursery is not None
        try:
            await self._nursery.start(self._run_backup, backup)
        except trio.Cancelled:  # the node is stopping; the backup's task has cleaned up after itself
            reply(error_reply(started.id, ShuttingDown("the node is stopping")))
            raise
        reply(started)

    def read(self, request: messages.BackupRead, reply: Reply) -> None:
        backup = self._live(request.id, request.backup, reply)
        if backup is None:
            return
        assert backup.nursery is not None
        self._touch(backup)
        if backup.reads >= self._limits.backup_reads_inflight_max:
            reply(error_reply(request.id, Overloaded(
                f"{backup.reads} reads of backup {backup.id:x} in progress (backup_reads_inflight_max="
                f"{self._limits.backup_reads_inflight_max}): wait for their replies"
            )))
            return
        backup.reads += 1
        backup.nursery.start_soon(self._serve_read, backup, request, reply)

    def end(self, request: messages.BackupEnd, reply: Reply) -> None:
        backup = self._live(request.id, request.backup, reply)
        if backup is None:
            return
        self._finish(backup, "ended by its client")
        reply(messages.BackupEndOk(id=request.id, backup=request.backup))

    # ---- a backup's life ----

    def _live(self, request_id: int, backup_id: int, reply: Reply) -> _Backup | None:
        """The backup a request names, or None after replying why there is none."""
        backup = self._backups.get(backup_id)
        if backup is None or backup.ended or backup.nursery is None:
            reply(error_reply(request_id, BadRequest(
                f"no backup {backup_id:x} in progress on this node: it was ended, was not read for "
                f"backup_idle_timeout_ms={self._limits.backup_idle_timeout_ms}, or the node restarted; start another"
            )))
            return None
        return backup

    def _touch(self, backup: _Backup) -> None:
        backup.scope.deadline = trio.current_time() + self._limits.backup_idle_timeout_ms / 1000

    def _finish(self, backup: _Backup, reason: str) -> None:
        if not backup.ended:
            backup.end_reason = reason
        backup.scope.cancel()

    async def _run_backup(self, backup: _Backup, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The backup's task: it holds the backup's reads, and cleans up when the backup ends. A
        failure here is the backup's, never the node's: logged, and the backup ends."""
        try:
            with backup.scope:
                async with trio.open_nursery() as nursery:
                    backup.nursery = nursery
                    task_status.started()
                    try:
                        self._start_copy(backup)
                    except Exception as exc:  # no pipe or thread to be had (EMFILE, say)
                        self._copied(backup, 0, b"", exc)
                    await trio.sleep_forever()
        except Exception:
            log.exception("backup %016x failed", backup.id)
        finally:
            backup.ended = True
            backup.nursery = None
            if self._nursery is None or self._nursery.cancel_scope.cancel_called:
                backup.end_reason = "the node is stopping"
            with trio.CancelScope(shield=True):
                backup.stop.set()
                await backup.threads_done.wait()
                try:
                    os.close(backup.fd)
                    os.unlink(backup.path)
                except OSError as exc:
                    log.warning("backup %016x: cannot remove its copy %s: %s", backup.id, backup.path, exc.strerror)
                del self._backups[backup.id]
            log.info("backup %016x over (%s); %d bytes copied, the copy deleted", backup.id, backup.end_reason, backup.copied)

    async def _serve_read(self, backup: _Backup, request: messages.BackupRead, reply: Reply) -> None:
        answered = False

        def answer(message: Any) -> None:
            nonlocal answered
            answered = True
            reply(message)

        try:
            if request.offset == backup.copied and backup.size is None and backup.error is None:
                progressed = backup.progressed
                with trio.move_on_after(self._limits.backup_read_wait_ms / 1000):
                    await progressed.wait()
            if backup.error is not None:
                answer(error_reply(request.id, backup.error))
                self._finish(backup, f"its copy failed: {backup.error.message}")
                return
            if request.offset > backup.copied:
                whole = "the copy's" if backup.size is not None else "what is copied so far,"
                answer(error_reply(request.id, BadRequest(f"offset {request.offset} is beyond {whole} {backup.copied} bytes")))
                return
            length = min(backup.copied - request.offset, self._limits.backup_chunk_bytes)
            data = await trio.to_thread.run_sync(os.pread, backup.fd, length, request.offset) if length else b""
            if len(data) != length:
                raise Internal(f"read {len(data)} of {length} bytes of the backup's copy at {request.offset}")
            answer(messages.BackupChunk(
                id=request.id,
                backup=backup.id,
                offset=request.offset,
                data=data,
                copied_bytes=backup.copied,
                done=backup.size is not None,
                size=backup.size,
                sha256=backup.sha256,
            ))
        except DynError as exc:
            answer(error_reply(request.id, exc))
            self._finish(backup, exc.message)
        except OSError as exc:
            answer(error_reply(request.id, Internal(f"cannot read the backup's copy: {exc.strerror}")))
            self._finish(backup, f"its copy could not be read: {exc.strerror}")
        finally:
            backup.reads -= 1
            if not answered:  # cancelled: the backup ended while this read waited
                reply(error_reply(request.id, BadRequest(f"backup {backup.id:x} ended ({backup.end_reason})")))

    # ---- the copy: two threads, LMDB's copy writing a pipe and a pump hashing it into the file ----

    def _start_copy(self, backup: _Backup) -> None:
        token = self._token
        assert token is not None
        read_fd, write_fd = os.pipe()
        with contextlib.suppress(OSError, AttributeError):  # a bigger pipe: fewer wake-ups; Linux only
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)  # type: ignore[attr-defined]
        copy_failures: list[BaseException] = []

        def copy() -> None:
            try:
                self._store.copy_compacted(write_fd)
            except BaseException as exc:  # noqa: BLE001  (handed to the pump, which reports it)
                copy_failures.append(exc)
            finally:
                os.close(write_fd)

        def pump() -> None:
            hasher = hashlib.sha256()
            copied = notified = 0
            failure: BaseException | None = None
            try:
                while data := os.read(read_fd, PIPE_BYTES):
                    if backup.stop.is_set():
                        raise _Stopped()
                    hasher.update(data)
                    _write_all(backup.fd, data)
                    copied += len(data)
                    if copied - notified >= NOTIFY_BYTES:
                        notified = copied
                        token.run_sync_soon(self._progressed, backup, copied)
            except BaseException as exc:  # noqa: BLE001  (reported to the event loop below)
                failure = exc
            finally:
                os.close(read_fd)  # a copy still writing gets EPIPE and ends
                copier.join()
            if failure is None and copy_failures:
                failure = copy_failures[0]
            token.run_sync_soon(self._copied, backup, copied, hasher.digest(), failure)

        copier = threading.Thread(target=copy, name=f"backup-{backup.id:x}-copy", daemon=True)
        pumper = threading.Thread(target=pump, name=f"backup-{backup.id:x}-pump", daemon=True)
        try:
            copier.start()
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        try:
            pumper.start()
        except BaseException:
            os.close(read_fd)  # the copy ends at its next write, and closes its end
            copier.join()
            raise

    def _progressed(self, backup: _Backup, copied: int) -> None:
        backup.copied = copied
        backup.wake_readers()

    def _copied(self, backup: _Backup, copied: int, digest: bytes, failure: BaseException | None) -> None:
        backup.copied = copied
        if failure is None:
            backup.size, backup.sha256 = copied, digest
            log.info("backup %016x copied: %d bytes, sha256 %s", backup.id, copied, digest.hex())
        elif not isinstance(failure, _Stopped):
            backup.error = _copy_error(failure)
            log.error("backup %016x failed after %d bytes: %s", backup.id, copied, backup.error.message)
        backup.threads_done.set()
        backup.wake_readers()

    # ---- housekeeping ----

    def _new_id(self) -> int:
        while True:
            backup_id = secrets.randbits(ID_BITS)
            if backup_id and backup_id not in self._backups:
                return backup_id

    def _remove_leftovers(self) -> None:
        """Copies left by a node that stopped without ending its backups (killed, say)."""
        for path in glob.glob(os.path.join(glob.escape(self._data_dir), f"{FILE_PREFIX}*{FILE_SUFFIX}")):
            try:
                os.unlink(path)
            except OSError as exc:
                log.warning("cannot remove %s, left by an earlier backup: %s", path, exc.strerror)
            else:
                log.info("removed %s, left by a backup that never ended", path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_error(failure: BaseException) -> DynError:
    if isinstance(failure, DynError):
        return failure
    if isinstance(failure, OSError) and failure.errno == errno.ENOSPC:
        return StorageFull("the backup's copy filled the data directory's disk; it was deleted")
    if isinstance(failure, OSError):
        return Internal(f"the backup's copy failed: {failure.strerror}")
    return Internal(f"the backup's copy failed: {failure}")
