"""The node's side of `dynctl backup` (`dynd.shell.backup`), through the real `Server`, over a
real LMDB store in a temporary directory: what a backup holds, and what bad requests get.

Connections run over a socketpair (a remote connection, `tests.unit.test_hello`), so the role
comes from the token given: admin may back up, a client may not.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import lmdb
import pytest
import trio

from dynd.core.limits import Limits
from dynd.protocol import messages
from dynd.shell.backup import FILE_PREFIX, FILE_SUFFIX, BackupService
from dynd.shell.server import Server
from dynd.protocol import codec
from dynd.protocol.framing import encode_frame
from dynd.storage.base import PutHint, PutMeta, PutObject, object_key
from dynd.storage.lmdb_store import LmdbStore
from tests.unit.test_hello import ADMIN_TOKEN, CLIENT_TOKEN, FakeNode, Raw, hello, remote_connection, security

TOKENS = f"admin {ADMIN_TOKEN}\nclient {CLIENT_TOKEN}\n"
CHUNK = 64 * 1024
LIMITS = Limits(backup_chunk_bytes=CHUNK)
TAKEN_MS = 1_700_000_000_000
DEADLINE_S = 10.0


def fill(store: LmdbStore, keys: int = 400, value_bytes: int = 3000) -> dict[bytes, bytes]:
    """Objects (a few MB, so a copy is many chunks), a hint and some meta."""
    objects = {f"key-{i:05d}".encode(): os.urandom(value_bytes) for i in range(keys)}
    store.write([PutObject(i % 8, key, value) for i, (key, value) in enumerate(objects.items())])
    store.write([PutHint("n2", 3, b"hinted", b"record"), PutMeta("node_name", b"n1")])
    return objects


class Node:
    """A backup service and the server in front of it, on one store."""

    def __init__(self, path: Path, limits: Limits, store: Any) -> None:
        self.data_dir = path
        self.store = store
        self.service = BackupService(store, str(path), limits, identity=lambda: ("n1", "c0ffee"), wall_ms=lambda: TAKEN_MS)
        self.server = Server(FakeNode(), limits, security(tokens=TOKENS), shell_handlers=self.service.handlers)  # type: ignore[arg-type]
        self.nursery: trio.Nursery | None = None

    def copies(self) -> list[str]:
        return sorted(name for name in os.listdir(self.data_dir) if name.startswith(FILE_PREFIX) and name.endswith(FILE_SUFFIX))

    @asynccontextmanager
    async def admin(self, token: str = ADMIN_TOKEN) -> AsyncIterator[Raw]:
        async with remote_connection(self.server) as conn:
            await conn.send(hello(token=token))
            await conn.receive()
            yield conn


@asynccontextmanager
async def running(tmp_path: Path, limits: Limits = LIMITS, store: Any = None) -> AsyncIterator[Node]:
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    own_store = store is None
    if store is None:
        store = LmdbStore(str(data_dir / "lmdb"), map_bytes=1 << 28)
    node = Node(data_dir, limits, store)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.service.run)
            node.nursery = nursery
            yield node
            nursery.cancel_scope.cancel()
    finally:
        if own_store:
            store.close()


async def ask(conn: Raw, request: Any) -> Any:
    await conn.send(request)
    return await conn.receive()


async def poll(what: str, check: Callable[[], bool]) -> None:
    """Wait for `check` under a deadline (the service cleans up in its own task)."""
    deadline = trio.current_time() + DEADLINE_S
    while not check():
        if trio.current_time() > deadline:
            raise AssertionError(f"{what} did not happen within {DEADLINE_S} s")
        await trio.sleep(0.01)


async def read_all(conn: Raw, backup: int, first_id: int = 100) -> tuple[bytes, messages.BackupChunk]:
    data = bytearray()
    request_id = first_id
    while True:
        request_id += 1
        chunk = await ask(conn, messages.BackupRead(id=request_id, backup=backup, offset=len(data)))
        assert isinstance(chunk, messages.BackupChunk), chunk
        assert chunk.id == request_id and chunk.offset == len(data) and len(chunk.data) <= CHUNK
        data += chunk.data
        if chunk.done and len(data) == chunk.size:
            return bytes(data), chunk


# ---- what a backup holds ----


async def test_a_backup_is_the_whole_store_and_its_digest_and_the_copy_goes_when_it_ends(tmp_path: Path) -> None:
    async with running(tmp_path) as node:
        objects = fill(node.store)
        async with node.admin() as conn:
            started = await ask(conn, messages.BackupStart(id=1))
            assert isinstance(started, messages.BackupStartOk), started
            assert (started.node, started.cluster, started.taken_ms, started.chunk_bytes) == ("n1", "c0ffee", TAKEN_MS, CHUNK)
            assert len(node.copies()) == 1
            data, last = await read_all(conn, started.backup)
            assert last.sha256 == hashlib.sha256(data).digest()
            assert 0 < len(data) <= started.estimate_bytes
            again = await ask(conn, messages.BackupRead(id=7, backup=started.backup, offset=CHUNK))  # a repeated read
            assert again.data == data[CHUNK : 2 * CHUNK]
            at_end = await ask(conn, messages.BackupRead(id=8, backup=started.backup, offset=len(data)))
            assert at_end.data == b"" and at_end.done
            assert await ask(conn, messages.BackupEnd(id=9, backup=started.backup)) == messages.BackupEndOk(id=9, backup=started.backup)
            await poll("the copy deleted", lambda: node.copies() == [] and node.service.in_progress == 0)
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    (copy_dir / "data.mdb").write_bytes(data)
    restored = LmdbStore(str(copy_dir), map_bytes=1 << 28)
    try:
        assert {key: restored.get_object(i % 8, key) for i, key in enumerate(objects)} == objects
        assert restored.get_hint("n2", 3, b"hinted") == b"record"
        assert restored.get_meta("node_name") == b"n1"
    finally:
        restored.close()


async def test_the_backup_is_one_snapshot_while_writes_go_on(tmp_path: Path) -> None:
    """A thread commits batches throughout the backup, each writing its generation number to two
    keys: the copy holds both keys at the same generation (a file copied while it changes would not)."""
    async with running(tmp_path) as node:
        fill(node.store, keys=2000)
        node.store.write([PutObject(0, b"pair-a", b"0"), PutObject(1, b"pair-b", b"0")])
        stop = threading.Event()
        writing = threading.Event()  # two batches committed: the writer runs
        generations: list[int] = []

        def write_pairs() -> None:
            generation = 0
            while not stop.is_set():
                generation += 1
                value = str(generation).encode() * 500
                node.store.write([PutObject(0, b"pair-a", value), PutObject(1, b"pair-b", value)])
                if generation == 2:
                    writing.set()
            generations.append(generation)

        writer = threading.Thread(target=write_pairs)
        writer.start()
        try:
            with trio.fail_after(30):
                while not writing.is_set():
                    await trio.sleep(0.01)  # poll: a thread's event, with a deadline
            async with node.admin() as conn:
                started = await ask(conn, messages.BackupStart(id=1))
                data, _ = await read_all(conn, started.backup)
                await ask(conn, messages.BackupEnd(id=2, backup=started.backup))
        finally:
            stop.set()
            writer.join()
    path = tmp_path / "copy"
    path.mkdir()
    (path / "data.mdb").write_bytes(data)
    env = lmdb.open(str(path), max_dbs=8, readonly=True, lock=False)
    with env.begin() as txn:
        objects = env.open_db(b"objects", txn=txn, create=False)
        pair = [txn.get(object_key(partition, key), db=objects) for partition, key in ((0, b"pair-a"), (1, b"pair-b"))]
    env.close()
    assert pair[0] is not None
    assert pair[0] == pair[1], "the two keys of one batch at different generations: not one snapshot"
    copied_generation = int(pair[0][: len(pair[0]) // 500])
    assert 2 <= copied_generation <= generations[0], "the copy holds a batch the writer made while it ran"


async def test_a_read_sent_the_moment_the_start_is_answered_finds_the_backup(tmp_path: Path) -> None:
    """The reply to BackupStart goes out only once the backup can take reads: a client that reads
    at once (in the same pass of the event loop, here) must not be told there is no such backup."""
    async with running(tmp_path) as node:
        fill(node.store)
        replies: list[Any] = []
        got_chunk = trio.Event()

        def on_read(reply: Any) -> None:
            replies.append(reply)
            got_chunk.set()

        def on_start(reply: Any) -> None:
            replies.append(reply)
            node.service.read(messages.BackupRead(id=2, backup=reply.backup, offset=0), on_read)

        node.service.start(messages.BackupStart(id=1), on_start)
        with trio.fail_after(DEADLINE_S):
            await got_chunk.wait()
        assert [type(reply) for reply in replies] == [messages.BackupStartOk, messages.BackupChunk], replies


# ---- bad requests ----


async def test_an_unknown_backup_id_is_a_bad_request_and_changes_nothing(tmp_path: Path) -> None:
    async with running(tmp_path) as node:
        fill(node.store)
        async with node.admin() as conn:
            started = await ask(conn, messages.BackupStart(id=1))
            for request in (messages.BackupRead(id=2, backup=started.backup + 1, offset=0), messages.BackupEnd(id=3, backup=12345)):
                refused = await ask(conn, request)
                assert isinstance(refused, messages.ErrorReply) and refused.code == "bad_request" and refused.id == request.id
                assert "no backup" in refused.message
            data, last = await read_all(conn, started.backup)  # the real one is untouched
            assert hashlib.sha256(data).digest() == last.sha256


async def test_an_offset_beyond_the_copy_is_a_bad_request_and_the_backup_goes_on(tmp_path: Path) -> None:
    async with running(tmp_path) as node:
        fill(node.store)
        async with node.admin() as conn:
            started = await ask(conn, messages.BackupStart(id=1))
            data, last = await read_all(conn, started.backup)
            refused = await ask(conn, messages.BackupRead(id=2, backup=started.backup, offset=len(data) + 1))
            assert isinstance(refused, messages.ErrorReply) and refused.code == "bad_request"
            assert f"beyond the copy's {len(data)} bytes" in refused.message
            await conn.sock.send(encode_frame(codec.dumps({"op": "backup_read", "id": 3, "backup": started.backup, "offset": -1})))
            negative = await conn.receive()
            assert isinstance(negative, messages.ErrorReply) and negative.code == "bad_request"
            assert (await ask(conn, messages.BackupRead(id=4, backup=started.backup, offset=0))).data == data[:CHUNK]


async def test_a_second_backup_is_refused_while_one_runs_and_taken_once_it_ends(tmp_path: Path) -> None:
    async with running(tmp_path) as node:
        fill(node.store)
        async with node.admin() as conn:
            first = await ask(conn, messages.BackupStart(id=1))
            refused = await ask(conn, messages.BackupStart(id=2))
            assert isinstance(refused, messages.ErrorReply) and refused.code == "overloaded" and refused.retriable
            assert "backups_max=1" in refused.message
            assert len(node.copies()) == 1
            await ask(conn, messages.BackupEnd(id=3, backup=first.backup))
            await poll("the slot freed", lambda: node.service.in_progress == 0)
            second = await ask(conn, messages.BackupStart(id=4))
            assert isinstance(second, messages.BackupStartOk) and second.backup != first.backup


async def test_reads_of_one_backup_in_flight_are_bounded(tmp_path: Path) -> None:
    """Each read holds a chunk until its reply is sent: a client pipelining more than
    backup_reads_inflight_max is told to wait, and the reads it had in flight are answered."""
    store = EndlessStore()  # a copy that stays at its end: each read there waits for more
    limits = dataclasses.replace(LIMITS, backup_reads_inflight_max=2, backup_read_wait_ms=2_000)
    async with running(tmp_path, limits, store=store) as node:
        async with node.admin() as conn:
            started = await ask(conn, messages.BackupStart(id=1))
            first = await ask(conn, messages.BackupRead(id=2, backup=started.backup, offset=0))
            end = first.copied_bytes
            for request_id in (3, 4, 5):  # all at the end of the copy so far: the first two wait
                await conn.send(messages.BackupRead(id=request_id, backup=started.backup, offset=end))
            replies = {}
            for _ in range(3):
                reply = await conn.receive()
                replies[reply.id] = reply
            assert replies[5].code == "overloaded" and "backup_reads_inflight_max=2" in replies[5].message
            assert isinstance(replies[3], messages.BackupChunk) and isinstance(replies[4], messages.BackupChunk)
            await ask(conn, messages.BackupEnd(id=6, backup=started.backup))


async def test_backups_max_allows_more_at_once(tmp_path: Path) -> None:
    async with running(tmp_path, dataclasses.replace(LIMITS, backups_max=2)) as node:
        fill(node.store)
        async with node.admin() as conn:
            replies = [await ask(conn, messages.BackupStart(id=i)) for i in (1, 2, 3)]
    assert [type(r) for r in replies] == [messages.BackupStartOk, messages.BackupStartOk, messages.ErrorReply]


async def test_only_an_admin_may_back_up(tmp_path: Path) -> None:
    async with running(tmp_path) as node:
        fill(node.store)
        async with node.admin() as admin:
            started = await ask(admin, messages.BackupStart(id=1))
            async with node.admin(token=CLIENT_TOKEN) as client:
                for request in (messages.BackupStart(id=2), messages.BackupRead(id=3, backup=started.backup, offset=0), messages.BackupEnd(id=4, backup=started.backup)):
                    refused = await ask(client, request)
                    assert isinstance(refused, messages.ErrorReply) and refused.code == "unauthorized", request
                    assert f"{request.OP} needs an admin token" in refused.message
            assert node.service.in_progress == 1  # the client's end did not end it
            data, last = await read_all(admin, started.backup)
            assert hashlib.sha256(data).digest() == last.sha256


async def test_a_backup_nobody_reads_is_dropped_after_the_idle_timeout(tmp_path: Path) -> None:
    limits = dataclasses.replace(LIMITS, backup_idle_timeout_ms=300, backup_read_wait_ms=100)
    async with running(tmp_path, limits) as node:
        fill(node.store)
        async with node.admin() as conn:
            started = await ask(conn, messages.BackupStart(id=1))
            await poll("the idle backup dropped", lambda: node.copies() == [] and node.service.in_progress == 0)
            gone = await ask(conn, messages.BackupRead(id=2, backup=started.backup, offset=0))
            assert isinstance(gone, messages.ErrorReply) and gone.code == "bad_request" and "no backup" in gone.message


# ---- a copy that does not end well ----


class EndlessStore:
    """A store whose copy never finishes: it writes until the pipe's reader goes away."""

    def __init__(self) -> None:
        self.copy_ended = False

    def stat(self) -> dict[str, int]:
        return {"last_page": 15, "page_bytes": 4096, "map_bytes": 1 << 20}

    def copy_compacted(self, fd: int) -> None:
        try:
            while True:
                os.write(fd, b"y" * 4096)
                time.sleep(0.001)  # a slow disk; this thread is the store's, not the test's
        finally:
            self.copy_ended = True


class FailingStore(EndlessStore):
    def copy_compacted(self, fd: int) -> None:
        os.write(fd, b"z" * 10_000)
        raise OSError(errno.ENOSPC, "No space left on device")


async def test_ending_a_backup_stops_its_copy_and_deletes_it(tmp_path: Path) -> None:
    store = EndlessStore()
    async with running(tmp_path, store=store) as node:
        async with node.admin() as conn:
            started = await ask(conn, messages.BackupStart(id=1))
            chunk = await ask(conn, messages.BackupRead(id=2, backup=started.backup, offset=0))
            assert not chunk.done and chunk.copied_bytes >= len(chunk.data)
            await ask(conn, messages.BackupEnd(id=3, backup=started.backup))
            await poll("the copy stopped and deleted", lambda: store.copy_ended and node.copies() == [] and node.service.in_progress == 0)


async def test_a_node_that_stops_mid_backup_stops_the_copy_and_deletes_it(tmp_path: Path) -> None:
    store = EndlessStore()
    async with running(tmp_path, store=store) as node:
        async with node.admin() as conn:
            await ask(conn, messages.BackupStart(id=1))
            assert node.copies() != []
    # `running` returned: the service's nursery is done, which waited for the copy's threads
    assert store.copy_ended and node.copies() == []


async def test_a_failed_copy_is_reported_to_the_next_read_and_deleted(tmp_path: Path) -> None:
    async with running(tmp_path, store=FailingStore()) as node:
        async with node.admin() as conn:
            started = await ask(conn, messages.BackupStart(id=1))
            offset = 0
            for request_id in range(2, 100):
                reply = await ask(conn, messages.BackupRead(id=request_id, backup=started.backup, offset=offset))
                if isinstance(reply, messages.ErrorReply):
                    break
                offset += len(reply.data)
            assert reply.code == "storage_full", reply
            await poll("the failed copy deleted", lambda: node.copies() == [] and node.service.in_progress == 0)


async def test_the_copy_needs_room_in_the_data_directory(tmp_path: Path) -> None:
    class HugeStore(EndlessStore):
        def stat(self) -> dict[str, int]:
            return {"last_page": 2**50, "page_bytes": 4096, "map_bytes": 2**62}

    async with running(tmp_path, store=HugeStore()) as node:
        async with node.admin() as conn:
            refused = await ask(conn, messages.BackupStart(id=1))
            assert isinstance(refused, messages.ErrorReply) and refused.code == "storage_full" and "free" in refused.message
        assert node.copies() == []


async def test_copies_left_by_a_killed_node_are_removed_at_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    left = data_dir / f"{FILE_PREFIX}00000000000000ab{FILE_SUFFIX}"
    left.write_bytes(b"half a copy")
    unrelated = data_dir / "notes.txt"
    unrelated.write_text("kept")
    async with running(tmp_path) as node:
        assert node.copies() == []
    assert unrelated.exists()


def test_backup_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="backup_chunk_bytes"):
        Limits(backup_chunk_bytes=16 * 1024 * 1024 + 1)
    with pytest.raises(ValueError, match="backup_read_wait_ms"):
        Limits(backup_read_wait_ms=5_000, backup_idle_timeout_ms=5_000)
    with pytest.raises(ValueError, match="backups_max"):
        Limits(backups_max=0)
