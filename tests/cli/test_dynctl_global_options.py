"""Global options after the command (`dynctl get KEY --json`), for every command, and --version."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
import typer.main
import typer.testing
from dynctl_testing import HOST, DynctlRunner

from dynctl import global_options
from dynctl.app import app
from dynctl.commands import lazy_group
from dynd import __version__
from dynd.protocol import PROTOCOL_VERSION
from tests.support.procs import DyndProcess

GLOBAL_OPTIONS = {"--node", "--timeout", "--json", "--token-file", "--tls-ca"}


def commands_under(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command and group below the root, by path (loading each command module)."""
    for name, subcommand in getattr(command, "commands", {}).items():
        yield (*path, name), subcommand
        yield from commands_under(subcommand, (*path, name))


@pytest.fixture
def dead_address() -> Iterator[str]:
    with socket.socket() as bound_not_listening:  # holds the port: a connection to it is refused
        bound_not_listening.bind((HOST, 0))
        yield f"{HOST}:{bound_not_listening.getsockname()[1]}"


# ---- every command, by construction ----


def test_the_global_options_are_the_roots_options() -> None:
    root = typer.main.get_command(app)
    root_options = {opt for param in root.params if param.param_type_name == "option" and not param.is_eager for opt in param.opts}
    assert root_options == GLOBAL_OPTIONS


def test_every_command_and_group_takes_the_global_options_after_it() -> None:
    root = typer.main.get_command(app)
    found = dict(commands_under(root))
    assert {"get", "cluster", "cluster status", "ring key", "dev up"} <= {" ".join(path) for path in found}
    missing = {
        " ".join(path): sorted(GLOBAL_OPTIONS - {opt for param in command.params for opt in param.opts})
        for path, command in found.items()
    }
    assert {path: options for path, options in missing.items() if options} == {}
    hidden = [param.opts for command in found.values() for param in command.params if global_options.is_late_copy(param) and not param.hidden]
    assert hidden == [], "the copies stay out of each command's --help"


PROBE_MODULE = """
from typing import Annotated

import typer

def show(ctx: typer.Context, word: str) -> None:
    typer.echo(f"{ctx.obj} {word}")

def wait(ctx: typer.Context, color: Annotated[str, typer.Option("--color")] = "its own") -> None:
    typer.echo(f"{ctx.obj} {color}")

group = typer.Typer()
group.command("show")(show)
"""


@pytest.fixture
def probe_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    """An app of its own on the same mechanism: command modules that know nothing of the global
    options (here --color and --loud); the root callback makes ctx.obj from them."""
    (tmp_path / "late_probe.py").write_text(PROBE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    commands = {"show": "late_probe:show", "wait": "late_probe:wait", "group": "late_probe:group"}
    probe = typer.Typer(cls=lazy_group(commands), add_completion=False, rich_markup_mode=None)

    @probe.callback()
    def root(ctx: typer.Context, color: Annotated[str, typer.Option("--color")] = "plain", loud: Annotated[bool, typer.Option("--loud")] = False) -> None:
        ctx.obj = f"{color}{'!' if loud else ''}"

    return probe


def run_probe(probe: typer.Typer, *args: str) -> str:
    result = typer.testing.CliRunner().invoke(probe, list(args))
    assert result.exit_code == 0, result.output
    return str(result.output.strip())


def test_a_command_added_later_gets_them_without_declaring_them(probe_app: typer.Typer) -> None:
    assert run_probe(probe_app, "show", "x") == "plain x"
    assert run_probe(probe_app, "--color", "red", "show", "x") == "red x"
    assert run_probe(probe_app, "show", "x", "--color", "blue") == "blue x"
    assert run_probe(probe_app, "--color", "red", "show", "--color", "blue", "x", "--loud") == "blue! x", "the last one wins"
    assert run_probe(probe_app, "group", "--loud", "show", "x", "--color", "green") == "green! x", "after a group too"
    assert run_probe(probe_app, "show", "--", "--color") == "plain --color", "after --, an option is an argument"


def test_a_command_keeps_an_option_of_its_own_with_a_global_name(probe_app: typer.Typer) -> None:
    assert run_probe(probe_app, "--color", "red", "wait", "--color", "blue") == "red blue", "wait's own --color, not a copy"


# ---- against a node ----


def test_json_after_get(dynd_node: DyndProcess, dynctl: DynctlRunner, key: str) -> None:
    assert dynctl("put", key, "after", "--node", dynd_node.address).returncode == 0
    result = dynctl("get", key, "--json", "--node", dynd_node.address)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["key"] == key


def test_node_after_the_command_wins_over_the_one_before_and_the_environment(
    dynd_node: DyndProcess, dynctl: DynctlRunner, key: str, dead_address: str
) -> None:
    assert dynctl("--node", dead_address, "put", key, "here", "--node", dynd_node.address).returncode == 0
    result = dynctl("get", key, "--node", dynd_node.address, env={"DYNCTL_NODE": dead_address})
    assert (result.returncode, result.stdout) == (0, b"here"), result.stderr
    refused = dynctl("--node", dynd_node.address, "get", key, "--node", dead_address)
    assert refused.returncode == 3, "the later --node is the one used"


def test_cluster_status_json_after_the_subcommand_and_after_the_group(dynd_node: DyndProcess, dynctl: DynctlRunner) -> None:
    for args in (["cluster", "status", "--json", "--node", dynd_node.address], ["cluster", "--json", "status", "--node", dynd_node.address]):
        result = dynctl(*args)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["node"] == dynd_node.name


def test_ring_key_with_options_after_its_argument(dynd_node: DyndProcess, dynctl: DynctlRunner) -> None:
    result = dynctl("ring", "key", "some-key", "--json", "--node", dynd_node.address)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["key"] == "some-key"


def test_a_value_after_double_dash_is_not_an_option(dynd_node: DyndProcess, dynctl: DynctlRunner, key: str) -> None:
    assert dynctl("--node", dynd_node.address, "put", key, "--", "--json").returncode == 0
    assert dynctl("--node", dynd_node.address, "get", key).stdout == b"--json"


def test_timeout_after_the_command(dynctl: DynctlRunner) -> None:
    with socket.create_server((HOST, 0)) as silent:
        address = f"{HOST}:{silent.getsockname()[1]}"
        result = dynctl("get", "k", "--node", address, "--timeout", "0.3")
    assert result.returncode == 3
    assert b"within 0.3 s" in result.stderr


@pytest.mark.parametrize("option", ["--token-file", "--tls-ca"])
def test_credential_files_after_the_command_are_read(dynctl: DynctlRunner, tmp_path: Path, dead_address: str, option: str) -> None:
    result = dynctl("get", "k", "--node", dead_address, option, str(tmp_path / "missing"))
    assert result.returncode == 2, "the file is checked (a usage error) before any connection"
    assert option.encode() in result.stderr


def test_a_bad_node_after_the_command_is_a_usage_error(dynctl: DynctlRunner) -> None:
    result = dynctl("get", "k", "--node", "127.0.0.1:99999")
    assert result.returncode == 2
    assert b"--node" in result.stderr


# ---- --version ----


@pytest.mark.parametrize("args", [["--version"], ["--node", "127.0.0.1:1", "--version"]])
def test_version(dynctl: DynctlRunner, args: list[str]) -> None:
    result = dynctl(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == f"dynctl {__version__} (dynd protocol {PROTOCOL_VERSION})\n"
