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
from collections.abc import Iterator
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

PARTIAL_SUFFIX = ".partial"
END_TIMEOUT_S = 2.0  # telling the node to drop its copy, after a failure: best effort


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
    read_timeout_s = timeout_s + started.read_wait_ms / 1000  # a read may wait that long for the copy
    hasher = hashlib.sha256()
    offset = 0
    try:
        while True:
            chunk = await client.backup_read(started.backup, offset, timeout_s=read_timeout_s)
            if chunk.offset != offset or (chunk.size is not None and offset + len(chunk.data) > chunk.size):
                raise Internal(f"the node sent bytes {chunk.offset}..{chunk.offset + len(chunk.data)} for offset {offset}")
            out.write(chunk.data)
            hasher.update(chunk.data)
            offset += len(chunk.data)
            if progress is not None and task is not None:
                total = chunk.size if chunk.size is not None else max(started.estimate_bytes, chunk.copied_bytes)
                progress.update(task, completed=offset, total=total)
            if chunk.done and offset == chunk.size:
                break
    except BaseException:
        with trio.CancelScope(shield=True), trio.move_on_after(END_TIMEOUT_S), contextlib.suppress(DynError):
            await client.backup_end(started.backup, timeout_s=END_TIMEOUT_S)
        raise
    await client.backup_end(started.backup)
    assert chunk.sha256 is not None and chunk.size is not None
    if hasher.digest() != chunk.sha256:
        raise ChecksumMismatch(f"the bytes received hash to {hasher.hexdigest()}, the node's copy to {chunk.sha256.hex()}")
    return Manifest(
        node=started.node, cluster=started.cluster, taken_ms=started.taken_ms, size=chunk.size, sha256=chunk.sha256, agent=f"dynctl {__version__}"
    )


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
