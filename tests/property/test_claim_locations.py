"""Claim and preference lists with locations, over generated clusters and histories (issue 17).

A cluster is hosts of 1-6 members each, the hosts spread over zones; a history starts from a
fresh ring and applies joins (a worker on an existing host, or a new host) and leaves. After every
step:
- balance and movement are as without locations: every member owns floor(Q/S) or ceil(Q/S)
  partitions, a join moves at most ceil(Q/S) + join_slack(Q, N) partitions, a leave exactly the
  leaver's (unless, with more members than partitions, a member that owned nothing takes one:
  then it counts as a join, as without locations);
- preference lists (always): every partition's N primaries sit on min(N, hosts) distinct hosts
  and min(N, zones) distinct zones of the ring, primaries[0] owns the partition, and each list
  holds every node once;
- claim's windows (claim.py rule 7): a fresh ring, and a join applied to a ring without repeated
  hosts (zones), repeat no host (zone) in any window of N partitions whenever
  `groups_can_be_distinct` for the hosts' (zones') sizes. A leave may leave some (it moves only
  the leaver's partitions), as without locations;
- determinism: the same members and locations in any order, with duplicates and with locations
  of non-members, give an equal ring.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynd.core.claim import balanced_shares, claim, join_slack, location_groups
from dynd.core.preflist import preference_list
from dynd.core.ring import Ring
from dynd.protocol.location_report import groups_can_be_distinct

ROOT = Path(__file__).resolve().parents[2]
HISTORY = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass(frozen=True)
class Step:
    kind: str  # "join" or "leave"
    member: str
    members: tuple[str, ...]
    locations: dict[str, str]
    before: Ring
    after: Ring


@dataclass(frozen=True)
class History:
    partitions: int
    n_replicas: int
    first: Ring
    first_members: tuple[str, ...]
    locations: dict[str, str]  # every member ever, with its location
    steps: tuple[Step, ...]


@st.composite
def histories(draw: st.DrawFn, *, steps_max: int = 6) -> History:
    partitions = draw(st.sampled_from((16, 64, 256)))
    n_replicas = draw(st.integers(2, 4))
    zone_count = draw(st.integers(1, 6))
    host_count = draw(st.integers(1, 12))
    locations: dict[str, str] = {}
    members: list[str] = []
    hosts: list[str] = []
    for h in range(host_count):
        host = f"z{draw(st.integers(0, zone_count - 1))}/h{h}"
        hosts.append(host)
        for w in range(draw(st.integers(1, 6))):
            name = f"h{h}w{w}"
            locations[name] = host
            members.append(name)
    # Some members may have no location: each counts as a host and a zone of its own.
    unknown = draw(st.lists(st.sampled_from(members), max_size=2, unique=True))
    located = {m: where for m, where in locations.items() if m not in unknown}
    ring = claim(None, members, partitions=partitions, n_replicas=n_replicas, locations=located)
    first, first_members = ring, tuple(members)
    steps = []
    spare = 0
    for kind in draw(st.lists(st.sampled_from(["join", "join", "leave"]), max_size=steps_max)):
        if kind == "leave" and len(members) > 1:
            member = members[draw(st.integers(0, len(members) - 1))]
            members = [m for m in members if m != member]
        else:
            kind = "join"
            member = f"new{spare}"
            spare += 1
            host = draw(st.sampled_from([*hosts, f"z{draw(st.integers(0, zone_count - 1))}/fresh{spare}"]))
            located[member] = locations[member] = host
            members = [*members, member]
        after = claim(ring, members, partitions=partitions, n_replicas=n_replicas, locations=located)
        steps.append(Step(kind, member, tuple(members), dict(located), ring, after))
        ring = after
    return History(partitions, n_replicas, first, first_members, located, tuple(steps))


def rings_of(history: History) -> list[tuple[Ring, tuple[str, ...]]]:
    return [(history.first, history.first_members), *((step.after, step.members) for step in history.steps)]


def host_of(ring: Ring) -> Callable[[str], str]:
    return ring.host_of


def zone_of(ring: Ring) -> Callable[[str], str]:
    return ring.zone_of


def windows_repeating(ring: Ring, n: int, group: Callable[[str], str]) -> int:
    q = ring.partitions
    return sum(len({group(ring.owners[(p + k) % q]) for k in range(n)}) < n for p in range(q))


def sizes(members: Sequence[str], locations: dict[str, str]) -> tuple[list[int], list[int]]:
    hosts, zones = location_groups(members, locations)
    return [len(g) for g in hosts.values()], [len(g) for g in zones.values()]


@HISTORY
@given(histories())
def test_balance_and_movement_hold_as_without_locations(history: History) -> None:
    q, n = history.partitions, history.n_replicas
    for ring, members in rings_of(history):
        low, high = balanced_shares(q, len(members))
        counts = ring.counts()
        assert set(counts) <= set(members)
        assert all(low <= counts.get(member, 0) <= high for member in members)
    for step in history.steps:
        moved = set(step.after.moved_from(step.before))
        if step.kind == "join":
            assert len(moved) <= -(-q // len(step.members)) + join_slack(q, n)
        elif set(step.members) <= set(step.before.nodes):
            assert moved == set(step.before.partitions_of(step.member))
        else:  # S > Q: a member that owned nothing gets the leaver's partition, as a join would
            gone = set(step.before.partitions_of(step.member))
            assert gone <= moved and len(moved) <= len(gone) + join_slack(q, n)


@HISTORY
@given(histories())
def test_preference_lists_hold_distinct_zones_then_hosts(history: History) -> None:
    n = history.n_replicas
    for ring, _ in rings_of(history):
        hosts = {ring.host_of(node) for node in ring.nodes}
        zones = {ring.zone_of(node) for node in ring.nodes}
        for p in range(ring.partitions):
            plist = preference_list(ring, p, n)
            assert plist.primaries[0] == ring.owner(p)
            assert len(plist.primaries) == min(n, len(ring.nodes))
            assert sorted(plist.all) == sorted(ring.nodes)
            assert len({ring.host_of(node) for node in plist.primaries}) == min(n, len(hosts))
            assert len({ring.zone_of(node) for node in plist.primaries}) == min(n, len(zones))


@HISTORY
@given(histories())
def test_windows_hold_distinct_hosts_and_zones_whenever_claim_promises_it(history: History) -> None:
    q, n = history.partitions, history.n_replicas
    host_sizes, zone_sizes = sizes(history.first_members, history.locations)
    if groups_can_be_distinct(q, host_sizes, n):
        assert windows_repeating(history.first, n, history.first.host_of) == 0
    if groups_can_be_distinct(q, zone_sizes, n):
        assert windows_repeating(history.first, n, history.first.zone_of) == 0
    for step in history.steps:
        if step.kind == "leave":
            continue
        host_sizes, zone_sizes = sizes(step.members, step.locations)
        for level, group_sizes in (("host", host_sizes), ("zone", zone_sizes)):
            before = windows_repeating(step.before, n, getattr(step.before, f"{level}_of"))
            if before == 0 and groups_can_be_distinct(q, group_sizes, n):
                assert windows_repeating(step.after, n, getattr(step.after, f"{level}_of")) == 0, (level, step.member)


@HISTORY
@given(histories(steps_max=3), st.randoms(use_true_random=False))
def test_member_order_duplicates_and_stray_locations_do_not_change_the_ring(history: History, shuffler) -> None:  # type: ignore[no-untyped-def]
    q, n = history.partitions, history.n_replicas

    def scrambled(members: Sequence[str]) -> list[str]:
        listed = [*members, *members[: len(members) // 2]]
        shuffler.shuffle(listed)
        return listed

    def stray(locations: dict[str, str]) -> dict[str, str]:
        items = list(locations.items()) + [("not-a-member", "z9/h9")]
        shuffler.shuffle(items)
        return dict(items)

    ring = claim(None, scrambled(history.first_members), partitions=q, n_replicas=n, locations=stray(history.locations))
    assert ring == history.first
    for step in history.steps:
        ring = claim(ring, scrambled(step.members), partitions=q, n_replicas=n, locations=stray(step.locations))
        assert ring == step.after


@HISTORY
@given(histories(steps_max=3))
def test_the_ring_carries_its_nodes_locations_through_the_plain_form(history: History) -> None:
    for ring, _ in rings_of(history):
        for node in ring.nodes:
            assert ring.location_of(node) == history.locations.get(node, "")
        assert Ring.from_plain(ring.to_plain()) == ring


def test_claiming_again_moves_nothing_and_a_location_change_may_move_a_little() -> None:
    locations = {f"h{h}w{w}": f"z{h % 3}/h{h}" for h in range(8) for w in range(3)}
    ring = claim(None, list(locations), partitions=256, n_replicas=3, locations=locations)
    assert claim(ring, list(locations), partitions=256, n_replicas=3, locations=locations) == ring
    moved_host = {**locations, "h0w0": "z1/h1"}  # a worker moved to another host and zone
    after = claim(ring, list(locations), partitions=256, n_replicas=3, locations=moved_host)
    assert after.location_of("h0w0") == "z1/h1"
    assert len(after.moved_from(ring)) <= join_slack(256, 3)
    assert windows_repeating(after, 3, after.host_of) <= windows_repeating(ring, 3, after.host_of)


def test_the_ring_does_not_depend_on_the_hash_seed() -> None:
    script = (
        "import json; from dynd.core.claim import claim\n"
        "where = {'h%dw%d' % (h, w): 'z%d/h%d' % (h % 3, h) for h in range(7) for w in range(1 + h % 3)}\n"
        "names = sorted(where)\n"
        "ring = claim(None, names[:8], partitions=64, n_replicas=3, locations=where)\n"
        "for members in (names[:11], names[1:11], names[2:]):\n"
        "    ring = claim(ring, members, partitions=64, n_replicas=3, locations=where)\n"
        "print(json.dumps(ring.to_plain()))\n"
    )
    outputs = []
    for seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        outputs.append(json.loads(done.stdout))
    assert outputs[0] == outputs[1] == outputs[2]
    assert len(outputs[0]) == 3  # the plain form carries the locations
