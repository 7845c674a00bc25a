"""`dynctl backup FILE`: a consistent copy of one node's store, taken while it serves.

The --node copies one snapshot of its store (LMDB's compacting copy) and streams it in chunks
(`dynd.shell.backup` has the node's side). dynctl writes the chunks to FILE.partial, checks its
own SHA-256 of them against the node's, appends the manifest (`dynd.protocol.backup_file`: node,
cluster, when, size, digest), syncs, and only then renames FILE.partial to FILE. Whatever fails
(the node, the network, the disk, a ^C), FILE.partial is removed and FILE is left as it was.
`dynd restore FILE --data-dir DIR` brings the node back from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import trio
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from dynctl.node import Session, run_with_client
from dynctl.output import ExitCode, Output
from dynd import __version__
from dynd.client import Client
from dynd.protocol.backup_file import Manifest, encode_tail
from dynd.protocol.errors import DynError, Internal
from dynd.protocol.messages import BackupChunk, BackupStartOk

PARTIAL_SUFFIX = ".partial"
END_TIMEOUT_S = 2.0  # telling the node to drop its copy, after a failure: best effort
READS_IN_FLIGHT = 4  # so the node reads and sends the next chunks while this side writes the last


class ChecksumMismatch(Exception):
    pass


def backup(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="Where to write the backup (FILE.partial until it is complete).", show_default=False)],
    force: Annotated[bool, typer.Option("--force", help="Replace FILE if it exists (only once the new backup is complete).")] = False,
) -> None:
    """Copy the --node's whole store to FILE while it keeps serving: one consistent snapshot,
    checked end to end with SHA-256. Restore it with `dynd restore FILE --data-dir DIR`.

    Admin: from the node's own host, or with an admin token (--token-file). The node needs free
    space in its data directory for one compacted copy of its store.
    """
    session: Session = ctx.obj
    output = session.output
    if file.exists() and not force:
        output.abort(f"{file} exists", ExitCode.USAGE, hint="give --force to replace it once the new backup is complete")
    if file.is_dir():
        output.abort(f"{file} is a directory", ExitCode.USAGE)
    if not file.parent.is_dir():
        output.abort(f"no directory {file.parent} to write {file.name} in", ExitCode.USAGE)
    partial = file.with_name(file.name + PARTIAL_SUFFIX)
    started_s = time.monotonic()
    try:
        with _removed_unless_renamed(partial) as out, _transfer_progress(output) as progress:

            async def run(client: Client) -> Manifest:
                return await stream_backup(client, out, progress, session.timeout_s)

            try:
                manifest = run_with_client(session, run)
            except ChecksumMismatch as exc:
                output.abort(str(exc), ExitCode.REFUSED, hint="the copy was damaged on its way; run the backup again")
            out.write(encode_tail(manifest))
            out.flush()
            os.fsync(out.fileno())
            os.replace(partial, file)
    except OSError as exc:
        output.abort(f"cannot write {partial}: {exc.strerror or exc}", ExitCode.REFUSED)
    _fsync_directory(file.parent)
    elapsed_s = max(time.monotonic() - started_s, 1e-6)
    if output.json_mode:
        output.write_json(summary(session.node_address, file, manifest, elapsed_s))
    else:
        output.write_line(
            f"{manifest.node}: backed up {manifest.size} bytes to {file} in {elapsed_s:.1f} s (sha256 {manifest.sha256.hex()})"
        )


def summary(address: str, file: Path, manifest: Manifest, elapsed_s: float) -> dict[str, Any]:
    return {
        "node": manifest.node,
        "address": address,
        "cluster": manifest.cluster,
        "file": str(file),
        "bytes": manifest.size,
        "sha256": manifest.sha256.hex(),
        "taken_ms": manifest.taken_ms,
        "seconds": round(elapsed_s, 3),
        "bytes_per_s": int(manifest.size / elapsed_s),
    }


async def stream_backup(client: Client, out: BinaryIO, progress: Progress | None, timeout_s: float) -> Manifest:
    """Start a backup on the client's node, write its bytes to `out` in order, check them against
    the node's digest, and end it (also when anything fails: the node then deletes its copy at
    once rather than after its idle timeout). The manifest for the file's tail."""
    started = await client.backup_start()
    task = progress.add_task(f"backup of {started.node}", total=started.estimate_bytes or None) if progress is not None else None
    hasher = hashlib.sha256()
    written = 0

    def write(chunk: BackupChunk) -> None:
        nonlocal written
        out.write(chunk.data)
        hasher.update(chunk.data)
        written += len(chunk.data)
        if progress is not None and task is not None:
            total = chunk.size if chunk.size is not None else max(started.estimate_bytes, chunk.copied_bytes)
            progress.update(task, completed=written, total=total)

    try:
        last = await _read_in_order(client, started, timeout_s, write)
    except BaseException:
        with trio.CancelScope(shield=True), trio.move_on_after(END_TIMEOUT_S), contextlib.suppress(DynError):
            await client.backup_end(started.backup, timeout_s=END_TIMEOUT_S)
        raise
    await client.backup_end(started.backup)
    assert last.sha256 is not None and last.size is not None
    if hasher.digest() != last.sha256:
        raise ChecksumMismatch(f"the bytes received hash to {hasher.hexdigest()}, the node's copy to {last.sha256.hex()}")
    return Manifest(
        node=started.node, cluster=started.cluster, taken_ms=started.taken_ms, size=last.size, sha256=last.sha256, agent=f"dynctl {__version__}"
    )


class _Read:
    """One read in flight: its reply or error, once `arrived` is set."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.arrived = trio.Event()
        self.chunk: BackupChunk | None = None
        self.error: DynError | None = None


async def _read_in_order(client: Client, started: BackupStartOk, timeout_s: float, take: Callable[[BackupChunk], None]) -> BackupChunk:
    """Hand the backup's chunks to `take` in order, and return the last (it has the copy's size and
    digest). Up to READS_IN_FLIGHT reads are outstanding, so the node reads and sends the next
    chunks while this side writes the last. They ask only for whole chunks the node is known to
    have copied; at the end of what is known, one read goes alone (it may wait for the copy, and
    bring back less than a chunk)."""
    read_timeout_s = timeout_s + started.read_wait_ms / 1000  # a read may wait that long for the copy
    step = started.chunk_bytes

    async def read(pending: _Read) -> None:
        try:
            pending.chunk = await client.backup_read(started.backup, pending.offset, timeout_s=read_timeout_s)
        except DynError as exc:
            pending.error = exc
        finally:
            pending.arrived.set()

    in_flight: deque[_Read] = deque()
    asked = offset = known = 0  # the next offset to ask for; the next to take; bytes the node has copied
    async with trio.open_nursery() as nursery:
        while True:
            while len(in_flight) < READS_IN_FLIGHT and asked + step <= known:
                in_flight.append(_Read(asked))
                nursery.start_soon(read, in_flight[-1])
                asked += step
            if not in_flight:
                in_flight.append(_Read(asked))
                nursery.start_soon(read, in_flight[-1])
            pending = in_flight.popleft()
            await pending.arrived.wait()
            if pending.error is not None:
                raise pending.error
            chunk = pending.chunk
            assert chunk is not None
            if chunk.offset != offset or (chunk.size is not None and offset + len(chunk.data) > chunk.size):
                raise Internal(f"the node sent bytes {chunk.offset}..{chunk.offset + len(chunk.data)} for offset {offset}")
            offset += len(chunk.data)
            asked = max(asked, offset)  # after a read at the end, which may bring back less than a chunk
            known = chunk.size if chunk.size is not None else chunk.copied_bytes
            take(chunk)
            if chunk.done and offset == chunk.size:
                return chunk  # nothing is in flight: every read asked for was of bytes before the end
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _removed_unless_renamed(partial: Path) -> Iterator[BinaryIO]:
    """FILE.partial, open for writing; removed on the way out unless it was renamed into place."""
    out = open(partial, "wb")  # noqa: SIM115  (closed below)
    try:
        yield out
    finally:
        out.close()
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


def _transfer_progress(output: Output) -> contextlib.AbstractContextManager[Progress | None]:
    """Bytes, rate and time left on stderr when a person watches it; nothing otherwise."""
    if not output.stderr_is_terminal:
        return contextlib.nullcontext()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def _fsync_directory(directory: Path) -> None:
    """So the rename survives a crash of the machine; best effort where a directory cannot be synced."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
