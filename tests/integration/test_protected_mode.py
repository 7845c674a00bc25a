"""Protected mode and the [security] files, against real dynd processes.

Without a cluster secret a node serves loopback only; a non-loopback listen exits 2 naming
`cluster_secret_file` and `trusted_network`, unless the network is declared trusted (then it
starts and warns). Unusable secret and tokens files exit 2 before the data directory is touched.
SIGHUP rereads the secret file: the reload is logged (without the secret) and the node keeps
serving; a bad file on SIGHUP keeps the old secret.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from dynd.client import BlockingClient
from dynd.protocol.auth import new_secret_text
from tests.support.procs import DyndFactory, DyndProcess, free_port, run_dynd

LOG_DEADLINE_S = 10.0


def secret_file(directory: Path, text: str | None = None, mode: int = 0o600) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "secret"
    path.write_text(new_secret_text() if text is None else text)
    path.chmod(mode)
    return path


def wait_for_log(node: DyndProcess, fragment: str, deadline_s: float = LOG_DEADLINE_S) -> str:
    """Poll the node's log until `fragment` appears; return the log."""
    deadline = time.monotonic() + deadline_s
    while True:
        text = node.stderr_text()
        if fragment in text:
            return text
        if time.monotonic() >= deadline:
            raise AssertionError(f"{fragment!r} not in the log of {node!r} within {deadline_s:g} s:\n{node.stderr_tail()}")
        time.sleep(0.05)  # poll interval; the condition is the log line itself


def round_trip(node: DyndProcess, key: bytes) -> None:
    with BlockingClient(node.address) as client:
        client.put(key, b"value of " + key)
        assert client.get(key).values == [b"value of " + key]


# ---- protected mode ----


def test_a_wildcard_listen_without_a_secret_exits_2_naming_the_settings(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    result = run_dynd("--name", "open1", "--listen", f"0.0.0.0:{port}", "--advertise", f"127.0.0.1:{port}", "--data-dir", str(data_dir))
    assert result.returncode == 2, result
    assert "protected mode" in result.stderr, result.stderr
    assert "cluster_secret_file" in result.stderr and "trusted_network" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert not data_dir.exists(), "protected mode must stop dynd before it touches the data dir"


@pytest.mark.parametrize("how", ["config", "flag"])
def test_trusted_network_starts_on_a_wildcard_listen_and_warns(dynd_factory: DyndFactory, how: str) -> None:
    if how == "config":
        node = dynd_factory("trusted1", host="0.0.0.0", config_text="[security]\ntrusted_network = true\n")
    else:
        node = dynd_factory("trusted1", host="0.0.0.0", extra_args=("--trusted-network",))
    log = wait_for_log(node, "serving on")
    assert f"anyone who reaches 0.0.0.0:{node.port} can" in log, log
    round_trip(node, b"trusted")


def test_loopback_without_a_secret_needs_no_setup(dynd_factory: DyndFactory) -> None:
    node = dynd_factory("loop1")
    round_trip(node, b"loopback")
    log = node.stderr_text()
    assert "cluster secret: none" in log and "anyone who reaches" not in log, log


def test_a_wildcard_listen_with_a_secret_starts(dynd_factory: DyndFactory, tmp_path: Path) -> None:
    secret = secret_file(tmp_path / "keys")
    node = dynd_factory("secret1", host="0.0.0.0", extra_args=("--secret-file", str(secret)))
    round_trip(node, b"with a secret")  # from this host: every client and admin request works
    assert "anyone who reaches" not in node.stderr_text()


# ---- unusable files ----


BAD_FILES = {
    "absent": ("--secret-file", None, 0o600, "cluster_secret_file"),
    "not-hex": ("--secret-file", "this is not hex\n", 0o600, "a secret is written as hex"),
    "too-short": ("--secret-file", "abcd\n", 0o600, "at least 32 bytes"),
    "empty": ("--secret-file", "", 0o600, "holds no secret"),
    "world-readable": ("--secret-file", new_secret_text(), 0o644, "open to other users"),
    "bad-tokens": ("--tokens-file", "superuser " + "t" * 20 + "\n", 0o600, "client_tokens_file"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_an_unusable_credential_file_exits_2_before_touching_the_data_dir(tmp_path: Path, kind: str) -> None:
    flag, text, mode, named = BAD_FILES[kind]
    path = tmp_path / "credential"
    if text is not None:
        path.write_text(text)
        path.chmod(mode)
    data_dir = tmp_path / "data"
    result = run_dynd("--name", "bad1", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data_dir), flag, str(path))
    assert result.returncode == 2, result
    assert named in result.stderr and str(path) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert not data_dir.exists()


def test_the_secret_file_may_be_set_in_the_config(tmp_path: Path) -> None:
    path = secret_file(tmp_path / "keys", text="zz\n")
    config = tmp_path / "dynd.toml"
    config.write_text(f'[security]\ncluster_secret_file = "{path}"\n')
    result = run_dynd("--name", "bad1", "--data-dir", str(tmp_path / "data"), "--config", str(config))
    assert result.returncode == 2, result
    assert "[security] cluster_secret_file" in result.stderr and "hex" in result.stderr, result.stderr


# ---- SIGHUP ----


def test_sighup_reloads_a_new_secret_and_the_node_keeps_serving(dynd_factory: DyndFactory, tmp_path: Path) -> None:
    old, new = "a1" * 32, "b2" * 32
    secret = secret_file(tmp_path / "keys", old + "\n")
    node = dynd_factory("hup1", extra_args=("--secret-file", str(secret)))
    round_trip(node, b"before")

    secret.write_text(f"{new}\n{old}\n")  # step 2 of a rotation: prove with the new one, accept both
    node.signal(signal.SIGHUP)
    log = wait_for_log(node, "SIGHUP: credentials reloaded")
    assert "cluster secret now " in log and " (proves), " in log and " (accepted), was " in log, log
    assert old not in log and new not in log, "the log must never hold a secret"
    assert node.running
    round_trip(node, b"after")

    secret.write_text("not a secret\n")
    node.signal(signal.SIGHUP)
    log = wait_for_log(node, "SIGHUP: kept the credentials in force")
    assert "cluster_secret_file" in log
    assert node.running
    round_trip(node, b"after a bad reload")
    assert node.stop() == 0
