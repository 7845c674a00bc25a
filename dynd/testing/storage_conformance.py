"""The checks every implementation of the core's Storage port must pass (`dynd.core.ports.Storage`).

The model is trio's `trio.testing._check_streams`: the checks ship with the package, and each
implementation runs them through a factory. An implementation says how to build one fresh instance
and how to drive it, as a `StorageHarness`:

- `commit()` runs every queued commit now, with the completions it calls and any commit those
  queue in turn (the daemon's group committer waits for its commit task; the simulated disk runs
  its loop; the test double commits at once);
- `fail_next_commit()` makes the next commit fail as a disk error would: it applies nothing and
  each of its completions gets a `DynError`;
- `refuse_writes()` makes every later `submit` raise a `DynError` (disk full, overloaded, shutting
  down: whichever refusal the implementation has) having queued nothing.

`STORAGE_CHECKS` lists the checks, so a test can parametrise over them and name the one that fails;
`check_storage` runs them all. The checks are async (the daemon's port needs its event loop to
commit) but await nothing besides the harness, so they import no event loop library.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from dynd.core.ops import DeleteHint, DeleteObject, PutHint, PutMeta, PutObject, WriteOp
from dynd.core.ports import Storage
from dynd.protocol.errors import DynError


class StorageHarness(Protocol):
    @property
    def storage(self) -> Storage: ...

    async def commit(self) -> None:
        """Run every queued commit now, with its completions (and whatever commits they queue)."""
        ...

    def fail_next_commit(self) -> None:
        """The next commit applies nothing and fails each completion of its batch."""
        ...

    def refuse_writes(self) -> None:
        """From now on `submit` raises a DynError having queued nothing."""
        ...


StorageFactory = Callable[[], AbstractAsyncContextManager[StorageHarness]]
StorageCheck = Callable[[StorageHarness], Awaitable[None]]


class Outcomes:
    """Completions handed to `submit`, recording each call so a check can count them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, DynError | None]] = []

    def named(self, name: str) -> Callable[[DynError | None], None]:
        return lambda error: self.calls.append((name, error))

    def of(self, name: str) -> list[DynError | None]:
        return [error for called, error in self.calls if called == name]


async def _committed(harness: StorageHarness, ops: list[WriteOp]) -> None:
    """Submit `ops` and commit them, checking the commit succeeded."""
    outcomes = Outcomes()
    harness.storage.submit(ops, outcomes.named("setup"))
    await harness.commit()
    assert outcomes.of("setup") == [None], f"a plain commit failed: {outcomes.calls}"


async def check_a_queued_write_is_read_at_once_and_scanned_once_committed(harness: StorageHarness) -> None:
    storage, outcomes = harness.storage, Outcomes()
    storage.submit([PutObject(3, b"k", b"object"), PutHint("b", 3, b"k", b"hint")], outcomes.named("write"))
    assert storage.read_object(3, b"k") == b"object", "a queued object is visible to reads before its commit"
    assert storage.read_hint("b", 3, b"k") == b"hint", "a queued hint is visible to reads before its commit"
    await harness.commit()
    assert outcomes.of("write") == [None]
    assert storage.read_object(3, b"k") == b"object" and storage.read_hint("b", 3, b"k") == b"hint"
    assert storage.partition_keys(3, 10) == [b"k"]
    assert list(storage.partition_items(3)) == [(b"k", b"object")]
    assert storage.hint_batch("b", 10) == [(3, b"k")]
    assert storage.hint_counts() == {"b": 1}


async def check_nothing_written_reads_as_absent(harness: StorageHarness) -> None:
    storage = harness.storage
    assert storage.read_object(0, b"k") is None and storage.read_hint("b", 0, b"k") is None
    assert storage.partition_keys(0, 10) == [] and list(storage.partition_items(0)) == []
    assert storage.hint_batch("b", 10) == [] and storage.hint_counts() == {}


async def check_scans_list_committed_keys_in_key_order_up_to_the_limit(harness: StorageHarness) -> None:
    storage = harness.storage
    keys = [b"m", b"a", b"zz", b"b\x00", b"b", b"\xff"]  # byte order, not submit order
    ops: list[WriteOp] = []
    for partition in (1, 2, 3):
        ops += [PutObject(partition, key, b"%d:" % partition + key) for key in keys]
    ops += [PutHint("b", partition, key, b"h") for partition in (2, 1) for key in keys]
    ops += [PutHint("bb", 0, b"x", b"h"), PutHint("a", 9, b"x", b"h")]  # other targets, sorting next to "b"
    await _committed(harness, ops)
    in_order = sorted(keys)
    assert storage.partition_keys(2, 100) == in_order
    assert storage.partition_keys(2, 3) == in_order[:3]
    assert storage.partition_keys(2, 0) == []
    assert list(storage.partition_items(2)) == [(key, b"2:" + key) for key in in_order]
    assert storage.hint_batch("b", 100) == [(1, key) for key in in_order] + [(2, key) for key in in_order]
    assert storage.hint_batch("b", 4) == [(1, key) for key in in_order[:4]]
    assert storage.hint_counts() == {"a": 1, "b": 2 * len(keys), "bb": 1}


async def check_deletes_hide_at_once_and_leave_the_scans_once_committed(harness: StorageHarness) -> None:
    storage, outcomes = harness.storage, Outcomes()
    await _committed(harness, [PutObject(4, b"k", b"v"), PutObject(4, b"j", b"v"), PutHint("b", 4, b"k", b"h")])
    storage.submit([DeleteObject(4, b"k"), DeleteHint("b", 4, b"k"), DeleteObject(4, b"never written")], outcomes.named("delete"))
    assert storage.read_object(4, b"k") is None and storage.read_hint("b", 4, b"k") is None
    await harness.commit()
    assert outcomes.of("delete") == [None]
    assert storage.read_object(4, b"k") is None and storage.read_hint("b", 4, b"k") is None
    assert storage.partition_keys(4, 10) == [b"j"] and storage.hint_batch("b", 10) == []
    assert storage.hint_counts().get("b", 0) == 0


async def check_the_newest_queued_write_of_a_key_wins(harness: StorageHarness) -> None:
    storage, outcomes = harness.storage, Outcomes()
    await _committed(harness, [PutObject(5, b"k", b"committed")])
    storage.submit([PutObject(5, b"k", b"first")], outcomes.named("first"))
    storage.submit([DeleteObject(5, b"k")], outcomes.named("delete"))
    assert storage.read_object(5, b"k") is None
    storage.submit([PutObject(5, b"k", b"last"), PutHint("b", 5, b"k", b"h1")], outcomes.named("last"))
    storage.submit([PutHint("b", 5, b"k", b"h2")], outcomes.named("hint"))
    assert storage.read_object(5, b"k") == b"last" and storage.read_hint("b", 5, b"k") == b"h2"
    await harness.commit()
    assert [name for name, _ in outcomes.calls] == ["first", "delete", "last", "hint"]
    assert storage.read_object(5, b"k") == b"last" and list(storage.partition_items(5)) == [(b"k", b"last")]
    assert storage.read_hint("b", 5, b"k") == b"h2"


async def check_each_completion_runs_once_in_submit_order(harness: StorageHarness) -> None:
    storage, outcomes = harness.storage, Outcomes()
    storage.submit([PutObject(6, b"a", b"v")], outcomes.named("object"))
    storage.submit([], outcomes.named("empty"))  # the node waits for the queue this way
    storage.submit([PutMeta("name", b"v")], outcomes.named("meta"))
    storage.submit([PutHint("b", 6, b"a", b"h"), DeleteObject(6, b"b")], outcomes.named("mixed"))
    await harness.commit()
    assert outcomes.calls == [("object", None), ("empty", None), ("meta", None), ("mixed", None)]
    await harness.commit()
    assert len(outcomes.calls) == 4, "a completion runs exactly once"


async def check_a_completion_may_submit_more(harness: StorageHarness) -> None:
    storage, outcomes = harness.storage, Outcomes()
    record_second = outcomes.named("second")
    read_in_completion: list[bytes | None] = []  # asserted outside: an implementation may swallow a completion's exception

    def then_more(error: DynError | None) -> None:
        outcomes.calls.append(("first", error))
        storage.submit([PutObject(7, b"second", b"2")], record_second)
        read_in_completion.append(storage.read_object(7, b"second"))

    storage.submit([PutObject(7, b"first", b"1")], then_more)
    await harness.commit()
    assert outcomes.calls == [("first", None), ("second", None)]
    assert read_in_completion == [b"2"]
    assert storage.partition_keys(7, 10) == [b"first", b"second"]


async def check_a_failed_commit_applies_nothing_and_fails_each_completion_once(harness: StorageHarness) -> None:
    storage, outcomes = harness.storage, Outcomes()
    await _committed(harness, [PutObject(8, b"k", b"v1"), PutHint("b", 8, b"k", b"h1")])
    storage.submit([PutObject(8, b"k", b"v2"), PutObject(8, b"new", b"v")], outcomes.named("puts"))
    storage.submit([DeleteHint("b", 8, b"k"), PutHint("b", 8, b"other", b"h")], outcomes.named("hints"))
    harness.fail_next_commit()
    await harness.commit()
    assert [name for name, _ in outcomes.calls] == ["puts", "hints"], "each completion once"
    assert all(isinstance(error, DynError) for _, error in outcomes.calls), outcomes.calls
    assert storage.read_object(8, b"k") == b"v1" and storage.read_object(8, b"new") is None, "reads see the store again"
    assert storage.read_hint("b", 8, b"k") == b"h1" and storage.read_hint("b", 8, b"other") is None
    assert list(storage.partition_items(8)) == [(b"k", b"v1")] and storage.hint_batch("b", 10) == [(8, b"k")]
    await _committed(harness, [PutObject(8, b"k", b"v3")])  # only that commit failed
    assert storage.read_object(8, b"k") == b"v3"


async def check_a_refused_submit_raises_and_queues_nothing(harness: StorageHarness) -> None:
    storage, outcomes = harness.storage, Outcomes()
    await _committed(harness, [PutObject(9, b"k", b"v1")])
    harness.refuse_writes()
    try:
        storage.submit([PutObject(9, b"k", b"v2"), PutHint("b", 9, b"k", b"h")], outcomes.named("refused"))
    except DynError:
        pass
    else:
        raise AssertionError("submit did not refuse the write")
    assert storage.read_object(9, b"k") == b"v1" and storage.read_hint("b", 9, b"k") is None
    await harness.commit()
    assert outcomes.calls == [], "a refused submit never calls its completion"
    assert list(storage.partition_items(9)) == [(b"k", b"v1")] and storage.hint_batch("b", 10) == []


STORAGE_CHECKS: tuple[StorageCheck, ...] = (
    check_a_queued_write_is_read_at_once_and_scanned_once_committed,
    check_nothing_written_reads_as_absent,
    check_scans_list_committed_keys_in_key_order_up_to_the_limit,
    check_deletes_hide_at_once_and_leave_the_scans_once_committed,
    check_the_newest_queued_write_of_a_key_wins,
    check_each_completion_runs_once_in_submit_order,
    check_a_completion_may_submit_more,
    check_a_failed_commit_applies_nothing_and_fails_each_completion_once,
    check_a_refused_submit_raises_and_queues_nothing,
)


async def check_storage(factory: StorageFactory) -> None:
    """Run every check, each on a fresh instance from `factory`."""
    for check in STORAGE_CHECKS:
        async with factory() as harness:
            await check(harness)
