"""`dynd --workers K` on loopback: one supervisor, K members, one unit's worth of behaviour.

- Two workers come up as members NAME-0 and NAME-1 on consecutive ports with their own data
  directories, form one cluster, and serve each other's writes; the supervisor alone tells the
  service manager READY=1 (checked by the sender's credentials, as systemd's NotifyAccess=main does),
  and only once both serve; SIGHUP reaches every worker.
- A worker killed with SIGKILL is restarted, the log says how it died, and it serves its data again.
- SIGTERM to the supervisor stops every worker cleanly (exit 0); a supervisor killed with SIGKILL
  leaves no worker behind (each stops when its end of the supervisor's socket closes).
- A worker that cannot be kept up stops the host: one whose port is taken exits 1 until the restart
  cap, and the supervisor exits 1; one whose data directory belongs to another node exits 2, and so
  does the supervisor, at once.
- Config and layout errors exit 2 before anything starts.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynd.cli import EXIT_CONFIG, NODE_NAME_META
from dynd.client import BlockingClient
from dynd.protocol.address import parse_address
from dynd.storage.base import PutMeta
from dynd.storage.lmdb_store import LmdbStore
from tests.support.cluster import FAST_TIMERS, poll_until, settled
from tests.support.procs import DyndProcess, run_dynd
from tests.support.workers import WorkersHost, free_ports

QUICK_RESTARTS = FAST_TIMERS + "worker_restart_backoff_ms = 100\nworker_restart_backoff_max_ms = 200\nworker_restarts_max = 2\n"


@pytest.fixture
def host(tmp_path: Path) -> Iterator[WorkersHost]:
    metrics = f"127.0.0.1:{free_ports(2)}"
    made = WorkersHost(tmp_path / "h", name="h", workers=2, config_text=FAST_TIMERS, extra_args=("--partitions", "16", "--metrics-listen", metrics))
    yield made
    made.stop()
    print(f"--- {made!r} stderr (last lines) ---\n{made.stderr_tail(80)}")


def notifications(sock: socket.socket, until: float) -> list[tuple[int, str]]:
    """(sender pid, message) of every datagram on `sock` until nothing arrives for a moment or `until`."""
    received = []
    while time.monotonic() < until:
        sock.settimeout(max(0.01, min(0.5, until - time.monotonic())))
        try:
            data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("iII")))
        except TimeoutError:
            break
        pid = next(struct.unpack("iII", body)[0] for level, kind, body in ancillary if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
        received.append((pid, data.decode()))
    return received


def test_two_workers_are_two_members_and_the_supervisor_alone_says_ready(host: WorkersHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        manager.bind(str(tmp_path / "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        host.start(timeout_s=60)
        messages = notifications(manager, time.monotonic() + 10)
    assert {pid for pid, _ in messages} == {host.pid}, messages  # no worker speaks to the manager
    ready = [text for _, text in messages if "READY=1" in text]
    assert len(ready) == 1 and "2 of 2 workers serving" in ready[0], messages

    assert sorted(os.listdir(host.data_dir)) == ["worker-0", "worker-1"]
    workers = [DyndProcess(name=name, port=host.port + index) for index, name in enumerate(host.names)]
    poll_until("both workers see both members", lambda: settled(workers, set(host.names)))
    with BlockingClient(host.addresses[0]) as client:
        client.put(b"k", b"through worker 0", w=2)
    with BlockingClient(host.addresses[1]) as client:
        assert client.get(b"k", r=2).values == [b"through worker 0"]

    metrics_host, metrics_port = parse_address(host.extra_args[host.extra_args.index("--metrics-listen") + 1])
    for index, name in enumerate(host.names):  # each worker serves its own metrics on the port plus its index
        with urllib.request.urlopen(f"http://{metrics_host}:{metrics_port + index}/metrics", timeout=10) as response:
            assert f'dynd_node_info{{node="{name}"' in response.read().decode()

    host.signal(signal.SIGHUP)
    poll_until("both workers reread their credentials", lambda: host.stderr_text().count("SIGHUP: credentials reloaded") == 2)
    assert host.stop() == 0
    text = host.stderr_text()
    assert text.count("stopped cleanly") == 2 and "every worker stopped" in text and "Traceback" not in text, host.stderr_tail()


def test_a_killed_worker_is_restarted_and_serves_its_data_again(host: WorkersHost) -> None:
    host.start(timeout_s=60)
    with BlockingClient(host.addresses[0]) as client:
        client.put(b"kept", b"v", w=2)
    before = host.worker_pids()
    os.kill(before[1], signal.SIGKILL)
    poll_until("worker 1 back with a new pid", lambda: host.worker_pids().get(1) not in (None, before[1]))
    host.wait_ready(timeout_s=60)
    with BlockingClient(host.addresses[1]) as client:
        assert client.get(b"kept", r=1).values == [b"v"]
    assert host.worker_pids()[0] == before[0]  # the other worker was left alone
    assert "worker h-1 was killed by SIGKILL; restarting it" in host.stderr_text()
    poll_until("the supervisor sees it serving again", lambda: "worker h-1 serving again" in host.stderr_text())


def test_sigterm_stops_every_worker_and_sigkill_of_the_supervisor_leaves_none(host: WorkersHost) -> None:
    host.start(timeout_s=60)
    workers = host.worker_pids()
    assert host.stop() == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers.values())

    host.start(timeout_s=60)
    workers = host.worker_pids()
    host.kill9()  # the supervisor only
    poll_until("every orphaned worker stopped", lambda: all(not Path(f"/proc/{pid}").exists() for pid in workers.values()))
    assert host.stderr_text().count("the supervisor is gone: stopping") == 2


def test_a_stop_while_the_workers_start_is_a_clean_stop(tmp_path: Path) -> None:
    host = WorkersHost(tmp_path / "h", name="h", workers=2, config_text=FAST_TIMERS)
    host.spawn()
    poll_until("both workers started", lambda: "started worker h-1" in host.stderr_text())
    host.signal(signal.SIGTERM)
    assert host.wait(60) == 0, host.stderr_tail()
    assert "every worker stopped" in host.stderr_text()


def test_a_worker_that_keeps_failing_stops_the_host_with_exit_1(tmp_path: Path) -> None:
    host = WorkersHost(tmp_path / "h", name="h", workers=2, config_text=QUICK_RESTARTS)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", host.port + 1))  # worker 1's port
        taken.listen()
        host.spawn()
        code = host.wait(60)
    assert code == 1
    text = host.stderr_text()
    assert text.count("address in use") == 3 and "died 3 times within" in text and "more than worker_restarts_max (2)" in text, host.stderr_tail()
    (first,) = re.findall(r"started worker h-0 \(pid (\d+)\)", text)
    assert not Path(f"/proc/{first}").exists()  # worker 0 was stopped, not abandoned


def test_a_worker_whose_data_belongs_to_another_node_stops_the_host_with_exit_2(tmp_path: Path) -> None:
    host = WorkersHost(tmp_path / "h", name="h", workers=2, config_text=QUICK_RESTARTS)
    store = LmdbStore(str(host.data_dir / "worker-1" / "lmdb"), map_bytes=1 << 20)
    store.write([PutMeta(NODE_NAME_META, b"someone-else")])
    store.close()
    host.spawn()
    assert host.wait(60) == EXIT_CONFIG
    text = host.stderr_text()
    assert "belongs to node 'someone-else', not 'h-1'" in text and "no restart can fix" in text, host.stderr_tail()
    assert "restarting it" not in text


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--workers", "0"), "workers must be in 1..256"),
        (("--workers", "257"), "workers_max"),
        (("--workers", "many"), 'whole number or "auto"'),
        (("--workers", "3", "--listen", "127.0.0.1:65534"), "beyond 65535"),
        (("--workers", "2", "--metrics-listen", "127.0.0.1:65535"), "metrics_listen port 65535 + worker 1"),
        (("--workers", "10", "--name", "n" * 63), "too long for 10 workers"),
    ],
)
def test_bad_worker_settings_exit_2_naming_them(tmp_path: Path, args: tuple[str, ...], fragment: str) -> None:
    result = run_dynd("--name", "h", "--data-dir", str(tmp_path / "d"), *args)
    assert result.returncode == EXIT_CONFIG and fragment in result.stderr, result
    assert not (tmp_path / "d").exists()


def test_a_data_directory_of_one_node_is_not_taken_over_by_workers_nor_the_reverse(tmp_path: Path) -> None:
    port = free_ports(2)
    single = DyndProcess(tmp_path / "single", name="s", port=port).start()
    single.stop()
    result = run_dynd("--name", "s", "--listen", f"127.0.0.1:{port}", "--data-dir", str(single.data_dir), "--workers", "2")
    assert result.returncode == EXIT_CONFIG and "holds the data of a single node" in result.stderr, result

    (tmp_path / "many" / "worker-0").mkdir(parents=True)
    (tmp_path / "many" / "worker-1").mkdir()
    result = run_dynd("--name", "s", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "many"))
    assert result.returncode == EXIT_CONFIG and "start with --workers 2" in result.stderr, result
