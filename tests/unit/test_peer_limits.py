"""Data from peers meets the limits of data from clients, and no accepted merge leaves a key that a
read and a write with its context cannot resolve (issue 12, item 5).

Each attack of the issue is driven against a real `Node` over in-memory ports: a peer's request
goes in through `Node.handle`, the reply and the store are checked, synchronously.
"""

from __future__ import annotations

import random
from typing import Any

import cbor2
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from dynd.core import coordinator as co
from dynd.core import replica as r
from dynd.core import versions as v
from dynd.core import versions_codec as vc
from dynd.core.actors import ACTOR_META
from dynd.core.limits import Limits
from dynd.core.membership import JOIN, ClusterParams, create
from dynd.core.node import Node
from dynd.core.ops import PutObject
from dynd.protocol import codec, messages
from dynd.protocol.errors import BadRequest, ObjectTooLarge, TooManySiblings, ValueTooLarge
from dynd.testing import MemoryStorage

Q = 8
NOW_MS = 1_700_000_000_000
LIMITS = Limits()


class Network:
    """Records requests; the test answers them (or not)."""

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


def node(name: str = "n1", limits: Limits = LIMITS) -> tuple[Node, MemoryStorage, Network]:
    """A node of a three-node cluster (N=3: every node is a primary of every key)."""
    membership = create(ClusterParams("test", 3, 2, 2, Q), "n1", "127.0.0.1:1")
    for other, port in (("n2", 2), ("n3", 3)):
        membership = membership.with_event(JOIN, other, "n1", f"127.0.0.1:{port}")
    store, network = MemoryStorage(autocommit=True), Network()
    built = Node(
        name, "127.0.0.1:1", membership, store, network,  # type: ignore[arg-type]
        limits=limits, now_ms=lambda: NOW_MS, wall_ms=lambda: NOW_MS, rng=random.Random(7), actor=f"{name}.00000001",
    )  # fmt: skip
    return built, store, network


def ask(target: Node, request: Any) -> Any:
    replies: list[Any] = []
    target.handle(request, replies.append)
    [answer] = replies
    return answer


def error_code(answer: Any) -> str | None:
    return answer.code if isinstance(answer, messages.ErrorReply) else None


def record_of(obj: v.SiblingSet) -> bytes:
    return r.encode_record(obj, LIMITS.context_prune_threshold)


def sibling(actor: str, counter: int, value: bytes | None = b"v", context: v.Clock = v.EMPTY_CLOCK) -> v.Sibling:
    return v.Sibling(v.Dot(actor, counter), context, value, NOW_MS)


def siblings(*items: v.Sibling, seen: v.Clock = v.EMPTY_CLOCK) -> v.SiblingSet:
    return v.SiblingSet(tuple(sorted(items, key=lambda s: s.dot)), seen)


def put(target: Node, key: bytes, value: bytes | None, context: bytes | None = None) -> Any:
    """A client write through `target` as the only replica that answers: the others' replicates
    are answered ok at once."""
    request: Any = messages.Put(id=9, key=key, value=value, context=context, w=1) if value is not None else messages.Delete(id=9, key=key, context=context, w=1)
    sent_before = len(target.network.sent)  # type: ignore[attr-defined]
    answer = ask(target, request)
    for _, _, on_reply in target.network.sent[sent_before:]:  # type: ignore[attr-defined]
        on_reply(messages.ReplicateOk(id=1))
    return answer


def stored(store: Store, target: Node, key: bytes) -> bytes | None:
    return store.read_object(target.replica.partition(key), key)


# ---- the attacks of the issue ----


def test_a_record_claiming_this_nodes_next_write_is_refused_and_the_node_takes_a_new_epoch() -> None:
    n1, store, _ = node()
    assert isinstance(put(n1, b"k", b"real"), messages.PutOk)
    before = stored(store, n1, b"k")
    actor = n1.replica.actor
    # A forged sibling whose context (and seen) covers (n1, 2): n1's next write of the key would be
    # dropped on arrival wherever this record went.
    forged_context = v.Clock({actor: (2, NOW_MS)})
    forged = siblings(sibling("mallory.1", 1, b"forged", forged_context), seen=forged_context)
    answer = ask(n1, messages.Replicate(id=1, key=b"k", record=record_of(forged)))
    assert error_code(answer) == "bad_request" and "issued" in answer.message
    assert stored(store, n1, b"k") == before, "nothing was merged"
    assert n1.replica.actor != actor, "the claimed counters belong to an epoch this node no longer uses"
    assert store.meta[ACTOR_META] == n1.replica.actor.encode()
    # The next write carries the new epoch: no claim on the old one can cover it.
    assert isinstance(put(n1, b"k", b"after"), messages.PutOk)
    assert {s.dot.actor for s in r.decode_record(stored(store, n1, b"k") or b"").siblings} >= {n1.replica.actor}


def test_a_record_claiming_counters_at_the_end_of_the_range_is_refused_by_every_node() -> None:
    # The attack: each node's actor counter claimed at 2^62 - 1.
    nodes = [node(name) for name in ("n1", "n2", "n3")]
    claim = v.Clock({built.replica.actor: (v.COUNTER_MAX - 1, NOW_MS) for built, _, _ in nodes})
    forged = record_of(siblings(sibling("mallory.1", 1, b"forged", claim), seen=claim))
    for built, store, _ in nodes:
        answer = ask(built, messages.Replicate(id=1, key=b"k", record=forged))
        assert error_code(answer) == "bad_request"
        assert stored(store, built, b"k") is None
    for built, _, _ in nodes:
        assert isinstance(put(built, b"k", b"v"), messages.PutOk)
        assert isinstance(put(built, b"k", None), messages.DeleteOk)


@pytest.mark.parametrize("claimed", [v.EPOCH_COUNTER_MAX, v.COUNTER_MAX - 1])
def test_a_key_whose_counter_is_exhausted_stays_writable_through_a_new_epoch(claimed: int) -> None:
    # Stored before these checks existed (or pushed there some other way): the next counter would
    # pass the epoch's range, so the write takes a new epoch and goes on.
    n1, store, _ = node()
    actor = n1.replica.actor
    exhausted = v.Clock({actor: (claimed, NOW_MS)})
    store.preload([PutObject(n1.replica.partition(b"k"), b"k", record_of(siblings(sibling("n2.1", 1, b"old", exhausted), seen=exhausted)))])
    for value in (b"blind", None):
        assert isinstance(put(n1, b"k", value), (messages.PutOk, messages.DeleteOk))
    assert n1.replica.actor != actor and store.meta[ACTOR_META] == n1.replica.actor.encode()
    context = _read_context(n1, b"k")
    assert isinstance(put(n1, b"k", b"resolved", context), messages.PutOk)
    assert [s.value for s in r.decode_record(stored(store, n1, b"k") or b"").siblings] == [b"resolved"]


def test_a_record_of_more_siblings_than_siblings_max_is_refused() -> None:
    n1, store, _ = node()
    many = siblings(*(sibling(f"a{i}.1", 1) for i in range(LIMITS.siblings_max + 200)))
    answer = ask(n1, messages.Replicate(id=1, key=b"k", record=record_of(many)))
    assert error_code(answer) == TooManySiblings.code
    assert stored(store, n1, b"k") is None
    assert isinstance(put(n1, b"k", b"v"), messages.PutOk)


def test_a_value_over_value_bytes_max_is_refused() -> None:
    n1, store, _ = node()
    big = siblings(sibling("a.1", 1, b"x" * (3 * 1024 * 1024 + 512 * 1024)))
    answer = ask(n1, messages.Replicate(id=1, key=b"k", record=record_of(big)))
    assert error_code(answer) == ValueTooLarge.code
    assert stored(store, n1, b"k") is None


def test_values_over_object_bytes_max_together_are_refused() -> None:
    n1, store, _ = node()
    value = b"x" * LIMITS.value_bytes_max
    heavy = siblings(*(sibling(f"a{i}.1", 1, value) for i in range(4)))
    answer = ask(n1, messages.Replicate(id=1, key=b"k", record=record_of(heavy)))
    assert error_code(answer) == ObjectTooLarge.code
    assert stored(store, n1, b"k") is None


def test_a_hint_for_a_node_that_is_not_a_member_is_refused() -> None:
    n1, store, _ = node()
    record = record_of(siblings(sibling("a.1", 1, b"x" * 1_000_000)))
    for _ in range(5):
        answer = ask(n1, messages.Replicate(id=1, key=b"k", record=record, hint="ghost"))
        assert error_code(answer) == BadRequest.code and "ghost" in answer.message
    assert store.hints == {} and n1.hints.pending == 0


def test_hints_for_a_member_grow_no_further_than_a_clients_writes_could() -> None:
    n1, store, _ = node()
    outcomes = []
    for i in range(5):  # five concurrent 1 MB writes, each a hint for n3
        record = record_of(siblings(sibling(f"a{i}.1", 1, b"x" * 1_000_000)))
        outcomes.append(error_code(ask(n1, messages.Replicate(id=1, key=b"k", record=record, hint="n3"))))
    assert outcomes == [None, None, None, ObjectTooLarge.code, ObjectTooLarge.code]
    [held] = store.hints.values()
    assert r.decode_record(held).value_bytes <= LIMITS.object_bytes_max


def test_a_handoff_with_one_refused_item_changes_nothing() -> None:
    n1, store, _ = node()
    good = record_of(siblings(sibling("a.1", 1)))
    bad = record_of(siblings(*(sibling(f"a{i}.1", 1) for i in range(LIMITS.siblings_max + 1))))
    items = [messages.HandoffItem(key=b"good", record=good), messages.HandoffItem(key=b"bad", record=bad)]
    answer = ask(n1, messages.Handoff(id=1, partition=n1.replica.partition(b"good"), items=items))
    assert error_code(answer) == TooManySiblings.code
    assert store.objects == {}


def test_a_replica_reply_over_the_limits_counts_as_a_failed_one() -> None:
    n1, _, network = node()
    replies: list[Any] = []
    n1.handle(messages.Get(id=1, key=b"k", r=3), replies.append)
    heavy = record_of(siblings(*(sibling(f"a{i}.1", 1) for i in range(LIMITS.siblings_max + 1))))
    good = record_of(siblings(sibling("b.1", 1, b"good")))
    answers = {"n2": heavy, "n3": good}
    for target, request, on_reply in list(network.sent):
        assert isinstance(request, messages.Fetch)
        on_reply(messages.FetchOk(id=1, record=answers[target]))
    [answer] = replies
    assert error_code(answer) == "quorum_failed", "r=3 with one reply refused"


def test_anti_entropy_refuses_a_fetched_record_over_the_limits() -> None:
    n1, store, _ = node()
    exchange = n1.anti_entropy._exchange(n1.replica.partition(b"k"), "n2", lambda _: None)
    exchange._repairs_inflight = 1
    heavy = record_of(siblings(*(sibling(f"a{i}.1", 1) for i in range(LIMITS.siblings_max + 1))))
    exchange._on_fetched(b"k", messages.FetchOk(id=1, record=heavy))
    assert exchange.stats.repair_failures == 1 and exchange.stats.repaired_local == 0
    assert store.objects == {}


def test_a_huge_context_token_is_refused_by_its_length_before_it_is_decoded() -> None:
    # The 2 MB token of 200,000 entries (its CPU cost is measured in the commit, not here).
    token = cbor2.dumps([1, [[f"a{i}", 1, 0] for i in range(200_000)], []])
    with pytest.raises(BadRequest, match="bytes is more than"):
        vc.decode_context(token, entries_max=LIMITS.context_entries_max, actor_bytes_max=LIMITS.actor_bytes_max)


def test_a_context_array_head_over_the_entries_left_is_refused_before_its_items() -> None:
    # A head promising 60,000 entries, followed by bytes no decoder should walk.
    token = bytes([0x83, 0x01]) + codec.cbor_head(codec.MAJOR_ARRAY, 60_000) + b"\xff" * 64
    with pytest.raises(BadRequest, match="more entries"):
        vc.decode_context(token, entries_max=LIMITS.context_entries_max, actor_bytes_max=LIMITS.actor_bytes_max)
    cloud_over = bytes([0x83, 0x01, 0x80]) + codec.cbor_head(codec.MAJOR_ARRAY, LIMITS.context_entries_max + 1) + b"\xff"
    with pytest.raises(BadRequest, match="more entries"):
        vc.decode_context(cloud_over, entries_max=LIMITS.context_entries_max, actor_bytes_max=LIMITS.actor_bytes_max)


# ---- merges: what may grow, and what always resolves ----


def _read_context(target: Node, key: bytes) -> bytes:
    view = target.replica.read(target.storage.read_object(target.replica.partition(key), key))
    token = cbor2.loads(view.context_cbor)
    assert type(token) is bytes
    return token


def test_a_merge_past_siblings_max_is_refused_and_one_that_shrinks_an_oversize_key_is_not() -> None:
    limits = Limits(siblings_max=4, siblings_warn=4, context_entries_max=18)
    mine = siblings(*(sibling(f"a{i}.1", 1) for i in range(3)))
    theirs = siblings(*(sibling(f"b{i}.1", 1) for i in range(3)))
    with pytest.raises(TooManySiblings):
        r.merge_records(record_of(mine), record_of(theirs), 10, limits=limits)
    # stored before siblings_max was lowered: six siblings; a merge that keeps it at six is refused
    # only if it grows, and one that collapses it is accepted
    oversize = v.merge(mine, theirs)
    one_more = siblings(sibling("c.1", 1))
    with pytest.raises(TooManySiblings):
        r.merge_records(record_of(oversize), record_of(one_more), 10, limits=limits)
    resolved_context = oversize.read_context(10)
    resolution = siblings(sibling("c.1", 1, b"resolved", resolved_context.pruned(2)[0]), seen=resolved_context)
    merged = r.merge_records(record_of(oversize), record_of(resolution), 10, limits=limits)
    assert merged is not None and [s.value for s in r.decode_record(merged).siblings] == [b"resolved"]


def test_the_read_context_of_siblings_max_siblings_with_gaps_decodes() -> None:
    # Two entries per sibling: each dot sits beyond a gap in its actor's vector entry.
    limits = LIMITS
    seen = v.Clock({f"a{i}.1": (1, NOW_MS) for i in range(limits.siblings_max)})
    full = siblings(*(sibling(f"a{i}.1", 3) for i in range(limits.siblings_max)), seen=seen)
    context = full.read_context(limits.context_prune_threshold)
    assert len(context) == 2 * limits.siblings_max
    token = vc.encode_context(context)
    assert vc.decode_context(token, entries_max=limits.context_entries_max, actor_bytes_max=limits.actor_bytes_max) == context
    n1, store, _ = node()
    store.preload([PutObject(n1.replica.partition(b"k"), b"k", record_of(full))])
    assert isinstance(put(n1, b"k", b"resolved", token), messages.PutOk)


def test_limits_need_room_for_two_context_entries_per_sibling() -> None:
    with pytest.raises(ValueError, match="2 \\* siblings_max"):
        Limits(siblings_max=100, context_entries_max=150)


def test_a_get_answers_within_the_limits_and_its_context_resolves_the_coordinators_copy() -> None:
    # Three replicas that diverged: together they hold more siblings than siblings_max.
    limits = Limits(siblings_max=4, siblings_warn=4, context_entries_max=18)
    copies = {
        "": siblings(*(sibling(f"a{i}.1", 1) for i in range(2))),  # the coordinator's own
        "n2": siblings(*(sibling(f"b{i}.1", 1) for i in range(4))),
        "n3": siblings(*(sibling(f"c{i}.1", 1) for i in range(3))),
    }
    get = co.GetCoordination(b"k", record_of(copies[""]), (("n2", None), ("n3", None)), 3, 10**9, 10, limits=limits)
    effects = get.start() + get.on_reply("n2", record_of(copies["n2"])) + get.on_reply("n3", record_of(copies["n3"]))
    [answer] = [e for e in effects if isinstance(e, co.AnswerGet)]
    assert answer.record is not None
    answered = r.decode_record(answer.record)
    assert len(answered.siblings) <= limits.siblings_max
    # the largest copy is in whole: a put through the coordinator with this context resolves it,
    # and there is room for it beside the coordinator's own siblings the context does not cover
    assert set(copies["n2"].siblings) <= set(answered.siblings)
    token = r.record_view(answer.record).context_cbor
    coordinator = r.LocalReplica("n1.1", limits, Q)
    plan = coordinator.write(b"k", b"resolved", cbor2.loads(token), record_of(copies[""]), NOW_MS + 1)
    assert len(r.decode_record(plan.record).siblings) <= limits.siblings_max
    assert get.left_out, "the copies do not all fit"
    assert not any(isinstance(e, co.SendReplicate) and e.node in get.left_out for e in get.on_tick(10**9))


# ---- any two valid records: merged or refused, the key resolves ----

SMALL = Limits(siblings_max=4, siblings_warn=4, context_entries_max=2 * 4 + 2, context_prune_threshold=2, value_bytes_max=8, object_bytes_max=24, object_bytes_warn=24)
ACTORS = ("n0.1", "n1.1", "n2.1")

# writes through a replica, blind (None) or with the read context of a replica; merges between them
steps = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 2), st.sampled_from([None, None, 0, 1, 2]), st.binary(max_size=8) | st.none()),
        st.tuples(st.just("merge"), st.integers(0, 2), st.integers(0, 2), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(steps, st.integers(0, 2))
def test_after_any_accepted_merge_a_read_and_a_write_with_its_context_resolve_the_key(history: list[Any], via: int) -> None:
    replicas = [r.LocalReplica(actor, SMALL, Q) for actor in ACTORS]
    records: list[bytes | None] = [None, None, None]
    now = NOW_MS
    for kind, at, other, value in history:
        now += 1
        if kind == "write":
            context = None if other is None or records[other] is None else cbor2.loads(r.record_view(records[other]).context_cbor)  # type: ignore[arg-type]
            try:
                records[at] = replicas[at].write(b"k", value, context, records[at], now).record
            except (TooManySiblings, ObjectTooLarge):
                pass  # a client's write over the limits: refused, as it should be
        elif records[other] is not None and at != other:
            try:
                merged = r.merge_records(records[at], records[other], 2, limits=SMALL, actor=ACTORS[at])  # type: ignore[arg-type]
            except (TooManySiblings, ObjectTooLarge):
                event("a merge over the limits was refused")
                continue
            records[at] = merged or records[at]
    # Every replica resolves through itself, and a get through `via` resolves through `via`.
    for at in range(3):
        if records[at] is not None:
            context = cbor2.loads(r.record_view(records[at]).context_cbor)  # type: ignore[arg-type]
            for value in (b"done", None):
                plan = replicas[at].write(b"k", value, context, records[at], now + 1)
                assert len(r.decode_record(plan.record).siblings) == 1
    present = {("" if i == via else f"n{i}"): rec for i, rec in enumerate(records) if rec is not None}
    if "" not in present:
        return
    get = co.GetCoordination(b"k", present[""], tuple((name, None) for name in present if name), len(present), 10**9, 2, limits=SMALL)
    effects = get.start()
    for name in present:
        if name:
            effects += get.on_reply(name, present[name])
    [answer] = [e for e in effects if isinstance(e, co.AnswerGet)]
    assert answer.record is not None
    if get.left_out:
        event("the get left a reply out")
    # The coordinator's read repair of its own copy, as the node applies it: the pruned context
    # need not cover its siblings that the other replies superseded.
    own = present[""]
    for effect in effects:
        if isinstance(effect, co.StoreLocal):
            own = r.merge_records(own, effect.record, 2, limits=SMALL, actor=ACTORS[via]) or own
    context = cbor2.loads(r.record_view(answer.record).context_cbor)
    plan = replicas[via].write(b"k", b"done", context, own, now + 2)
    assert len(r.decode_record(plan.record).siblings) <= SMALL.siblings_max


def test_a_key_stored_before_siblings_max_was_lowered_stays_readable_and_resolvable() -> None:
    limits = Limits(siblings_max=4, siblings_warn=4, context_entries_max=18)
    n1, store, network = node(limits=limits)
    oversize = siblings(*(sibling(f"a{i}.1", 1) for i in range(6)))
    store.preload([PutObject(n1.replica.partition(b"k"), b"k", record_of(oversize))])
    replies: list[Any] = []
    n1.handle(messages.Get(id=1, key=b"k", r=3), replies.append)
    for _, request, on_reply in list(network.sent):
        on_reply(messages.FetchOk(id=1, record=record_of(oversize)))  # the others hold the same
    [answer] = replies
    assert error_code(answer) is None, "the same oversize copy from a peer is no bigger than ours"
    bigger = siblings(*(sibling(f"a{i}.1", 1) for i in range(7)))
    assert error_code(ask(n1, messages.Replicate(id=1, key=b"k", record=record_of(bigger)))) == TooManySiblings.code
    assert isinstance(put(n1, b"k", b"resolved", _read_context(n1, b"k")), messages.PutOk)
