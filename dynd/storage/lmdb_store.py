"""The LMDB Store: one environment per node with databases `objects`, `hints` and `meta`.

Durability: sync and metasync are on and writemap is off, so a committed transaction is on disk
when `write` returns. Callers batch many operations into one `write` (group commit, see
`dynd.shell.committer`); LMDB allows one writer at a time, and readers never block it.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterable, Iterator

import lmdb

from dynd.protocol.errors import Internal, KeyTooLarge, StorageFull
from dynd.storage import base
from dynd.storage.base import WriteOp

log = logging.getLogger("dynd.storage")

MAX_DATABASES = 8
LOCK_FILE = "dynd.lock"


class StoreInUse(RuntimeError):
    """Another process has this environment open. LMDB itself would allow it; two nodes issuing
    dots from one directory would not be safe, so the store refuses."""


class LmdbStore:
    def __init__(self, path: str, *, map_bytes: int, lock_directory: bool = True) -> None:
        """`lock_directory=False` is for the node's own writer process, whose parent holds the lock."""
        os.makedirs(path, exist_ok=True)
        self.path = path
        self._lock_fd: int | None = None
        if lock_directory:
            self._lock_fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lock_fd)
                raise StoreInUse(f"{path} is in use by another process") from None
        self._env = lmdb.open(
            path,
            map_size=map_bytes,
            max_dbs=MAX_DATABASES,
            subdir=True,
            sync=True,
            metasync=True,
            writemap=False,
            map_async=False,
            readahead=False,
            lock=True,
        )
        stale = self._env.reader_check()
        if stale:
            log.warning("cleared %d stale LMDB reader slots left by a dead process", stale)
        self._objects = self._env.open_db(b"objects")
        self._hints = self._env.open_db(b"hints")
        self._meta = self._env.open_db(b"meta")
        self._dbs = {base.OBJECTS: self._objects, base.HINTS: self._hints, base.META: self._meta}
        self.max_key_bytes = self._env.max_key_size()

    def get_object(self, partition: int, key: bytes) -> bytes | None:
        with self._env.begin(db=self._objects, buffers=False) as txn:
            return txn.get(base.object_key(partition, key))  # type: ignore[no-any-return]

    def iter_partition(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        start = base.object_key(partition, b"")
        with self._env.begin(db=self._objects) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(start):
                return
            for encoded, data in cursor:
                found_partition, key = base.split_object_key(encoded)
                if found_partition != partition:
                    return
                yield key, data

    def iter_hints(self, target: str) -> Iterator[tuple[int, bytes, bytes]]:
        prefix = base.hint_prefix(target)
        with self._env.begin(db=self._hints) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(prefix):
                return
            for encoded, data in cursor:
                if not encoded.startswith(prefix):
                    return
                _, partition, key = base.split_hint_key(encoded)
                yield partition, key, data

    def get_hint(self, target: str, partition: int, key: bytes) -> bytes | None:
        with self._env.begin(db=self._hints, buffers=False) as txn:
            return txn.get(base.hint_key(target, partition, key))  # type: ignore[no-any-return]

    def hint_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self._env.begin(db=self._hints) as txn:
            for encoded in txn.cursor().iternext(keys=True, values=False):
                target = base.split_hint_key(bytes(encoded))[0]
                counts[target] = counts.get(target, 0) + 1
        return counts

    def get_meta(self, name: str) -> bytes | None:
        with self._env.begin(db=self._meta) as txn:
            return txn.get(base.meta_key(name))  # type: ignore[no-any-return]

    def write(self, ops: Iterable[WriteOp]) -> None:
        try:
            with self._env.begin(write=True) as txn:
                for op in ops:
                    keyspace, encoded, data = base.row_of(op)
                    if data is None:
                        txn.delete(encoded, db=self._dbs[keyspace])
                    else:
                        txn.put(encoded, data, db=self._dbs[keyspace])
        except lmdb.MapFullError:
            raise StorageFull(
                f"the LMDB map at {self.path} is full; raise lmdb_map_bytes in the config and restart"
            ) from None
        except lmdb.BadValsizeError as exc:
            raise KeyTooLarge(f"storage refused a key: {exc}") from None
        except lmdb.Error as exc:
            raise Internal(f"storage error: {exc}") from exc

    def copy_compacted(self, fd: int) -> None:
        """Write a consistent copy of the whole environment to `fd` (a pipe will do): LMDB's
        compacting copy of one read snapshot, taken when this is called; writers go on meanwhile.
        Blocks for as long as the copy takes (call it from a thread: it releases the GIL); a
        write error on `fd` (such as EPIPE once the reader is gone) ends it with lmdb.Error."""
        self._env.copyfd(fd, compact=True)

    def stat(self) -> dict[str, int]:
        info = self._env.info()
        return {"map_bytes": info["map_size"], "last_page": info["last_pgno"], "page_bytes": self._env.stat()["psize"]}

    def close(self) -> None:
        self._env.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
