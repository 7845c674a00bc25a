"""The set-add workload: clients that grow one set per key, and the history of what they did.

Each client loops: pick a key and a node (any host, up or not: clients do not know), then either
- add: get the key (its siblings and context), union the siblings' sets, add a fresh element and
  put the union with the context it read (the common case), or
- blind add: put a set of just the fresh element with no context, which forces siblings, or
- clear (with `clear_ratio`): get the key, then delete it with the context it read, which leaves
  a tombstone that the reaper later removes.
A value is a set of elements, encoded sorted and newline-separated, so equal sets are equal bytes.
Every op that reads records the elements and the sibling dots it saw: a clear may remove exactly
the elements it saw, and a write acknowledged with a context supersedes the dots it saw for good.

Every invocation is recorded with its outcome:
- ok: the node acknowledged the put (the element must survive);
- failed: the node answered an error (the element may or may not be stored: a put that fails its
  quorum may still have reached some replicas);
- indeterminate: no answer in time (lost, timed out, node down).
Only puts count as attempts of their element; a failed read means the put was never sent.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dynd.protocol import messages
from dynd.protocol.errors import DynError
from dynd.sim.network import Endpoint, is_local
from dynd.sim.process import Process
from dynd.sim.world import World

OK, FAILED, INDETERMINATE, PENDING = "ok", "failed", "indeterminate", "pending"
ADD, BLIND, CLEAR = "add", "blind", "clear"


def encode_set(elements: set[str] | frozenset[str]) -> bytes:
    return "\n".join(sorted(elements)).encode()


def decode_set(value: bytes) -> set[str]:
    return set(value.decode().split("\n")) if value else set()


@dataclass
class Op:
    index: int
    client: str
    kind: str  # "add", "blind" or "clear" (whose element is only a label: it adds nothing)
    key: bytes
    node: str
    element: str
    invoked_ms: int
    read_ms: int | None = None  # when the read of an add answered
    read_elements: int | None = None
    read_set: frozenset[str] = frozenset()  # the elements the read saw
    read_dots: frozenset[tuple[str, int]] = frozenset()  # (actor, counter) of the siblings it saw
    put_sent: bool = False
    completed_ms: int | None = None
    outcome: str = PENDING
    detail: str = ""

    def describe(self) -> str:
        read = "" if self.kind == BLIND else f" read@{self.read_ms} ({self.read_elements} elems)"
        return (
            f"#{self.index} {self.client} {self.kind:5} {self.element:8} via {self.node} "
            f"@{self.invoked_ms}..{self.completed_ms}{read}: {self.outcome} {self.detail}"
        )


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)

    def attempted(self, key: bytes) -> set[str]:
        return {op.element for op in self.ops if op.key == key and op.put_sent and op.kind != CLEAR}

    def acknowledged(self, key: bytes) -> dict[str, Op]:
        return {op.element: op for op in self.ops if op.key == key and op.outcome == OK and op.kind != CLEAR}

    def maybe_cleared(self, key: bytes) -> set[str]:
        """Elements some clear saw and may have removed (its delete was sent, whatever the outcome)."""
        return {element for op in self.ops if op.key == key and op.kind == CLEAR and op.put_sent for element in op.read_set}

    def superseded(self, key: bytes) -> dict[tuple[str, int], Op]:
        """Sibling dots an acknowledged write made with a context read them: none may come back."""
        return {dot: op for op in self.ops if op.key == key and op.outcome == OK for dot in op.read_dots}

    def of_key(self, key: bytes) -> list[Op]:
        return [op for op in self.ops if op.key == key]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for op in self.ops:
            out[op.outcome] = out.get(op.outcome, 0) + 1
        return out


class Client:
    def __init__(self, name: str, workload: SetAddWorkload) -> None:
        self.name = name
        self.workload = workload
        world = workload.world
        self.process = Process(name, 1, world._exception)
        self.endpoint = Endpoint(world.net, name, self.process, workload.client_timeout_ms)
        self.seq = 0
        self.busy = False

    def request(self, address: str, build: Callable[[int], Any], on_reply: Callable[[Any], None]) -> None:
        self.endpoint.send_to_address(address, build, lambda answer: self.process.run(lambda: on_reply(answer)))

    def step(self) -> None:
        wl = self.workload
        if wl.stopped:
            self.busy = False
            return
        self.busy = True
        rng = wl.rng
        key = rng.choice(wl.keys)
        host = rng.choice(sorted(wl.world.hosts))
        self.seq += 1
        draw = rng.random()  # one draw whatever the ratios, so clear_ratio=0 replays older runs
        kind = BLIND if draw < wl.blind_ratio else CLEAR if draw < wl.blind_ratio + wl.clear_ratio else ADD
        op = Op(len(wl.history.ops), self.name, kind, key, host, f"{self.name}.{self.seq}", wl.world.loop.now_ms)
        wl.history.ops.append(op)
        address = wl.world.hosts[host].address
        if kind == BLIND:
            self._put(op, address, {op.element}, None)
            return

        def read(answer: Any) -> None:
            op.read_ms = wl.world.loop.now_ms
            if not isinstance(answer, messages.GetOk):
                self._finish(op, FAILED if isinstance(answer, DynError) and not _lost(answer) else INDETERMINATE, f"read: {answer}")
                return
            elements: set[str] = set()
            for sibling in answer.siblings:
                elements |= decode_set(sibling.value)
            op.read_elements = len(elements)
            op.read_set = frozenset(elements)
            op.read_dots = frozenset((sibling.actor, sibling.counter) for sibling in answer.siblings)
            if kind == CLEAR:
                self._delete(op, address, answer.context)
            else:
                self._put(op, address, elements | {op.element}, answer.context)

        self.request(address, lambda rid: messages.Get(id=rid, key=key), read)

    def _put(self, op: Op, address: str, elements: set[str], context: bytes | None) -> None:
        value = encode_set(elements)
        self._write(op, address, lambda rid: messages.Put(id=rid, key=op.key, value=value, context=context), messages.PutOk)

    def _delete(self, op: Op, address: str, context: bytes) -> None:
        self._write(op, address, lambda rid: messages.Delete(id=rid, key=op.key, context=context), messages.DeleteOk)

    def _write(self, op: Op, address: str, build: Callable[[int], Any], ok: type) -> None:
        op.put_sent = True

        def answered(answer: Any) -> None:
            if isinstance(answer, ok):
                self._finish(op, OK, "")
            elif isinstance(answer, DynError) and not _lost(answer):
                self._finish(op, FAILED, str(answer))
            else:
                self._finish(op, INDETERMINATE, str(answer))

        self.request(address, build, answered)

    def _finish(self, op: Op, outcome: str, detail: str) -> None:
        wl = self.workload
        op.outcome, op.detail, op.completed_ms = outcome, detail[:120], wl.world.loop.now_ms
        wl.world.loop.after(wl.rng.randint(0, wl.think_ms), self.step)


def _lost(error: DynError) -> bool:
    """Errors of the client's own link (no answer from the system): the request may have run."""
    return is_local(error)


class SetAddWorkload:
    def __init__(
        self,
        world: World,
        *,
        clients: int,
        keys: int,
        blind_ratio: float = 0.15,
        clear_ratio: float = 0.0,
        think_ms: int = 40,
    ) -> None:
        self.world = world
        self.rng: random.Random = world.workload_rng
        self.keys = [f"set-{i}".encode() for i in range(keys)]
        self.blind_ratio = blind_ratio
        self.clear_ratio = clear_ratio
        self.think_ms = think_ms
        # A request may be forwarded once, then coordinated: allow two node timeouts and the trip.
        self.client_timeout_ms = 3 * world.limits.request_timeout_ms
        self.history = History()
        self.stopped = False
        self.clients = [Client(f"c{i}", self) for i in range(1, clients + 1)]

    def start(self) -> None:
        for client in self.clients:
            self.world.loop.after(self.rng.randint(0, self.think_ms), client.step)

    def stop(self) -> None:
        self.stopped = True

    @property
    def idle(self) -> bool:
        return all(op.outcome != PENDING for op in self.history.ops)
