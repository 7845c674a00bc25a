"""Actor epochs: the id a node's dots carry, and when it must change. Pure.

A dot (actor, counter) must never name two different writes. A node issues counters from what
its own store holds for the key, so it must take a new epoch whenever the other replicas may hold
dots of the current one that its store does not:

- A coordinator stores its copy and replicates it at the same time (one commit on the path of a
  put, not two). Until its own commit lands, a dot it issued may exist only on other replicas. So
  a node that stops without a clean shutdown starts with a new epoch, and so does a running node
  whose own commit of a versioned write failed.
- Handoff and reaping delete keys, and with them the counters issued for those keys (`Node`
  renews on each such batch).
- A wiped data directory is a new node as far as dots go (Riak's kv679).

Two more reasons to move on, neither about forgetting (`dynd.core.versions` has the rules):

- The actor has issued its last counter for a key (`EPOCH_COUNTER_MAX`), however the key got
  there: the write takes a new epoch and goes on (`LocalReplica.write`), so an exhausted counter
  never makes a key unwritable.
- A peer's record claims a counter of the current actor that this node never issued for the key:
  the record is refused, but copies of the claim may sit on other replicas, where they would cover
  this node's next writes of the key and drop them on arrival. A new epoch is beyond every such
  claim (`Node`, on refusing the record).

- A store restored from a backup is a wiped directory with a past: the node may have issued any
  number of dots after the backup was taken, and its store remembers none of them
  (`actor_after_restore`).

A clean shutdown records the epoch it stopped with (`CLEAN_STOP_META`) once every queued write has
committed; only a start that finds that record matching the stored epoch keeps it. Epochs are
random, so a new one never repeats an earlier one in practice (32 bits per node name).
"""

from __future__ import annotations

from dynd.core.cluster import RandomSource
from dynd.core.ops import PutMeta, WriteOp

ACTOR_META = "actor"  # the actor this node's dots carry now: its name plus an epoch
CLEAN_STOP_META = "clean_stop"  # the actor a clean shutdown stopped with; empty while running
ACTOR_EPOCH_BITS = 32


def new_actor(name: str, rng: RandomSource) -> str:
    return f"{name}.{int(rng.random() * 2**ACTOR_EPOCH_BITS):08x}"


def actor_at_start(name: str, stored: bytes | None, clean_stop: bytes | None, rng: RandomSource) -> tuple[str, list[WriteOp]]:
    """The actor to start with, and the meta writes to commit before serving: the stored actor
    only after a clean stop with it, otherwise a new epoch. Either way the clean-stop record is
    cleared, so a crash from here on is seen as one."""
    if stored is not None and clean_stop == stored:
        actor = stored.decode()
    else:
        actor = new_actor(name, rng)
    return actor, [PutMeta(ACTOR_META, actor.encode()), PutMeta(CLEAN_STOP_META, b"")]


def clean_stop(actor: str) -> list[WriteOp]:
    """The meta write that lets the next start keep `actor`: commit it only after everything else."""
    return [PutMeta(CLEAN_STOP_META, actor.encode())]


def actor_after_restore(name: str, stored: bytes | None, rng: RandomSource) -> tuple[str, list[WriteOp]]:
    """The meta writes that make a store restored from a backup safe to start: a new epoch, and
    no clean-stop record (so the start takes yet another; a backup is a copy of a running node's
    store, whose record is empty anyway, but a restore must not depend on that). The new epoch
    differs from the backup's (`stored`), whose counters the node went on issuing after the copy."""
    actor = new_actor(name, rng)
    while stored is not None and actor.encode() == stored:  # 1 in 2^32; cheap to rule out
        actor = new_actor(name, rng)
    return actor, [PutMeta(ACTOR_META, actor.encode()), PutMeta(CLEAN_STOP_META, b"")]
