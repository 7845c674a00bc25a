"""What the pure node needs from the world, as two small interfaces the shell and the simulator implement.

The node (`dynd.core.node`) never awaits and never reads a clock: it calls these ports and is
called back later, from the same single thread, with the outcome. The daemon implements them over
TCP and LMDB (`dynd.shell.peers`, `dynd.shell.committer`); the simulator over a virtual network
and an in-memory disk (`dynd.sim`).

Contracts the node relies on:
- Every `send` calls its callback exactly once, later or at once, never raising into the caller:
  a peer that cannot be reached yields `Unreachable`, a reply that does not come in time `Timeout`.
- `submit` either raises a `DynError` (`Overloaded`, `ShuttingDown`, `StorageFull`) having queued
  nothing, or calls its completion exactly once, later or at once: with None once every op is
  durable, or with a `DynError` when the commit failed. A failed commit applied none of its ops
  (a disk error, a full map), or cannot tell (the daemon's writer process died mid-commit): the
  node must treat its writes as not durable, and not as certainly absent. Completions run in
  submit order; one may submit again.
- `read_object` and `read_hint` see every write submitted so far, committed or not: a queued write
  stays visible to reads and merges until its commit lands or fails; after a failure they see the
  store again (unless a write queued since replaced the key).
- `partition_keys`, `partition_items` and `hint_batch` list committed keys in key order (a key still
  queued may be missing until its commit lands).

Every implementation (the daemon's `dynd.shell.storage_port`, the simulator's `dynd.sim.disk`, the
test double `dynd.testing.MemoryStorage`) passes `dynd.testing.storage_conformance`, and they share
one queue of written-but-uncommitted writes (`dynd.storage.queued_writes`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from dynd.protocol.errors import DynError
from dynd.core.ops import WriteOp

ReplyCallback = Callable[[Any], None]  # gets the reply message, or a DynError
Builder = Callable[[int], Any]  # request id -> request message
Completion = Callable[[DynError | None], None]


class Network(Protocol):
    def send(self, node: str, build: Builder, on_reply: ReplyCallback) -> None:
        """Send a request to a member by name."""
        ...

    def send_to_address(self, address: str, build: Builder, on_reply: ReplyCallback) -> None:
        """Send a request to whatever node listens at `address` (a seed, before joining)."""
        ...

    def set_addresses(self, addresses: dict[str, str]) -> None:
        """The members' addresses changed (membership follows gossip)."""
        ...

    def connected(self, node: str) -> bool:
        """Whether a connection to the member is open now (local evidence of liveness)."""
        ...

    def send_datagrams(self, datagrams: list[tuple[str, bytes]]) -> None:
        """Send the failure detector's datagrams, (address, payload) each; never blocks, may drop."""
        ...


class Storage(Protocol):
    def read_object(self, partition: int, key: bytes) -> bytes | None: ...

    def submit(self, ops: Sequence[WriteOp], on_done: Completion) -> None:
        """Queue writes for the next durable commit; `on_done(None)` once they are durable."""
        ...

    def partition_keys(self, partition: int, limit: int) -> list[bytes]:
        """Up to `limit` keys this node holds in `partition`, in key order."""
        ...

    def partition_items(self, partition: int) -> Iterable[tuple[bytes, bytes]]:
        """Every committed (key, record) of `partition` in key order (the start-up scan)."""
        ...

    def read_hint(self, target: str, partition: int, key: bytes) -> bytes | None:
        """The hinted record held for `target`, queued writes included."""
        ...

    def hint_batch(self, target: str, limit: int) -> list[tuple[int, bytes]]:
        """Up to `limit` (partition, key) of hints held for `target`, in key order."""
        ...

    def hint_counts(self) -> dict[str, int]:
        """How many hints are held per target (a full scan: called once, at start)."""
        ...
