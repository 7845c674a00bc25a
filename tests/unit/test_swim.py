"""The SWIM failure detector (dynd/core/swim.py) as a pure machine: virtual clock, fake links, no sleeps.

Multi-node scenarios run over `SimNet` (tests/bench/detection.py), which delivers datagrams with
seeded delays; single exchanges are driven by hand. The last test runs the UDP endpoint over
loopback once.
"""

from __future__ import annotations

import itertools
import random
import time

import pytest
import trio

from dynd.core.limits import Limits
from dynd.core.swim import Swim
from dynd.protocol import swim_wire as wire
from dynd.protocol.swim_wire import ACK, ALIVE, DEAD, PING, PING_REQ, SUSPECT, Datagram, Update
from dynd.shell import udp
from dynd.shell.udp import UdpEndpoint
from tests.bench.detection import SimNet

LIMITS = Limits()
NAMES = ["n1", "n2", "n3", "n4", "n5"]
SEEDS = range(8)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def lone_swim(name: str = "n1", members: list[str] = NAMES, seed: int = 1, incarnation: int = 0) -> tuple[Swim, Clock]:
    clock = Clock()
    swim = Swim(name, limits=LIMITS, now_ms=clock, rng=random.Random(seed), incarnation=incarnation)
    swim.set_members({m: address(m) for m in members})
    return swim, clock


_MSEQ = itertools.count(1)  # every hand-made datagram gets a fresh mseq, so none is a replay


def address(name: str) -> str:
    """A member's registered address in `lone_swim`: datagrams from it must come from there."""
    return f"{name}.example:7400"


def said(sender: str, kind: int, target: str, updates: tuple[Update, ...] = (), seq: int = 7, incarnation: int = 0) -> bytes:
    """A datagram as member `sender` (no secret, boot 0, its own `incarnation`) would send it."""
    return wire.encode_datagram(Datagram(kind, seq, sender, target, updates, mseq=next(_MSEQ), incarnation=incarnation))


def ping(sender: str, target: str, updates: tuple[Update, ...] = (), seq: int = 7, incarnation: int = 0) -> bytes:
    return said(sender, PING, target, updates, seq, incarnation)


def hear(swim: Swim, sender: str, payload: bytes) -> list[tuple[str, bytes]]:
    """`swim` receives `payload` from `sender`'s registered address."""
    return swim.receive(address(sender), payload)


def as_member(swim: Swim, kind: int, target: str, updates: tuple[Update, ...] = (), seq: int = 7) -> bytes:
    """A datagram sealed and numbered as the running member `swim` would seal its next one."""
    swim._mseq += 1
    bare = Datagram(kind, seq, swim.name, target, updates, swim.cluster_id, swim.boot, swim._mseq, swim.own_incarnation)
    return wire.encode_datagram(bare)


def decoded(out: list[tuple[str, bytes]]) -> list[tuple[str, Datagram]]:
    return [(address, wire.decode_datagram(payload, bytes_max=LIMITS.datagram_bytes_max)) for address, payload in out]


def first_ping(swim: Swim, clock: Clock) -> Datagram:
    """Tick until the node sends its next probe."""
    for _ in range(2 * LIMITS.swim_period_ms // LIMITS.tick_interval_ms):
        clock.now += LIMITS.tick_interval_ms
        sent = decoded(swim.tick())
        if sent:
            ((_, datagram),) = sent
            assert datagram.kind == PING
            return datagram
    raise AssertionError("no probe within two periods")


def run_ticks(swim: Swim, clock: Clock, duration_ms: int) -> list[tuple[str, bytes]]:
    out = []
    for _ in range(duration_ms // LIMITS.tick_interval_ms):
        clock.now += LIMITS.tick_interval_ms
        out.extend(swim.tick())
    return out


# ---- whole-cluster behaviour over the fake network ----


@pytest.mark.parametrize("seed", SEEDS)
def test_a_silent_member_is_dead_at_every_member_within_the_bound(seed: int) -> None:
    net = SimNet(NAMES, seed=seed)
    net.run_for(5_000)
    killed_at = net.now
    net.kill("n3")
    net.run_for(30_000, stop=lambda: net.all_say("n3", "dead"))
    assert net.all_say("n3", "dead"), f"seed {seed}"
    assert net.now - killed_at <= 15_000, f"seed {seed}: {net.now - killed_at} ms"
    for name in NAMES:
        if name != "n3":
            assert not net.swim(name).usable("n3")
            assert [net.says(name, other) for other in NAMES if other != "n3"] == ["alive"] * 4


@pytest.mark.parametrize("seed", SEEDS)
def test_no_suspicion_without_faults(seed: int) -> None:
    net = SimNet(NAMES, seed=seed, delay_ms=(0, 200), tick_late_ms=(0, 50))
    net.run_for(120_000)
    assert net.verdicts == [], f"seed {seed}"
    assert all(net.swim(name).stats.acks_received > 50 for name in NAMES)


@pytest.mark.parametrize("seed", SEEDS)
def test_an_indirect_probe_saves_a_member_whose_direct_link_is_cut(seed: int) -> None:
    net = SimNet(NAMES, seed=seed)
    net.cut |= {("n1", "n2"), ("n2", "n1")}
    net.run_for(60_000)
    assert net.verdicts == [], f"seed {seed}"
    assert net.swim("n1").stats.indirect_probes > 0
    assert sum(net.swim(name).stats.acks_relayed for name in NAMES) > 0


def test_a_member_cut_off_from_everyone_is_dead_then_alive_again_when_healed() -> None:
    net = SimNet(NAMES, seed=3)
    net.run_for(3_000)
    cut = {(a, "n4") for a in NAMES} | {("n4", b) for b in NAMES}
    net.cut |= cut
    net.run_for(30_000, stop=lambda: net.all_say("n4", "dead"))
    assert net.all_say("n4", "dead")
    net.cut -= cut
    net.run_for(15_000, stop=lambda: net.all_say("n4", "alive"))
    assert net.all_say("n4", "alive")
    assert net.swim("n4").own_incarnation >= 1  # it heard it was dead and refuted
    assert all(net.swim(name).incarnation("n4") == net.swim("n4").own_incarnation for name in NAMES)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_two_second_pause_is_never_a_dead_verdict(seed: int) -> None:
    for mode in ({"delay_ms": (0, 20)}, {"delay_ms": (0, 200), "tick_late_ms": (0, 50)}):
        net = SimNet(NAMES, seed=seed, **mode)
        net.run_for(5_000 + seed * 137)
        net.pause("n2", 2_000)
        net.run_for(30_000)
        assert [v for v in net.verdicts if v.status == "dead"] == [], f"seed {seed} {mode}"
        assert all(net.says(name, "n2") == "alive" for name in NAMES)


def test_suspicion_is_refuted_with_a_higher_incarnation() -> None:
    net = SimNet(NAMES, seed=5)
    net.run_for(3_000)
    # n1 comes to suspect n2 (as after a lost probe); the news spreads and n2 refutes it
    n1 = net.swim("n1")
    n1.receive(net.addresses["n3"], as_member(net.swim("n3"), PING, "n1", (Update("n2", SUSPECT, 0),)))
    assert n1.status("n2") == "suspect" and n1.usable("n2")
    net.run_for(10_000)
    assert net.swim("n2").own_incarnation == 1
    assert net.swim("n2").stats.refutations == 1
    assert all(net.says(name, "n2") == "alive" and net.swim(name).incarnation("n2") == 1 for name in NAMES)
    assert [v.status for v in net.verdicts if v.member == "n2" and v.observer == "n1"] == ["suspect", "alive"]


def test_a_restarted_member_at_incarnation_0_refutes_a_higher_one() -> None:
    net = SimNet(NAMES, seed=9)
    net.run_for(2_000)
    for incarnation in range(3):  # n5 refutes three times: everyone holds alive@3
        net.swim("n1").receive(net.addresses["n2"], as_member(net.swim("n2"), PING, "n1", (Update("n5", SUSPECT, incarnation),)))
        net.run_for(8_000)
    assert all(net.swim(name).incarnation("n5") == 3 for name in NAMES)
    net.kill("n5")
    net.run_for(30_000, stop=lambda: net.all_say("n5", "dead"))
    assert net.all_say("n5", "dead")
    net.restart("n5", incarnation=0)
    net.run_for(15_000, stop=lambda: net.all_say("n5", "alive"))
    assert net.all_say("n5", "alive")
    assert net.swim("n5").own_incarnation == 4
    assert all(net.swim(name).incarnation("n5") == 4 for name in NAMES)


def test_a_member_that_restarted_learns_a_paused_members_newer_incarnation() -> None:
    """Found on real processes: every other member restarted since n1 refuted a suspicion, so
    they know n1 at incarnation 0 while n1 is at 1. Paused long enough, n1 is declared dead@0;
    once back it must answer that old verdict with its current incarnation, or it stays dead.
    (Every datagram now carries its sender's incarnation, so the others must not hear from n1
    before its pause for the scene to arise: n1 is paused as they restart.)"""
    net = SimNet(NAMES, seed=3)
    net.run_for(2_000)
    net.swim("n3").receive(net.addresses["n4"], as_member(net.swim("n4"), PING, "n3", (Update("n1", SUSPECT, 0),)))
    net.run_for(8_000)
    assert net.swim("n1").own_incarnation == 1
    net.pause("n1", 12_000)
    for name in NAMES[1:]:
        net.kill(name)
        net.restart(name, incarnation=0)
    net.run_for(3_000)
    assert all(net.swim(name).incarnation("n1") == 0 for name in NAMES[1:]), "none has heard of the refutation"
    net.run_for(9_000, stop=lambda: net.all_say("n1", "dead"))
    assert net.all_say("n1", "dead")
    net.run_for(20_000, stop=lambda: net.all_say("n1", "alive"))
    assert net.all_say("n1", "alive")


def test_same_seed_same_run_and_another_seed_another() -> None:
    def trace(seed: int) -> list[tuple[int, str, str, str]]:
        net = SimNet(NAMES, seed=seed, delay_ms=(0, 50))
        net.run_for(4_000)
        net.kill("n4")
        net.pause("n1", 1_500)
        net.run_for(20_000)
        return [(v.at_ms, v.observer, v.member, v.status) for v in net.verdicts] + [(net.sent, str(net.sent_bytes), "", "")]

    assert trace(11) == trace(11)
    assert trace(11) != trace(12)


# ---- single exchanges, by hand ----


def test_a_ping_is_acked_to_the_registered_address_never_the_source() -> None:
    swim, _ = lone_swim("n1")
    out = decoded(hear(swim, "n2", ping("n2", "n1", seq=42)))
    assert len(out) == 1
    to, ack = out[0]
    assert to == "n2.example:7400"
    assert (ack.kind, ack.seq, ack.sender, ack.target) == (ACK, 42, "n1", "")
    assert swim.stats.pings_received == 1 and swim.stats.acks_sent == 1


def test_each_period_one_member_is_pinged_round_robin_carrying_its_own_state() -> None:
    swim, clock = lone_swim("n1")
    targets = []
    for _ in range(8):  # two rounds of the four others
        pings = [d for _, d in decoded(run_ticks(swim, clock, LIMITS.swim_period_ms)) if d.kind == PING]
        assert len(pings) == 1
        targets.append(pings[0].target)
        assert pings[0].updates[0] == Update(pings[0].target, ALIVE, 0)
        hear(swim, pings[0].target, said(pings[0].target, ACK, "", seq=pings[0].seq))
    assert sorted(targets[:4]) == sorted(targets[4:]) == ["n2", "n3", "n4", "n5"]
    assert swim.stats.acks_received == 8 and swim.stats.suspicions == 0


def test_no_ack_means_ping_reqs_then_suspicion_then_dead() -> None:
    swim, clock = lone_swim("n1", seed=4)
    changes: list[tuple[str, str]] = []
    swim.on_change.append(lambda name, status: changes.append((name, status)))
    first = first_ping(swim, clock)
    target = first.target
    sent = decoded(run_ticks(swim, clock, LIMITS.swim_ping_timeout_ms))
    reqs = [d for _, d in sent if d.kind == PING_REQ]
    assert len(reqs) == LIMITS.swim_indirect_probes
    assert {d.target for d in reqs} == {target} and {d.seq for d in reqs} == {first.seq}
    assert target not in {a.split(".")[0] for a, d in sent if d.kind == PING_REQ}
    assert swim.status(target) == "alive"
    run_ticks(swim, clock, LIMITS.swim_period_ms - LIMITS.swim_ping_timeout_ms)
    assert swim.status(target) == "suspect" and swim.usable(target)
    # the suspicion is piggybacked on what n1 sends next
    next_ping = [d for _, d in decoded(run_ticks(swim, clock, LIMITS.swim_period_ms)) if d.kind == PING][0]
    assert Update(target, SUSPECT, 0) in next_ping.updates
    run_ticks(swim, clock, LIMITS.swim_suspicion_timeout_ms)
    assert swim.status(target) == "dead" and not swim.usable(target)
    assert [c for c in changes if c[0] == target] == [(target, "suspect"), (target, "dead")]
    assert swim.stats.suspicions >= 1 and swim.stats.dead_verdicts >= 1


def test_a_relayed_ack_counts_and_a_ping_req_is_served() -> None:
    swim, clock = lone_swim("n1", seed=4)
    first = first_ping(swim, clock)
    run_ticks(swim, clock, LIMITS.swim_ping_timeout_ms)
    # another member relays the target's ack: the probe succeeds
    relayer = next(name for name in NAMES if name not in ("n1", first.target))
    hear(swim, relayer, said(relayer, ACK, first.target, seq=first.seq))
    run_ticks(swim, clock, LIMITS.swim_period_ms)
    assert swim.status(first.target) == "alive" and swim.stats.acks_received == 1

    helper, _ = lone_swim("n3")
    request = said("n1", PING_REQ, "n2", (Update("n2", ALIVE, 0),), seq=99)
    ((to, relay_ping),) = decoded(hear(helper, "n1", request))
    assert to == "n2.example:7400" and relay_ping.kind == PING and relay_ping.target == "n2"
    ((to, relayed),) = decoded(hear(helper, "n2", said("n2", ACK, "", seq=relay_ping.seq)))
    assert to == "n1.example:7400"
    # the relayer sends (and seals) the relayed ack; `target` names the member it vouches for
    assert (relayed.kind, relayed.seq, relayed.sender, relayed.target) == (ACK, 99, "n3", "n2")
    assert helper.stats.acks_relayed == 1


def test_a_suspected_node_refutes_in_its_ack() -> None:
    swim, _ = lone_swim("n2")
    ((_, ack),) = decoded(hear(swim, "n1", ping("n1", "n2", (Update("n2", SUSPECT, 0),))))
    assert swim.own_incarnation == 1 and swim.stats.refutations == 1
    assert ack.updates[0] == Update("n2", ALIVE, 1)
    # a dead verdict at a higher incarnation is beaten too; alive news only raises the number
    hear(swim, "n1", ping("n1", "n2", (Update("n2", DEAD, 6),)))
    assert swim.own_incarnation == 7
    hear(swim, "n1", ping("n1", "n2", (Update("n2", ALIVE, 9),)))
    assert swim.own_incarnation == 9 and swim.stats.refutations == 2
    assert swim.status("n2") == "alive"


def test_merge_order_is_incarnation_then_dead_over_suspect_over_alive() -> None:
    swim, _ = lone_swim("n1")
    steps = [
        (Update("n3", SUSPECT, 0), "suspect", 0),
        (Update("n3", ALIVE, 0), "suspect", 0),  # equal incarnation: alive does not override
        (Update("n3", DEAD, 0), "dead", 0),
        (Update("n3", SUSPECT, 0), "dead", 0),
        (Update("n3", ALIVE, 1), "alive", 1),  # a higher incarnation overrides dead
        (Update("n3", DEAD, 0), "alive", 1),  # stale
        (Update("n3", SUSPECT, 2), "suspect", 2),
    ]
    for update, status, incarnation in steps:
        hear(swim, "n2", ping("n2", "n1", (update,)))
        assert (swim.status("n3"), swim.incarnation("n3")) == (status, incarnation), update
    assert swim.stats.recoveries == 1


def test_a_pinger_we_hold_dead_hears_so_first_in_our_ack() -> None:
    swim, _ = lone_swim("n1")
    hear(swim, "n2", ping("n2", "n1", (Update("n3", DEAD, 2),)))
    ((_, ack),) = decoded(hear(swim, "n3", ping("n3", "n1", (Update("n1", ALIVE, 0),))))
    assert ack.updates[0] == Update("n3", DEAD, 2)


def test_local_evidence_probes_at_once_and_success_completes_a_probe() -> None:
    swim, clock = lone_swim("n1", seed=2)
    run_ticks(swim, clock, 100)  # before the first period: nothing scheduled yet may be due
    swim.report_failure("n4")
    swim.report_failure("nobody")  # not a member: ignored
    clock.now += LIMITS.tick_interval_ms
    pings = [d for _, d in decoded(swim.tick()) if d.kind == PING]
    assert "n4" in [d.target for d in pings]
    assert swim.status("n4") == "alive"  # the failure alone changes nothing
    swim.report_failure("n4")  # again within the period: no second probe
    clock.now += LIMITS.tick_interval_ms
    assert "n4" not in [d.target for _, d in decoded(swim.tick()) if d.kind == PING]
    swim.report_success("n4")  # a reply over TCP: the probe in flight succeeded
    run_ticks(swim, clock, 2 * LIMITS.swim_period_ms)
    assert swim.status("n4") == "alive"


def test_a_stalled_node_does_not_hold_its_stall_against_others() -> None:
    swim, clock = lone_swim("n1", seed=3)
    first = first_ping(swim, clock)
    clock.now += 3_000  # the process was stopped; the ack waits in the socket
    swim.tick()
    assert swim.stats.stalls == 1
    hear(swim, first.target, said(first.target, ACK, "", seq=first.seq))
    run_ticks(swim, clock, LIMITS.swim_period_ms)
    assert swim.status(first.target) == "alive" and swim.stats.acks_received >= 1


def test_membership_changes_add_and_forget_members() -> None:
    swim, clock = lone_swim("n1", members=["n1", "n2"])
    assert swim.status("n9") == "alive" and swim.usable("n9") and swim.incarnation("n9") == 0  # unknown
    assert swim.status("n1") == "alive" and swim.incarnation("n1") == 0  # self
    hear(swim, "n2", ping("n2", "n1", (Update("n3", DEAD, 4),)))
    assert swim.status("n3") == "alive"  # not a member: news about it is ignored
    swim.set_members({"n1": "a:1", "n2": "b:1", "n3": "c:1"})
    swim.receive("b:1", ping("n2", "n1", (Update("n3", DEAD, 4),)))
    assert swim.status("n3") == "dead" and swim.members()["n3"] == ("dead", 4)
    swim.set_members({"n1": "a:1", "n2": "b:1"})
    assert swim.status("n3") == "alive" and "n3" not in swim.members()
    targets = {d.target for _, d in decoded(run_ticks(swim, clock, 5 * LIMITS.swim_period_ms)) if d.kind == PING}
    assert targets == {"n2"}


# ---- hostile and broken input ----


def test_bad_datagrams_are_counted_and_change_nothing() -> None:
    swim, clock = lone_swim("n1")
    before = swim.members()
    bad = [
        b"",
        b"\xff\x00garbage",
        wire.encode_datagram(Datagram(PING, 1, "n2", "n1"))[:-1],  # truncated
        b"\x87" + wire.encode_datagram(Datagram(PING, 1, "n2", "n1"))[1:] + b"\x00",  # trailing byte
        b"\x00" * (LIMITS.datagram_bytes_max + 1),
        wire.encode_datagram(Datagram(PING, 1, "n2", "n1")).replace(b"dswim", b"xswim"),
    ]
    for payload in bad:
        assert swim.receive("x", payload) == []
    assert swim.stats.bad_datagrams == len(bad)
    # well formed, but from a stranger, or for someone else, or about a non-member
    assert swim.receive("x", ping("mallory", "n1", (Update("n2", DEAD, 9),))) == []
    assert hear(swim, "n2", ping("n2", "n3", (Update("n2", DEAD, 9),))) == []
    assert hear(swim, "n2", said("n2", PING_REQ, "mallory", seq=1)) == []
    assert swim.stats.unknown_senders == 1 and swim.stats.misdirected == 2
    assert hear(swim, "n2", said("n2", ACK, "", seq=12345)) == []
    assert swim.stats.acks_late == 1
    assert swim.members() == before
    run_ticks(swim, clock, 3 * LIMITS.swim_period_ms)


def test_no_answer_is_larger_than_its_question() -> None:
    swim, clock = lone_swim("n1", members=["n1"] + [f"member-with-a-long-name-{i:03d}" for i in range(40)])
    # plenty to gossip: many fresh updates
    for i in range(40):
        hear(swim, "member-with-a-long-name-000", ping("member-with-a-long-name-000", "n1", (Update(f"member-with-a-long-name-{i:03d}", SUSPECT, i),)))
    hear(swim, "member-with-a-long-name-000", ping("member-with-a-long-name-000", "n1", (Update("n1", SUSPECT, 0),)))  # a refutation to send
    smallest = ping("member-with-a-long-name-001", "n1")
    ((_, payload),) = hear(swim, "member-with-a-long-name-001", smallest)
    assert len(payload) <= len(smallest)
    rng = random.Random(5)
    for _ in range(200):
        updates = tuple(Update(f"member-with-a-long-name-{rng.randrange(40):03d}", rng.choice((ALIVE, SUSPECT)), rng.randrange(1_000)) for _ in range(rng.randrange(3)))
        sender = f"member-with-a-long-name-{rng.randrange(40):03d}"
        question = ping(sender, "n1", updates, seq=rng.randrange(2**40))
        for _, answer in hear(swim, sender, question):
            assert len(answer) <= len(question)
    assert swim.stats.answers_dropped == 0
    # and what this node sends on its own fits the limit and the piggyback count
    for _, payload in run_ticks(swim, clock, 3 * LIMITS.swim_period_ms):
        assert len(payload) <= LIMITS.datagram_bytes_max
        assert len(wire.decode_datagram(payload, bytes_max=LIMITS.datagram_bytes_max).updates) <= LIMITS.swim_piggyback_max


def test_a_relayed_ack_is_never_larger_than_the_ping_req() -> None:
    long_names = [f"{c}" * 64 for c in "abcdef"]
    helper, _ = lone_swim(long_names[0], members=long_names)
    for name in long_names[1:]:  # each says it is at 2^40 - 1 (a member speaks for itself) ...
        hear(helper, name, ping(name, long_names[0], incarnation=2**40 - 1))
    for name in long_names[1:]:  # ... so suspicions one above are within a step: plenty to gossip
        hear(helper, long_names[1], ping(long_names[1], long_names[0], (Update(name, SUSPECT, 2**40),), incarnation=2**40 - 1))
    request = said("b" * 64, PING_REQ, "c" * 64, seq=3, incarnation=2**40 - 1)  # no piggyback at all
    ((_, relay_ping),) = decoded(hear(helper, "b" * 64, request))
    ((_, relayed),) = hear(helper, "c" * 64, said("c" * 64, ACK, "", seq=relay_ping.seq))
    assert len(relayed) <= len(request)


def test_limits_relate() -> None:
    with pytest.raises(ValueError):
        Limits(swim_ping_timeout_ms=1_000, swim_period_ms=1_000)
    with pytest.raises(ValueError):
        Limits(datagram_bytes_max=100)


# ---- the shell endpoint, once over loopback ----


@pytest.mark.parametrize("member_host", ["127.0.0.1", "localhost"])
async def test_udp_endpoint_carries_probes_between_two_nodes(member_host: str) -> None:
    """Members registered by address or by host name: the endpoint hands the detector the
    registered address a datagram's source resolves from, so the source check passes."""
    limits = Limits(swim_period_ms=200, swim_ping_timeout_ms=100)  # real time: keep it short

    def now() -> int:
        return int(time.monotonic() * 1000)

    async with trio.open_nursery() as nursery:
        endpoints, swims, ports = {}, {}, {}
        for index, name in enumerate(("a", "b")):
            endpoints[name] = UdpEndpoint(datagram_bytes_max=limits.datagram_bytes_max)
            swims[name] = Swim(name, limits=limits, now_ms=now, rng=random.Random(index))
            ports[name] = await nursery.start(endpoints[name].run, swims[name], "127.0.0.1", 0)
        for swim in swims.values():
            swim.set_members({name: f"{member_host}:{port}" for name, port in ports.items()})
        await trio.sleep(3 * udp.RESOLVE_POLL_S)  # the endpoints resolve the new members' addresses
        with trio.fail_after(10):
            while not all(swim.stats.acks_received >= 2 for swim in swims.values()):
                for name in swims:
                    endpoints[name].flush(swims[name].tick())
                await trio.sleep(limits.tick_interval_ms / 1000)
        # garbage and oversized datagrams do not stop the loop
        raw = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
        with raw:
            await raw.sendto(b"\xffnonsense", ("127.0.0.1", ports["a"]))
            await raw.sendto(b"x" * (limits.datagram_bytes_max + 100), ("127.0.0.1", ports["a"]))
            with trio.fail_after(5):
                while swims["a"].stats.bad_datagrams < 2:
                    await trio.sleep(0.01)
        before = swims["a"].stats.acks_received
        with trio.fail_after(10):
            while swims["a"].stats.acks_received == before:
                endpoints["a"].flush(swims["a"].tick())
                endpoints["b"].flush(swims["b"].tick())
                await trio.sleep(limits.tick_interval_ms / 1000)
        assert endpoints["a"].stats.detector_errors == 0
        assert all(swim.stats.source_mismatches == 0 for swim in swims.values())
        nursery.cancel_scope.cancel()
