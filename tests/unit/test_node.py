"""Nodes driven directly, as synchronous peers over a fake link (STYLE.md example 5): no sockets,
no sleeps, a clock the test moves.

`Link` holds every request and reply in one queue until the test delivers them; each node's
store is a `dynd.testing.MemoryStorage` whose commits the link runs once the queue is empty (a
group commit). A link can be cut one way: `refuse` answers every request on it `Unreachable` (no
connection), `drop` loses them (the sender's port answers `Timeout` after `PORT_TIMEOUT_MS`).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dynd.core.limits import Limits
from dynd.core.membership import JOIN, ClusterParams, create
from dynd.core.node import Node
from dynd.protocol import codec, messages
from dynd.protocol.errors import DynError, Timeout, Unreachable, error_from_code
from dynd.testing import MemoryStorage

LIMITS = Limits()
START_MS = 1_700_000_000_000
STEP_MS = LIMITS.tick_interval_ms
# Longer than a request's deadline, so a request whose replicas never answer meets the
# coordinator's own deadline first, not its port's.
PORT_TIMEOUT_MS = 2 * LIMITS.request_timeout_ms


WALL_EPOCH_MS = 1_767_225_600_000  # the wall clock reads far from the monotonic one, as in a daemon


class Clock:
    def __init__(self) -> None:
        self.now = START_MS

    def now_ms(self) -> int:
        return self.now

    def wall_ms(self) -> int:
        return WALL_EPOCH_MS + self.now


class Link:
    """The wire between the nodes, and the nodes on it."""

    def __init__(self, names: list[str], *, n: int, r: int = 2, w: int = 2, partitions: int = 8) -> None:
        self.clock = Clock()
        self.queue: deque[Callable[[], None]] = deque()
        self.refused: set[tuple[str, str]] = set()  # (from, to)
        self.dropped: set[tuple[str, str]] = set()
        self.sent: list[tuple[str, str, Any]] = []  # (from, to, request), every request sent
        self.address = {name: f"10.0.0.{i + 1}:7000" for i, name in enumerate(names)}
        self.name_at = {address: name for name, address in self.address.items()}
        membership = create(ClusterParams("test", n, r, w, partitions), names[0], self.address[names[0]])
        for name in names[1:]:
            membership = membership.with_event(JOIN, name, names[0], self.address[name])
        self.ports = {name: Port(self, name) for name in names}
        self.storage = {name: MemoryStorage() for name in names}
        self.nodes = {
            name: Node(
                name, self.address[name], membership, self.storage[name], self.ports[name],
                limits=LIMITS, now_ms=self.clock.now_ms, wall_ms=self.clock.wall_ms, rng=random.Random(i), actor=f"{name}.00000001",
            )  # fmt: skip
            for i, name in enumerate(names)
        }

    # ---- faults ----

    def refuse(self, src: str, dst: str) -> None:
        self.refused.add((src, dst))

    def drop(self, src: str, dst: str) -> None:
        self.dropped.add((src, dst))

    def heal(self) -> None:
        self.refused.clear()
        self.dropped.clear()

    # ---- moving things along ----

    def deliver(self) -> None:
        """Deliver every queued request and reply, and commit every store, until all is quiet."""
        while True:
            while self.queue:
                self.queue.popleft()()
            if not sum(storage.commit() for storage in self.storage.values()):
                return

    def run_for(self, ms: int) -> None:
        """Move the clock on `ms`, one tick interval at a time: ports time out, nodes tick."""
        for _ in range(ms // STEP_MS):
            self.clock.now += STEP_MS
            for port in self.ports.values():
                port.expire(self.clock.now)
            for node in self.nodes.values():
                node.tick()
            self.deliver()

    def ask(self, name: str, request: Any) -> Any:
        """A client request to node `name`: the one reply as the client decodes it, or None while
        it is still pending (see `reply_of`)."""
        replies: list[Any] = []
        self.nodes[name].handle(request, replies.append)
        self.deliver()
        return self.reply_of(replies)

    def reply_of(self, replies: list[Any]) -> Any:
        assert len(replies) <= 1, f"one request answered {len(replies)} times"
        if not replies:
            return None
        answer = replies[0]
        return codec.decode_message(answer if isinstance(answer, bytes) else codec.encode_message(answer))

    def partition(self, key: bytes) -> int:
        return next(iter(self.nodes.values())).replica.partition(key)

    def stored(self, name: str, key: bytes) -> bytes | None:
        return self.storage[name].read_object(self.partition(key), key)


class Port:
    """The Network port of one node on the link. Every message crosses the codec, as on the wire."""

    def __init__(self, link: Link, name: str) -> None:
        self.link = link
        self.name = name
        self.ids = 0
        self.waiting: dict[int, tuple[int, str, Callable[[Any], None]]] = {}  # id -> (deadline, peer, on_reply)

    def send(self, node: str, build: Callable[[int], Any], on_reply: Callable[[Any], None]) -> None:
        self.send_to_address(self.link.address[node], build, on_reply)

    def send_to_address(self, address: str, build: Callable[[int], Any], on_reply: Callable[[Any], None]) -> None:
        link = self.link
        self.ids += 1
        request_id = self.ids
        dst = link.name_at[address]
        message = build(request_id)
        link.sent.append((self.name, dst, message))
        payload = codec.encode_message(message)
        if (self.name, dst) in link.refused:
            link.queue.append(lambda: on_reply(Unreachable(f"{dst} refused the connection")))
            return
        self.waiting[request_id] = (link.clock.now + PORT_TIMEOUT_MS, dst, on_reply)
        if (self.name, dst) not in link.dropped:
            link.queue.append(lambda: self._serve(dst, request_id, payload))

    def set_addresses(self, addresses: dict[str, str]) -> None:
        pass

    def connected(self, node: str) -> bool:
        return False

    def send_datagrams(self, datagrams: list[tuple[str, bytes]]) -> None:
        link = self.link
        for address, payload in datagrams:
            dst = link.name_at[address]
            if (self.name, dst) not in link.refused | link.dropped:
                link.queue.append(lambda d=dst, p=payload: link.nodes[d].receive_datagram(link.address[self.name], p))

    def expire(self, now_ms: int) -> None:
        for request_id, (deadline, peer, on_reply) in list(self.waiting.items()):
            if deadline <= now_ms:
                del self.waiting[request_id]
                on_reply(Timeout(f"no reply from {peer} in time"))

    def _serve(self, dst: str, request_id: int, payload: bytes) -> None:
        def reply(answer: Any) -> None:
            data = answer if isinstance(answer, bytes) else codec.encode_message(answer)
            if (dst, self.name) not in self.link.dropped:
                self.link.queue.append(lambda: self._answered(request_id, data))

        self.link.nodes[dst].handle(codec.decode_message(payload), reply)

    def _answered(self, request_id: int, data: bytes) -> None:
        waiting = self.waiting.pop(request_id, None)
        if waiting is None:
            return  # after the port's timeout
        answer: Any = codec.decode_message(data)
        if isinstance(answer, messages.ErrorReply):
            answer = error_from_code(answer.code, answer.message)
        waiting[2](answer)


def values(answer: Any) -> list[bytes]:
    assert isinstance(answer, messages.GetOk), answer
    return sorted(s.value for s in answer.siblings)


def keys_whose_primaries_are(link: Link, primaries: set[str]) -> Iterator[bytes]:
    node = next(iter(link.nodes.values()))
    for i in range(10_000):
        key = b"key-%d" % i
        if set(node.cluster.preference_list(link.partition(key)).primaries) == primaries:
            yield key


# ---- the tests ----


def test_a_put_coordinated_on_one_node_is_read_through_another_with_r2() -> None:
    link = Link(["n1", "n2", "n3"], n=3, r=2, w=2)
    put = link.ask("n1", messages.Put(id=1, key=b"k", value=b"v1"))
    assert isinstance(put, messages.PutOk) and put.id == 1
    assert all(link.stored(name, b"k") is not None for name in link.nodes), "every replica got the write"
    assert values(link.ask("n2", messages.Get(id=2, key=b"k", r=2))) == [b"v1"]
    overwrite = link.ask("n3", messages.Put(id=3, key=b"k", value=b"v2", context=put.context))
    assert isinstance(overwrite, messages.PutOk)
    assert values(link.ask("n1", messages.Get(id=4, key=b"k", r=2))) == [b"v2"], "the context covered v1"


def test_a_request_at_a_node_that_is_no_primary_is_forwarded_to_one() -> None:
    link = Link(["n1", "n2", "n3"], n=2, r=2, w=2)
    key = next(keys_whose_primaries_are(link, {"n1", "n2"}))
    put = link.ask("n3", messages.Put(id=7, key=key, value=b"v"))
    assert isinstance(put, messages.PutOk) and put.id == 7, "the primary's answer comes back under the client's id"
    first = link.sent[0]
    assert first[0] == "n3" and first[1] in {"n1", "n2"} and isinstance(first[2], messages.Put) and first[2].forwarded
    assert link.stored("n3", key) is None and link.stored("n1", key) is not None and link.stored("n2", key) is not None
    get = link.ask("n3", messages.Get(id=8, key=key))
    assert values(get) == [b"v"] and get.id == 8


def test_a_stale_ring_is_refused_instead_of_forwarded() -> None:
    link = Link(["n1", "n2", "n3"], n=2)
    key = next(keys_whose_primaries_are(link, {"n1", "n2"}))
    answer = link.ask("n3", messages.Get(id=1, key=key, ring=b"an older ring"))
    assert isinstance(answer, messages.ErrorReply) and answer.code == "stale_ring"
    assert link.sent == [], "nothing was forwarded"


def test_a_put_with_a_replica_cut_off_reaches_w_through_a_hint_that_is_delivered_later() -> None:
    link = Link(["n1", "n2", "n3"], n=2, r=2, w=2)
    key = next(keys_whose_primaries_are(link, {"n1", "n2"}))
    link.refuse("n1", "n2")
    put = link.ask("n1", messages.Put(id=1, key=key, value=b"v"))
    assert isinstance(put, messages.PutOk), "the fallback n3 stood in for n2 (sloppy quorum)"
    partition = link.partition(key)
    assert link.stored("n2", key) is None
    assert link.stored("n3", key) is None and list(link.storage["n3"].hints) == [("n2", partition, key)]
    link.heal()
    link.run_for(3 * LIMITS.hint_delivery_interval_ms)
    assert link.stored("n2", key) == link.stored("n1", key), "the hint reached n2"
    assert link.storage["n3"].hints == {} and link.nodes["n3"].hints.pending == 0
    assert values(link.ask("n2", messages.Get(id=2, key=key, r=2))) == [b"v"]


def test_a_get_of_diverged_replicas_answers_with_both_siblings_and_repairs_every_replica() -> None:
    link = Link(["n1", "n2", "n3"], n=3, r=2, w=1)
    for other in ("n2", "n3"):
        link.drop("n1", other)
    assert isinstance(link.ask("n1", messages.Put(id=1, key=b"k", value=b"from n1")), messages.PutOk)
    link.heal()
    for other in ("n1", "n3"):
        link.drop("n2", other)
    assert isinstance(link.ask("n2", messages.Put(id=2, key=b"k", value=b"from n2")), messages.PutOk)
    link.heal()
    assert link.stored("n1", b"k") != link.stored("n2", b"k") and link.stored("n3", b"k") is None
    answer = link.ask("n3", messages.Get(id=3, key=b"k", r=3))
    assert values(answer) == [b"from n1", b"from n2"], "concurrent writes are siblings"
    assert link.stored("n1", b"k") == link.stored("n2", b"k") == link.stored("n3", b"k"), "read repair reached every replica"
    assert values(link.ask("n1", messages.Get(id=4, key=b"k", r=1))) == [b"from n1", b"from n2"]


@pytest.mark.parametrize("request_", [messages.Put(id=1, key=b"k", value=b"v", w=2), messages.Get(id=1, key=b"k", r=2)], ids=["put", "get"])
def test_a_request_whose_replicas_never_answer_fails_with_a_timeout_at_its_deadline(request_: Any) -> None:
    link = Link(["n1", "n2", "n3"], n=3)
    for other in ("n2", "n3"):
        link.drop("n1", other)
    replies: list[Any] = []
    link.nodes["n1"].handle(request_, replies.append)
    link.deliver()
    link.run_for(LIMITS.request_timeout_ms - STEP_MS)
    assert replies == [], "still within the deadline"
    link.run_for(STEP_MS)
    answer = link.reply_of(replies)
    assert isinstance(answer, messages.ErrorReply) and answer.code == "timeout", answer
    assert isinstance(error_from_code(answer.code, answer.message), DynError)
    link.run_for(PORT_TIMEOUT_MS)
    assert len(replies) == 1, "the replies that never came do not answer twice"
    assert not link.nodes["n1"].requests.running, "the coordination finished once every replica's port gave up"
