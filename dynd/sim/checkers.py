"""Checkers: what must hold once every fault has healed and the cluster has quiesced.

They are separate from the workload (FoundationDB's setup/start/check): the workload only records
what clients did; these read the final state and the history and say what is wrong.

    lost_write     every acknowledged add is in the final read of its key (the union of siblings),
                   unless a clear that saw it sent its delete
    resurrected    no sibling that an acknowledged write superseded (a dot its read saw: its
                   context covered it) is in the final read: deletes and overwrites stay done
                   through reaping, handoff, hints and repair
    phantom        every element in a final read was attempted by some client put
    convergence    every primary of a key holds the same sibling set (compared decoded); one that
                   holds nothing agrees with ones that hold only tombstones (each primary reaps
                   by its own clock, so a reaped copy and an unreaped one are both settled)
    dominated      no stored sibling is covered by another sibling's context (or by the
                   object's `seen`, which is that rule made durable)
    membership     every running node has the same membership (digest), hence the same ring
    placement      every partition's N primaries run on N distinct machines when the ring's
                   nodes run on at least N machines, and in N distinct zones when on at least N
                   zones (where nodes run is the simulator's truth, `World.location_of`): else
                   one machine or zone lost takes every copy of some keys

The final reads and the replica contents come from `final_state` (see run.py): a read of every key
at R=N through every node, which also read-repairs it, then a direct look at each primary's store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dynd.core.replica import decode_record
from dynd.core.versions import SiblingSet
from dynd.protocol.locations import host_of, zone_of
from dynd.sim.workload import History, decode_set
from dynd.sim.world import Failure

CHECKERS = ("lost_write", "resurrected", "phantom", "convergence", "dominated", "membership", "placement")


@dataclass
class FinalState:
    """What the checkers look at."""

    # key -> the union of elements over the siblings of the last successful final read
    reads: dict[bytes, set[str]] = field(default_factory=dict)
    # key -> (actor, counter) of every sibling in that read
    read_dots: dict[bytes, set[tuple[str, int]]] = field(default_factory=dict)
    # key -> keys whose final reads all failed
    unread: set[bytes] = field(default_factory=set)
    # key -> primary name -> stored record (None: the primary holds nothing)
    replicas: dict[bytes, dict[str, bytes | None]] = field(default_factory=dict)
    # node name -> membership digest
    digests: dict[str, bytes] = field(default_factory=dict)
    # partition -> its primaries in the final ring, and where each node runs
    primaries: dict[int, tuple[str, ...]] = field(default_factory=dict)
    locations: dict[str, str] = field(default_factory=dict)
    n: int = 0


def check(history: History, state: FinalState, keys: list[bytes]) -> list[Failure]:
    failures: list[Failure] = []
    for key in keys:
        failures += check_lost_writes(history, state, key)
        failures += check_resurrected(history, state, key)
        failures += check_phantoms(history, state, key)
        failures += check_convergence(state, key)
        failures += check_dominated(state, key)
    failures += check_membership(state)
    failures += check_placement(state)
    return failures


def check_lost_writes(history: History, state: FinalState, key: bytes) -> list[Failure]:
    if key in state.unread:
        acked = history.acknowledged(key)
        if acked:
            return [Failure("lost_write", f"no final read of {key!r} succeeded; {len(acked)} acknowledged adds unverified", key)]
        return []
    final = state.reads.get(key, set())
    cleared = history.maybe_cleared(key)
    missing = sorted(e for e in history.acknowledged(key) if e not in final and e not in cleared)
    if not missing:
        return []
    return [Failure("lost_write", f"{len(missing)} acknowledged add(s) of {key!r} missing from the final read: {', '.join(missing[:10])}", key)]


def check_resurrected(history: History, state: FinalState, key: bytes) -> list[Failure]:
    superseded = history.superseded(key)
    back = sorted(dot for dot in state.read_dots.get(key, set()) if dot in superseded)
    if not back:
        return []
    actor, counter = back[0]
    op = superseded[back[0]]
    return [
        Failure(
            "resurrected",
            f"{len(back)} superseded sibling(s) of {key!r} are back in the final read, first {actor}:{counter}, "
            f"which acknowledged {op.kind} #{op.index} had read and written over",
            key,
        )
    ]


def check_phantoms(history: History, state: FinalState, key: bytes) -> list[Failure]:
    attempted = history.attempted(key)
    extra = sorted(e for e in state.reads.get(key, set()) if e not in attempted)
    for records in [state.replicas.get(key, {})]:
        for record in records.values():
            if record is not None:
                for sibling in decode_record(record).live:
                    extra += sorted(e for e in decode_set(sibling.value or b"") if e not in attempted and e not in extra)
    if not extra:
        return []
    return [Failure("phantom", f"{key!r} holds element(s) no client ever wrote: {', '.join(extra[:10])}", key)]


def _describe(obj: SiblingSet) -> str:
    parts = [f"{s.dot.actor}:{s.dot.counter}{'' if s.value is not None else '(tombstone)'}" for s in obj.siblings]
    return f"[{' '.join(parts)}] seen={obj.seen!r}"


def check_convergence(state: FinalState, key: bytes) -> list[Failure]:
    replicas = state.replicas.get(key)
    if not replicas:
        return []
    decoded = {name: (decode_record(record) if record is not None else SiblingSet()) for name, record in sorted(replicas.items())}
    held = {name: obj for name, obj in decoded.items() if not obj.is_empty}
    # Reaping in progress: the primaries that hold nothing agree with copies holding only tombstones.
    compared = held if len(held) < len(decoded) and all(not obj.live for obj in held.values()) else decoded
    if not compared:
        return []
    first_name, first = next(iter(compared.items()))
    differ = [name for name, obj in compared.items() if obj != first]
    if not differ:
        return []
    lines = "; ".join(f"{name}: {_describe(obj)}" for name, obj in decoded.items())
    return [Failure("convergence", f"primaries of {key!r} disagree ({', '.join(differ)} differ from {first_name}): {lines}", key)]


def check_dominated(state: FinalState, key: bytes) -> list[Failure]:
    failures: list[Failure] = []
    for name, record in sorted(state.replicas.get(key, {}).items()):
        if record is None:
            continue
        obj = decode_record(record)
        for sibling in obj.siblings:
            if obj.seen.covers(sibling.dot):
                failures.append(Failure("dominated", f"{name}'s copy of {key!r} keeps sibling {sibling.dot} that its seen clock covers", key))
            for other in obj.siblings:
                if other is not sibling and other.context.covers(sibling.dot):
                    failures.append(
                        Failure("dominated", f"{name}'s copy of {key!r} keeps sibling {sibling.dot} covered by sibling {other.dot}'s context", key)
                    )
    return failures


def check_membership(state: FinalState) -> list[Failure]:
    distinct = sorted(set(state.digests.values()))
    if len(distinct) <= 1:
        return []
    groups = {d.hex()[:8]: sorted(n for n, x in state.digests.items() if x == d) for d in distinct}
    return [Failure("membership", f"nodes disagree on membership: {groups}")]


def check_placement(state: FinalState) -> list[Failure]:
    nodes = {node for primaries in state.primaries.values() for node in primaries}
    failures: list[Failure] = []
    for level, where in (("machines", host_of), ("zones", zone_of)):
        place = {node: where(node, state.locations.get(node, "")) for node in nodes}
        if len(set(place.values())) < state.n:
            continue  # the guarantee holds only with at least N of them
        shared = sorted(p for p, primaries in state.primaries.items() if len({place[node] for node in primaries}) < len(primaries))
        if shared:
            first = state.primaries[shared[0]]
            failures.append(
                Failure(
                    "placement",
                    f"{len(shared)} of {len(state.primaries)} partitions have primaries sharing {level[:-1]} although the "
                    f"ring's nodes run on {len(set(place.values()))} {level}; partition {shared[0]}: "
                    + ", ".join(f"{node} at {state.locations.get(node, '?')}" for node in first),
                )
            )
    return failures
