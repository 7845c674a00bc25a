"""Errors that say what to do: usage errors caught before connecting (exit 2), a refused connection
and a port that is not dynd (exit 3, with what to check), and what a plain `dynctl get` imports."""

from __future__ import annotations

import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dynctl_testing import HOST, REPO, DynctlRunner, dynctl_env

from dynctl.tokens import encode_token
from tests.support.foreign import HTTP_REPLY, SSH_BANNER, ForeignServer
from tests.support.procs import DyndProcess

A_CONTEXT = encode_token(b"\x83\x01\x80\x80")  # [1, [], []]: shaped like a context


@pytest.fixture
def listener() -> Iterator[tuple[str, socket.socket]]:
    """A port that accepts connections into its backlog without ever answering: readable once
    anyone has connected."""
    with socket.create_server((HOST, 0)) as server:
        yield f"{HOST}:{server.getsockname()[1]}", server


def someone_connected(server: socket.socket) -> bool:
    readable, _, _ = select.select([server], [], [], 0)
    return bool(readable)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        pytest.param(["get", "k", "--r", "0"], "--r", id="r-0"),
        pytest.param(["get", "k", "--r", "17"], "16", id="r-17"),
        pytest.param(["get", "k", "--pr", "17"], "16", id="pr-17"),
        pytest.param(["put", "k", "v", "--w", "0"], "--w", id="w-0"),
        pytest.param(["put", "k", "v", "--w", "99"], "16", id="w-99"),
        pytest.param(["put", "k", "v", "--pw", "17"], "16", id="pw-17"),
        pytest.param(["delete", "k", "--context", A_CONTEXT, "--w", "17"], "16", id="delete-w-17"),
        pytest.param(["get", "k", "--r", "two"], "not a whole number", id="r-text"),
        pytest.param(["get", ""], "the key is empty", id="get-empty-key"),
        pytest.param(["put", "", "v"], "the key is empty", id="put-empty-key"),
        pytest.param(["delete", "", "--context", A_CONTEXT], "the key is empty", id="delete-empty-key"),
        pytest.param(["put", "k", "v", "--context", "YWJj"], "not a context token", id="token-not-cbor"),
        pytest.param(["delete", "k", "--context", "9g"], "not a context token", id="token-not-an-array"),
        pytest.param(["delete", "k", "--context", ""], "the token is empty", id="token-empty"),
        pytest.param(["delete", "k", "--context", "not base64!"], "base64url", id="token-not-base64"),
    ],
)
def test_usage_errors_exit_2_without_connecting(dynctl: DynctlRunner, listener: tuple[str, socket.socket], args: list[str], says: str) -> None:
    address, server = listener
    result = dynctl("--node", address, "--timeout", "2", *args)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr.decode()
    assert not someone_connected(server), "a usage error sends nothing"


def test_a_quorum_over_the_clusters_n_is_the_nodes_to_refuse(on_node: DynctlRunner, key: str) -> None:
    result = on_node("get", key, "--r", "5")  # the test node has N=3: only it knows
    assert result.returncode == 4
    assert b"r=5 is outside 1..n=3" in result.stderr


def test_a_refused_connection_says_what_to_check(dynctl: DynctlRunner) -> None:
    with socket.socket() as bound_not_listening:
        bound_not_listening.bind((HOST, 0))
        address = f"{HOST}:{bound_not_listening.getsockname()[1]}"
        given = dynctl("--node", address, "get", "k")
        from_env = dynctl("get", "k", env={"DYNCTL_NODE": address})
    assert given.returncode == from_env.returncode == 3
    assert f"error: unreachable: cannot connect to {address}: Connection refused\n".encode() in given.stderr
    assert b"Is dynd running there" in given.stderr and b"Check --node (or DYNCTL_NODE)" in given.stderr
    assert f"DYNCTL_NODE='{address}'".encode() in from_env.stderr, "names the variable's value when it is set"


@pytest.mark.parametrize("command", [["get", "k"], ["put", "k", "v"], ["cluster", "status"], ["stats"]])
@pytest.mark.parametrize(
    ("reply", "greet", "kind"), [(HTTP_REPLY, False, "an HTTP server"), (SSH_BANNER, True, "an SSH server")], ids=["http", "ssh"]
)
def test_a_port_that_is_not_dynd_says_so(dynctl: DynctlRunner, command: list[str], reply: bytes, greet: bool, kind: str) -> None:
    with ForeignServer(reply, greet=greet) as server:
        result = dynctl("--node", server.address, *command)
    assert result.returncode == 3, result.stderr
    lines = result.stderr.decode().splitlines()
    assert lines[0] == f"error: {server.address} is not a dynd node (it answered like {kind})"
    assert "Check the address in --node (or DYNCTL_NODE)" in lines[1]
    assert "bad_frame" not in result.stderr.decode()


# ---- what a plain get, put and delete import ----

HEAVY = ("trio", "rich", "pydantic", "ssl", "asyncio", "dynd.client.connection", "dynctl.bench", "dynctl.dev", "dynctl.cluster", "dynctl.top")


# Runs dynctl as `python -m dynctl` does, and writes every module loaded by the end to a file.
LIST_MODULES = """
import atexit, sys
listing = sys.argv[1]
atexit.register(lambda: open(listing, "w").write("\\n".join(sys.modules)))
sys.argv = ["dynctl", *sys.argv[2:]]
from dynctl.app import main
main()
"""


def imported_modules(tmp_path: Path, *args: str) -> set[str]:
    listing = tmp_path / "modules.txt"
    argv = [sys.executable, "-c", LIST_MODULES, str(listing), *args]
    result = subprocess.run(argv, capture_output=True, env=dynctl_env(None), cwd=REPO, timeout=60)
    assert result.returncode in (0, 1), result.stderr
    return set(listing.read_text().split())


def test_a_plain_get_put_and_delete_load_no_heavy_module(dynd_node: DyndProcess, on_node: DynctlRunner, key: str, tmp_path: Path) -> None:
    """`dynctl get` in a script costs Python, Typer, the protocol and a socket: not the event loop,
    rich, pydantic (Typer's, for reading options), ssl, or the other commands' modules. A Typer
    upgrade that brings pydantic back shows here (dynctl.fast_params)."""
    context = on_node("put", key, "v").stdout.decode().strip()
    runs = {
        "get": imported_modules(tmp_path, "--node", dynd_node.address, "get", key),
        "get missing": imported_modules(tmp_path, "--node", dynd_node.address, "get", key + ":missing"),
        "put": imported_modules(tmp_path, "--node", dynd_node.address, "put", key, "w", "--context", context),
        "delete --json": imported_modules(tmp_path, "delete", key, "--context", context, "--json", "--node", dynd_node.address),
    }
    assert all("dynctl.kv" in modules and "dynd.client.sync" in modules for modules in runs.values())
    heavy = {run: sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)) for run, modules in runs.items()}
    assert heavy == {run: [] for run in runs}
