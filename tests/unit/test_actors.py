"""When a node keeps its actor epoch and when it must take a new one."""

from __future__ import annotations

import random

from dynd.core.actors import ACTOR_META, CLEAN_STOP_META, actor_after_restore, actor_at_start, clean_stop
from dynd.core.ops import PutMeta


def test_only_a_clean_stop_with_the_stored_epoch_keeps_it() -> None:
    rng = random.Random(7)
    kept, ops = actor_at_start("n1", b"n1.0000abcd", b"n1.0000abcd", rng)
    assert kept == "n1.0000abcd"
    assert ops == [PutMeta(ACTOR_META, b"n1.0000abcd"), PutMeta(CLEAN_STOP_META, b"")], "the marker is cleared before serving"
    crashed, _ = actor_at_start("n1", b"n1.0000abcd", b"", rng)
    assert crashed != "n1.0000abcd" and crashed.startswith("n1.")
    # The epoch changed while running (a failed commit, a handoff) but the new one was never stored.
    stale, _ = actor_at_start("n1", b"n1.0000abcd", b"n1.9999ffff", rng)
    assert stale not in ("n1.0000abcd", "n1.9999ffff")
    fresh, _ = actor_at_start("n1", None, None, rng)
    assert fresh.startswith("n1.") and len(fresh) == len("n1.") + 8


def test_clean_stop_records_the_epoch_it_stopped_with() -> None:
    assert clean_stop("n1.0000abcd") == [PutMeta(CLEAN_STOP_META, b"n1.0000abcd")]


def test_new_epochs_do_not_repeat() -> None:
    rng = random.Random(1)
    epochs = {actor_at_start("n1", None, None, rng)[0] for _ in range(1000)}
    assert len(epochs) == 1000


class _Repeating:
    """An rng whose first draws repeat one value: the restore must still move off the stored epoch."""

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def random(self) -> float:
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]


def test_a_restored_store_takes_a_new_epoch_and_forgets_any_clean_stop() -> None:
    stored = b"n1.0000abcd"
    actor, ops = actor_after_restore("n1", stored, _Repeating([0xABCD / 2**32, 0xABCD / 2**32, 0.5]))
    assert actor == "n1.80000000" and actor.encode() != stored
    assert ops == [PutMeta(ACTOR_META, actor.encode()), PutMeta(CLEAN_STOP_META, b"")]
    # and the start that follows takes yet another, whatever the backup held
    started, _ = actor_at_start("n1", actor.encode(), b"", random.Random(3))
    assert started != actor
