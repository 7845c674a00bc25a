"""dynctl's credentials: --token-file and DYNCTL_TOKEN_FILE reach the node in the hello, an
`unauthorized` refusal exits 6 with what to do about it, and bad credential files are usage errors.

The node is `fake_cluster_node.py --admin-token T`, which acts as a dynd seen from another host:
membership changes need the admin token (a real node on 127.0.0.1 would grant them to any local
connection, so it cannot show the refusal).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import fake_cluster_node as fake
import pytest
from dynctl_testing import HOST, REPO, DynctlRunner, RunningServer, start_server, stop_server

from dynctl.output import ExitCode
from dynd.protocol.address import format_address
from tests.support.procs import free_port

ADMIN_TOKEN = "admin-token-for-the-tests-0123456789"
EM_DASH = "\N{EM DASH}"


@pytest.fixture(scope="module")
def guarded_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    workdir = tmp_path_factory.mktemp("guarded-node")
    address = format_address(HOST, free_port())
    argv = [sys.executable, str(REPO / "tests" / "cli" / "fake_cluster_node.py"), "--listen", address, "--admin-token", ADMIN_TOKEN]
    server = start_server(argv, address, workdir / "fake-node.log")
    yield server
    stop_server(server)


@pytest.fixture
def on_guarded(guarded_node: RunningServer, dynctl: DynctlRunner) -> DynctlRunner:
    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        return dynctl("--node", guarded_node.address, *args, env=env)

    return run


def token_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "token"
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_a_membership_change_without_a_token_exits_6_saying_what_would_be_let_in(on_guarded: DynctlRunner) -> None:
    result = on_guarded("cluster", "remove", "fake3")
    stderr = result.stderr.decode()
    assert result.returncode == ExitCode.UNAUTHORIZED == 6, stderr
    assert f"the node refused: {fake.unauthorized_reason('cluster_remove')} {EM_DASH} give an admin token with --token-file" in stderr
    assert "or run this on the node's host" in stderr
    assert result.stdout == b""


def test_client_requests_need_no_token(on_guarded: DynctlRunner) -> None:
    result = on_guarded("--json", "ring", "status")
    assert result.returncode == 0, result.stderr.decode()


def test_cluster_status_from_another_host_needs_the_admin_token_too(on_guarded: DynctlRunner, tmp_path: Path) -> None:
    result = on_guarded("cluster", "status")
    assert result.returncode == ExitCode.UNAUTHORIZED, result.stderr.decode()
    assert "the node refused: cluster_status needs an admin token" in result.stderr.decode()
    result = on_guarded("--token-file", str(token_file(tmp_path, ADMIN_TOKEN)), "--json", "cluster", "status")
    assert result.returncode == 0, result.stderr.decode()


@pytest.mark.parametrize("text", [f"{ADMIN_TOKEN}\n", f"# dynctl's token\n\n  {ADMIN_TOKEN}  \n"])
def test_token_file_sends_the_token(on_guarded: DynctlRunner, tmp_path: Path, text: str) -> None:
    path = token_file(tmp_path, text)
    result = on_guarded("--token-file", str(path), "cluster", "remove", "fake3")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode() == fake.remove_message("fake3") + "\n"


def test_the_environment_names_the_token_file_too(on_guarded: DynctlRunner, tmp_path: Path) -> None:
    path = token_file(tmp_path, ADMIN_TOKEN + "\n")
    result = on_guarded("cluster", "leave", "fake2", env={"DYNCTL_TOKEN_FILE": str(path)})
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode() == fake.leave_message("fake2") + "\n"


def test_the_flag_wins_over_the_environment(on_guarded: DynctlRunner, tmp_path: Path) -> None:
    good = token_file(tmp_path, ADMIN_TOKEN + "\n")
    result = on_guarded("--token-file", str(good), "cluster", "remove", "fake3", env={"DYNCTL_TOKEN_FILE": str(tmp_path / "absent")})
    assert result.returncode == 0, result.stderr.decode()


def test_a_token_the_node_does_not_know_exits_6(on_guarded: DynctlRunner, tmp_path: Path) -> None:
    path = token_file(tmp_path, "some-other-token-0123456789\n")
    result = on_guarded("--token-file", str(path), "ring", "status")
    stderr = result.stderr.decode()
    assert result.returncode == ExitCode.UNAUTHORIZED, stderr
    assert "the node refused: hello refused: the token is not valid here" in stderr


@pytest.mark.parametrize(
    ("setup", "complaint"),
    [
        ("absent", "cannot read"),
        ("empty", "holds no token"),
        ("comments", "holds no token"),
        ("directory", "is a directory"),
    ],
)
def test_an_unusable_token_file_is_a_usage_error(dynctl: DynctlRunner, tmp_path: Path, setup: str, complaint: str) -> None:
    path = {
        "absent": tmp_path / "absent",
        "empty": token_file(tmp_path, ""),
        "comments": token_file(tmp_path, "# nothing here\n\n"),
        "directory": tmp_path,
    }[setup]
    for args, env in ((["--token-file", str(path)], None), ([], {"DYNCTL_TOKEN_FILE": str(path)})):
        result = dynctl(*args, "get", "k", env=env)
        stderr = result.stderr.decode()
        assert result.returncode == ExitCode.USAGE, stderr
        assert "--token-file" in stderr and complaint in stderr.lower()


def test_an_unusable_tls_ca_is_a_usage_error(dynctl: DynctlRunner, tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    path.write_text("not a certificate\n")
    result = dynctl("--tls-ca", str(path), "get", "k")
    assert result.returncode == ExitCode.USAGE, result.stderr.decode()
    assert "--tls-ca" in result.stderr.decode() and "cannot load the CA" in result.stderr.decode()
    result = dynctl("--tls-ca", str(tmp_path / "absent.pem"), "get", "k")
    assert result.returncode == ExitCode.USAGE
    assert "No such file" in result.stderr.decode()


def test_the_exit_codes_in_help_name_unauthorized(dynctl: DynctlRunner) -> None:
    result = dynctl("--help")
    assert "6  unauthorized" in result.stdout.decode()
