"""GET /metrics on real dynd processes: `--metrics-listen` serves the Prometheus text format, which
prometheus-client's own parser reads back; a non-loopback metrics address without trusted_network
exits 2; and, where the `prometheus` server is installed, Prometheus scrapes a 3-node cluster."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dynd.client import BlockingClient
from tests.support.cluster import poll_until, settled, start_node
from tests.support.procs import DyndFactory, free_port, run_dynd

SCRAPE_TIMEOUT_S = 5.0
PROMETHEUS_DEADLINE_S = 60.0


def scrape(address: str, path: str = "/metrics") -> tuple[int, str, str]:
    """Status, content type and body of one GET."""
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=SCRAPE_TIMEOUT_S) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_metrics_listen_serves_parsable_prometheus_text(dynd_factory: DyndFactory) -> None:
    metrics_address = f"127.0.0.1:{free_port()}"
    node = dynd_factory("m1", extra_args=("--metrics-listen", metrics_address))
    with BlockingClient(node.address) as client:
        client.put(b"k", b"v")
        client.get(b"k")
    status, content_type, body = scrape(metrics_address)
    assert status == 200 and content_type.startswith("text/plain; version="), (status, content_type)
    families = {family.name: family for family in text_string_to_metric_families(body)}
    assert all(name.startswith("dynd_") for name in families), sorted(families)
    for name in families:
        assert f"# HELP {name}" in body and f"# TYPE {name}" in body, name
    assert families["dynd_up"].samples[0].value == 1
    info = families["dynd_node_info"].samples[0]
    assert info.labels["node"] == "m1" and info.value == 1
    assert "k" not in {value for family in families.values() for sample in family.samples for value in sample.labels.values()}
    assert scrape(metrics_address, "/")[0] == 404


def test_no_metrics_port_unless_asked(dynd_factory: DyndFactory) -> None:
    node = dynd_factory("m2")
    assert "metrics on" not in node.stderr_text()


def test_a_non_loopback_metrics_listen_without_trusted_network_exits_2(tmp_path: Path) -> None:
    result = run_dynd("--name", "m3", "--data-dir", str(tmp_path / "data"), "--metrics-listen", f"0.0.0.0:{free_port()}")
    assert result.returncode == 2, result
    assert "metrics_listen" in result.stderr and "trusted_network" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "data").exists(), result.stderr


PROMETHEUS = shutil.which("prometheus")


@pytest.mark.skipif(PROMETHEUS is None, reason="the prometheus server binary is not installed (Debian package prometheus)")
def test_prometheus_scrapes_a_three_node_cluster(tmp_path: Path) -> None:
    assert PROMETHEUS is not None
    metrics = {f"p{i}": f"127.0.0.1:{free_port()}" for i in (1, 2, 3)}
    nodes = []
    prometheus: subprocess.Popen[bytes] | None = None
    try:
        first = start_node(tmp_path, "p1", extra=("--metrics-listen", metrics["p1"]))
        nodes.append(first)
        nodes += [start_node(tmp_path, name, first, extra=("--metrics-listen", metrics[name])) for name in ("p2", "p3")]
        poll_until("3 members everywhere", lambda: settled(nodes, {"p1", "p2", "p3"}))
        with BlockingClient(first.address) as client:
            client.put(b"k", b"v")
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: dynd\n    static_configs:\n"
            f"      - targets: [{', '.join(repr(address) for address in metrics.values())}]\n"
        )
        web = f"127.0.0.1:{free_port()}"
        prometheus = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address={web}"],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "prometheus.log", "wb"),  # noqa: SIM115 - closed with the process
        )

        def node_infos() -> set[str] | None:
            query = urllib.parse.urlencode({"query": "dynd_node_info"})
            try:
                with urllib.request.urlopen(f"http://{web}/api/v1/query?{query}", timeout=SCRAPE_TIMEOUT_S) as response:
                    answer = json.load(response)
            except (urllib.error.URLError, OSError):
                return None
            names = {result["metric"]["node"] for result in answer["data"]["result"]}
            return names if names == {"p1", "p2", "p3"} else None

        assert poll_until("Prometheus has scraped all three nodes", node_infos, PROMETHEUS_DEADLINE_S) == {"p1", "p2", "p3"}
    finally:
        if prometheus is not None:
            prometheus.send_signal(signal.SIGTERM)
            try:
                prometheus.wait(timeout=20)
            except subprocess.TimeoutExpired:
                prometheus.kill()
                prometheus.wait()
        for node in nodes:
            node.stop()
            node.cleanup()
