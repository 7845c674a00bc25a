"""dynctl get/put/delete against a real dynd: bytes in and out, exit codes, siblings and contexts."""

from __future__ import annotations

import base64
import json
import os
import re
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dynctl_testing import HOST, REPO, DynctlRunner

from tests.support.procs import DyndProcess

TOKEN_LINE = re.compile(rb"[A-Za-z0-9_-]+\n")
VALUE_BYTES_MAX = 1048576  # dynd's default value_bytes_max


def token_of(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    assert TOKEN_LINE.fullmatch(result.stdout), result.stdout
    return result.stdout.decode().strip()


def put_ok(on_node: DynctlRunner, *args: str, stdin: bytes = b"") -> str:
    return token_of(on_node("put", *args, stdin=stdin))


# ---- values round trip ----


def test_put_then_get_returns_the_exact_bytes_without_a_newline(on_node: DynctlRunner, key: str) -> None:
    put_ok(on_node, key, "héllo wörld")
    result = on_node("get", key)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "héllo wörld".encode()


def test_stdin_value_round_trips_bytes_that_are_not_utf8(on_node: DynctlRunner, key: str) -> None:
    every_byte = bytes(range(256)) * 3
    put_ok(on_node, key, "-", stdin=every_byte)
    result = on_node("get", key)
    assert result.returncode == 0, result.stderr
    assert result.stdout == every_byte


def test_file_value_round_trips(on_node: DynctlRunner, key: str, tmp_path: Path) -> None:
    path = tmp_path / "value.bin"
    path.write_bytes(b"\x00\x01binary\xff" * 1000)
    put_ok(on_node, key, "--file", str(path))
    assert on_node("get", key).stdout == path.read_bytes()


def test_put_with_its_own_context_overwrites_instead_of_adding_a_sibling(on_node: DynctlRunner, key: str) -> None:
    first = put_ok(on_node, key, "one")
    put_ok(on_node, key, "two", "--context", first)
    result = on_node("get", key)
    assert (result.returncode, result.stdout) == (0, b"two")


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="no-source"),
        pytest.param(["text", "--file", __file__], id="value-and-file"),
        pytest.param(["-", "--file", __file__], id="stdin-and-file"),
    ],
)
def test_put_needs_exactly_one_value_source(on_node: DynctlRunner, key: str, args: list[str]) -> None:
    result = on_node("put", key, *args)
    assert result.returncode == 2
    assert b"exactly one" in result.stderr
    assert on_node("get", key).returncode == 1  # nothing was written


# ---- not found and the context token ----


def test_missing_key_exits_1_with_nothing_on_stdout(on_node: DynctlRunner, key: str) -> None:
    result = on_node("get", key)
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"not found" in result.stderr


def test_get_context_prints_a_token_even_for_a_missing_key(on_node: DynctlRunner, key: str) -> None:
    token_of(on_node("get", "--context", key))


def test_get_json_of_one_value_carries_the_value_and_the_context(on_node: DynctlRunner, key: str) -> None:
    put_ok(on_node, key, "-", stdin=b"\xffjson")
    result = on_node("--json", "get", key)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert base64.b64decode(document["value"]) == b"\xffjson"
    assert document["found"] is True
    assert [sibling["size"] for sibling in document["siblings"]] == [5]
    assert document["context"] == token_of(on_node("get", "--context", key))


# ---- siblings ----


def make_two_siblings(on_node: DynctlRunner, key: str) -> None:
    put_ok(on_node, key, "left")
    put_ok(on_node, key, "right")  # no context: concurrent with "left", so both survive


def test_siblings_in_a_pipe_exit_5_and_write_nothing_to_stdout(on_node: DynctlRunner, key: str) -> None:
    make_two_siblings(on_node, key)
    result = on_node("get", key)
    assert result.returncode == 5
    assert result.stdout == b""
    assert b"2 siblings" in result.stderr


def test_siblings_with_json_exit_5_and_list_every_value(on_node: DynctlRunner, key: str) -> None:
    make_two_siblings(on_node, key)
    result = on_node("--json", "get", key)
    assert result.returncode == 5
    document = json.loads(result.stdout)
    assert document["value"] is None
    assert sorted(base64.b64decode(s["value"]) for s in document["siblings"]) == [b"left", b"right"]
    for sibling in document["siblings"]:
        assert set(sibling) == {"value", "size", "dot", "clock", "content_type", "meta", "modified_ms"}
        assert sibling["content_type"] is None and sibling["meta"] == {} and sibling["modified_ms"] is None
        assert set(sibling["dot"]) == {"actor", "counter"}


def test_get_context_succeeds_on_siblings(on_node: DynctlRunner, key: str) -> None:
    make_two_siblings(on_node, key)
    token_of(on_node("get", "--context", key))


def test_a_put_with_the_context_from_get_supersedes_both_siblings(on_node: DynctlRunner, key: str) -> None:
    make_two_siblings(on_node, key)
    token = token_of(on_node("get", "--context", key))
    put_ok(on_node, key, "merged", "--context", token)
    result = on_node("get", key)
    assert (result.returncode, result.stdout) == (0, b"merged")


def test_siblings_on_a_terminal_show_a_table(dynd_node: DyndProcess, on_node: DynctlRunner, key: str) -> None:
    make_two_siblings(on_node, key)
    primary, secondary = os.openpty()
    env = {name: value for name, value in os.environ.items() if name not in ("DYNCTL_NODE", "NO_COLOR")}
    env.update({"COLUMNS": "120", "TERM": "xterm"})
    process = subprocess.Popen(
        [sys.executable, "-m", "dynctl", "--node", dynd_node.address, "get", key],
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    os.close(secondary)
    screen = bytearray()
    deadline = time.monotonic() + 30.0
    try:
        while time.monotonic() < deadline:
            readable, _, _ = select.select([primary], [], [], max(0.0, deadline - time.monotonic()))
            if not readable:
                break
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        _, stderr = process.communicate(timeout=30.0)
    finally:
        os.close(primary)
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 5, stderr
    assert b"'left'" in screen and b"'right'" in screen
    assert b"2 siblings" in screen


# ---- delete ----


def test_delete_with_the_context_then_get_exits_1(on_node: DynctlRunner, key: str) -> None:
    put_ok(on_node, key, "doomed")
    token = token_of(on_node("get", "--context", key))
    token_of(on_node("delete", key, "--context", token))
    result = on_node("get", key)
    assert (result.returncode, result.stdout) == (1, b"")


def test_delete_without_a_context_is_a_usage_error(on_node: DynctlRunner, key: str) -> None:
    put_ok(on_node, key, "kept")
    assert on_node("delete", key).returncode == 2
    assert on_node("get", key).stdout == b"kept"


# ---- errors and exit codes ----


@pytest.mark.parametrize("token", ["not base64!", "abcde", "YWJj=="], ids=["bad-char", "bad-length", "padding"])
@pytest.mark.parametrize("command", ["put", "delete"])
def test_a_bad_context_token_is_a_usage_error(on_node: DynctlRunner, key: str, command: str, token: str) -> None:
    args = [key, "value"] if command == "put" else [key]
    result = on_node(command, *args, "--context", token)
    assert result.returncode == 2
    assert b"base64url" in result.stderr


def test_an_unreachable_node_exits_3(dynctl: DynctlRunner) -> None:
    with socket.socket() as bound_not_listening:  # holds the port, so nothing else can answer on it
        bound_not_listening.bind((HOST, 0))
        port = bound_not_listening.getsockname()[1]
        result = dynctl("--node", f"{HOST}:{port}", "--timeout", "2", "get", "k")
    assert result.returncode == 3
    assert b"unreachable" in result.stderr


def test_a_node_that_never_answers_exits_3(dynctl: DynctlRunner) -> None:
    with socket.socket() as silent:  # the kernel completes the handshake; nobody ever replies
        silent.bind((HOST, 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        result = dynctl("--node", f"{HOST}:{port}", "--timeout", "0.5", "get", "k")
    assert result.returncode == 3
    assert b"timeout" in result.stderr


def test_an_oversize_value_is_refused_with_exit_4(on_node: DynctlRunner, key: str, tmp_path: Path) -> None:
    path = tmp_path / "oversize.bin"
    path.write_bytes(b"x" * (VALUE_BYTES_MAX + 1))
    result = on_node("put", key, "--file", str(path))
    assert result.returncode == 4
    assert result.stdout == b""
    assert b"value_too_large:" in result.stderr


def test_the_node_can_come_from_the_environment(dynd_node: DyndProcess, dynctl: DynctlRunner, key: str) -> None:
    put = dynctl("put", key, "from-env", env={"DYNCTL_NODE": dynd_node.address})
    assert put.returncode == 0, put.stderr
    assert dynctl("--node", dynd_node.address, "get", key).stdout == b"from-env"


def test_help_documents_every_exit_code(dynctl: DynctlRunner) -> None:
    result = dynctl("--help")
    assert result.returncode == 0
    text = result.stdout.decode()
    assert "Exit status" in text
    for code, meaning in [
        (0, "success"),
        (1, "not found"),
        (2, "usage"),
        (3, "unreachable"),
        (4, "refused"),
        (5, "siblings"),
    ]:
        assert re.search(rf"^\s*{code}\s+.*{meaning}", text, re.MULTILINE), (code, text)
