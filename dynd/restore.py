"""`dynd restore FILE --data-dir DIR`: bring a node's store back from a `dynctl backup` file.

The node must be stopped (a running node holds its store's lock, and the restore refuses). Steps,
each of which leaves DIR as it was if it fails:

1. FILE must be a dynd backup (`dynd.protocol.backup_file`): its manifest readable, its length
   and SHA-256 as the manifest says (checked while the store is copied out), and the store an
   LMDB environment holding a dynd node's meta (its name, partitions and membership). Anything
   else is refused, exit 2.
2. It must be younger than `tombstone_grace_ms` (from --config, else the default): an older copy
   may hold values whose deletes the other replicas have since forgotten (reaped), and
   anti-entropy would bring them back; --allow-old restores it anyway.
3. DIR must be empty, or --force (which replaces DIR/lmdb, nothing else in DIR).
4. The copy is written to DIR/lmdb.restoring, its meta moved forward (below), synced, and renamed
   to DIR/lmdb. Run as root into a DIR that exists, the store is given to DIR's owner.

What moves forward, and why (the rest of the meta is kept: the node's name, its partitions and
its membership, which gossip brings up to date as it merges forward only):
- The actor epoch (`dynd.core.actors.actor_after_restore`): after the backup the node went on
  issuing dots its restored store does not remember; with the old epoch it could issue one again
  for another write, and the replicas holding both would keep only one (Riak's kv679). Its
  clean-stop record is cleared too, so the first start takes yet another epoch.
- The boot number, at least the wall clock now: peers drop failure-detector datagrams from a boot
  older than the last one they saw of the node, and the restore cannot know that one. The start
  that follows raises it again (`dynd.cli.next_boot`); like a wiped directory, this relies on the
  wall clock not being behind the node's last start.
Hints the node held at the backup are kept: some may be the only copy of a write it accepted as a
fallback, and one already delivered merges as a no-op. Merkle trees are rebuilt from the store at
start; anti-entropy, read repair and the other nodes' hints bring the node up to date.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import errno
import fcntl
import hashlib
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from typing import BinaryIO

from dynd.cli import BOOT_META, EXIT_CONFIG, EXIT_STARTUP, NODE_NAME_META, PARTITIONS_META
from dynd.config import Config, ConfigError, load_config
from dynd.core.actors import ACTOR_META, actor_after_restore
from dynd.core.cluster import MEMBERSHIP_META
from dynd.core.membership import Membership, MembershipError
from dynd.protocol.backup_file import TAIL_BYTES, Manifest, NotABackup, decode_manifest, manifest_length
from dynd.storage.base import PutMeta
from dynd.storage.lmdb_store import LOCK_FILE, LmdbStore

STORE_DIR = "lmdb"  # the node's store is DIR/lmdb (dynd.cli.open_store)
STAGING_DIR = "lmdb.restoring"
REPLACED_DIR = "lmdb.replaced"
DATA_FILE = "data.mdb"
COPY_BYTES = 4 * 1024 * 1024


class Refused(Exception):
    """The restore cannot go ahead; `exit_code` says whether it was the input (2) or the system (1)."""

    def __init__(self, message: str, exit_code: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class Restored:
    node: str
    cluster: str
    taken_ms: int
    size: int
    actor: str
    store: str


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynd restore",
        description="Restore a node's store from a backup made by `dynctl backup`, with a new actor epoch. "
        "Stop the node first; start it afterwards as before (same --name); anti-entropy and hints bring it up to date.",
        epilog="Exit status: 0 restored; 2 refused (not a dynd backup, damaged, too old, DIR not empty, bad config); "
        "1 could not be done (DIR in use by a running node, I/O error). See dynd(8), BACKUP AND RESTORE.",
    )
    parser.add_argument("file", metavar="FILE", help="the backup file")
    parser.add_argument("--data-dir", dest="data_dir", help="the node's data directory (default: [node] data_dir of --config)")
    parser.add_argument("--config", help="the node's config file: its data_dir, lmdb_map_bytes and tombstone_grace_ms")
    parser.add_argument("--force", action="store_true", help="replace the store in a data directory that is not empty")
    parser.add_argument(
        "--allow-old", dest="allow_old", action="store_true", help="restore a backup older than tombstone_grace_ms (deleted keys may come back)"
    )
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        restored = restore(args.file, data_dir=args.data_dir, config_path=args.config, force=args.force, allow_old=args.allow_old)
    except Refused as exc:
        print(f"dynd restore: {exc}", file=sys.stderr)
        return exc.exit_code
    taken = datetime.datetime.fromtimestamp(restored.taken_ms / 1000, tz=datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"restored node {restored.node} (cluster {restored.cluster}) into {restored.store}: {restored.size} bytes, backup taken {taken}")
    print(f"its versions now carry the new actor epoch {restored.actor}")
    print(f"start it as before, e.g.: dynd --name {restored.node} --data-dir {os.path.dirname(restored.store)} ...")
    return 0


def restore(path: str, *, data_dir: str | None, config_path: str | None, force: bool = False, allow_old: bool = False, wall_ms: int | None = None) -> Restored:
    """Restore the backup at `path` into `data_dir` (see the module's docstring); Refused if it cannot."""
    try:
        source = open(path, "rb")  # noqa: SIM115  (closed below, on every path)
    except OSError as exc:
        raise Refused(f"cannot read {path}: {exc.strerror}") from None
    with source:
        manifest = read_manifest(source, path)
        config = _config(config_path, data_dir, manifest.node)
        now_ms = wall_ms if wall_ms is not None else time.time_ns() // 1_000_000
        check_age(manifest, now_ms, config.limits.tombstone_grace_ms, allow_old)
        directory = config.data_dir
        _check_directory(directory, force)
        owner = _owner(directory)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        staging = os.path.join(directory, STAGING_DIR)
        shutil.rmtree(staging, ignore_errors=True)  # left by a restore that was interrupted
        try:
            _copy_store(source, manifest, staging, path)
            actor = _stamp(staging, manifest, config.limits.lmdb_map_bytes, now_ms)
            _give(staging, owner)
            target = _install(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return Restored(manifest.node, manifest.cluster, manifest.taken_ms, manifest.size, actor, target)


def read_manifest(source: BinaryIO, path: str) -> Manifest:
    """The manifest at the end of the open file `source`; Refused if it is no dynd backup."""
    size = os.fstat(source.fileno()).st_size
    try:
        if size < TAIL_BYTES:
            manifest_length(b"", size)
        source.seek(size - TAIL_BYTES)
        length = manifest_length(source.read(TAIL_BYTES), size)
        source.seek(size - TAIL_BYTES - length)
        return decode_manifest(source.read(length), size)
    except NotABackup as exc:
        raise Refused(f"{path} is not a usable dynd backup: {exc}") from None
    except OSError as exc:
        raise Refused(f"cannot read {path}: {exc.strerror}", EXIT_STARTUP) from None


def check_age(manifest: Manifest, now_ms: int, grace_ms: int, allow_old: bool) -> None:
    age_ms = now_ms - manifest.taken_ms
    if age_ms > grace_ms and not allow_old:
        raise Refused(
            f"the backup is {age_ms / 86_400_000:.1f} days old, older than tombstone_grace_ms ({grace_ms / 86_400_000:.1f} days): "
            "keys deleted since may have been reaped everywhere else, and this copy would bring them back. "
            "Wipe the node's data directory and let it rejoin empty instead, or give --allow-old to restore it anyway"
        )


def _config(config_path: str | None, data_dir: str | None, node: str) -> Config:
    overrides = {"data_dir": data_dir}
    try:
        config = load_config(config_path, overrides)
    except ConfigError:
        try:  # a config file without a name (or none at all): the backup names the node
            config = load_config(config_path, {**overrides, "name": node})
        except ConfigError as exc:
            raise Refused(str(exc)) from None
    # With [node] workers = K the config names K members: the backup is of one of them, and
    # restores into that worker's directory unless --data-dir names one.
    workers = [config.for_worker(index) for index in range(config.workers)]
    matching = [worker for worker in workers if worker.name == node]
    if not matching:
        names = ", ".join(repr(worker.name) for worker in workers)
        raise Refused(f"the backup is of node {node!r}, but {config_path} names {names}")
    return matching[0] if data_dir is None else dataclasses.replace(matching[0], data_dir=data_dir)


def _check_directory(directory: str, force: bool) -> None:
    try:
        entries = sorted(os.listdir(directory))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise Refused(f"cannot read {directory}: {exc.strerror}", EXIT_STARTUP) from None
    if entries and not force:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise Refused(f"{directory} is not empty ({shown}): restore into an empty directory, or give --force to replace the store in it")
    target = os.path.join(directory, STORE_DIR)
    if os.path.isdir(target):
        os.close(_lock_store(target))  # refuse now, before the copy, if a node holds it


def _lock_store(target: str) -> int:
    """Hold the store's lock, as a starting node would (`LmdbStore`); Refused while a node runs on it."""
    try:
        lock_fd = os.open(os.path.join(target, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise Refused(f"cannot open the lock of {target}: {exc.strerror}", EXIT_STARTUP) from None
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        raise Refused(f"{target} is in use by a running node: stop it first", EXIT_STARTUP) from None
    return lock_fd


def _copy_store(source: BinaryIO, manifest: Manifest, staging: str, path: str) -> None:
    """Copy the store part of the backup to staging/data.mdb, checking its digest on the way."""
    os.makedirs(staging, mode=0o700)
    target = os.path.join(staging, DATA_FILE)
    hasher = hashlib.sha256()
    try:
        source.seek(0)
        with open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            left = manifest.size
            while left:
                chunk = source.read(min(COPY_BYTES, left))
                if not chunk:
                    raise Refused(f"{path} ended {left} bytes early")
                hasher.update(chunk)
                out.write(chunk)
                left -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        raise Refused(f"cannot copy the store to {target}: {exc.strerror}", EXIT_STARTUP) from None
    if hasher.digest() != manifest.sha256:
        raise Refused(f"{path} is damaged: its store's SHA-256 is {hasher.hexdigest()}, the manifest says {manifest.sha256.hex()}")


def _stamp(staging: str, manifest: Manifest, map_bytes: int, now_ms: int) -> str:
    """Check the copy is a dynd node's store of the node the manifest names, then move its actor
    epoch and boot number forward (see the module's docstring). Returns the new actor."""
    try:
        store = LmdbStore(staging, map_bytes=map_bytes)
    except Exception as exc:  # lmdb.InvalidError and friends: whatever it is, it is not a store
        raise Refused(f"the backup does not hold an LMDB store: {exc}") from None
    try:
        name = store.get_meta(NODE_NAME_META)
        membership = store.get_meta(MEMBERSHIP_META)
        partitions = store.get_meta(PARTITIONS_META)
        if name is None or membership is None or partitions is None:
            raise Refused("the backup's LMDB store is not a dynd node's (it lacks the node's name, membership or partitions)")
        if name.decode(errors="replace") != manifest.node:
            raise Refused(f"the backup's store belongs to node {name.decode(errors='replace')!r}, its manifest says {manifest.node!r}")
        try:
            Membership.decode(membership)
        except MembershipError as exc:
            raise Refused(f"the backup's membership is unreadable: {exc}") from None
        actor, ops = actor_after_restore(manifest.node, store.get_meta(ACTOR_META), random.SystemRandom())
        stored_boot = store.get_meta(BOOT_META)
        boot = max(int(stored_boot) if stored_boot is not None and stored_boot.isdigit() else 0, now_ms)
        store.write([*ops, PutMeta(BOOT_META, str(boot).encode())])
    finally:
        store.close()
    return actor


def _owner(directory: str) -> tuple[int, int] | None:
    """Who the store should belong to: the data directory's owner, when root restores into a
    directory that exists (a systemd StateDirectory, say), so the node can open what root wrote."""
    if os.geteuid() != 0:
        return None
    try:
        info = os.stat(directory)
    except OSError:
        return None
    return (info.st_uid, info.st_gid) if (info.st_uid, info.st_gid) != (0, 0) else None


def _give(staging: str, owner: tuple[int, int] | None) -> None:
    if owner is None:
        return
    try:
        for path in [staging, *(os.path.join(staging, name) for name in os.listdir(staging))]:
            os.chown(path, *owner)
    except OSError as exc:
        raise Refused(f"cannot give the store to uid {owner[0]}: {exc.strerror}", EXIT_STARTUP) from None


def _install(staging: str, directory: str) -> str:
    """Rename the staged store to DIR/lmdb, replacing one that is there (only with --force, which
    `_check_directory` decided) unless a node holds it. Synced, so a crash leaves one or the other."""
    target = os.path.join(directory, STORE_DIR)
    replaced = os.path.join(directory, REPLACED_DIR)
    lock_fd = _lock_store(target) if os.path.isdir(target) else None
    try:
        if lock_fd is not None:
            shutil.rmtree(replaced, ignore_errors=True)
            os.rename(target, replaced)
        try:
            os.rename(staging, target)
        except OSError:
            if lock_fd is not None:
                os.rename(replaced, target)  # put the old store back
            raise
        _fsync_directory(directory)
    except OSError as exc:
        raise Refused(f"cannot install the store in {target}: {exc.strerror}", EXIT_STARTUP) from None
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
    shutil.rmtree(replaced, ignore_errors=True)
    return target


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # some file systems cannot sync a directory
            raise
    finally:
        os.close(fd)

