"""One real dynd driven through `dynd.client`: versions, concurrency, restarts, a full disk,
signals, config errors and data-directory ownership.

The version tests share one node (each uses its own keys); tests that restart, fill or break a
node get their own from `dynd_factory` (tests/conftest.py).
"""

from __future__ import annotations

import itertools
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from dynd.client import BlockingClient, GetResult, open_client
from dynd.protocol.errors import BadRequest, DynError, StorageFull
from tests.support.procs import DyndError, DyndFactory, DyndProcess, run_dynd

NODE_NAME = "one1"
STOP_DEADLINE_S = 10.0
_keys = itertools.count()


def fresh_key(tag: str) -> bytes:
    return f"{tag}:{next(_keys)}:{time.monotonic_ns()}".encode()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DyndProcess]:
    proc = DyndProcess(tmp_path_factory.mktemp("one-node"), name=NODE_NAME).start()
    try:
        yield proc
    finally:
        code = proc.stop()
        print(f"--- {proc!r} stderr (last lines) ---\n{proc.stderr_tail()}")
    assert code == 0


def values_of(result: GetResult) -> list[bytes]:
    return sorted(result.values)


# ---- versions ----


async def test_not_found_is_empty_values(node: DyndProcess) -> None:
    async with open_client(node.address) as client:
        result = await client.get(fresh_key("missing"))
    assert result.values == [] and result.siblings == [] and not result.found
    assert isinstance(result.context, bytes)


async def test_put_get_round_trip(node: DyndProcess) -> None:
    key = fresh_key("round-trip")
    value = bytes(range(256)) * 4  # values are opaque bytes, NULs and all
    async with open_client(node.address) as client:
        context = await client.put(key, value)
        result = await client.get(key)
    assert isinstance(context, bytes) and context
    assert result.values == [value]
    (sibling,) = result.siblings
    assert sibling.dot[0].startswith(NODE_NAME + "."), "the actor is the node name plus its data directory's epoch"
    assert sibling.dot[1] >= 1


async def test_puts_without_context_become_siblings(node: DyndProcess) -> None:
    key = fresh_key("blind")
    async with open_client(node.address) as client:
        await client.put(key, b"one")
        await client.put(key, b"two")
        result = await client.get(key)
    assert values_of(result) == [b"one", b"two"]
    assert len({s.dot for s in result.siblings}) == 2


async def test_same_stale_context_twice_gives_two_siblings_then_read_context_supersedes(node: DyndProcess) -> None:
    key = fresh_key("stale")
    async with open_client(node.address) as client:
        await client.put(key, b"v0")
        stale = (await client.get(key)).context
        await client.put(key, b"v1", stale)
        await client.put(key, b"v2", stale)
        result = await client.get(key)
        assert values_of(result) == [b"v1", b"v2"]  # both supersede v0, neither the other
        await client.put(key, b"v3", result.context)
        assert (await client.get(key)).values == [b"v3"]


async def test_put_context_covers_only_what_the_client_saw(node: DyndProcess) -> None:
    """A put's returned context is the client's context plus its own write: a concurrent write by
    someone else, made in between, survives the client's next write."""
    key = fresh_key("concurrent")
    async with open_client(node.address) as alice, open_client(node.address) as bob:
        mine = await alice.put(key, b"alice-1")
        await bob.put(key, b"bob-1")
        await alice.put(key, b"alice-2", mine)
        result = await alice.get(key)
    assert values_of(result) == [b"alice-2", b"bob-1"]


async def test_delete_with_context_then_put_with_delete_context(node: DyndProcess) -> None:
    key = fresh_key("delete")
    async with open_client(node.address) as client:
        await client.put(key, b"a")
        await client.put(key, b"b")
        read = await client.get(key)
        assert values_of(read) == [b"a", b"b"]
        tombstone = await client.delete(key, read.context)
        gone = await client.get(key)
        assert gone.values == [] and not gone.found
        await client.put(key, b"reborn", tombstone)
        assert (await client.get(key)).values == [b"reborn"]
        # and a put with the get-after-delete context is just as good
        await client.delete(key, (await client.get(key)).context)
        await client.put(key, b"again", (await client.get(key)).context)
        assert (await client.get(key)).values == [b"again"]


async def test_delete_with_stale_context_keeps_the_unseen_write(node: DyndProcess) -> None:
    key = fresh_key("delete-stale")
    async with open_client(node.address) as client:
        await client.put(key, b"seen")
        stale = (await client.get(key)).context
        await client.put(key, b"unseen")
        await client.delete(key, stale)
        assert (await client.get(key)).values == [b"unseen"]


async def test_many_concurrent_puts_through_one_connection(node: DyndProcess) -> None:
    count = 200
    keys = [fresh_key("many") for _ in range(count)]
    contexts: dict[bytes, bytes] = {}

    async with open_client(node.address) as client:

        async def put_one(index: int) -> None:
            contexts[keys[index]] = await client.put(keys[index], b"value-%d" % index)

        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(put_one, index)
        assert len(contexts) == count

        results: dict[int, GetResult] = {}

        async def get_one(index: int) -> None:
            results[index] = await client.get(keys[index])

        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(get_one, index)
    for index in range(count):
        assert results[index].values == [b"value-%d" % index], index


async def test_concurrent_blind_puts_to_one_key_all_survive(node: DyndProcess) -> None:
    """Writes still waiting for their group commit are visible to the next write of the same key."""
    key = fresh_key("pile")
    count = 20
    async with open_client(node.address) as client:
        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(client.put, key, b"sibling-%02d" % index)
        result = await client.get(key)
        assert values_of(result) == [b"sibling-%02d" % i for i in range(count)]
        assert len({s.dot for s in result.siblings}) == count
        await client.put(key, b"resolved", result.context)
        assert (await client.get(key)).values == [b"resolved"]


async def test_client_errors_are_the_node_errors_not_exception_groups(node: DyndProcess) -> None:
    """An error raised inside `async with open_client(...)` reaches the caller as itself."""
    with pytest.raises(BadRequest):
        async with open_client(node.address) as client:
            await client.get(b"")


def test_blocking_client(node: DyndProcess) -> None:
    key = fresh_key("blocking")
    with BlockingClient(node.address) as client:
        assert client.ping() == NODE_NAME
        assert client.get(key).values == []
        context = client.put(key, b"first")
        client.put(key, b"second", context)
        read = client.get(key)
        assert read.values == [b"second"]
        client.delete(key, read.context)
        assert client.get(key).values == []
        with pytest.raises(BadRequest):
            client.get(b"")
        assert client.ping() == NODE_NAME  # an error reply leaves the connection usable


# ---- restarts ----


async def _write_mixed(address: str, prefix: str) -> dict[bytes, list[bytes]]:
    """Plain keys, sibling sets and a tombstone; returns what each key must read back as."""
    expected: dict[bytes, list[bytes]] = {}
    async with open_client(address) as client:
        for index in range(50):
            key = f"{prefix}:plain:{index}".encode()
            await client.put(key, b"p%d" % index)
            expected[key] = [b"p%d" % index]
        for index in range(5):
            key = f"{prefix}:siblings:{index}".encode()
            await client.put(key, b"x")
            await client.put(key, b"y")
            expected[key] = [b"x", b"y"]
        key = f"{prefix}:deleted".encode()
        await client.put(key, b"doomed")
        await client.delete(key, (await client.get(key)).context)
        expected[key] = []
    return expected


async def _check(address: str, expected: dict[bytes, list[bytes]]) -> None:
    async with open_client(address) as client:
        for key, values in expected.items():
            assert values_of(await client.get(key)) == values, key


async def test_restart_keeps_all_data(dynd_factory: DyndFactory) -> None:
    proc = dynd_factory("r1")
    expected = await _write_mixed(proc.address, "before")
    async with open_client(proc.address) as client:
        pending_context = (await client.get(b"before:siblings:0")).context
    assert proc.stop() == 0
    proc.start()
    await _check(proc.address, expected)
    async with open_client(proc.address) as client:
        # a context read before the restart still supersedes what it saw, and only that
        await client.put(b"before:siblings:1", b"z")
        await client.put(b"before:siblings:0", b"resolved", pending_context)
        assert (await client.get(b"before:siblings:0")).values == [b"resolved"]
        assert values_of(await client.get(b"before:siblings:1")) == [b"x", b"y", b"z"]
        # new writes get fresh dots: a blind put beside an old sibling makes a new sibling
        await client.put(b"before:plain:0", b"blind")
        assert values_of(await client.get(b"before:plain:0")) == [b"blind", b"p0"]
    assert proc.stop() == 0
    proc.start()
    expected[b"before:siblings:0"] = [b"resolved"]
    expected[b"before:siblings:1"] = [b"x", b"y", b"z"]
    expected[b"before:plain:0"] = [b"blind", b"p0"]
    await _check(proc.address, expected)


async def _actor_of_a_new_write(address: str, key: bytes) -> str:
    async with open_client(address) as client:
        await client.put(key, b"v")
        (sibling,) = (await client.get(key)).siblings
    return str(sibling.dot[0])


async def test_a_clean_stop_keeps_the_actor_epoch_and_a_crash_renews_it(dynd_factory: DyndFactory) -> None:
    # A crashed coordinator may have sent dots its own store never committed, so its next start
    # must not issue counters of that epoch again; a clean stop committed everything it issued.
    proc = dynd_factory("epoch1")
    first = await _actor_of_a_new_write(proc.address, b"epoch:a")
    assert proc.stop() == 0
    proc.start()
    assert await _actor_of_a_new_write(proc.address, b"epoch:b") == first, "a clean stop keeps the epoch"
    proc.kill9()
    proc.start()
    renewed = await _actor_of_a_new_write(proc.address, b"epoch:c")
    assert renewed != first and renewed.startswith("epoch1."), "a crash takes a new epoch"
    assert proc.stop() == 0
    proc.start()
    assert await _actor_of_a_new_write(proc.address, b"epoch:d") == renewed


# ---- a full disk ----


async def test_storage_full_is_a_clear_error_and_reads_still_work(dynd_factory: DyndFactory) -> None:
    # A 2 MiB map fills after roughly 160 values of 4 KiB (each takes two pages plus copy-on-write).
    map_bytes = 2 * 1024 * 1024
    proc = dynd_factory("full1", config_text=f"[limits]\nlmdb_map_bytes = {map_bytes}\n")
    written: dict[bytes, bytes] = {}
    async with open_client(proc.address) as client:
        error: StorageFull | None = None
        for index in range(5000):
            key = b"fill:%05d" % index
            value = bytes([index % 256]) * 4096
            try:
                await client.put(key, value)
            except StorageFull as exc:
                error = exc
                break
            written[key] = value
        assert error is not None, "5000 values of 4 KiB did not fill a 2 MiB map"
        assert len(written) >= 50, f"the map was full after only {len(written)} values"
        assert "lmdb_map_bytes" in error.message and not error.retriable
        print(f"storage_full after {len(written)} values: {error.message}")
        # the node stays up and serves reads of everything acknowledged
        assert await client.ping() == "full1"
        for key, value in written.items():
            assert (await client.get(key)).values == [value], key
        # a refused write left nothing behind, and new writes keep being refused clearly
        assert (await client.get(b"fill:%05d" % len(written))).values == []
        for attempt in range(3):
            with pytest.raises(StorageFull):
                await client.put(b"fill:new:%d" % attempt, b"v" * 4096)
    assert proc.running
    # the advice in the message works: raise the limit and restart
    assert proc.config_path is not None
    proc.config_path.write_text(f"[limits]\nlmdb_map_bytes = {4 * map_bytes}\n")
    assert proc.stop() == 0
    proc.start()
    async with open_client(proc.address) as client:
        await client.put(b"fill:after-resize", b"fits now")
        assert (await client.get(b"fill:after-resize")).values == [b"fits now"]
        first = next(iter(written))
        assert (await client.get(first)).values == [written[first]]


# ---- signals ----


async def test_sigterm_exits_zero_within_a_deadline(dynd_factory: DyndFactory) -> None:
    proc = dynd_factory("term1")
    async with open_client(proc.address) as client:
        for index in range(20):
            await client.put(b"term:%d" % index, b"v")
        # an idle client stays connected while the node stops
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        code = proc.wait(STOP_DEADLINE_S)
    elapsed = time.monotonic() - started
    assert code == 0, proc.stderr_tail()
    assert elapsed < STOP_DEADLINE_S
    assert "stopped cleanly" in proc.stderr_text()
    proc.start()
    await _check(proc.address, {b"term:%d" % i: [b"v"] for i in range(20)})


async def test_sigterm_during_a_stream_of_puts_exits_zero_and_keeps_acknowledged_writes(dynd_factory: DyndFactory) -> None:
    proc = dynd_factory("term2")
    acknowledged: list[bytes] = []
    async with open_client(proc.address) as client:

        async def writer() -> None:
            for index in range(100_000):
                key = b"stream:%d" % index
                try:
                    await client.put(key, b"v")
                except DynError:
                    return
                acknowledged.append(key)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            with trio.fail_after(STOP_DEADLINE_S):
                while len(acknowledged) < 50:
                    await trio.sleep(0.01)
            proc.signal(signal.SIGTERM)
            with trio.fail_after(STOP_DEADLINE_S):
                while proc.running:
                    await trio.sleep(0.02)
    assert proc.wait(1) == 0, proc.stderr_tail()
    proc.start()
    await _check(proc.address, {key: [b"v"] for key in acknowledged})


# ---- refusing to start ----


BAD_CONFIGS = {
    "unknown-key": ("[limits]\nframe_bytes_maximum = 5\n", "frame_bytes_maximum"),
    "unknown-node-key": ('[node]\nnmae = "x"\n', "nmae"),
    "unknown-table": ("[limit]\nframe_bytes_max = 5\n", "[limit]"),
    "wrong-type": ('[limits]\nframe_timeout_ms = "fast"\n', "frame_timeout_ms"),
    "wrong-type-float": ("[limits]\nvalue_bytes_max = 1.5\n", "value_bytes_max"),
    "wrong-type-name": ("[node]\nname = 5\n", "[node] name"),
    "invalid-toml": ("[limits\nframe_timeout_ms = 1\n", "TOML"),
    "invalid-toml-value": ("[limits]\nframe_timeout_ms = \n", "TOML"),
    "zero-limit": ("[limits]\nframe_timeout_ms = 0\n", "frame_timeout_ms"),
    "limits-disagree": ("[limits]\nvalue_bytes_max = 8388608\n", "value_bytes_max"),
    "partitions-not-power-of-two": ("[cluster]\npartitions = 100\n", "100"),
}


@pytest.mark.parametrize("kind", sorted(BAD_CONFIGS))
def test_bad_config_exits_2_naming_the_problem(tmp_path: Path, kind: str) -> None:
    text, named = BAD_CONFIGS[kind]
    config = tmp_path / "dynd.toml"
    config.write_text(text)
    data_dir = tmp_path / "data"
    result = run_dynd("--name", "cfg1", "--listen", "127.0.0.1:1", "--data-dir", str(data_dir), "--config", str(config))
    assert result.returncode == 2, result
    assert named in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert not data_dir.exists(), "a config error must stop dynd before it touches the data dir"


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = run_dynd("--name", "cfg1", "--data-dir", str(tmp_path / "data"), "--config", str(missing))
    assert result.returncode == 2, result
    assert str(missing) in result.stderr, result.stderr


def test_data_dir_of_another_node_refuses_to_start(dynd_factory: DyndFactory) -> None:
    """Exit 2, a configuration error: restarting cannot help, so the unit does not restart it."""
    first = dynd_factory("owner1")
    with BlockingClient(first.address) as client:
        client.put(b"mine", b"owner1's")
    assert first.stop() == 0
    result = run_dynd("--name", "intruder", "--listen", first.address, "--data-dir", str(first.data_dir))
    assert result.returncode == 2, result
    assert "owner1" in result.stderr and "intruder" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    # and the rightful owner still starts with its data intact
    first.start()
    with BlockingClient(first.address) as client:
        assert client.get(b"mine").values == [b"owner1's"]


def test_data_dir_created_with_other_partitions_refuses_to_start(dynd_factory: DyndFactory) -> None:
    first = dynd_factory("parts1")
    assert first.stop() == 0
    result = run_dynd("--name", "parts1", "--listen", first.address, "--data-dir", str(first.data_dir), "--partitions", "64")
    assert result.returncode == 2, result
    assert "64" in result.stderr and "256" in result.stderr, result.stderr


def test_data_dir_in_use_by_a_running_node_refuses_to_start(dynd_factory: DyndFactory) -> None:
    """Two processes on one LMDB environment with the same identity issue the same dots for
    different writes, so one of each such pair of acknowledged writes is lost: the second must
    refuse to start (exit 1) while the first runs."""
    first = dynd_factory("busy1")
    second = dynd_factory("busy1", start=False, data_dir=first.data_dir)
    try:
        second.start()
    except DyndError as exc:
        assert "exited with code 1" in str(exc), exc
    else:
        second.stop()
        pytest.fail(f"a second dynd started on {first.data_dir}, which a running dynd (pid {first.pid}) holds")
    assert first.running
    with BlockingClient(first.address) as client:
        assert client.ping() == "busy1"


def test_a_taken_udp_port_stops_start_up_with_a_clear_error(tmp_path: Path) -> None:
    """The failure detector shares the TCP port number; a node that cannot hear it must not run."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = run_dynd("--name", "udp1", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 1
    assert f"failure detector's UDP port 127.0.0.1:{port}" in result.stderr and "in use" in result.stderr
