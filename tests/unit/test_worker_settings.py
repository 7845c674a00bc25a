"""Many nodes per host: each worker's config, the layout check, the restart policy, sd_notify."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from dynd.config import ConfigError, load_config
from dynd.core.limits import Limits
from dynd.shell.readiness import sd_notify
from dynd.shell.supervisor import describe_exit
from dynd.shell.worker_restarts import RestartPolicy
from dynd.workers import WorkersError, layout_problem, parse_workers, worker_dirs_in

BASE = {"name": "web7", "data_dir": "/var/lib/dynd", "listen": "0.0.0.0:7400", "advertise": "10.0.0.7:7400", "trusted_network": True}


def config(**overrides: object):  # type: ignore[no-untyped-def]
    return load_config(None, {**BASE, **overrides})


def test_auto_is_one_worker_per_core_up_to_the_limit() -> None:
    assert parse_workers("auto", 256, cores=8) == 8
    assert parse_workers("auto", 4, cores=64) == 4
    assert parse_workers("auto", 256, cores=1) == 1
    assert parse_workers("3", 256) == 3 and parse_workers(5, 256) == 5


@pytest.mark.parametrize("value", [0, -1, 257, "0", "many", "", True, 2.0, None])
def test_a_bad_worker_count_is_refused(value: object) -> None:
    with pytest.raises(WorkersError):
        parse_workers(value, 256)


def test_one_worker_is_the_node_as_it_always_was() -> None:
    one = config()
    assert one.workers == 1 and one.for_worker(0) is one
    with pytest.raises(WorkersError):
        one.for_worker(1)


def test_each_worker_has_its_name_ports_and_data_directory_and_shares_the_rest() -> None:
    host = config(workers=3, metrics_listen="127.0.0.1:9740", http_listen="127.0.0.1:8098", seeds=["10.0.0.1:7400"], join="10.0.0.1:7400")
    workers = [host.for_worker(index) for index in range(3)]
    assert [w.name for w in workers] == ["web7-0", "web7-1", "web7-2"]
    assert [w.listen for w in workers] == ["0.0.0.0:7400", "0.0.0.0:7401", "0.0.0.0:7402"]
    assert [w.advertised_address for w in workers] == ["10.0.0.7:7400", "10.0.0.7:7401", "10.0.0.7:7402"]
    assert [w.metrics_listen for w in workers] == ["127.0.0.1:9740", "127.0.0.1:9741", "127.0.0.1:9742"]
    assert [w.http_listen for w in workers] == ["127.0.0.1:8098", "127.0.0.1:8099", "127.0.0.1:8100"]
    assert [w.data_dir for w in workers] == [f"/var/lib/dynd/worker-{i}" for i in range(3)]
    assert {w.join for w in workers} == {"10.0.0.1:7400"}  # a joining host: every worker through the seed
    assert {(w.seeds, w.limits, w.trusted_network, w.replicas) for w in workers} == {(host.seeds, host.limits, True, 3)}


def test_on_the_host_that_creates_the_cluster_the_other_workers_join_worker_0() -> None:
    host = config(workers=2)
    assert host.for_worker(0).join == ""
    assert host.for_worker(1).join == "10.0.0.7:7400"


def test_workers_auto_comes_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "dynd.toml"
    path.write_text('[node]\nname = "a"\ndata_dir = "/d"\nworkers = "auto"\n[limits]\nworkers_max = 1\n')
    assert load_config(str(path), {}).workers == 1
    path.write_text('[node]\nname = "a"\ndata_dir = "/d"\nworkers = 2.5\n')
    with pytest.raises(ConfigError, match="workers must be int or str"):
        load_config(str(path), {})


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"workers": 2, "listen": "127.0.0.1:65535", "advertise": ""}, "listen port 65535 + worker 1 is 65536"),
        ({"workers": 4, "listen": "0.0.0.0:65533", "advertise": "10.0.0.7:65533"}, "beyond 65535"),
        ({"workers": 2, "metrics_listen": "127.0.0.1:65535"}, "metrics_listen port"),
        ({"workers": 100, "name": "x" * 62}, "too long for 100 workers"),
        ({"workers": 0}, "1..256"),
        ({"workers": "lots"}, '"auto"'),
    ],
)
def test_worker_settings_that_do_not_fit_are_config_errors(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        config(**overrides)


def test_the_restart_limits_must_relate() -> None:
    with pytest.raises(ValueError, match="worker_restart_backoff_ms"):
        Limits(worker_restart_backoff_ms=5_000, worker_restart_backoff_max_ms=1_000)
    with pytest.raises(ValueError, match="workers_max"):
        Limits(workers_max=70_000)


def test_a_layout_made_for_one_worker_count_is_refused_under_the_other_kind() -> None:
    assert layout_problem("/d", 1, lmdb_exists=True, worker_dirs=[]) is None
    assert layout_problem("/d", 3, lmdb_exists=False, worker_dirs=[0, 1]) is None  # growing: new workers join
    assert "start with --workers 2" in (layout_problem("/d", 1, lmdb_exists=False, worker_dirs=[0, 1]) or "")
    assert "holds the data of a single node" in (layout_problem("/d", 2, lmdb_exists=True, worker_dirs=[]) or "")


def test_worker_directories_are_found_by_name(tmp_path: Path) -> None:
    for name in ("worker-0", "worker-2", "worker-x", "lmdb"):
        (tmp_path / name).mkdir()
    (tmp_path / "worker-5").write_text("a file, not a worker")
    assert worker_dirs_in(str(tmp_path)) == [0, 2]
    assert worker_dirs_in(str(tmp_path / "missing")) == []


def test_restarts_back_off_doubling_and_give_up_past_the_cap() -> None:
    policy = RestartPolicy(backoff_ms=1_000, backoff_max_ms=5_000, restarts_max=4, window_ms=60_000)
    assert [policy.after_death(t) for t in (0, 1_000, 2_000, 3_000)] == [1_000, 2_000, 4_000, 5_000]
    assert policy.after_death(4_000) is None


def test_deaths_older_than_the_window_are_forgotten() -> None:
    policy = RestartPolicy(backoff_ms=100, backoff_max_ms=10_000, restarts_max=2, window_ms=1_000)
    assert policy.after_death(0) == 100 and policy.after_death(500) == 200
    assert policy.after_death(1_000) == 200  # the death at 0 left the window: two within it
    assert policy.after_death(1_200) is None


def test_exits_are_described_as_an_operator_reads_them() -> None:
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(1) == "exited with status 1"
    assert describe_exit(127) == "could not be started"


def test_sd_notify_sends_to_the_socket_named_in_the_environment(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(tmp_path / "notify"))
        assert sd_notify("READY=1\nSTATUS=serving", {"NOTIFY_SOCKET": str(tmp_path / "notify")})
        assert manager.recv(100) == b"READY=1\nSTATUS=serving"
    abstract = f"dynd-test-{id(tmp_path)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + abstract)
        assert sd_notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + abstract})
        assert manager.recv(100) == b"STOPPING=1"


def test_sd_notify_without_a_manager_does_nothing(tmp_path: Path) -> None:
    assert not sd_notify("READY=1", {})
    assert not sd_notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody")})  # logged, not raised
