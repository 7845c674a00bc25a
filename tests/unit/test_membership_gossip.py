"""Digest-first gossip between ClusterViews over a fake link that runs every message through the
wire codec (no sockets, a clock the test moves): equal memberships cost two summaries, changes
converge, the compactor snapshots settled events, a node down across a compaction catches up
and records again what the snapshot left out, and a node of 70300c4 gossips with new ones until
the membership needs format 2, which nodes hold back while they hear it (issue 17)."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from dynd.core.cluster import MEMBERSHIP_META, ClusterView
from dynd.core.limits import Limits
from dynd.core.membership import JOIN, LEAVE, REMOVE, ClusterParams, MemberEvent, Membership
from dynd.core.ops import PutMeta
from dynd.protocol import codec, messages
from dynd.protocol.errors import BadRequest, DynError, Timeout, Unreachable, error_from_code
from tests.support.membership_oracle import replayed

PARAMS = ClusterParams("g1", n=3, r=2, w=2, partitions=32)
LIMITS = Limits(gossip_interval_ms=1_000, membership_compact_events=3, membership_settle_ms=20_000)


def grown(names: list[str], locations: dict[str, str] | None = None) -> Membership:
    membership = Membership(PARAMS)
    for name in names:
        membership = membership.with_event(JOIN, name, origin=names[0], address=f"{name}:1", location=(locations or {}).get(name, ""))
    return membership


class Disk:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def submit(self, ops: list[PutMeta], on_done: Callable[[Any], None]) -> None:
        self.written += [op.data for op in ops if op.name == MEMBERSHIP_META]
        on_done(None)


class OldNode:
    """A node of 70300c4, as far as gossip goes: its codec refuses a Gossip with a summary; it
    reads format 1 only; it gossips whole memberships and answers with its own, whole."""

    def __init__(self, net: Net, name: str, membership: Membership) -> None:
        self.net, self.name, self.membership = net, name, membership
        self.refused = 0

    def handle(self, request: messages.Gossip) -> Any:
        if request.summary is not None:
            unknown = sorted(f for f in ("summary", "delta") if getattr(request, f) is not None)
            return messages.error_reply(request.id, BadRequest(f"unknown field(s) {unknown} for Gossip"))
        if request.membership:
            theirs = Membership.decode(request.membership)
            if theirs.format != 1:
                return messages.error_reply(request.id, BadRequest("unsupported membership format"))
            self.membership = self.membership.merge(theirs)
        return messages.GossipOk(id=request.id, membership=self.membership.encode())

    def gossip(self, target: str) -> None:
        def answered(answer: Any) -> None:
            if isinstance(answer, messages.GossipOk):
                theirs = Membership.decode(answer.membership)
                if theirs.format != 1:
                    self.refused += 1  # it logs "gossip from ... refused: unsupported membership format"
                    return
                self.membership = self.membership.merge(theirs)

        self.net.send(self.name, target, messages.Gossip(id=self.net.next_id(), membership=self.membership.encode()), answered)


class Port:
    """One view's Network port on the link."""

    def __init__(self, net: Net, name: str) -> None:
        self.net, self.name = net, name
        self.addresses: dict[str, str] = {}

    def set_addresses(self, addresses: dict[str, str]) -> None:
        self.addresses = dict(addresses)

    def connected(self, node: str) -> bool:
        return False

    def send(self, node: str, build: Callable[[int], Any], on_reply: Callable[[Any], None]) -> None:
        self.net.send(self.name, node, build(self.net.next_id()), on_reply)

    def send_to_address(self, address: str, build: Callable[[int], Any], on_reply: Callable[[Any], None]) -> None:
        self.net.send(self.name, address.split(":")[0], build(self.net.next_id()), on_reply)


class Net:
    def __init__(self, seed: int = 1, limits: Limits = LIMITS, loss: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.loss = loss  # share of requests and of replies lost (the sender sees a timeout)
        self.limits = limits
        self.now_ms = 0
        self.ids = 0
        self.views: dict[str, ClusterView] = {}
        self.disks: dict[str, Disk] = {}
        self.old: dict[str, OldNode] = {}
        self.down: set[str] = set()
        self.queue: list[tuple[str, str, bytes, Callable[[Any], None]]] = []
        self.bytes: Counter[str] = Counter()
        self.count: Counter[str] = Counter()

    def next_id(self) -> int:
        self.ids += 1
        return self.ids

    def add(self, name: str, membership: Membership, *, location: str = "", address: str = "") -> ClusterView:
        self.disks[name] = Disk()
        view = ClusterView(
            name, address or f"{name}:1", membership, self.disks[name], Port(self, name),  # type: ignore[arg-type]
            limits=self.limits, now_ms=lambda: self.now_ms, rng=random.Random(self.rng.getrandbits(32)), location=location,
        )  # fmt: skip
        self.views[name] = view
        return view

    def send(self, src: str, dst: str, message: Any, on_reply: Callable[[Any], None]) -> None:
        payload = codec.encode_message(message)
        self.bytes[message.OP] += len(payload)
        self.count[message.OP] += 1
        self.queue.append((src, dst, payload, on_reply))

    def deliver_all(self) -> None:
        for _ in range(100_000):
            if not self.queue:
                return
            src, dst, payload, on_reply = self.queue.pop(self.rng.randrange(len(self.queue)))
            if src in self.down:
                continue
            if dst in self.down or (dst not in self.views and dst not in self.old):
                on_reply(Unreachable(f"{dst} is down"))
                continue
            if self.rng.random() < self.loss:
                on_reply(Timeout("lost"))
                continue
            request = codec.decode_message(payload)
            answer: Any
            if dst in self.old:
                answer = self.old[dst].handle(request)  # type: ignore[arg-type]
            else:
                try:
                    answer = self.views[dst].handle_gossip(request)  # type: ignore[arg-type]
                except DynError as exc:
                    answer = messages.error_reply(request.id, exc)  # type: ignore[attr-defined]
            data = codec.encode_message(answer)
            self.bytes[answer.OP] += len(data)
            self.count[answer.OP] += 1
            decoded = codec.decode_message(data)
            if self.rng.random() < self.loss:
                on_reply(Timeout("reply lost"))
                continue
            on_reply(error_from_code(decoded.code, decoded.message) if isinstance(decoded, messages.ErrorReply) else decoded)
        raise AssertionError("the link never went quiet")

    def rounds(self, count: int) -> None:
        for _ in range(count):
            self.now_ms += self.limits.gossip_interval_ms * 2  # past any jitter: every view gossips once
            for name, view in sorted(self.views.items()):
                if name not in self.down and name not in self.old:
                    view.tick()
            for name, old in sorted(self.old.items()):
                if name not in self.down:
                    old.gossip(self.rng.choice([n for n in sorted(self.views) if n != name and n not in self.old]))
            self.deliver_all()

    def agreed(self, names: list[str] | None = None) -> bool:
        views = [self.views[n] for n in (names or sorted(self.views)) if n not in self.old]
        return len({v.membership.digest for v in views}) == 1

    def settle(self, limit: int = 40) -> int:
        for done in range(1, limit + 1):
            self.rounds(1)
            if self.agreed():
                return done
        raise AssertionError(f"no agreement within {limit} rounds")


def test_equal_memberships_exchange_only_summaries_of_one_size_whatever_the_cluster() -> None:
    sizes = []
    for count in (5, 40):
        names = [f"n{i:02d}" for i in range(count)]
        net = Net(limits=Limits(membership_compact_events=1_000))  # no snapshot to send meanwhile
        for name in names:
            net.add(name, grown(names))
        net.rounds(3)
        assert net.count["gossip"] == net.count["gossip_ok"] == 3 * count
        sizes.append((net.bytes["gossip"] + net.bytes["gossip_ok"]) / (2 * 3 * count))
    assert sizes[0] == pytest.approx(sizes[1], abs=2) and sizes[1] < 160, sizes
    assert grown([f"n{i:02d}" for i in range(40)]).encode().__len__() > 5 * sizes[1], "a summary is far smaller than the membership"


def test_changes_made_on_different_nodes_converge_to_the_plain_fold_of_every_event() -> None:
    names = [f"n{i}" for i in range(8)]
    net = Net(seed=3)
    for name in names:
        net.add(name, grown(names))
    net.views["n2"].leave("n5")
    net.views["n6"].remove("n7", lambda outcome: None, force=True)
    joiner = grown(names).with_event(JOIN, "n8", origin="n8", address="n8:1")
    net.add("n8", joiner)
    net.settle()
    final = net.views["n0"].membership
    events: set[MemberEvent] = set(final.events)
    assert {(e.kind, e.member) for e in events} >= {(LEAVE, "n5"), (REMOVE, "n7"), (JOIN, "n8")}
    assert (final.members, final.ring) == replayed(PARAMS, events, final.base)
    assert all(net.disks[n].written and Membership.decode(net.disks[n].written[-1]) == final for n in ("n1", "n8")), "persisted"


def test_the_compactor_snapshots_settled_events_and_every_node_adopts_the_snapshot() -> None:
    names = ["a", "b", "c", "d", "e"]
    net = Net(seed=4)
    for name in names:
        net.add(name, grown(names))
    made: set[MemberEvent] = set(grown(names).events)
    for round_, change in enumerate([("b", JOIN, "f"), ("c", JOIN, "g"), ("d", LEAVE, "e"), ("b", JOIN, "h")]):
        origin, kind, member = change
        view = net.views[origin]
        view._update(view.membership.with_event(kind, member, origin=origin, address=f"{member}:1"))
        made |= view.membership.events
        net.rounds(2)
    net.rounds(25)  # acknowledgements reach the compactor, "a"
    assert net.agreed()
    final = net.views["e"].membership
    assert final.base.stamp >= 7 and len(final.events) < 3, "compacted"
    assert (final.members, final.ring) == replayed(PARAMS, made), "the snapshot is the fold of every event"
    stored = Membership.decode(net.disks["c"].written[-1])
    assert stored == final and stored.base == final.base, "the snapshot is persisted"


def test_a_node_down_across_a_compaction_catches_up_and_records_its_own_change_again(caplog: pytest.LogCaptureFixture) -> None:
    names = ["a", "b", "c", "d", "e"]
    net = Net(seed=5)
    for name in names:
        net.add(name, grown(names))
    net.rounds(2)
    net.down.add("e")
    before_down = net.views["e"].membership
    for member in ("f", "g", "h", "i"):  # nodes join through b
        net.add(member, net.views["b"].membership.with_event(JOIN, member, origin=member, address=f"{member}:1"))
        net.rounds(3)
    net.rounds(25)
    snapshot_stamp = net.views["a"].membership.base.stamp
    assert snapshot_stamp > before_down.stamp, "the others compacted while e was down"
    # e restarts at a new address: it records that at a stamp the snapshot already passed
    del net.views["e"]
    restarted = net.add("e", before_down, address="e:2")
    (moved,) = [ev for ev in restarted.membership.events if ev.origin == "e"]
    assert moved.stamp <= snapshot_stamp
    net.down.discard("e")
    with caplog.at_level(logging.WARNING, logger="dynd.cluster"):
        net.settle()
    assert "recording again address of e" in caplog.text
    for view in net.views.values():
        assert view.membership.address_of("e") == "e:2" and view.membership.members["i"].status == "joined"
    final = net.views["a"].membership
    assert (final.members, final.ring) == replayed(PARAMS, final.events, final.base)


def test_a_node_records_its_location_once_every_unlocated_member_spoke_digest_first(caplog: pytest.LogCaptureFixture) -> None:
    names = ["a", "b", "c"]
    net = Net(seed=6)
    with caplog.at_level(logging.INFO, logger="dynd.cluster"):
        net.add("a", grown(names), location="zone-1/host-a")
        assert net.views["a"].membership.members["a"].location == "", "b and c have not been heard"
        assert "waiting for digest-first gossip from b, c" in caplog.text
        net.add("b", grown(names))
        net.add("c", grown(names))
        net.settle()
        net.rounds(3)
    assert all(v.membership.members["a"].location == "zone-1/host-a" for v in net.views.values())
    assert net.views["b"].membership.format == 2


def test_a_rolling_upgrade_gossips_whole_memberships_with_an_old_node_until_it_is_upgraded(caplog: pytest.LogCaptureFixture) -> None:
    names = ["a", "b", "c", "old"]
    net = Net(seed=7)
    for name in names[:3]:
        net.add(name, grown(names), location=f"zone-1/{name}")
    net.old["old"] = OldNode(net, "old", grown(names))
    with caplog.at_level(logging.INFO, logger="dynd.cluster"):
        net.rounds(6)
        net.views["b"].leave("c")  # a change on a new node ...
        old = net.old["old"]
        old.membership = old.membership.with_event(JOIN, "x", origin="old", address="x:1")  # ... and on the old one
        net.rounds(10)
    for view in net.views.values():
        assert view.membership.format == 1, "no location or snapshot while an old node is heard"
        assert set(view.membership.events) == set(old.membership.events), "old and new converge"
        assert all(m.location == "" for m in view.membership.members.values())
    assert "old runs a dynd of 70300c4 or before" in caplog.text and old.refused == 0
    # the old node is upgraded: a new dynd on its data
    del net.old["old"]
    net.add("old", old.membership, location="zone-1/old")
    net.rounds(30)
    assert net.agreed()
    final = net.views["a"].membership
    assert final.format == 2 and final.base.stamp > 0, "locations recorded, and compacted"
    # x never runs (it joined on the old node's say-so): it holds the others back only until
    # membership_settle_ms has passed without any gossip of an older dynd
    assert {m.name: m.location for m in final.active()} == {"a": "zone-1/a", "b": "zone-1/b", "c": "zone-1/c", "old": "zone-1/old", "x": ""}


def test_a_new_node_cannot_make_an_old_one_read_format_2_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    names = ["a", "old"]
    located = grown(names, {"a": "z/a"}).compacted(2)
    net = Net(seed=8)
    net.add("a", located)
    net.old["old"] = OldNode(net, "old", grown(names))
    with caplog.at_level(logging.WARNING, logger="dynd.cluster"):
        net.rounds(8)
    assert caplog.text.count("cannot gossip with old") == 1
    assert net.old["old"].refused > 0, "the old node refuses (and logs) what it cannot read; nothing breaks"
    assert net.views["a"].peers.settled_stamp(net.views["a"].membership, "a", net.now_ms) is None, "no snapshot while it is heard"


@pytest.mark.parametrize("seed", range(6))
def test_random_changes_restarts_and_lost_messages_converge_to_one_membership_and_the_plain_fold(seed: int) -> None:
    rng = random.Random(seed)
    names = [f"n{i}" for i in range(6)]
    net = Net(seed=seed, loss=0.15)
    for name in names:
        net.add(name, grown(names))
    made: set[MemberEvent] = set(grown(names).events)
    for step in range(10):
        live = [n for n in sorted(net.views) if n not in net.down]
        actor = net.views[rng.choice(live)]
        action = rng.choice(["join", "leave", "move", "down", "up"])
        if action == "join":
            name = f"j{step}"
            net.add(name, actor.membership.with_event(JOIN, name, origin=name, address=f"{name}:1"))
        elif action == "leave":
            joined = [m.name for m in actor.membership.members.values() if m.status == "joined"]
            if len(joined) > 3:
                actor.leave(rng.choice(joined))
        elif action == "move":
            actor._update(actor.membership.at_address(actor.name, f"{actor.name}:{step}"))
        elif action == "down" and len(net.down) < 2:
            net.down.add(actor.name)
        elif action == "up" and net.down:
            net.down.discard(sorted(net.down)[0])
        made |= {e for v in net.views.values() for e in v.membership.events}
        net.rounds(rng.randint(1, 4))
    net.down.clear()
    net.loss = 0.0
    net.settle(limit=60)
    final = net.views["n0"].membership
    assert (final.members, final.ring) == replayed(PARAMS, final.events, final.base)
    if final.base.empty:
        assert (final.members, final.ring) == replayed(PARAMS, made), "no snapshot: the plain fold of every event made"
