"""The node's request handlers: plain calls from the connection reader, replies via callbacks.

Gets answer at once from the committed store plus the commit overlay. Puts and deletes are
versioned by the pure `LocalReplica`, queued for the next group commit, and answered from the
commit's completion, so a reply never goes out before its write is durable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from dynd.core.replica import LocalReplica
from dynd.protocol import codec, messages
from dynd.protocol.errors import DynError
from dynd.shell.committer import GroupCommitter
from dynd.storage.base import PutObject

log = logging.getLogger("dynd.node")

Reply = Callable[[messages.Message], None]


def wall_clock_ms() -> int:
    # Timestamps only order context entries for pruning, so a wall clock is the right source.
    return time.time_ns() // 1_000_000


class Node:
    def __init__(self, name: str, replica: LocalReplica, committer: GroupCommitter, now_ms: Callable[[], int] = wall_clock_ms) -> None:
        self.name = name
        self.replica = replica
        self.committer = committer
        self.now_ms = now_ms
        self.pruned_entries_total = 0

    def get(self, request: messages.Get) -> bytes:
        """The encoded get_ok payload, stitched from the stored record's pre-encoded view."""
        self.replica.check_key(request.key)
        self.replica.check_quorum("r", request.r)
        partition = self.replica.partition(request.key)
        view = self.replica.read(self.committer.read_object(partition, request.key))
        return codec.encode_get_ok_preencoded(request.id, view.siblings_cbor, view.context_cbor)

    def put(self, request: messages.Put | messages.Delete, reply: Reply) -> None:
        """Version and queue the write; `reply` gets PutOk/DeleteOk or an ErrorReply once durable."""
        value = request.value if isinstance(request, messages.Put) else None
        self.replica.check_key(request.key)
        self.replica.check_quorum("w", request.w)
        stored = self.committer.read_object(self.replica.partition(request.key), request.key)
        plan = self.replica.write(request.key, value, request.context, stored, self.now_ms())
        self._note(plan.key, plan.sibling_count, plan.object_bytes, plan.pruned_entries)
        ok: messages.Message
        if isinstance(request, messages.Put):
            ok = messages.PutOk(id=request.id, context=plan.reply_context)
        else:
            ok = messages.DeleteOk(id=request.id, context=plan.reply_context)

        def done(error: DynError | None) -> None:
            if error is None:
                reply(ok)
            else:
                reply(messages.ErrorReply(id=request.id, code=error.code, message=error.message, retriable=error.retriable))

        self.committer.submit(
            [PutObject(plan.partition, plan.key, plan.record)],
            done,
        )

    def _note(self, key: bytes, sibling_count: int, object_bytes: int, pruned: int) -> None:
        limits = self.replica.limits
        if sibling_count >= limits.siblings_warn:
            log.warning("key %r has %d siblings (siblings_warn=%d)", key[:64], sibling_count, limits.siblings_warn)
        if object_bytes >= limits.object_bytes_warn:
            log.warning("key %r holds %d bytes (object_bytes_warn=%d)", key[:64], object_bytes, limits.object_bytes_warn)
        if pruned:
            self.pruned_entries_total += pruned
            log.info("pruned %d context entries of key %r (total %d)", pruned, key[:64], self.pruned_entries_total)

