"""The shipped shell completions and man page keep up with the app's real commands and options."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import typer.main
from dynctl_testing import REPO

from dynctl.app import app
from dynctl.global_options import is_late_copy

COMPLETIONS = REPO / "completions"
MAN_PAGE = REPO / "man" / "dynctl.1"


def app_options() -> dict[str, list[str]]:
    """Every option string per command, read from the app itself: "" for the global options, and
    a group's commands by their full path ("cluster join"). The hidden copies of the global options
    that every command takes after it (`dynctl.global_options`) are counted once, as global."""
    group = typer.main.get_command(app)
    options = {"": [opt for param in group.params for opt in param.opts + param.secondary_opts if opt.startswith("-")]}

    def collect(path: str, command: object) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            options[path] = [opt for param in command.params if not is_late_copy(param) for opt in param.opts if opt.startswith("-")]  # type: ignore[attr-defined]
            return
        for name, subcommand in subcommands.items():
            collect(f"{path} {name}", subcommand)

    for name, command in group.commands.items():  # type: ignore[attr-defined]
        collect(name, command)
    return options


def test_the_app_has_the_commands_the_completions_know() -> None:
    assert set(app_options()) == {
        "", "get", "put", "delete", "bench", "repair", "backup", "stats", "info", "health", "top", "log-level",
        "cluster join", "cluster leave", "cluster remove", "cluster status", "cluster transfers",
        "ring status", "ring key",
        "dev up", "dev status", "dev start", "dev stop", "dev kill", "dev pause", "dev resume",
    }


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completions_name_every_command_and_option(shell: str) -> None:
    script = (COMPLETIONS / f"dynctl.{shell}").read_text()
    missing = []
    for command, options in app_options().items():
        missing += [word for word in command.split() if word not in script]
        for option in options:
            if shell == "fish":
                form = f"-l {option[2:]}" if option.startswith("--") else f"-s {option[1:]}"
            else:
                form = option
            if form not in script:
                missing.append(f"{command or '(global)'} {option}")
    assert missing == []


def test_the_man_page_names_every_command_and_option() -> None:
    page = MAN_PAGE.read_text().replace("\\-", "-")
    missing = [
        f"{command or '(global)'} {option}"
        for command, options in app_options().items()
        for option in options
        if option not in page
    ]
    assert missing == []


GLOBAL = ("--node", "--timeout", "--json", "--token-file", "--tls-ca")  # also after any command


def bash_completions(line: str) -> list[str]:
    # The line goes in as $1, so no quoting of it is needed inside the script.
    script = f'source "{COMPLETIONS / "dynctl.bash"}"; COMP_LINE=$1; COMP_POINT=${{#1}}; _dynctl; printf "%s\\n" "${{COMPREPLY[@]}}"'
    argv = ["bash", "--norc", "-c", script, "bash", line]
    result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return [word for word in result.stdout.splitlines() if word]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("dynctl ", {"get", "put", "delete", "bench", "repair", "backup", "stats", "info", "health", "top", "log-level", "cluster", "ring", "dev", *GLOBAL, "--version", "--help", "-h"}),
        ("dynctl --token-file t get --", {"--context", "--r", "--pr", "--bucket", "--help", *GLOBAL}),
        ("dynctl de", {"delete", "dev"}),
        ("dynctl --node 127.0.0.1:7400 get --", {"--context", "--r", "--pr", "--bucket", "--help", *GLOBAL}),
        ("dynctl put key v --c", {"--context", "--content-type"}),
        ("dynctl get key --n", {"--node"}),
        ("dynctl get key --node 127.0.0.1:7400 --j", {"--json"}),
        ("dynctl cluster --node 127.0.0.1:7400 st", {"status"}),
        ("dynctl cluster status --t", {"--timeout", "--token-file", "--tls-ca"}),
        ("dynctl bench --workload m", {"mixed"}),
        ("dynctl bench --workload ", {"put", "get", "mixed", "insert", "a", "b", "c", "d", "f"}),
        ("dynctl --timeout 3 put key --w", {"--w"}),
        ("dynctl delete key --context ", set()),
        ("dynctl cluster ", {"join", "leave", "remove", "status", "transfers", "--help", "-h"}),
        ("dynctl cluster leave --", {"--dry-run", "--wait", "--help", *GLOBAL}),
        ("dynctl cluster remove n3 --", {"--dry-run", "--force", "--help", *GLOBAL}),
        ("dynctl --json ring k", {"key"}),
        ("dynctl --node 127.0.0.1:7400 cluster join --", {"--dry-run", "--help", *GLOBAL}),
        ("dynctl dev up --", {"--nodes", "--dir", "--base-port", "--n", "--r", "--w", "--help", *GLOBAL}),
        ("dynctl dev up --nodes 3 --r", {"--r"}),
        ("dynctl dev ", {"up", "status", "start", "stop", "kill", "pause", "resume", "--help", "-h"}),
        ("dynctl dev st", {"status", "start", "stop"}),
        ("dynctl dev status --", {"--dir", "--help", *GLOBAL}),
        ("dynctl dev kill --", {"--dir", "--help", *GLOBAL}),
        ("dynctl dev up --base-port ", set()),
        ("dynctl log-level W", {"WARNING"}),
        ("dynctl log-level --", {"--help", *GLOBAL}),
        ("dynctl --json health --", {"--all", "--hints-max", "--transfers-max", "--disk-max-percent", "--help", *GLOBAL}),
        ("dynctl stats --", {"--all", "--help", *GLOBAL}),
        ("dynctl health --hints-max ", set()),
        ("dynctl t", {"top"}),
        ("dynctl b", {"bench", "backup"}),
        ("dynctl backup --", {"--force", "--help", *GLOBAL}),
    ],
)
def test_bash_completion(line: str, expected: set[str]) -> None:
    assert set(bash_completions(line)) == expected


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_dev_node_names_from_the_dev_directory(tmp_path: Path) -> None:
    for name in ("dev1", "dev2", "dev10"):
        (tmp_path / name).mkdir()
    (tmp_path / "dev-notes").write_text("a file, not a node")
    assert set(bash_completions(f"dynctl dev kill --dir {tmp_path} ")) == {"dev1", "dev2", "dev10"}
    assert set(bash_completions(f"dynctl --json dev start --dir {tmp_path} dev1")) == {"dev1", "dev10"}
    assert bash_completions(f"dynctl dev stop --dir {tmp_path} dev1 ") == []  # one node per command


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("option", ["--token-file", "--tls-ca"])
def test_bash_completes_credential_files(tmp_path: Path, option: str) -> None:
    (tmp_path / "admin-token").write_text("x")
    (tmp_path / "ca.pem").write_text("x")
    assert set(bash_completions(f"dynctl {option} {tmp_path}/")) == {f"{tmp_path}/admin-token", f"{tmp_path}/ca.pem"}
