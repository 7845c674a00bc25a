"""The failure detector's defences (dynd/core/swim.py, dynd/protocol/swim_wire.py): MACs, cluster
id, source addresses, the replay window, bounded incarnation steps, rotation. Pure: a virtual
clock and a fake link, no sockets, no sleeps.
"""

from __future__ import annotations

import random
from collections import deque

import pytest

from dynd.core.limits import Limits
from dynd.core.swim import INCARNATION_STEP_MAX, WINDOW_BITS, Swim
from dynd.core import swim as swim_module
from dynd.protocol import swim_wire as wire
from dynd.protocol.auth import Keyring
from dynd.protocol.swim_wire import ACK, ALIVE, DEAD, INT_MAX, PING, SUSPECT, Datagram, Update
from dynd.shell import security
from tests.bench.detection import SimNet

LIMITS = Limits()
NAMES = ["n1", "n2", "n3", "n4", "n5"]
A, B, C = b"A" * 32, b"B" * 32, b"C" * 32
CLUSTER = "c0ffee"
PERIOD = LIMITS.swim_period_ms


def address(name: str) -> str:
    return f"10.0.0.{name[1:]}:7400"


class Link:
    """Swims on one virtual clock; every datagram arrives at once, in order, from its sender's address."""

    def __init__(self, keyrings: dict[str, Keyring | None], *, seed: int = 1, cluster: str = CLUSTER) -> None:
        self.now = 1_000_000
        rng = random.Random(seed)
        self.events: list[tuple[str, str, str, str]] = []  # (observer, kind, source, detail)
        self.swims: dict[str, Swim] = {}
        for name, keyring in keyrings.items():
            swim = Swim(
                name,
                limits=LIMITS,
                now_ms=lambda: self.now,
                rng=random.Random(rng.random()),
                cluster_id=cluster,
                keyring=keyring,
                boot=1,
                on_security_event=lambda kind, source, detail, observer=name: self.events.append((observer, kind, source, detail)),
            )
            swim.set_members({m: address(m) for m in keyrings})
            self.swims[name] = swim
        self.queue: deque[tuple[str, str, bytes]] = deque()  # (from, to address, payload)
        self.down: set[str] = set()

    def send(self, sender: str, out: list[tuple[str, bytes]]) -> None:
        self.queue.extend((sender, to, payload) for to, payload in out)

    def deliver(self) -> None:
        by_address = {address(name): name for name in self.swims}
        while self.queue:
            sender, to, payload = self.queue.popleft()
            receiver = by_address[to]
            if receiver not in self.down and sender not in self.down:
                self.send(receiver, self.swims[receiver].receive(address(sender), payload))

    def run_for(self, duration_ms: int, stop: object = None) -> None:
        for _ in range(duration_ms // LIMITS.tick_interval_ms):
            self.now += LIMITS.tick_interval_ms
            for name, swim in self.swims.items():
                if name not in self.down:
                    self.send(name, swim.tick())
            self.deliver()
            if callable(stop) and stop():
                return

    def views(self) -> dict[str, dict[str, tuple[str, int]]]:
        return {name: swim.members() for name, swim in self.swims.items()}

    def all_say(self, member: str, status: str) -> bool:
        return all(s.status(member) == status for n, s in self.swims.items() if n != member and n not in self.down)


def sealed(sender: str, kind: int, target: str, updates: tuple[Update, ...] = (), *, secret: bytes | None = A, mseq: int, boot: int = 1, incarnation: int = 0, cluster: str = CLUSTER, seq: int = 7) -> bytes:
    return wire.encode_datagram(Datagram(kind, seq, sender, target, updates, cluster, boot, mseq, incarnation), secret)


def lone(name: str = "n1", keyring: Keyring | None = Keyring((A,)), members: list[str] = NAMES) -> tuple[Swim, list[tuple[str, str, str]]]:
    events: list[tuple[str, str, str]] = []
    swim = Swim(
        name,
        limits=LIMITS,
        now_ms=lambda: 1_000_000,
        rng=random.Random(3),
        cluster_id=CLUSTER,
        keyring=keyring,
        on_security_event=lambda *event: events.append(event),
    )
    swim.set_members({m: address(m) for m in members})
    return swim, events


def as_member(swim: Swim, kind: int, target: str, updates: tuple[Update, ...] = (), seq: int = 7) -> bytes:
    """A datagram sealed and numbered as the running member `swim` would seal its next one (no secret)."""
    swim._mseq += 1
    return wire.encode_datagram(Datagram(kind, seq, swim.name, target, updates, swim.cluster_id, swim.boot, swim._mseq, swim.own_incarnation))


# ---- forged, foreign, misaddressed and replayed datagrams ----


def test_a_forged_datagram_changes_nobodys_view() -> None:
    link = Link({name: Keyring((A,)) for name in NAMES})
    link.run_for(5 * PERIOD)
    before = link.views()
    # sender "n2" (from n2's own address even), saying n3 is dead: sealed with a secret the cluster does not hold
    forged = sealed("n2", PING, "n1", (Update("n3", DEAD, INT_MAX),), secret=B, mseq=10**9)
    no_secret = sealed("n2", PING, "n1", (Update("n3", DEAD, 5),), secret=None, mseq=10**9 + 1)
    for payload in (forged, no_secret, forged[:-1] + bytes([forged[-1] ^ 1])):
        for name in ("n1", "n4"):
            assert link.swims[name].receive(address("n2"), payload) == []
    assert link.swims["n1"].stats.bad_macs == 3 and link.swims["n4"].stats.bad_macs == 3
    assert link.views() == before
    assert [(o, kind) for o, kind, _, _ in link.events] == [("n1", "bad_mac"), ("n4", "bad_mac")] * 3
    link.run_for(20 * PERIOD)
    assert all(link.all_say(name, "alive") for name in NAMES)
    # the forged datagram did not move n2's window: n2's own datagrams still get through
    assert link.swims["n1"].stats.replays == 0 and link.swims["n2"].stats.acks_received > 0


def test_another_cluster_is_refused_and_counted() -> None:
    swim, events = lone()
    before = swim.members()
    assert swim.receive(address("n2"), sealed("n2", PING, "n1", (Update("n3", DEAD, 1),), mseq=1, cluster="other")) == []
    assert swim.stats.wrong_cluster == 1 and swim.members() == before
    assert [kind for kind, _, _ in events] == ["wrong_cluster"]


def test_a_datagram_from_another_address_than_its_senders_is_dropped() -> None:
    swim, events = lone()
    before = swim.members()
    payload = sealed("n2", PING, "n1", (Update("n3", SUSPECT, 1),), mseq=1)
    for source in ("198.51.100.7:7400", address("n3"), "10.0.0.2:7401"):
        assert swim.receive(source, payload) == []
    assert swim.stats.source_mismatches == 3 and swim.members() == before
    assert {kind for kind, _, _ in events} == {"source_mismatch"}
    # the same datagram from n2's address is taken (the mismatches did not use up its mseq)
    ((to, _),) = swim.receive(address("n2"), payload)
    assert to == address("n2") and swim.status("n3") == "suspect"


def test_a_replayed_datagram_is_dropped() -> None:
    swim, events = lone()
    suspicion = sealed("n2", PING, "n1", (Update("n3", SUSPECT, 0),), mseq=100)
    assert len(swim.receive(address("n2"), suspicion)) == 1
    assert swim.status("n3") == "suspect"
    # n3 refutes; a replay of the old suspicion must not count again, nor be answered
    swim.receive(address("n3"), sealed("n3", PING, "n1", mseq=1, incarnation=1))
    assert swim.status("n3") == "alive"
    acks_sent = swim.stats.acks_sent
    assert swim.receive(address("n2"), suspicion) == []
    assert swim.stats.replays == 1 and swim.stats.acks_sent == acks_sent
    assert [kind for kind, _, _ in events] == ["replay"]


def test_the_window_takes_reordered_datagrams_once_and_drops_those_too_old() -> None:
    swim, _ = lone()

    def take(mseq: int, boot: int = 1) -> bool:
        return bool(swim.receive(address("n2"), sealed("n2", PING, "n1", mseq=mseq, boot=boot)))

    assert take(100)
    assert take(98) and take(99)  # late, within the window: each once
    assert not take(98) and not take(100)
    assert take(100 + WINDOW_BITS)  # the window moves on
    assert take(101) and not take(100)  # 101 is the oldest still in the window; 100 no longer is
    assert take(10_000)  # a jump past the whole window
    assert not take(10_000 - WINDOW_BITS) and take(10_000 - WINDOW_BITS + 1)
    assert swim.stats.replays == 4


def test_a_restart_with_a_higher_boot_resets_the_window_and_an_older_boot_is_a_replay() -> None:
    swim, events = lone()
    assert swim.receive(address("n2"), sealed("n2", PING, "n1", mseq=5_000, boot=1))
    assert swim.receive(address("n2"), sealed("n2", PING, "n1", mseq=1, boot=2))  # restarted: counts from 1 again
    assert swim.receive(address("n2"), sealed("n2", PING, "n1", mseq=2, boot=2))
    assert not swim.receive(address("n2"), sealed("n2", PING, "n1", mseq=5_001, boot=1))  # the old life: a replay
    assert swim.stats.replays == 1 and [kind for kind, _, _ in events] == ["replay"]


def test_a_restarted_member_is_heard_again_in_a_cluster() -> None:
    net = SimNet(NAMES, seed=4)
    net.run_for(5_000)
    net.kill("n2")
    net.run_for(30_000, stop=lambda: net.all_say("n2", "dead"))
    assert net.all_say("n2", "dead")
    net.restart("n2")  # a new boot: its mseq starts again from 1
    net.run_for(15_000, stop=lambda: net.all_say("n2", "alive"))
    assert net.all_say("n2", "alive")
    assert sum(net.swim(name).stats.replays for name in NAMES) == 0


def test_security_events_are_the_shells_kinds() -> None:
    assert swim_module.BAD_MAC == security.BAD_MAC
    assert swim_module.REPLAY == security.REPLAY
    assert swim_module.SOURCE_MISMATCH == security.SOURCE_MISMATCH


# ---- incarnations: bounded steps, and no verdict for good ----


def test_a_third_party_update_far_above_what_we_know_is_ignored() -> None:
    swim, _ = lone()
    swim.receive(address("n2"), sealed("n2", PING, "n1", (Update("n3", DEAD, INT_MAX), Update("n4", SUSPECT, INCARNATION_STEP_MAX + 1)), mseq=1))
    assert swim.status("n3") == "alive" and swim.status("n4") == "alive"
    assert swim.stats.incarnation_jumps == 2
    # within a step, the merge rules as ever
    swim.receive(address("n2"), sealed("n2", PING, "n1", (Update("n4", SUSPECT, INCARNATION_STEP_MAX),), mseq=2))
    assert swim.members()["n4"] == ("suspect", INCARNATION_STEP_MAX)
    # a member speaks for itself without a bound: its header, and its own updates about itself
    swim.receive(address("n3"), sealed("n3", PING, "n1", mseq=1, incarnation=10**12))
    assert swim.members()["n3"] == ("alive", 10**12)
    swim.receive(address("n5"), sealed("n5", PING, "n1", (Update("n5", ALIVE, 10**9),), mseq=1))
    assert swim.members()["n5"] == ("alive", 10**9)


def test_an_update_about_this_node_far_above_its_incarnation_is_not_refuted() -> None:
    swim, _ = lone("n3")
    ((_, ack),) = swim.receive(address("n2"), sealed("n2", PING, "n3", (Update("n3", DEAD, INT_MAX),), mseq=1))
    assert swim.own_incarnation == 0 and swim.stats.refutations == 0 and swim.stats.incarnation_jumps == 1
    assert wire.decode_datagram(ack, bytes_max=LIMITS.datagram_bytes_max, keyring=Keyring((A,))).incarnation == 0
    swim.receive(address("n2"), sealed("n2", PING, "n3", (Update("n3", ALIVE, INCARNATION_STEP_MAX + 1),), mseq=2))
    assert swim.own_incarnation == 0 and swim.stats.incarnation_jumps == 2
    swim.receive(address("n2"), sealed("n2", PING, "n3", (Update("n3", SUSPECT, INCARNATION_STEP_MAX),), mseq=3))
    assert swim.own_incarnation == INCARNATION_STEP_MAX + 1 and swim.stats.refutations == 1


def test_a_real_peer_saying_a_member_is_dead_at_the_top_incarnation_kills_nobody() -> None:
    net = SimNet(NAMES, seed=2)
    net.run_for(5_000)
    n2 = net.swim("n2")
    for observer in ("n1", "n3", "n4"):  # to observers, and to the victim itself
        net.swim(observer).receive(net.addresses["n2"], as_member(n2, PING, observer, (Update("n3", DEAD, INT_MAX),)))
    assert net.says("n1", "n3") == "alive" and net.says("n4", "n3") == "alive"
    net.run_for(10 * PERIOD)
    assert all(net.says(name, "n3") == "alive" for name in NAMES)
    assert net.swim("n3").own_incarnation == 0
    assert [v for v in net.verdicts if v.member == "n3"] == []


def test_a_member_pushed_far_beyond_its_incarnation_step_by_step_recovers() -> None:
    """A real peer (or a bug) raises n1's view of n3 a step at a time, far above n3's own
    incarnation: n3 cannot refute it, but its next datagram to n1 overrules it."""
    net = SimNet(NAMES, seed=6)
    net.run_for(5_000)
    n2 = net.swim("n2")
    for step in range(1, 11):
        net.swim("n1").receive(net.addresses["n2"], as_member(n2, PING, "n1", (Update("n3", DEAD, step * INCARNATION_STEP_MAX),)))
    assert net.swim("n1").members()["n3"] == ("dead", 10 * INCARNATION_STEP_MAX)
    net.run_for(len(NAMES) * 3 * PERIOD, stop=lambda: all(net.says(name, "n3") == "alive" for name in NAMES))
    assert all(net.says(name, "n3") == "alive" for name in NAMES)
    assert net.swim("n1").stats.views_reset >= 1
    assert net.swim("n3").own_incarnation <= 1
    net.run_for(10 * PERIOD)
    assert all(net.says(name, "n3") == "alive" for name in NAMES)  # and it stays so


def test_a_suspicion_within_a_step_is_refuted_as_ever() -> None:
    net = SimNet(NAMES, seed=7)
    net.run_for(5_000)
    net.swim("n1").receive(net.addresses["n2"], as_member(net.swim("n2"), PING, "n1", (Update("n3", DEAD, 1_000),)))
    assert net.says("n1", "n3") == "dead"
    net.run_for(10 * PERIOD, stop=lambda: all(net.says(name, "n3") == "alive" for name in NAMES))
    assert all(net.says(name, "n3") == "alive" and net.swim(name).incarnation("n3") == 1_001 for name in NAMES)


def test_a_verdict_a_member_cannot_beat_ends_with_its_restart() -> None:
    """n3 runs at the top incarnation less one (as only 2^53 authenticated pushes could make it);
    a real peer then says it is dead at the top, which n3 cannot refute. Its restart clears it."""
    net = SimNet(NAMES, seed=8)
    net.restart("n3", incarnation=INT_MAX - 1)
    net.run_for(8_000)
    assert all(net.swim(name).incarnation("n3") == INT_MAX - 1 for name in NAMES)  # heard from n3 itself
    net.swim("n1").receive(net.addresses["n2"], as_member(net.swim("n2"), PING, "n1", (Update("n3", DEAD, INT_MAX),)))
    net.run_for(10 * PERIOD, stop=lambda: net.all_say("n3", "dead"))
    assert net.all_say("n3", "dead")  # no higher incarnation: n3 cannot refute
    net.restart("n3")  # a new boot, at incarnation 0
    net.run_for(len(NAMES) * 3 * PERIOD, stop=lambda: net.all_say("n3", "alive"))
    assert net.all_say("n3", "alive")
    net.run_for(10 * PERIOD)
    assert net.all_say("n3", "alive") and all(net.swim(name).incarnation("n3") <= 1 for name in NAMES)


def test_within_the_step_bound_states_only_grow() -> None:
    """The merge stays a lattice for third-party updates within bounds: whatever the order."""
    rng = random.Random(11)
    for trial in range(50):
        swim, _ = lone()
        updates = [Update("n3", rng.choice((ALIVE, SUSPECT, DEAD)), rng.randrange(3 * INCARNATION_STEP_MAX)) for _ in range(30)]
        last = (0, ALIVE)
        for mseq, update in enumerate(updates, 1):
            swim.receive(address("n2"), sealed("n2", PING, "n1", (update,), mseq=mseq))
            status, incarnation = swim.members()["n3"]
            state = (incarnation, {"alive": ALIVE, "suspect": SUSPECT, "dead": DEAD}[status])
            assert state >= last, (trial, update)
            assert state == max(last, (update.incarnation, update.status)) or update.incarnation > last[0] + INCARNATION_STEP_MAX
            last = state


# ---- keys: rotation, and the no-secret mode ----


def test_during_a_rotation_both_secrets_are_accepted_and_the_first_one_seals() -> None:
    swim, _ = lone(keyring=Keyring((A, B)))
    assert swim.receive(address("n2"), sealed("n2", PING, "n1", mseq=1, secret=A))
    assert swim.receive(address("n3"), sealed("n3", PING, "n1", mseq=1, secret=B))
    assert not swim.receive(address("n4"), sealed("n4", PING, "n1", mseq=1, secret=C))
    ((_, ack),) = swim.receive(address("n5"), sealed("n5", PING, "n1", mseq=1, secret=B))
    wire.decode_datagram(ack, bytes_max=LIMITS.datagram_bytes_max, keyring=Keyring((A,)))
    with pytest.raises(wire.BadMac):
        wire.decode_datagram(ack, bytes_max=LIMITS.datagram_bytes_max, keyring=Keyring((B,)))
    swim.set_keyring(Keyring((B,)))  # SIGHUP with the rotation done
    assert not swim.receive(address("n2"), sealed("n2", PING, "n1", mseq=2, secret=A))
    ((_, ack),) = swim.receive(address("n3"), sealed("n3", PING, "n1", mseq=2, secret=B))
    wire.decode_datagram(ack, bytes_max=LIMITS.datagram_bytes_max, keyring=Keyring((B,)))
    assert swim.stats.bad_macs == 2


def test_a_rolling_rotation_keeps_every_member_alive() -> None:
    """A then (A, B) then (B, A) then B, one node at a time: every pair shares a secret throughout."""
    link = Link({name: Keyring((A,)) for name in NAMES}, seed=5)
    link.run_for(5 * PERIOD)
    for keyring in (Keyring((A, B)), Keyring((B, A)), Keyring((B,))):
        for name in NAMES:
            link.swims[name].set_keyring(keyring)
            link.run_for(2 * PERIOD)
            assert all(link.all_say(member, "alive") for member in NAMES)
    assert sum(s.stats.bad_macs for s in link.swims.values()) == 0
    assert sum(s.stats.suspicions for s in link.swims.values()) == 0


def test_a_node_with_only_the_new_secret_refuses_the_old() -> None:
    link = Link({"n1": Keyring((B,)), "n2": Keyring((A,)), "n3": Keyring((A, B))}, seed=2)
    link.run_for(30 * PERIOD)
    n1, n2, n3 = (link.swims[name] for name in ("n1", "n2", "n3"))
    assert n1.stats.bad_macs > 0 and n2.stats.bad_macs > 0 and n3.stats.bad_macs == 0

    def refused_by(observer: str) -> set[str]:
        return {source for seen_by, kind, source, _ in link.events if kind == "bad_mac" and seen_by == observer}

    # n3 seals with A, its first secret: n1, holding B alone, refuses it as it refuses n2
    assert refused_by("n1") == {address("n2"), address("n3")}
    assert refused_by("n2") == {address("n1")}
    assert n3.stats.acks_received > 0  # n3 takes either


def test_the_no_secret_mode_works_and_refuses_sealed_datagrams() -> None:
    link = Link({name: None for name in NAMES}, seed=3)
    link.run_for(20 * PERIOD)
    assert all(link.all_say(name, "alive") for name in NAMES)
    assert all(s.stats.acks_received > 5 and s.stats.bad_macs == 0 for s in link.swims.values())
    n1 = link.swims["n1"]
    assert not n1.receive(address("n2"), sealed("n2", PING, "n1", mseq=10**6, secret=A))
    assert n1.stats.bad_macs == 1
    secured, _ = lone(keyring=Keyring((A,)))
    assert not secured.receive(address("n2"), sealed("n2", PING, "n1", mseq=1, secret=None))
    assert secured.stats.bad_macs == 1


def test_a_node_that_joins_while_running_takes_the_new_cluster_id() -> None:
    cluster = ["mine"]
    swim = Swim("n1", limits=LIMITS, now_ms=lambda: 1_000_000, rng=random.Random(1), cluster_id=lambda: cluster[0])
    swim.set_members({m: address(m) for m in NAMES})
    assert not swim.receive(address("n2"), sealed("n2", PING, "n1", mseq=1, secret=None, cluster="theirs"))
    cluster[0] = "theirs"
    ((_, ack),) = swim.receive(address("n2"), sealed("n2", PING, "n1", mseq=2, secret=None, cluster="theirs"))
    assert wire.decode_datagram(ack, bytes_max=LIMITS.datagram_bytes_max).cluster == "theirs"


def test_a_relayed_ack_comes_from_the_relayer_and_names_the_member() -> None:
    swim, _ = lone("n1")
    clock = [1_000_000]
    swim.now_ms = lambda: clock[0]
    out: list[Datagram] = []
    while not any(d.kind == PING for d in out):
        clock[0] += LIMITS.tick_interval_ms
        out = [wire.decode_datagram(p, bytes_max=LIMITS.datagram_bytes_max, keyring=Keyring((A,))) for _, p in swim.tick()]
    probe = next(d for d in out if d.kind == PING)
    assert (probe.cluster, probe.boot, probe.incarnation) == (CLUSTER, 0, 0) and probe.mseq >= 1
    # an ack naming another member does not complete the probe; one naming the target does
    other = next(name for name in NAMES if name not in ("n1", probe.target))
    relayer = next(name for name in NAMES if name not in ("n1", probe.target, other))
    swim.receive(address(relayer), sealed(relayer, ACK, other, seq=probe.seq, mseq=1))
    assert swim.stats.acks_received == 0
    swim.receive(address(relayer), sealed(relayer, ACK, probe.target, seq=probe.seq, mseq=2))
    assert swim.stats.acks_received == 1
