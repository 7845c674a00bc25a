"""Ownership handoff: data a node holds for partitions it is no longer a primary of moves away.

Every interval the node looks for partitions where it holds keys but is not among the N primaries
(after a join, a leave or a remove, or writes it took for a partition it never owned). For each, it
sends the keys in batches to every primary; each primary merges them and confirms once they are
durable. Only then does the old holder delete a key, and only if its record is still the one it
sent, so a write that arrived meanwhile stays (and goes out on the next pass). A leaving node that
holds nothing more records its own removal.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from dynd.core.membership import LEAVING
from dynd.protocol import messages
from dynd.protocol.errors import DynError
from dynd.storage.base import DeleteObject, Store

log = logging.getLogger("dynd.handoff")

BATCHES_PER_PARTITION_MAX = 10_000


class Handoff:
    def __init__(self, node: Any, store: Store, *, interval_s: float, batch_keys: int) -> None:
        self.node = node
        self.store = store
        self.interval_s = interval_s
        self.batch_keys = batch_keys

    async def run(self) -> None:
        while True:
            await trio.sleep(self.interval_s)
            try:
                await self.pass_once()
            except DynError as exc:
                log.warning("handoff pass stopped: %s", exc)
            except Exception:  # a bug here must not stop the node; the next pass tries again
                log.exception("handoff pass failed")

    def partitions_to_move(self) -> list[int]:
        node = self.node
        return [
            partition
            for partition in range(node.replica.partitions)
            if node.name not in node.cluster.preference_list(partition).primaries and self._holds_data(partition)
        ]

    async def pass_once(self) -> None:
        pending = self.partitions_to_move()
        self.node.transfers_pending = len(pending)
        for partition in pending:
            if await self._move(partition):
                self.node.transfers_pending -= 1
            await trio.lowlevel.checkpoint()  # foreground requests go first
        me = self.node.cluster.membership.members.get(self.node.name)
        if me is not None and me.status == LEAVING and not self.partitions_to_move():
            log.info("handed everything off; recording this node's removal")
            self.node.cluster.finish_leaving()

    def _holds_data(self, partition: int) -> bool:
        keys = self.store.iter_partition(partition)
        try:
            return next(keys, None) is not None
        finally:
            keys.close()  # type: ignore[attr-defined]

    def _next_batch(self, partition: int) -> list[messages.HandoffItem]:
        keys = self.store.iter_partition(partition)
        try:
            found = [key for (key, _stored), _ in zip(keys, range(self.batch_keys))]
        finally:
            keys.close()  # type: ignore[attr-defined]
        items = []
        for key in found:
            record = self.node.committer.read_object(partition, key)  # the newest, queued writes included
            if record is not None:
                items.append(messages.HandoffItem(key, record))
        return items

    async def _move(self, partition: int) -> bool:
        """Move one partition; True when nothing of it is left here."""
        moved = 0
        for _ in range(BATCHES_PER_PARTITION_MAX):
            targets = self.node.cluster.preference_list(partition).primaries
            if self.node.name in targets:
                return True  # the ring changed back: we own it again
            items = self._next_batch(partition)
            if not items:
                if moved:
                    log.info("handed off partition %d (%d keys) to %s", partition, moved, ", ".join(targets))
                return True
            if not await self._send_to_all(targets, partition, items):
                return False
            moved += await self._delete_unchanged(partition, items)
        return False

    async def _send_to_all(self, targets: tuple[str, ...], partition: int, items: list[messages.HandoffItem]) -> bool:
        answers: dict[str, Any] = {}
        all_answered = trio.Event()

        def answered(node: str) -> Any:
            def record(reply: Any) -> None:
                answers[node] = reply
                if len(answers) == len(targets):
                    all_answered.set()

            return record

        for target in targets:
            self.node.peers.send(target, lambda rid: messages.Handoff(id=rid, partition=partition, items=items), answered(target))
        with trio.move_on_after(self.node.request_timeout_ms / 1000 * 2):
            await all_answered.wait()
        failed = [t for t in targets if not isinstance(answers.get(t), messages.HandoffOk)]
        if failed:
            log.info("handoff of partition %d waits for %s", partition, ", ".join(failed))
            return False
        return True

    async def _delete_unchanged(self, partition: int, items: list[messages.HandoffItem]) -> int:
        """Delete the sent keys that did not change meanwhile; return how many went."""
        ops = [
            DeleteObject(partition, item.key)
            for item in items
            if self.node.committer.read_object(partition, item.key) == item.record
        ]
        if not ops:
            return 0
        done = trio.Event()
        self.node.committer.submit(ops, lambda error: done.set())
        await done.wait()
        return len(ops)
