"""`dynctl backup FILE` against a real node: the file it writes, and the file it never leaves half-written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import trio
from dynctl_testing import DynctlRunner

from dynd.client import BlockingClient, open_client
from dynd.protocol.backup_file import TAIL_BYTES, decode_manifest, manifest_length
from tests.support.procs import DyndProcess, free_port


def manifest_of(path: Path) -> tuple[bytes, object]:
    data = path.read_bytes()
    length = manifest_length(data[-TAIL_BYTES:], len(data))
    manifest = decode_manifest(data[-TAIL_BYTES - length : -TAIL_BYTES], len(data))
    return data[: manifest.size], manifest


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_backup_writes_the_store_and_a_checked_manifest(on_node: DynctlRunner, dynd_node: DyndProcess, tmp_path: Path, key: str) -> None:
    with BlockingClient(dynd_node.address) as client:
        client.put(key, b"in the backup")
    file = tmp_path / "cli1.backup"
    result = on_node("--json", "backup", str(file))
    assert result.returncode == 0, result.stderr.decode()
    summary = json.loads(result.stdout)
    store, manifest = manifest_of(file)
    assert summary["node"] == manifest.node == "cli1"  # type: ignore[attr-defined]
    assert summary["bytes"] == manifest.size == len(store)  # type: ignore[attr-defined]
    assert summary["sha256"] == hashlib.sha256(store).hexdigest() == manifest.sha256.hex()  # type: ignore[attr-defined]
    assert summary["file"] == str(file) and summary["bytes_per_s"] > 0
    assert key.encode() in store and b"in the backup" in store  # the value's bytes, in the copy
    assert leftovers(tmp_path) == ["cli1.backup"]


def test_an_existing_file_is_kept_unless_force(on_node: DynctlRunner, tmp_path: Path) -> None:
    file = tmp_path / "taken"
    file.write_bytes(b"an older backup")
    refused = on_node("backup", str(file))
    assert refused.returncode == 2 and b"exists" in refused.stderr and b"--force" in refused.stderr
    assert file.read_bytes() == b"an older backup"
    replaced = on_node("backup", str(file), "--force")
    assert replaced.returncode == 0, replaced.stderr.decode()
    assert b"cli1: backed up" in replaced.stdout and str(file).encode() in replaced.stdout
    assert manifest_of(file)[1].node == "cli1"  # type: ignore[attr-defined]


def test_no_file_is_left_when_the_node_cannot_be_reached(dynctl: DynctlRunner, tmp_path: Path) -> None:
    result = dynctl("--node", f"127.0.0.1:{free_port()}", "backup", str(tmp_path / "never"))
    assert result.returncode == 3, result.stderr.decode()
    assert leftovers(tmp_path) == []


def test_no_file_is_left_when_the_node_refuses(on_node: DynctlRunner, dynd_node: DyndProcess, tmp_path: Path) -> None:
    """The node's one backup slot is taken: dynctl says so (exit 4) and writes nothing."""

    async def hold_the_slot_while(run: object) -> object:
        async with open_client(dynd_node.address) as client:
            started = await client.backup_start()
            try:
                return await trio.to_thread.run_sync(run)  # type: ignore[arg-type]
            finally:
                await client.backup_end(started.backup)

    result = trio.run(hold_the_slot_while, lambda: on_node("backup", str(tmp_path / "refused")))
    assert result.returncode == 4, result.stderr  # type: ignore[attr-defined]
    assert b"overloaded" in result.stderr and b"backups_max" in result.stderr  # type: ignore[attr-defined]
    assert leftovers(tmp_path) == []


def test_a_missing_directory_is_a_usage_error(on_node: DynctlRunner, tmp_path: Path) -> None:
    result = on_node("backup", str(tmp_path / "no" / "such" / "dir" / "file"))
    assert result.returncode == 2 and b"no directory" in result.stderr

