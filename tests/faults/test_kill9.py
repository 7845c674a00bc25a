"""Durability under kill -9: every write acknowledged before the kill reads back after a restart.

One dynd runs through DYND_KILL9_TRIALS trials (default 20) on the same data directory. In each,
several client tasks put to their own keys (a new key, or an overwrite of one of their keys with
the context of its last acknowledged put); a write counts as acknowledged only once put returned.
At a seeded random moment the node gets SIGKILL; it restarts on the same directory and port, and
the checker reads every key back:

- a key with an acknowledged write holds exactly one value: its latest acknowledged value, or the
  value of the put that was in flight at the kill (which supersedes it, having its context);
- a key whose only write was in flight holds nothing or that value.

At the end, every trial's keys are checked again, so damage done by later kills shows too. The
test runs once per commit engine (`--commit-engine thread|process`).
DYND_KILL9_SEED replays a run (the seed is printed, and named in every failure).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from dynd.client import open_client
from dynd.protocol.errors import DynError
from tests.support.procs import DyndProcess

TRIALS = int(os.environ.get("DYND_KILL9_TRIALS", "20"))
SEED = int(os.environ.get("DYND_KILL9_SEED", str(random.SystemRandom().randrange(2**32))))
WRITERS = 6
WRITES_PER_WRITER_MAX = 3000
KILL_DELAY_S = (0.2, 1.0)
OVERWRITE_FRACTION = 0.4
TRIAL_DEADLINE_S = 30.0
CHECK_CONCURRENCY = 64
# most trials must have something to check; a kill before the first commit is possible but rare
TRIALS_WITH_WRITES_MIN_FRACTION = 0.8


@dataclass
class Ledger:
    """What the clients know: the latest acknowledged value per key, and the put in flight."""

    acked: dict[bytes, bytes] = field(default_factory=dict)
    in_flight: dict[bytes, bytes] = field(default_factory=dict)
    attempted: int = 0
    acked_writes: int = 0
    writers_running: int = 0

    def expected(self, key: bytes) -> tuple[bytes | None, bytes | None]:
        return self.acked.get(key), self.in_flight.get(key)

    @property
    def keys(self) -> set[bytes]:
        return self.acked.keys() | self.in_flight.keys()


async def _writer(address: str, trial: int, writer: int, ledger: Ledger, rng: random.Random) -> None:
    contexts: dict[bytes, bytes] = {}
    versions: dict[bytes, int] = {}
    ledger.writers_running += 1
    try:
        async with open_client(address, timeout_s=5.0, agent="test_kill9") as client:
            for _ in range(WRITES_PER_WRITER_MAX):
                if contexts and rng.random() < OVERWRITE_FRACTION:
                    key = rng.choice(list(contexts))
                else:
                    key = b"k9:%d:%d:%d" % (trial, writer, len(versions))
                versions[key] = versions.get(key, 0) + 1
                value = b"%s=v%d" % (key, versions[key])
                ledger.in_flight[key] = value
                ledger.attempted += 1
                try:
                    contexts[key] = await client.put(key, value, contexts.get(key))
                except DynError:
                    return  # the node is gone: this put stays in flight
                ledger.acked[key] = value
                ledger.acked_writes += 1
                del ledger.in_flight[key]
    except* DynError:
        pass  # connecting failed (the kill came first), or the client wrapped the failure
    finally:
        ledger.writers_running -= 1


async def _check(address: str, ledger: Ledger, label: str) -> int:
    """Read every key back; return how many keys with an acknowledged write were checked."""
    problems: list[str] = []
    limiter = trio.CapacityLimiter(CHECK_CONCURRENCY)

    async with open_client(address, timeout_s=10.0, agent="test_kill9-check") as client:

        async def check_one(key: bytes) -> None:
            async with limiter:
                values = (await client.get(key)).values
            acked, in_flight = ledger.expected(key)
            allowed = {v for v in (acked, in_flight) if v is not None}
            if acked is not None and len(values) != 1:
                problems.append(f"{key!r}: expected one of {sorted(allowed)}, read {values}")
            elif not set(values) <= allowed:
                problems.append(f"{key!r}: expected at most {sorted(allowed)}, read {values}")

        async with trio.open_nursery() as nursery:
            for key in ledger.keys:
                nursery.start_soon(check_one, key)
    assert not problems, f"seed {SEED}, {label}: {len(problems)} keys wrong, e.g. {problems[:5]}"
    return len(ledger.acked)


@pytest.mark.parametrize("commit_engine", ["thread", "process"])
async def test_acknowledged_writes_survive_kill9(tmp_path: Path, record_property: Callable[[str, object], None], commit_engine: str) -> None:
    """Under either commit engine: the thread dies with the process mid-transaction, the writer
    process outlives its parent long enough to finish the batch it holds."""
    print(f"kill -9 trials: {TRIALS}, commit engine {commit_engine}, seed {SEED} (replay with DYND_KILL9_SEED={SEED})")
    node = DyndProcess(tmp_path / "k9", name="k9", extra_args=("--commit-engine", commit_engine))
    ledgers: list[Ledger] = []
    report: list[dict[str, object]] = []
    try:
        node.start()
        for trial in range(TRIALS):
            rng = random.Random(f"{SEED}:{trial}")
            delay_s = rng.uniform(*KILL_DELAY_S)
            ledger = Ledger()
            ledgers.append(ledger)
            started = time.monotonic()
            with trio.fail_after(TRIAL_DEADLINE_S):
                async with trio.open_nursery() as nursery:
                    for writer in range(WRITERS):
                        writer_rng = random.Random(f"{SEED}:{trial}:{writer}")
                        nursery.start_soon(_writer, node.address, trial, writer, ledger, writer_rng)
                    await trio.sleep(delay_s)  # the fault's moment, drawn from the seed
                    running_at_kill = ledger.writers_running
                    node.kill9()
            node.start()
            checked = await _check(node.address, ledger, f"trial {trial} (kill after {delay_s:.3f} s)")
            row = {
                "trial": trial,
                "delay_s": round(delay_s, 3),
                "attempted": ledger.attempted,
                "acked_writes": ledger.acked_writes,
                "acked_keys": len(ledger.acked),
                "in_flight": len(ledger.in_flight),
                "writers_running_at_kill": running_at_kill,
                "checked": checked,
                "seconds": round(time.monotonic() - started, 2),
            }
            report.append(row)
            print(json.dumps(row))
        everything = Ledger()
        for ledger in ledgers:
            everything.acked.update(ledger.acked)
            everything.in_flight.update(ledger.in_flight)
        total = await _check(node.address, everything, "final check of every trial")
        print(f"final check: {total} acknowledged keys across {TRIALS} trials")
    finally:
        node.stop()
        print(f"--- {node!r} stderr (last lines) ---\n{node.stderr_tail()}")
    record_property("kill9_seed", SEED)
    record_property("kill9_trials", json.dumps(report))
    with_writes = sum(1 for row in report if row["checked"])
    assert with_writes >= TRIALS_WITH_WRITES_MIN_FRACTION * TRIALS, f"seed {SEED}: only {with_writes}/{TRIALS} trials had acknowledged writes"
    mid_write = sum(1 for row in report if row["writers_running_at_kill"])
    assert mid_write >= TRIALS_WITH_WRITES_MIN_FRACTION * TRIALS, f"seed {SEED}: the load had ended before the kill in {TRIALS - mid_write} trials"

