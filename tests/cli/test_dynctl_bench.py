"""dynctl bench against a real dynd and against the echo server (the stack's ceiling)."""

from __future__ import annotations

import json

from dynctl_testing import DynctlRunner, RunningServer

from tests.support.procs import DyndProcess

BENCH_FIELDS = {
    "workload",
    "concurrency",
    "value_size",
    "seconds",
    "ops",
    "errors",
    "ops_per_s",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
}


def bench_document(result_stdout: bytes) -> dict[str, object]:
    lines = result_stdout.splitlines()
    assert len(lines) == 1, result_stdout
    document = json.loads(lines[0])
    assert isinstance(document, dict)
    assert document.keys() >= BENCH_FIELDS
    return document


def test_bench_json_against_dynd_prints_one_line_with_ops(dynd_node: DyndProcess, dynctl: DynctlRunner) -> None:
    result = dynctl("--node", dynd_node.address, "--json", "bench", "--seconds", "1", "--keys", "64")
    assert result.returncode == 0, result.stderr
    document = bench_document(result.stdout)
    assert document["workload"] == "put"
    assert isinstance(document["ops"], int) and document["ops"] > 0
    assert document["errors"] == 0
    assert 0 < document["p50_ms"] <= document["p99_ms"] <= document["p999_ms"] <= document["max_ms"]  # type: ignore[operator]


def test_bench_stops_at_the_op_limit_long_before_the_time_limit(dynd_node: DyndProcess, dynctl: DynctlRunner) -> None:
    result = dynctl(
        "--node", dynd_node.address, "--json",
        "bench", "--workload", "mixed", "--ops", "50", "--seconds", "30", "--concurrency", "4", "--keys", "8",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = bench_document(result.stdout)
    assert (document["ops"], document["errors"]) == (50, 0)
    assert document["elapsed_s"] < 30  # type: ignore[operator]


def test_bench_against_the_echo_server(echo_node: RunningServer, dynctl: DynctlRunner) -> None:
    for workload in ("put", "get"):
        result = dynctl("--node", echo_node.address, "--json", "bench", "--workload", workload, "--seconds", "0.5")
        assert result.returncode == 0, result.stderr
        document = bench_document(result.stdout)
        assert document["workload"] == workload
        assert document["ops"] > 0 and document["errors"] == 0  # type: ignore[operator]


def test_bench_table_goes_to_stdout_without_json(echo_node: RunningServer, dynctl: DynctlRunner) -> None:
    result = dynctl("--node", echo_node.address, "bench", "--ops", "20", "--concurrency", "2", "--keys", "2")
    assert result.returncode == 0, result.stderr
    assert b"ops/s" in result.stdout and b"p99.9" in result.stdout


def test_bench_with_fewer_keys_than_workers_is_a_usage_error(dynctl: DynctlRunner) -> None:
    result = dynctl("--node", "127.0.0.1:9", "bench", "--concurrency", "8", "--keys", "4")
    assert result.returncode == 2
    assert b"--keys" in result.stderr


def test_bench_puts_overwrite_so_every_key_ends_with_one_value(dynd_node: DyndProcess, dynctl: DynctlRunner) -> None:
    node = ("--node", dynd_node.address)
    # Twice, so the second run meets the keys the first one left: it must overwrite those too.
    for _ in range(2):
        result = dynctl(
            *node, "--json", "bench", "--ops", "64", "--concurrency", "4", "--keys", "4", "--value-size", "16"
        )
        assert result.returncode == 0, result.stderr
        assert bench_document(result.stdout)["ops"] == 64
    for index in range(4):
        got = dynctl(*node, "--json", "get", f"bench:{index:08d}")
        assert got.returncode == 0, got.stderr
        document = json.loads(got.stdout)
        assert len(document["siblings"]) == 1
        assert document["siblings"][0]["size"] == 16


def test_bench_inserts_run_against_a_node(dynd_node: DyndProcess, dynctl: DynctlRunner) -> None:
    result = dynctl("--node", dynd_node.address, "--json", "bench", "--workload", "insert", "--ops", "40", "--concurrency", "4", "--keys", "4")
    assert result.returncode == 0, result.stderr
    document = bench_document(result.stdout)
    assert (document["workload"], document["ops"], document["errors"]) == ("insert", 40, 0)


def test_insert_keys_differ_across_runs_workers_and_operations() -> None:
    from dynctl.bench import fresh_key

    keys = {fresh_key(run, worker, sequence) for run in (b"aa", b"bb") for worker in (0, 1) for sequence in (1, 2)}
    assert len(keys) == 8


def test_every_ycsb_core_workload_runs_against_a_node_with_latencies_per_op(dynd_node: DyndProcess, dynctl: DynctlRunner) -> None:
    expected_ops = {"a": {"read", "update"}, "b": {"read", "update"}, "c": {"read"}, "d": {"read", "insert"}, "f": {"read", "rmw"}}
    for workload, ops in expected_ops.items():
        result = dynctl(
            "--node", dynd_node.address, "--json",
            "bench", "--workload", workload, "--ops", "300", "--seconds", "30", "--concurrency", "4", "--keys", "50",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        document = bench_document(result.stdout)
        assert (document["workload"], document["ops"], document["errors"]) == (workload, 300, 0)
        by_op = document["latency_by_op"]
        assert isinstance(by_op, dict)
        # b and d do 5% of their rarer op: 300 draws miss it with probability 0.95^300, about 2e-7.
        assert set(by_op) == ops, (workload, by_op)
        assert sum(figures["ops"] for figures in by_op.values()) == 300
        for figures in by_op.values():
            assert 0 < figures["p50_ms"] <= figures["p999_ms"] <= figures["max_ms"]


def test_ycsb_updates_carry_their_context_so_hot_keys_do_not_pile_up_siblings(dynd_node: DyndProcess, dynctl: DynctlRunner) -> None:
    # One worker: every update carries the context of the last reply for its key, so each key keeps
    # one value however often the zipfian hot keys are written.
    node = ("--node", dynd_node.address)
    result = dynctl(*node, "--json", "bench", "--workload", "a", "--ops", "400", "--concurrency", "1", "--keys", "8", "--value-size", "24")
    assert result.returncode == 0, result.stderr
    assert bench_document(result.stdout)["latency_by_op"]["update"]["ops"] > 100  # type: ignore[index]
    for index in range(8):
        got = dynctl(*node, "--json", "get", f"bench:{index:08d}")
        assert got.returncode == 0, got.stderr
        siblings = json.loads(got.stdout)["siblings"]
        assert [sibling["size"] for sibling in siblings] == [24]


def test_ycsb_d_reads_keys_it_inserted() -> None:
    from dynctl.bench import SharedKeys

    keys = SharedKeys(loaded=10, run_tag=b"t", contexts={})
    first, second = keys.begin_insert(), keys.begin_insert()
    assert (first, second, keys.readable()) == (10, 11, 10)  # neither insert acknowledged yet
    keys.end_insert(second)
    assert keys.readable() == 10  # the first is still in flight
    keys.end_insert(first)
    assert keys.readable() == 12
    assert keys.key(3) == b"bench:00000003" and keys.key(11).startswith(b"ycsb:t:")
