"""Claim and preference lists over generated membership histories (DESIGN.md section 3).

A history starts from a fresh ring of S0 members and applies joins, leaves and replacements (one
member out, one in, in a single claim). After every step:
- balance: every member owns floor(Q/S) or ceil(Q/S) partitions;
- movement: a join moves at most ceil(Q/(S+1)) + join_slack(Q, N) partitions, a leave moves exactly
  the leaver's partitions, a replacement at most the leaver's partitions + join_slack(Q, N);
- windows (claim.py rule 4, the bound documented there): a fresh ring, and a join or replacement
  applied to a ring without repeated windows, have none whenever `windows_can_be_distinct`.
  A leave may leave some (it may not move other partitions to fix them); that is measured, not
  asserted, in the claim module's docstring.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynd.core.claim import balanced_shares, claim, join_slack, windows_can_be_distinct
from dynd.core.partition import partition_of
from dynd.core.preflist import preference_list, preference_list_for_key
from dynd.core.ring import Ring, repeated_windows

ROOT = Path(__file__).resolve().parents[2]
PARTITION_COUNTS = (8, 64, 256)
HISTORY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Step:
    kind: str  # "join", "leave" or "replace"
    joiner: str | None
    leaver: str | None
    members: tuple[str, ...]
    before: Ring
    after: Ring


@dataclass(frozen=True)
class History:
    partitions: int
    n_replicas: int
    first: Ring
    first_members: tuple[str, ...]
    steps: tuple[Step, ...]


names = st.text(max_size=6)  # any strings: empty, non-ASCII, lookalikes


@st.composite
def histories(draw: st.DrawFn, *, steps_max: int = 8, members_max: int = 12) -> History:
    partitions = draw(st.sampled_from(PARTITION_COUNTS))
    n_replicas = draw(st.integers(1, 5))
    kinds = draw(st.lists(st.sampled_from(["join", "join", "leave", "replace"]), max_size=steps_max))
    pool = draw(st.lists(names, unique=True, min_size=members_max + len(kinds), max_size=members_max + len(kinds)))
    first_count = draw(st.integers(1, members_max))
    members = pool[:first_count]
    unused = pool[first_count:]
    ring = claim(None, members, partitions=partitions, n_replicas=n_replicas)
    first, first_members = ring, tuple(members)
    steps = []
    for kind in kinds:
        if kind != "join" and len(members) == 1:
            kind = "join"
        joiner = leaver = None
        if kind in ("leave", "replace"):
            leaver = members[draw(st.integers(0, len(members) - 1))]
            members = [m for m in members if m != leaver]
        if kind in ("join", "replace"):
            joiner = unused.pop()
            members = [*members, joiner]
        after = claim(ring, members, partitions=partitions, n_replicas=n_replicas)
        steps.append(Step(kind, joiner, leaver, tuple(members), ring, after))
        ring = after
    return History(partitions, n_replicas, first, first_members, tuple(steps))


def rings_of(history: History) -> list[Ring]:
    return [history.first, *(step.after for step in history.steps)]


def assert_balanced(ring: Ring, members: Sequence[str]) -> None:
    low, high = balanced_shares(ring.partitions, len(members))
    counts = ring.counts()
    assert set(counts) <= set(members)
    for member in members:
        assert low <= counts.get(member, 0) <= high, (member, counts.get(member, 0), low, high)


@HISTORY
@given(histories())
def test_every_member_owns_within_one_partition_of_its_share(history: History) -> None:
    assert_balanced(history.first, history.first_members)
    for step in history.steps:
        assert_balanced(step.after, step.members)


@HISTORY
@given(histories())
def test_joins_and_leaves_move_only_what_they_must(history: History) -> None:
    q, n = history.partitions, history.n_replicas
    for step in history.steps:
        moved = set(step.after.moved_from(step.before))
        if step.kind == "join":
            assert len(moved) <= -(-q // len(step.members)) + join_slack(q, n)
        elif step.kind == "leave":
            assert step.leaver is not None
            assert moved == set(step.before.partitions_of(step.leaver))
        else:
            assert step.leaver is not None
            gone = set(step.before.partitions_of(step.leaver))
            assert gone <= moved
            assert len(moved) <= len(gone) + join_slack(q, n)


@HISTORY
@given(histories())
def test_windows_stay_distinct_through_joins_and_replacements(history: History) -> None:
    q, n = history.partitions, history.n_replicas
    if windows_can_be_distinct(q, len(history.first_members), n):
        assert repeated_windows(history.first, n) == 0
    for step in history.steps:
        if step.kind == "leave" or repeated_windows(step.before, n):
            continue
        if windows_can_be_distinct(q, len(step.members), n):
            assert repeated_windows(step.after, n) == 0, step.kind


@pytest.mark.parametrize("partitions", PARTITION_COUNTS)
def test_fresh_rings_have_distinct_windows_whenever_possible(partitions: int) -> None:
    for n_replicas in range(1, 6):
        for members in range(1, 41):
            ring = claim(None, [f"node-{i}" for i in range(members)], partitions=partitions, n_replicas=n_replicas)
            assert_balanced(ring, [f"node-{i}" for i in range(members)])
            repeats = repeated_windows(ring, n_replicas)
            if windows_can_be_distinct(partitions, members, n_replicas):
                assert repeats == 0, (partitions, n_replicas, members)
            elif members < n_replicas or n_replicas > partitions:
                assert repeats == partitions  # fewer nodes than a window: every window repeats


@pytest.mark.parametrize("n_replicas", [2, 3, 4])
def test_a_ring_grown_one_join_at_a_time_keeps_distinct_windows(n_replicas: int) -> None:
    """The common case: a cluster of N nodes grows to 40, one node at a time.

    With S = N and Q not a multiple of N, windows cannot all be distinct; the first join must
    repair those repeats as well as place the new node.
    """
    for partitions in PARTITION_COUNTS:
        ring = claim(None, [f"node-{i}" for i in range(n_replicas)], partitions=partitions, n_replicas=n_replicas)
        for size in range(n_replicas + 1, 41):
            grown = claim(ring, [f"node-{i}" for i in range(size)], partitions=partitions, n_replicas=n_replicas)
            assert len(grown.moved_from(ring)) <= -(-partitions // size) + join_slack(partitions, n_replicas)
            if windows_can_be_distinct(partitions, size, n_replicas):
                assert repeated_windows(grown, n_replicas) == 0, (partitions, size)
            ring = grown


@HISTORY
@given(histories(), st.randoms(use_true_random=False))
def test_member_order_and_duplicates_do_not_change_the_ring(history: History, shuffler) -> None:  # type: ignore[no-untyped-def]
    q, n = history.partitions, history.n_replicas

    def scrambled(members: Sequence[str]) -> list[str]:
        listed = [*members, *members[: len(members) // 2]]
        shuffler.shuffle(listed)
        return listed

    ring = claim(None, scrambled(history.first_members), partitions=q, n_replicas=n)
    assert ring == history.first
    for step in history.steps:
        ring = claim(ring, scrambled(step.members), partitions=q, n_replicas=n)
        assert ring == step.after


def test_the_ring_does_not_depend_on_the_hash_seed() -> None:
    """Set and dict order of strings changes with PYTHONHASHSEED; claim must never follow it."""
    script = (
        "import json; from dynd.core.claim import claim\n"
        "names = ['n%d' % i for i in range(9)] + ['é', '', 'zz']\n"
        "ring = claim(None, names[:5], partitions=64, n_replicas=3)\n"
        "for members in (names[:7], names[1:7], names[1:9] + names[9:], names[2:]):\n"
        "    ring = claim(ring, members, partitions=64, n_replicas=3)\n"
        "print(json.dumps(ring.to_plain()))\n"
    )
    outputs = []
    for seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        outputs.append(json.loads(done.stdout))
    assert outputs[0] == outputs[1] == outputs[2]


@HISTORY
@given(histories())
def test_claiming_the_same_members_again_moves_nothing(history: History) -> None:
    for ring, members in [(history.first, history.first_members), *((s.after, s.members) for s in history.steps)]:
        assert claim(ring, members, partitions=history.partitions, n_replicas=history.n_replicas) == ring


lopsided_rings = st.sampled_from(PARTITION_COUNTS).flatmap(
    lambda q: st.lists(st.sampled_from("abcdefghij"), min_size=q, max_size=q).map(lambda owners: Ring(q, tuple(owners)))
)


@settings(max_examples=80, deadline=None)
@given(lopsided_rings, st.lists(st.sampled_from("abcdefghijklmnop"), min_size=1, max_size=12), st.integers(1, 5))
def test_claim_balances_any_previous_ring(before: Ring, members: list[str], n_replicas: int) -> None:
    """Even a hand-made, lopsided ring comes out balanced, keeping every partition it may keep."""
    partitions = before.partitions
    after = claim(before, members, partitions=partitions, n_replicas=n_replicas)
    members_set = set(members)
    assert_balanced(after, sorted(members_set))
    low, high = balanced_shares(partitions, len(members_set))
    ceilings = partitions - low * len(members_set)
    held = before.counts()
    # What must move: departed owners' partitions, everything above the ceiling, and, when more
    # members hold a ceiling share than there are ceilings, one partition from each of the extra.
    departed = sum(count for node, count in held.items() if node not in members_set)
    above_ceiling = sum(max(0, count - high) for node, count in held.items() if node in members_set)
    ceiling_holders = sum(1 for node, count in held.items() if node in members_set and count >= high)
    must = departed + above_ceiling + max(0, ceiling_holders - ceilings) * (high - low)
    slack = join_slack(partitions, n_replicas) if members_set - set(before.nodes) else 0
    assert len(after.moved_from(before)) <= must + slack


@settings(max_examples=60, deadline=None)
@given(histories(steps_max=3))
def test_plain_form_round_trips_through_cbor(history: History) -> None:
    for ring in rings_of(history):
        plain = ring.to_plain()
        assert Ring.from_plain(plain) == ring
        assert Ring.from_plain(cbor2.loads(cbor2.dumps(plain))) == ring


@pytest.mark.parametrize(
    "plain",
    [
        None,
        [],
        [["a"]],
        [["b", "a"], [0, 1]],  # nodes not sorted
        [["a", "a"], [0, 1]],  # duplicate node
        [["a", "b"], [0, 2]],  # index out of range
        [["a", "b"], [0, -1]],
        [["a", "b"], [0, True]],  # a bool is not an index
        [["a", "b"], [0, 0]],  # b owns nothing
        [["a", "b", "c"], [0, 1, 2]],  # 3 partitions: not a power of two
        [["a", 1], [0, 1]],
        [["a"], "00"],
    ],
)
def test_from_plain_rejects_malformed_rings(plain: object) -> None:
    with pytest.raises(ValueError):
        Ring.from_plain(plain)


def test_claim_rejects_bad_arguments() -> None:
    ring = claim(None, ["a", "b"], partitions=8, n_replicas=2)
    with pytest.raises(ValueError):
        claim(None, [], partitions=8, n_replicas=2)
    with pytest.raises(ValueError):
        claim(None, ["a"], partitions=12, n_replicas=2)
    with pytest.raises(ValueError):
        claim(ring, ["a", "b"], partitions=16, n_replicas=2)
    with pytest.raises(ValueError):
        claim(None, ["a"], partitions=8, n_replicas=0)
    with pytest.raises(TypeError):
        claim(None, "ab", partitions=8, n_replicas=2)


@HISTORY
@given(histories(steps_max=4))
def test_preference_lists(history: History) -> None:
    n = history.n_replicas
    for ring in rings_of(history):
        distinct_windows = repeated_windows(ring, n) == 0
        for partition in range(ring.partitions):
            plist = preference_list(ring, partition, n)
            assert plist.partition == partition
            assert plist.primaries[0] == ring.owner(partition)
            assert len(plist.primaries) == min(n, len(ring.nodes))
            assert sorted(plist.all) == sorted(ring.nodes)  # a permutation: each node exactly once
            walk = [ring.owner((partition + step) % ring.partitions) for step in range(ring.partitions)]
            assert list(plist.all) == list(dict.fromkeys(walk))  # in the order the walk meets them
            if distinct_windows and len(ring.nodes) >= n:
                assert list(plist.primaries) == walk[:n]


def test_preference_list_for_key_uses_the_keys_partition() -> None:
    ring = claim(None, [f"node-{i}" for i in range(7)], partitions=64, n_replicas=3)
    for key in (b"", b"greeting", bytes(range(256))):
        assert preference_list_for_key(ring, key, 3) == preference_list(ring, partition_of(key, 64), 3)
    # an equal ring built separately gives the same lists
    twin = Ring.from_plain(ring.to_plain())
    assert preference_list(twin, 5, 3) == preference_list(ring, 5, 3)
    with pytest.raises(ValueError):
        preference_list(ring, 64, 3)


def test_fewer_nodes_than_replicas() -> None:
    ring = claim(None, ["a", "b"], partitions=8, n_replicas=3)
    assert ring.counts() == {"a": 4, "b": 4}
    assert repeated_windows(ring, 3) == 8
    plist = preference_list(ring, 3, 3)
    assert sorted(plist.primaries) == ["a", "b"] and plist.fallbacks == ()
