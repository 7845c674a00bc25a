"""Safe membership changes on real dynd processes driven through dynctl: a dry run's plan is the
ring the change then makes (join, remove, leave), `cluster remove` refuses a live member and
changes nothing, and `cluster leave --wait` under write load returns only once the node holds
nothing, with every acknowledged write still readable from the remaining nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from dynd.client import BlockingClient, open_cluster_client
from dynd.protocol.errors import DynError
from tests.support.cluster import FAST_TIMERS, poll_until, running_cluster, settled, status
from tests.support.hostile import write_secret_file
from tests.support.procs import DyndProcess

DYNCTL_TIMEOUT_S = 120.0
WRITERS = 3
WRITES_PER_WRITER_MAX = 3_000
WRITE_PAUSE_S = 0.005  # each writer's pace: load, not a flood that starves the hand-off of the CPU


def dynctl(*args: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name != "DYNCTL_NODE"}
    return subprocess.run(
        [sys.executable, "-m", "dynctl", *args], capture_output=True, text=True, timeout=DYNCTL_TIMEOUT_S, stdin=subprocess.DEVNULL, env=env
    )


def plan_of(node: DyndProcess, *args: str) -> dict[str, Any]:
    result = dynctl("--node", node.address, "--json", "cluster", *args, "--dry-run")
    assert result.returncode == 0, result.stderr
    plan: dict[str, Any] = json.loads(result.stdout)
    assert plan["dry_run"] is True and plan["changes"] is True, plan
    return plan


def owners(node: DyndProcess) -> list[str]:
    with BlockingClient(node.address) as client:
        return list(client.ring().owners)


def ring_version(node: DyndProcess) -> bytes:
    with BlockingClient(node.address) as client:
        return client.ring().version


def test_dry_runs_are_what_join_and_remove_do_and_remove_refuses_a_live_member(tmp_path: Path) -> None:
    # With a cluster secret, as in production: the plans' requests between nodes prove it too.
    write_secret_file(tmp_path / "secret")
    config = f'[security]\ncluster_secret_file = "{tmp_path / "secret"}"\n{FAST_TIMERS}'
    with running_cluster(tmp_path, "p", 3, config_text=config) as nodes:
        first = nodes[0]
        with BlockingClient(first.address) as client:
            for i in range(100):
                client.put(f"before{i:03d}", b"v" * 50)

        # join: a node alone in its own cluster (same Q) plans its join through the seed, then joins
        newcomer = DyndProcess(tmp_path / "p4", name="p4", config_text=config, extra_args=("--partitions", "64")).start()
        nodes.append(newcomer)  # stopped by running_cluster with the rest
        plan = plan_of(newcomer, "join", first.address)
        assert (plan["action"], plan["node"], plan["planned_by"]) == ("join", "p4", "p1"), "the seed planned p4's join"
        assert plan["owners_before"] == owners(first)
        rows = {m["name"]: m for m in plan["members"]}
        assert rows["p4"]["status_before"] is None and rows["p4"]["partitions_after"] == 16 and plan["keys_to_move"] > 0
        assert set(plan["sizes_from"]) == {"p1", "p2", "p3"}
        joined = dynctl("--node", newcomer.address, "cluster", "join", first.address)
        assert joined.returncode == 0, joined.stderr
        poll_until("four members", lambda: settled(nodes, {"p1", "p2", "p3", "p4"}))
        assert owners(first) == plan["owners_after"], "the join made the ring its plan showed"

        # remove: a live member is refused, and nothing changes anywhere
        target = nodes[1]
        plan = plan_of(first, "remove", target.name)
        assert any(f"{target.name} is alive and answers" in note for note in plan["notes"]), plan["notes"]
        versions = {node.name: ring_version(node) for node in nodes}
        refused = dynctl("--node", first.address, "cluster", "remove", target.name)
        assert refused.returncode == 4, (refused.returncode, refused.stderr)
        assert "is alive and answers" in refused.stderr and "--force" in refused.stderr and refused.stdout == ""
        assert {node.name: ring_version(node) for node in nodes} == versions
        assert all({m.name: m.status for m in status(node).members}[target.name] == "joined" for node in nodes)

        # ... and once it is dead, its removal makes the ring the plan showed
        target.stop()
        plan = plan_of(first, "remove", target.name)
        assert not any("alive and answers" in note for note in plan["notes"])
        removed = dynctl("--node", first.address, "cluster", "remove", target.name)
        assert removed.returncode == 0, removed.stderr
        assert owners(first) == plan["owners_after"], "the removal made the ring its plan showed"
        remaining = [node for node in nodes if node is not target]
        poll_until("the others agree on the ring", lambda: len({tuple(owners(node)) for node in remaining}) == 1)


def test_leave_wait_under_write_load_returns_when_the_node_holds_nothing_and_loses_no_write(tmp_path: Path) -> None:
    with running_cluster(tmp_path, "w", 4) as nodes:
        first, leaver = nodes[0], nodes[2]
        remaining = [node for node in nodes if node is not leaver]
        acked: dict[str, bytes] = {}
        with BlockingClient(first.address) as client:
            for i in range(200):
                key, value = f"before{i:03d}", f"before {i}".encode()
                client.put(key, value)
                acked[key] = value
        plan = plan_of(first, "leave", leaver.name)
        assert {m["name"]: m["status_after"] for m in plan["members"]}[leaver.name] == "leaving"
        assert {m["name"]: m["keys_out"] for m in plan["members"]}[leaver.name] > 0

        async def leave_under_load() -> tuple[subprocess.CompletedProcess[str], int]:
            stop = trio.Event()
            during = 0

            async def writer(client: Any, number: int) -> None:
                nonlocal during
                for i in range(WRITES_PER_WRITER_MAX):
                    if stop.is_set():
                        return
                    key, value = f"during{number}-{i:05d}", f"writer {number} write {i}".encode()
                    try:
                        await client.put(key, value)
                    except DynError:
                        continue  # not acknowledged: nothing to check
                    acked[key] = value
                    during += 1
                    await trio.sleep(WRITE_PAUSE_S)

            async with open_cluster_client([node.address for node in nodes], timeout_s=5) as client:
                async with trio.open_nursery() as nursery:
                    for number in range(WRITERS):
                        nursery.start_soon(writer, client, number)
                    result = await trio.to_thread.run_sync(lambda: dynctl("--node", leaver.address, "--json", "cluster", "leave", "--wait"))
                    stop.set()
            return result, during

        result, during = trio.run(leave_under_load)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["left"] is True and report["node"] == leaver.name and report["keys_handed_off"] > 0, report
        assert "keys handed off" in result.stderr, "progress lines on stderr when not on a terminal"

        # it returned only once the node held nothing
        with BlockingClient(leaver.address) as client:
            (own,) = client.cluster_transfers(local_only=True).nodes
            info = client.info()
        assert (own.status, own.partitions_pending, own.keys_pending, own.safe_to_stop) == ("removed", 0, 0, True)
        assert info.keys == 0 and info.partitions_owned == 0
        assert leaver.stderr_text().count("it is safe to stop") == 1
        assert owners(first) == plan["owners_after"], "the leave made the ring its plan showed"

        # the node that left refuses data with a clear error; dynctl exits 3 and names members
        refused = dynctl("--node", leaver.address, "get", "before001")
        assert refused.returncode == 3 and "not a member" in refused.stderr, refused.stderr
        assert any(node.address in refused.stderr for node in remaining), refused.stderr

        leaver.stop()
        poll_until("the others settled", lambda: settled(remaining, {node.name for node in remaining}))
        assert during > 0, "some writes were acknowledged during the leave"
        missing = []
        with BlockingClient(first.address) as client:
            for key, value in acked.items():
                if client.get(key).values != [value]:
                    missing.append(key)
        assert missing == [], f"{len(missing)} of {len(acked)} acknowledged writes lost, e.g. {missing[:5]}"
