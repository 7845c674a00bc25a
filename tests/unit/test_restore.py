"""`dynd restore` (`dynd.restore`): it installs a real backup with a new actor epoch and a boot
number moved forward, and refuses anything else, leaving the data directory as it was.

Backups here are made the way the node makes them (`LmdbStore.copy_compacted`, then the tail
`dynctl backup` writes), from a store with the meta a node keeps.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import pytest

from dynd.cli import BOOT_META, NODE_NAME_META, PARTITIONS_META
from dynd.core.actors import ACTOR_META, CLEAN_STOP_META
from dynd.core.cluster import MEMBERSHIP_META
from dynd.protocol.backup_file import Manifest, encode_tail
from dynd.restore import main as restore_main
from dynd.shell.bootstrap import new_cluster
from dynd.storage.base import PutMeta, PutObject
from dynd.storage.lmdb_store import LmdbStore

MAP_BYTES = 1 << 28
DAY_MS = 86_400_000
OLD_ACTOR = b"n1.0000abcd"
OLD_BOOT = 1_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def node_store(path: Path, name: str = "n1", *, meta: bool = True) -> LmdbStore:
    store = LmdbStore(str(path), map_bytes=MAP_BYTES)
    store.write([PutObject(p, f"key-{p}".encode(), f"value-{p}".encode()) for p in range(8)])
    if meta:
        membership = new_cluster(name, "127.0.0.1:7400", 3, 2, 2, 8)
        store.write([
            PutMeta(NODE_NAME_META, name.encode()),
            PutMeta(MEMBERSHIP_META, membership.encode()),
            PutMeta(PARTITIONS_META, b"8"),
            PutMeta(ACTOR_META, OLD_ACTOR),
            PutMeta(CLEAN_STOP_META, b""),
            PutMeta(BOOT_META, str(OLD_BOOT).encode()),
        ])
    return store


def write_backup(path: Path, payload: bytes, *, node: str = "n1", taken_ms: int | None = None, sha256: bytes | None = None) -> Path:
    manifest = Manifest(
        node=node,
        cluster="c0ffee",
        taken_ms=now_ms() if taken_ms is None else taken_ms,
        size=len(payload),
        sha256=hashlib.sha256(payload).digest() if sha256 is None else sha256,
        agent="test",
    )
    path.write_bytes(payload + encode_tail(manifest))
    return path


def store_bytes(tmp_path: Path, name: str = "n1", *, meta: bool = True) -> bytes:
    store = node_store(tmp_path / f"source-{name}-{meta}", name, meta=meta)
    copy = tmp_path / f"copy-{name}-{meta}.mdb"
    try:
        with open(copy, "wb") as out:
            store.copy_compacted(out.fileno())
    finally:
        store.close()
    return copy.read_bytes()


def raw_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture
def backup(tmp_path: Path) -> Path:
    return write_backup(tmp_path / "n1.bak", store_bytes(tmp_path))


def run(*args: str | Path) -> int:
    return restore_main([str(arg) for arg in args])


def test_a_backup_is_installed_with_a_new_epoch_and_a_later_boot(tmp_path: Path, backup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before_ms = now_ms()
    data_dir = tmp_path / "data"
    assert run(backup, "--data-dir", data_dir) == 0
    out = capsys.readouterr().out
    assert "restored node n1 (cluster c0ffee)" in out and f"--data-dir {data_dir}" in out
    assert sorted(os.listdir(data_dir)) == ["lmdb"]
    store = LmdbStore(str(data_dir / "lmdb"), map_bytes=MAP_BYTES)
    try:
        assert [store.get_object(p, f"key-{p}".encode()) for p in range(8)] == [f"value-{p}".encode() for p in range(8)]
        actor = store.get_meta(ACTOR_META)
        assert actor is not None and actor != OLD_ACTOR and actor.startswith(b"n1.")
        assert actor.decode() in out
        assert store.get_meta(CLEAN_STOP_META) == b""
        boot = store.get_meta(BOOT_META)
        assert boot is not None and int(boot) >= before_ms > OLD_BOOT
        assert store.get_meta(NODE_NAME_META) == b"n1" and store.get_meta(PARTITIONS_META) == b"8"
    finally:
        store.close()


def test_two_restores_of_one_backup_take_different_epochs(tmp_path: Path, backup: Path) -> None:
    actors = []
    for name in ("a", "b"):
        assert run(backup, "--data-dir", tmp_path / name) == 0
        store = LmdbStore(str(tmp_path / name / "lmdb"), map_bytes=MAP_BYTES)
        actors.append(store.get_meta(ACTOR_META))
        store.close()
    assert actors[0] != actors[1]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda tmp: raw_file(tmp / "empty", b""), "too short"),
        (lambda tmp: raw_file(tmp / "text", b"hello world, not a backup at all\n"), "does not end like a dynd backup"),
        (lambda tmp: tmp / "missing", "cannot read"),
        (lambda tmp: write_backup(tmp / "junk", os.urandom(50_000)), "does not hold an LMDB store"),
        (lambda tmp: write_backup(tmp / "plain", store_bytes(tmp, meta=False)), "not a dynd node's"),
        (lambda tmp: write_backup(tmp / "bad-sum", store_bytes(tmp), sha256=b"\1" * 32), "damaged: its store's SHA-256"),
        (lambda tmp: write_backup(tmp / "other", store_bytes(tmp, "n2"), node="n1"), "belongs to node 'n2'"),
        (lambda tmp: write_backup(tmp / "old", store_bytes(tmp), taken_ms=now_ms() - 11 * DAY_MS), "older than tombstone_grace_ms"),
    ],
)
def test_anything_but_a_good_backup_is_refused_with_exit_2_and_nothing_installed(tmp_path: Path, make, reason: str, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    source = make(tmp_path)
    data_dir = tmp_path / "data"
    assert run(source, "--data-dir", data_dir) == 2
    assert reason in capsys.readouterr().err
    assert not data_dir.exists() or os.listdir(data_dir) == [], "nothing is left behind, staging included"


def test_a_damaged_byte_is_caught(tmp_path: Path, backup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = bytearray(backup.read_bytes())
    data[5000] ^= 0x40
    backup.write_bytes(bytes(data))
    assert run(backup, "--data-dir", tmp_path / "data") == 2
    assert "is damaged" in capsys.readouterr().err
    assert os.listdir(tmp_path / "data") == []


def test_an_old_backup_needs_allow_old_or_a_longer_grace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = write_backup(tmp_path / "old.bak", store_bytes(tmp_path), taken_ms=now_ms() - 11 * DAY_MS)
    assert run(old, "--data-dir", tmp_path / "a") == 2
    assert "--allow-old" in capsys.readouterr().err
    assert run(old, "--data-dir", tmp_path / "a", "--allow-old") == 0
    config = tmp_path / "dynd.toml"
    config.write_text(f'[node]\nname = "n1"\ndata_dir = "{tmp_path / "b"}"\n[limits]\ntombstone_grace_ms = {30 * DAY_MS}\n')
    assert run(old, "--config", config) == 0
    assert (tmp_path / "b" / "lmdb").is_dir()


def test_a_config_naming_another_node_is_refused(tmp_path: Path, backup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "dynd.toml"
    config.write_text('[node]\nname = "n9"\n')
    assert run(backup, "--config", config, "--data-dir", tmp_path / "data") == 2
    assert "the backup is of node 'n1'" in capsys.readouterr().err


def test_a_backup_of_a_worker_restores_into_that_workers_directory(tmp_path: Path) -> None:
    """[node] workers = 2: the config names members h-0 and h-1, and a backup of h-1 goes to
    data_dir/worker-1, where worker 1 keeps its store."""
    backup = write_backup(tmp_path / "h-1.bak", store_bytes(tmp_path, "h-1"), node="h-1")
    config = tmp_path / "dynd.toml"
    config.write_text(f'[node]\nname = "h"\nworkers = 2\ndata_dir = "{tmp_path / "host"}"\n')
    assert run(backup, "--config", config) == 0
    assert sorted(os.listdir(tmp_path / "host")) == ["worker-1"] and (tmp_path / "host" / "worker-1" / "lmdb").is_dir()
    assert run(backup, "--config", config, "--data-dir", tmp_path / "elsewhere") == 0  # --data-dir still wins
    assert (tmp_path / "elsewhere" / "lmdb").is_dir()
    other = write_backup(tmp_path / "h-2.bak", store_bytes(tmp_path, "h-2"), node="h-2")
    assert run(other, "--config", config) == 2


def test_a_data_directory_that_is_not_empty_needs_force(tmp_path: Path, backup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "data"
    old = node_store(data_dir / "lmdb")
    old.write([PutObject(0, b"only-in-the-old-store", b"x")])
    old.close()
    (data_dir / "notes.txt").write_text("kept")
    assert run(backup, "--data-dir", data_dir) == 2
    assert "is not empty (lmdb, notes.txt)" in capsys.readouterr().err
    assert run(backup, "--data-dir", data_dir, "--force") == 0
    assert sorted(os.listdir(data_dir)) == ["lmdb", "notes.txt"]
    store = LmdbStore(str(data_dir / "lmdb"), map_bytes=MAP_BYTES)
    try:
        assert store.get_object(0, b"only-in-the-old-store") is None
        assert store.get_object(3, b"key-3") == b"value-3"
    finally:
        store.close()


def test_a_store_in_use_by_a_node_is_never_replaced(tmp_path: Path, backup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "data"
    running = node_store(data_dir / "lmdb")  # holds the store's lock, as a running node does
    try:
        assert run(backup, "--data-dir", data_dir, "--force") == 1
        assert "in use by a running node" in capsys.readouterr().err
        assert running.get_meta(ACTOR_META) == OLD_ACTOR
        assert sorted(os.listdir(data_dir)) == ["lmdb"]
    finally:
        running.close()


def test_restore_is_a_subcommand_of_dynd(tmp_path: Path, backup: Path) -> None:
    command = [sys.executable, "-m", "dynd", "restore"]
    usage = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "FILE" in usage.stderr
    done = subprocess.run([*command, str(backup), "--data-dir", str(tmp_path / "data")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "restored node n1" in done.stdout
    listed = subprocess.run([sys.executable, "-m", "dynd", "--help"], capture_output=True, text=True, timeout=60)
    assert "dynd restore FILE --data-dir DIR" in listed.stdout


def test_the_store_opens_as_lmdb_after_restore(tmp_path: Path, backup: Path) -> None:
    assert run(backup, "--data-dir", tmp_path / "data") == 0
    env = lmdb.open(str(tmp_path / "data" / "lmdb"), max_dbs=8, readonly=True, lock=False)
    try:
        assert env.stat()["entries"] >= 3  # the objects, hints and meta databases
    finally:
        env.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files to another user")
def test_root_gives_the_store_to_the_data_directorys_owner(tmp_path: Path, backup: Path) -> None:
    data_dir = tmp_path / "state"
    data_dir.mkdir()
    os.chown(data_dir, 4321, 4321)  # the user the node runs as (a systemd StateDirectory)
    assert run(backup, "--data-dir", data_dir) == 0
    store_dir = data_dir / "lmdb"
    owners = {(path.stat().st_uid, path.stat().st_gid) for path in [store_dir, *store_dir.iterdir()]}
    assert owners == {(4321, 4321)}
