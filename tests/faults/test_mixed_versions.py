"""A cluster of this dynd and one from before TreeRootsCompare (70300c4), as in a rolling upgrade.

The old node answers the new message `unknown_op` and goes on serving; the new nodes then ask it
with TreeRoots, and it asks them with TreeRoots as it always did. Keys planted on one replica only
(the old node's, and a new node's) reach every replica through anti-entropy alone.

The old revision comes from this repository's history (`git archive`); without git or that
commit (a tarball of the source), the test is skipped.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynd.core.limits import Limits
from dynd.core.ops import PutObject
from dynd.core.partition import partition_of
from dynd.core.replica import LocalReplica
from dynd.protocol import messages
from dynd.storage.lmdb_store import LmdbStore
from tests.support.cluster import FAST_TIMERS, poll_until, run_repair, settled
from tests.support.hostile import RawConn
from tests.support.procs import DyndProcess

ROOT = Path(__file__).resolve().parents[2]
OLD_REVISION = "70300c4"  # the last main before TreeRootsCompare
Q = 64
AE_PERIOD_MS = 300
CONFIG = FAST_TIMERS.replace("hint_delivery_interval_ms = 200", "hint_delivery_interval_ms = 3600000") + f"ae_interval_ms = {AE_PERIOD_MS}\n"
PLANTED = 40


@pytest.fixture(scope="module")
def old_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    target = tmp_path_factory.mktemp("dynd-old")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", OLD_REVISION, "dynd"], capture_output=True, timeout=60)
    if archive.returncode != 0:
        pytest.skip(f"revision {OLD_REVISION} is not in this checkout: {archive.stderr.decode(errors='replace')[:200]}")
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True, timeout=60)
    return target


def old_node(directory: Path, source: Path, name: str, extra_args: tuple[str, ...]) -> DyndProcess:
    # `python -m` puts the working directory first on sys.path: run from the old source.
    wrapper = ("env", "-C", str(source), f"PYTHONPATH={source}")
    return DyndProcess(directory / name, name=name, config_text=CONFIG, extra_args=extra_args, wrapper=wrapper)


@pytest.fixture
def mixed(tmp_path: Path, old_source: Path) -> Iterator[list[DyndProcess]]:
    nodes: list[DyndProcess] = []
    try:
        # A rolling upgrade starts from a cluster of old nodes: the old node creates it, and the new
        # ones join it (a membership written by new nodes alone may be in a format the old one
        # cannot read, and an old node joining such a cluster is refused: see dynd.core.membership).
        old = old_node(tmp_path, old_source, "m2", ("--replicas", "3", "--r", "2", "--w", "2", "--partitions", str(Q)))
        new = DyndProcess(tmp_path / "m1", name="m1", config_text=CONFIG, extra_args=("--join", old.address))
        other = DyndProcess(tmp_path / "m3", name="m3", config_text=CONFIG, extra_args=("--join", old.address))
        nodes.extend([new, old, other])  # the order the tests unpack; all stopped below
        for node in (old, new, other):
            node.start()
        poll_until("3 members everywhere", lambda: settled(nodes, {"m1", "m2", "m3"}))
        yield nodes
    finally:
        for node in nodes:
            node.stop()
            node.cleanup()


def store_of(node: DyndProcess) -> LmdbStore:
    return LmdbStore(str(node.data_dir / "lmdb"), map_bytes=Limits().lmdb_map_bytes)


def plant(node: DyndProcess, keys: list[bytes]) -> None:
    """`keys` written to the stopped node's store alone."""
    node.stop()
    store = store_of(node)
    try:
        replica = LocalReplica("planted", Limits(), Q)
        store.write([PutObject(partition_of(k, Q), k, replica.write(k, b"v", None, None, 1).record) for k in keys])
    finally:
        store.close()
    node.start()


def missing_from(node: DyndProcess, keys: list[bytes]) -> list[bytes]:
    node.stop()
    store = store_of(node)
    try:
        return [k for k in keys if store.get_object(partition_of(k, Q), k) is None]
    finally:
        store.close()


def test_the_old_node_refuses_the_new_message_and_every_replica_converges(mixed: list[DyndProcess]) -> None:
    new, old, other = mixed
    with RawConn(old.address) as conn:
        conn.hello()
        conn.send_message(messages.TreeRootsCompare(id=7, node="m1", partitions=[0], hashes=[b""], tree_segments=256, tree_fanout=16))
        refused = conn.read()
        assert isinstance(refused, messages.ErrorReply) and refused.code == "unknown_op" and refused.id == 7, refused
        conn.send_message(messages.Ping(id=8))
        assert isinstance(conn.read(), messages.Pong), "the old node goes on serving the connection"
    on_old = [b"on-old-%d" % i for i in range(PLANTED)]
    on_new = [b"on-new-%d" % i for i in range(PLANTED)]
    plant(old, on_old)
    plant(new, on_new)
    poll_until("the new node falls back to TreeRoots", lambda: "does not know TreeRootsCompare" in new.stderr_text())
    # Repairs through each node, old and new, must all complete; the scheduled rounds run meanwhile.
    for node in mixed:
        report = poll_until(f"a complete repair through {node.name}", lambda node=node: (lambda r: r if r.pairs_failed == 0 else None)(run_repair(node)))
        assert report.pairs_total == 2 * Q
    for node in mixed:
        assert node.running, f"{node.name} died:\n{node.stderr_tail()}"
    for node in mixed:
        assert missing_from(node, on_old + on_new) == [], node.name
        assert "Traceback" not in node.stderr_text(), node.stderr_tail()
