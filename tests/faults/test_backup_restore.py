"""Back up a node while it serves, lose its disk, restore it, and lose nothing (issue 15, item 4).

Three real nodes. Through the node under test: keys written before the backup, during it (the
node keeps serving) and after it; while it is down, more keys through another node (the
coordinator keeps them as hints: a 3-node cluster has no fallback). Then its data directory is
destroyed, `dynd restore` installs the backup and it starts again. Anti-entropy (every
`ae_interval_ms`) and the hints bring it up to date: every acknowledged key's latest value ends up
in its own store (read with a replica fetch, which repairs nothing) and is read from it alone with
r=1 once the other two are stopped.

No dot repeats (kv679): before the backup the node coordinated writes 1 and 2 of some keys, after it
writes 3 and 4 (all with w=3, each with the context of the one before); its restored store
remembers only 1 and 2. Straight after the restart, before anti-entropy has run, it coordinates a
blind write of each key. Were it to reuse its old actor epoch, that write's dot would be counter 3
of the old epoch, which write 4's context covers, and every replica would drop it on arrival: an
acknowledged write lost without a trace. With a new epoch it survives beside write 4 as a sibling,
as the DVV rules say for a write that did not see it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import trio

from dynd.client import BlockingClient, open_client
from dynd.core.replica import decode_record
from dynd.protocol import messages
from dynd.protocol.errors import DynError
from dynd.shell.backup import FILE_PREFIX
from tests.support.cluster import FAST_TIMERS, poll_until, running_cluster, status
from tests.support.procs import DyndProcess

# Anti-entropy every 2 s: the first round after the restart comes well after the blind writes
# that must be coordinated from the restored store alone, and catching up takes a few rounds.
CONFIG = FAST_TIMERS + "ae_interval_ms = 2000\n"
KV679_KEYS = [f"kv679-{i}" for i in range(8)]
BEFORE = 40
AFTER = 40
WHILE_DOWN = 40
DURING_MAX = 300  # writes while the backup runs, at most
CATCH_UP_S = 90.0


def fetch_stored(node: DyndProcess, keys: list[str]) -> dict[str, list[tuple[bytes, tuple[str, int]]]]:
    """Each key's live siblings (value, dot) in `node`'s own store: a replica fetch, as a
    coordinator would ask it, which changes nothing (a read through the node would repair it)."""

    async def ask() -> dict[str, list[tuple[bytes, tuple[str, int]]]]:
        found = {}
        async with open_client(node.address) as client:
            for key in keys:
                reply = await client._call(messages.Fetch(id=next(client._ids), key=key.encode()), None)
                assert isinstance(reply, messages.FetchOk), reply
                siblings = decode_record(reply.record).live if reply.record is not None else []
                found[key] = sorted((s.value, (s.dot.actor, s.dot.counter)) for s in siblings if s.value is not None)
        return found

    return trio.run(ask)


def values_of(stored: list[tuple[bytes, tuple[str, int]]]) -> list[bytes]:
    return sorted(value for value, _ in stored)


def dynctl_backup(node: DyndProcess, file: Path) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-m", "dynctl", "--node", node.address, "--json", "backup", str(file)],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_node_restored_from_a_backup_loses_no_write_and_reissues_no_dot(tmp_path: Path) -> None:
    with running_cluster(tmp_path, "b", 3, config_text=CONFIG) as nodes:
        other, target = nodes[0], nodes[2]
        acked: dict[str, list[bytes]] = {}  # key -> the values its latest acknowledged state holds

        # ---- before the backup, through the node under test ----
        with BlockingClient(target.address) as client:
            for i in range(BEFORE):
                client.put(f"before-{i}", f"before-{i}".encode())
                acked[f"before-{i}"] = [f"before-{i}".encode()]
            contexts = {}
            for key in KV679_KEYS:
                context = None
                for n in (1, 2):
                    context = client.put(key, f"{key}-write-{n}".encode(), context, w=3)
                contexts[key] = context
        old_actor = fetch_stored(target, KV679_KEYS[:1])[KV679_KEYS[0]][0][1][0]
        assert old_actor.startswith("b3."), old_actor

        # ---- the backup, while the node keeps serving writes ----
        backup = tmp_path / "b3.backup"
        done = threading.Event()
        during: dict[str, bytes] = {}
        failures: list[BaseException] = []

        def write_during() -> None:
            try:
                with BlockingClient(target.address) as writer:
                    for i in range(DURING_MAX):
                        if done.is_set() and i > 0:
                            return
                        writer.put(f"during-{i}", f"during-{i}".encode())
                        during[f"during-{i}"] = f"during-{i}".encode()
            except BaseException as exc:  # noqa: BLE001  (reported below)
                failures.append(exc)

        writer_thread = threading.Thread(target=write_during)
        writer_thread.start()
        try:
            summary = dynctl_backup(target, backup)
        finally:
            done.set()
            writer_thread.join()
        assert failures == [], f"writes failed while the backup ran: {failures}"
        assert during, "the node served writes while the backup ran"
        acked.update({key: [value] for key, value in during.items()})
        assert summary["node"] == "b3" and summary["file"] == str(backup)
        assert 0 < int(summary["bytes"]) < backup.stat().st_size  # the store, then the manifest
        assert not backup.with_name(backup.name + ".partial").exists()
        poll_until("the node deleted its copy", lambda: not [n for n in os.listdir(target.data_dir) if n.startswith(FILE_PREFIX)])

        # ---- after the backup: more writes the backup does not hold ----
        with BlockingClient(target.address) as client:
            for i in range(AFTER):
                client.put(f"after-{i}", f"after-{i}".encode())
                acked[f"after-{i}"] = [f"after-{i}".encode()]
            for i in range(0, BEFORE, 4):  # newer values of keys the backup holds older ones of
                context = client.get(f"before-{i}").context
                client.put(f"before-{i}", f"before-{i}-updated".encode(), context)
                acked[f"before-{i}"] = [f"before-{i}-updated".encode()]
            for key in KV679_KEYS:
                context = contexts[key]
                for n in (3, 4):
                    context = client.put(key, f"{key}-write-{n}".encode(), context, w=3)

        # ---- the disk is lost; writes go on without the node ----
        target.stop()
        shutil.rmtree(target.data_dir)
        with BlockingClient(other.address) as client:
            for i in range(WHILE_DOWN):
                client.put(f"down-{i}", f"down-{i}".encode(), w=2)
                acked[f"down-{i}"] = [f"down-{i}".encode()]
        held = sum(m.hints_pending for m in status(other).members if m.name == "b3")
        assert held > 0, "the coordinator holds hints for the node that is down"

        # ---- restore, restart, and at once a blind write of each kv679 key through it ----
        restored = subprocess.run(
            [sys.executable, "-m", "dynd", "restore", str(backup), "--data-dir", str(target.data_dir)],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )
        assert restored.returncode == 0, restored.stderr
        target.start()
        stale = fetch_stored(target, [*KV679_KEYS, "after-0"])
        assert all(len(stale[key]) == 1 and stale[key][0][0].endswith(b"-write-2") for key in KV679_KEYS), stale
        assert stale["after-0"] == [], "the restored store is the backup's, from before these writes"
        blind: dict[str, bytes] = {}
        with BlockingClient(target.address) as client:
            for key in KV679_KEYS:
                for attempt in range(5):  # the node's links to its peers may still be coming up
                    value = f"{key}-after-restore-{attempt}".encode()
                    try:
                        client.put(key, value, w=2)
                    except DynError:
                        continue
                    blind[key] = value
                    break
        assert set(blind) == set(KV679_KEYS), "every blind write through the restored node was acknowledged"
        for key in KV679_KEYS:  # write 4 did not see the blind write, nor it write 4: siblings
            acked[key] = sorted([f"{key}-write-4".encode(), blind[key]])

        # ---- anti-entropy and hints bring it up to date, in its own store ----
        behind: dict[str, object] = {}

        def caught_up() -> bool:
            stored = fetch_stored(target, list(acked))
            behind.clear()
            behind.update({key: stored[key] for key, values in acked.items() if values_of(stored[key]) != sorted(values)})
            return not behind

        try:
            poll_until("every acknowledged write in the restored node's own store", caught_up, deadline_s=CATCH_UP_S)
        except AssertionError as exc:
            shown = {key: (behind[key], acked[key]) for key in list(behind)[:5]}
            raise AssertionError(f"{exc}: {len(behind)} keys behind, (stored, acknowledged): {shown}") from None
        poll_until("hints delivered", lambda: all(sum(m.hints_pending for m in status(n).members) == 0 for n in nodes))

        # ---- no dot was issued twice: every replica holds write 4 and the blind write, apart ----
        for node in nodes:
            stored = fetch_stored(node, KV679_KEYS)
            for key in KV679_KEYS:
                assert values_of(stored[key]) == acked[key], f"{node.name} holds {stored[key]} of {key}"
                dots = {value: dot for value, dot in stored[key]}
                assert dots[f"{key}-write-4".encode()] == (old_actor, 4)
                new_actor, _ = dots[blind[key]]
                assert new_actor.startswith("b3.") and new_actor != old_actor, f"the blind write reused {old_actor}"

        # ---- and the node alone serves them all ----
        for node in nodes[:2]:
            node.stop()
        with BlockingClient(target.address) as client:
            wrong = {key: got for key, values in acked.items() if sorted(got := client.get(key, r=1).values) != sorted(values)}
        assert wrong == {}, f"{len(wrong)} of {len(acked)} keys read otherwise from the restored node alone: {dict(list(wrong.items())[:5])}"
