"""Digest reads: a get's Fetch carries the digest of the coordinator's copy, and a replica holding
the same siblings answers "same" without the bytes (`dynd.core.requests`, `peer_records.fetch`).

A node of a three-node cluster (N=3: every node is a primary of every key) runs the get; the test
answers its Fetches as a replica holding a given record would, as an old node would, or as a
misbehaving one."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dynd.core import replica as r
from dynd.core import versions as v
from dynd.core.limits import Limits
from dynd.core.membership import JOIN, ClusterParams, create
from dynd.core.node import Node
from dynd.core.ops import PutObject
from dynd.core.requests import _PLAIN_FETCH_MS
from dynd.protocol import codec, messages
from dynd.protocol.errors import BadRequest
from dynd.testing import MemoryStorage

Q = 8
NOW_MS = 1_700_000_000_000
LIMITS = Limits(digest_read_min_bytes=0)  # every copy here is small
KEY = b"k"


class Network:
    """Records requests; the test answers them."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, Any]] = []

    def send(self, node: str, build: Any, on_reply: Any) -> None:
        self.sent.append((node, build(1), on_reply))

    def send_to_address(self, address: str, build: Any, on_reply: Any) -> None:
        pass

    def set_addresses(self, addresses: dict[str, str]) -> None:
        pass

    def connected(self, node: str) -> bool:
        return True

    def send_datagrams(self, datagrams: list[tuple[str, bytes]]) -> None:
        pass

    def take(self) -> list[tuple[str, Any, Any]]:
        sent, self.sent = self.sent, []
        return sent


class Clock:
    def __init__(self) -> None:
        self.ms = NOW_MS

    def __call__(self) -> int:
        return self.ms


def node(name: str = "n1", clock: Clock | None = None) -> tuple[Node, MemoryStorage, Network]:
    membership = create(ClusterParams("test", 3, 2, 2, Q), "n1", "127.0.0.1:1")
    for other, port in (("n2", 2), ("n3", 3)):
        membership = membership.with_event(JOIN, other, "n1", f"127.0.0.1:{port}")
    store, network = MemoryStorage(autocommit=True), Network()
    now = clock or Clock()
    built = Node(
        name, "127.0.0.1:1", membership, store, network,  # type: ignore[arg-type]
        limits=LIMITS, now_ms=now, wall_ms=now, rng=random.Random(7), actor=f"{name}.00000001",
    )  # fmt: skip
    return built, store, network


def sibling(actor: str, counter: int, value: bytes | None = b"v") -> v.Sibling:
    return v.Sibling(v.Dot(actor, counter), v.EMPTY_CLOCK, value, NOW_MS)


# what a set has seen besides its siblings: entries a node prunes from the read context it stores
SEEN = v.Clock({f"z{i}.1": (5, NOW_MS - 10 * i) for i in range(1, 5)}, {})


def record_of(*items: v.Sibling, prune_threshold: int = LIMITS.context_prune_threshold, seen: v.Clock = v.EMPTY_CLOCK) -> bytes:
    return r.encode_record(v.SiblingSet(tuple(sorted(items, key=lambda s: s.dot)), seen), prune_threshold)


def digest_of(record: bytes) -> bytes:
    return bytes(r.versions_digest(record))


def preload(target: Node, store: MemoryStorage, record: bytes | None) -> None:
    if record is not None:
        store.preload([PutObject(target.replica.partition(KEY), KEY, record)])


def ask(target: Node, request: Any) -> Any:
    replies: list[Any] = []
    target.handle(request, replies.append)
    [answer] = replies
    return answer


def as_replica(request: messages.Fetch, held: bytes | None) -> messages.FetchOk:
    """What a current replica holding `held` answers (the same code path as a node's fetch)."""
    peer, store, _ = node("n2")
    preload(peer, store, held)
    answer = ask(peer, request)
    assert isinstance(answer, messages.FetchOk)
    return answer


def get(target: Node, r_: int = 3) -> list[Any]:
    replies: list[Any] = []
    target.handle(messages.Get(id=5, key=KEY, r=r_), replies.append)
    return replies


def live_values(payload: Any) -> list[bytes | None]:
    answer = codec.decode_message(payload) if isinstance(payload, bytes) else payload
    assert isinstance(answer, messages.GetOk), answer
    return sorted(s.value for s in answer.siblings)


# ---- the replica's side ----


def test_a_replica_holding_the_same_siblings_answers_same_without_the_bytes() -> None:
    held = record_of(sibling("a.1", 1, b"x" * 1000))
    answer = as_replica(messages.Fetch(id=1, key=KEY, digest=digest_of(held)), held)
    assert answer == messages.FetchOk(id=1, record=None, same=True)


def test_a_replica_holding_other_siblings_or_none_answers_with_its_record() -> None:
    held = record_of(sibling("a.1", 1))
    other = digest_of(record_of(sibling("a.1", 2)))
    assert as_replica(messages.Fetch(id=1, key=KEY, digest=other), held) == messages.FetchOk(id=1, record=held)
    assert as_replica(messages.Fetch(id=1, key=KEY, digest=other), None) == messages.FetchOk(id=1, record=None)
    assert as_replica(messages.Fetch(id=1, key=KEY), held) == messages.FetchOk(id=1, record=held), "no digest: the record, as before"


def test_the_digest_covers_the_siblings_not_the_pruned_context_token() -> None:
    items = [sibling(f"a{i}.1", 1) for i in range(4)]
    pruned, whole = record_of(*items, prune_threshold=2, seen=SEEN), record_of(*items, prune_threshold=10, seen=SEEN)
    assert pruned != whole, "the tokens differ"
    answer = as_replica(messages.Fetch(id=1, key=KEY, digest=digest_of(whole)), pruned)
    assert answer.same and answer.record is None


def test_a_tombstone_is_compared_like_any_record() -> None:
    tombstone = record_of(sibling("a.1", 3, None))
    assert as_replica(messages.Fetch(id=1, key=KEY, digest=digest_of(tombstone)), tombstone).same
    live = record_of(sibling("a.1", 2))
    assert as_replica(messages.Fetch(id=1, key=KEY, digest=digest_of(tombstone)), live).record == live


def test_a_fallback_compares_its_copy_merged_with_the_hint_it_holds() -> None:
    fallback, _, _ = node("n2")
    hinted = record_of(sibling("a.1", 1, b"hinted"))
    assert isinstance(ask(fallback, messages.Replicate(id=1, key=KEY, record=hinted, hint="n3")), messages.ReplicateOk)
    same = ask(fallback, messages.Fetch(id=2, key=KEY, hint="n3", digest=digest_of(hinted)))
    assert same == messages.FetchOk(id=2, record=None, same=True)
    other = ask(fallback, messages.Fetch(id=3, key=KEY, hint="n3", digest=digest_of(record_of(sibling("b.1", 1)))))
    assert other == messages.FetchOk(id=3, record=hinted)


# ---- the coordinator's side ----


def test_a_get_sends_the_digest_of_its_own_copy_and_answers_it_when_replicas_say_same() -> None:
    n1, store, network = node()
    own = record_of(sibling("a.1", 1, b"own"))
    preload(n1, store, own)
    replies = get(n1)
    fetches = network.take()
    assert sorted(n for n, _, _ in fetches) == ["n2", "n3"]
    for _, request, on_reply in fetches:
        assert request.digest == digest_of(own)
        on_reply(as_replica(request, own))
    [answer] = replies
    assert live_values(answer) == [b"own"]
    assert not network.sent, "every replica agreed: no read repair"


def test_a_copy_under_digest_read_min_bytes_is_fetched_whole() -> None:
    n1, store, network = node()
    n1.requests.limits = Limits(digest_read_min_bytes=2000)
    small, big = record_of(sibling("a.1", 1, b"s" * 100)), record_of(sibling("a.1", 2, b"b" * 2000))
    preload(n1, store, small)
    get(n1)
    assert [request.digest for _, request, _ in network.take()] == [None, None]
    preload(n1, store, big)
    get(n1)
    assert [request.digest for _, request, _ in network.take()] == [digest_of(big)] * 2


def test_a_coordinator_without_a_copy_sends_no_digest() -> None:
    n1, _, network = node()
    replies = get(n1)
    held = record_of(sibling("a.1", 1, b"theirs"))
    for _, request, on_reply in network.take():
        assert request.digest is None
        on_reply(as_replica(request, held))
    [answer] = replies
    assert live_values(answer) == [b"theirs"]
    assert not any(isinstance(req, messages.Replicate) for _, req, _ in network.sent)
    assert r.decode_record(n1.storage.read_object(n1.replica.partition(KEY), KEY)) == r.decode_record(held), "our own copy repaired"  # type: ignore[arg-type]


def test_a_same_reply_and_a_newer_one_merge_and_repair_both_copies_that_lack_it() -> None:
    n1, store, network = node()
    old = record_of(sibling("a.1", 1, b"old"))
    new = record_of(sibling("a.1", 2, b"new"), seen=v.Clock({"a.1": (1, NOW_MS)}, {}))  # it saw the old one
    preload(n1, store, old)
    replies = get(n1)
    held = {"n2": old, "n3": new}
    for target, request, on_reply in network.take():
        on_reply(as_replica(request, held[target]))
    [answer] = replies
    assert live_values(answer) == [b"new"]
    repairs = [(target, req) for target, req, _ in network.sent if isinstance(req, messages.Replicate)]
    assert [target for target, _ in repairs] == ["n2"], "the replica that said same holds the old copy"
    assert r.decode_record(repairs[0][1].record) == r.decode_record(new)
    assert r.decode_record(store.read_object(n1.replica.partition(KEY), KEY)) == r.decode_record(new)  # type: ignore[arg-type]


def test_siblings_from_a_same_reply_and_a_concurrent_one_are_both_answered() -> None:
    n1, store, network = node()
    ours, theirs = record_of(sibling("a.1", 1, b"ours")), record_of(sibling("b.1", 1, b"theirs"))
    preload(n1, store, ours)
    replies = get(n1)
    held = {"n2": ours, "n3": theirs}
    for target, request, on_reply in network.take():
        on_reply(as_replica(request, held[target]))
    [answer] = replies
    assert live_values(answer) == [b"ours", b"theirs"]


def test_r_and_pr_count_a_same_reply_like_one_with_the_bytes() -> None:
    n1, store, network = node()
    own = record_of(sibling("a.1", 1))
    preload(n1, store, own)
    replies: list[Any] = []
    n1.handle(messages.Get(id=5, key=KEY, r=3, pr=3), replies.append)
    fetches = network.take()
    fetches[0][2](as_replica(fetches[0][1], own))
    assert not replies, "r=3: two of three answered"
    fetches[1][2](as_replica(fetches[1][1], own))
    [answer] = replies
    assert live_values(answer) == [b"v"]


def test_same_from_a_replica_that_was_sent_no_digest_counts_as_a_failed_reply() -> None:
    n1, _, network = node()
    replies = get(n1)
    for _, request, on_reply in network.take():
        assert request.digest is None
        on_reply(messages.FetchOk(id=1, record=None, same=True))
    [answer] = replies
    assert isinstance(answer, messages.ErrorReply) and answer.code == "quorum_failed"


def test_an_old_node_that_refuses_the_digest_is_asked_again_without_and_for_a_while_after() -> None:
    clock = Clock()
    n1, store, network = node(clock=clock)
    own = record_of(sibling("a.1", 1))
    preload(n1, store, own)

    def old_node(request: messages.Fetch, on_reply: Any) -> None:
        # what a node older than the field answers: codec.decode_message refuses the unknown field
        if request.digest is not None:
            try:
                codec.decode_message(codec.encode_message(request).replace(b"fdigest", b"fdigesz"))
            except BadRequest as exc:
                on_reply(BadRequest(exc.message))
                return
            raise AssertionError("an unknown field must be refused")
        on_reply(messages.FetchOk(id=1, record=own))

    replies = get(n1)
    for target, request, on_reply in network.take():
        if target == "n2":
            old_node(request, on_reply)
        else:
            on_reply(as_replica(request, own))
    again = network.take()
    assert [(target, request.digest) for target, request, _ in again] == [("n2", None)]
    again[0][2](messages.FetchOk(id=1, record=own))
    [answer] = replies
    assert live_values(answer) == [b"v"]

    get(n1)
    digests = {target: request.digest for target, request, _ in network.take()}
    assert digests == {"n2": None, "n3": digest_of(own)}, "n2 is asked plainly for a while"
    clock.ms += _PLAIN_FETCH_MS
    get(n1)
    digests = {target: request.digest for target, request, _ in network.take()}
    assert digests == {"n2": digest_of(own), "n3": digest_of(own)}, "then tried again (it may have been upgraded)"


def test_the_new_fields_are_optional_on_the_wire() -> None:
    plain = messages.FetchOk(id=1, record=b"r")
    assert b"same" not in codec.encode_message(plain), "a reply without same reads as before"
    assert b"digest" not in codec.encode_message(messages.Fetch(id=1, key=KEY))
    for message in (messages.Fetch(id=1, key=KEY, digest=b"d" * 16), messages.FetchOk(id=1, record=None, same=True), plain):
        assert codec.decode_message(codec.encode_message(message)) == message


# ---- any replica states: the same answer and repairs as full replies ----

SETS = [
    (),
    (sibling("a.1", 1, b"one"),),
    (sibling("a.1", 2, b"two"),),
    (sibling("b.1", 1, b"bee"),),
    (sibling("a.1", 3, None),),
    tuple(sibling(f"c{i}.1", 1) for i in range(4)),
]
SEENS = [v.EMPTY_CLOCK] * (len(SETS) - 1) + [SEEN]  # the last set's stored token depends on the pruning
copies = st.tuples(st.sampled_from(range(len(SETS))), st.sampled_from([1, 10]))


def _record(choice: tuple[int, int]) -> bytes | None:
    index, threshold = choice
    return record_of(*SETS[index], prune_threshold=threshold, seen=SEENS[index]) if SETS[index] else None


def _run(held: dict[str, bytes | None], digests: bool) -> tuple[Any, list[tuple[str, v.SiblingSet]], v.SiblingSet | None]:
    n1, store, network = node()
    preload(n1, store, held["n1"])
    replies = get(n1)
    for target, request, on_reply in network.take():
        plain = request if digests else messages.Fetch(id=request.id, key=request.key, hint=request.hint)
        on_reply(as_replica(plain, held[target]))
    [answer] = replies
    repairs = sorted((target, r.decode_record(req.record)) for target, req, _ in network.sent if isinstance(req, messages.Replicate))
    own = store.read_object(n1.replica.partition(KEY), KEY)
    return codec.decode_message(answer) if isinstance(answer, bytes) else answer, repairs, None if own is None else r.decode_record(own)


@settings(max_examples=150, deadline=None)
@given(copies, copies, copies)
def test_digest_reads_answer_and_repair_as_full_replies_do(c1: tuple[int, int], c2: tuple[int, int], c3: tuple[int, int]) -> None:
    held = {"n1": _record(c1), "n2": _record(c2), "n3": _record(c3)}
    with_digests, full = _run(held, digests=True), _run(held, digests=False)
    answer, plain_answer = with_digests[0], full[0]
    assert sorted(s.value or b"" for s in answer.siblings) == sorted(s.value or b"" for s in plain_answer.siblings)
    assert codec.decode_message(codec.encode_message(answer)).siblings == answer.siblings
    assert with_digests[1:] == full[1:], "the same repairs, to the same copies"
