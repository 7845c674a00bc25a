"""The `dynctl` Typer app: the global options on the root callback, and the table of commands.

A command is a row of `COMMANDS`, "module:attribute" naming a command function or a Typer app of
subcommands (a group); its module is imported only when the command is used (`dynctl.commands`),
so each command pays only for its own imports. The global options may come before or after the
command (`dynctl.global_options`); a command does not declare them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dynctl.commands import lazy_group
from dynctl.node import Session
from dynctl.output import EXIT_CODES_HELP, Output
from dynd.protocol.address import DEFAULT_PORT, format_address, parse_address

if TYPE_CHECKING:
    import ssl

DEFAULT_NODE = f"127.0.0.1:{DEFAULT_PORT}"
DEFAULT_TIMEOUT_S = 5.0

# In the order `dynctl --help` lists them.
COMMANDS = {
    "get": "dynctl.kv:get",
    "put": "dynctl.kv:put",
    "delete": "dynctl.kv:delete",
    "bench": "dynctl.bench:bench",
    "repair": "dynctl.repair:repair",
    "log-level": "dynctl.log_level:log_level",
    "stats": "dynctl.stats:stats",
    "info": "dynctl.stats:info",
    "health": "dynctl.health:health",
    "top": "dynctl.top:top",
    "backup": "dynctl.backup:backup",
    "cluster": "dynctl.cluster:app",
    "ring": "dynctl.ring:app",
    "dev": "dynctl.dev:app",
}

app = typer.Typer(
    name="dynctl",
    help="Read, write and load-test a dynd key-value store; manage its cluster.\n\n"
    "Keys are UTF-8 text; values are raw bytes. A context token (base64url) says which versions "
    "you have seen: pass the one from `get --context` to put or delete to supersede them.\n\n"
    "The options below may also follow the command (`dynctl get KEY --json`).",
    epilog=EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    cls=lazy_group(COMMANDS),
)


def version_text() -> str:
    from dynd import __version__
    from dynd.protocol import PROTOCOL_VERSION

    return f"dynctl {__version__} (dynd protocol {PROTOCOL_VERSION})"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit()


def _check_node(address: str) -> str:
    try:
        host, port = parse_address(address)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return format_address(host, port)


def read_token(path: Path | None) -> str | None:
    """The token in the file --token-file (or DYNCTL_TOKEN_FILE) names, or None without one."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise typer.BadParameter(f"cannot read {path}: {reason}", param_hint="'--token-file' / DYNCTL_TOKEN_FILE") from None
    from dynd.protocol.auth import AuthConfigError, read_token_file

    try:
        return read_token_file(text, str(path))
    except AuthConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--token-file' / DYNCTL_TOKEN_FILE") from None


def tls_context(ca_file: Path | None) -> ssl.SSLContext | None:
    """TLS to the node, verifying its certificate (and host name) against `ca_file`."""
    if ca_file is None:
        return None
    import ssl

    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise typer.BadParameter(f"cannot load the CA {ca_file}: {reason}", param_hint="'--tls-ca'") from None


@app.callback()
def global_options(
    ctx: typer.Context,
    node: Annotated[
        str,
        typer.Option(
            "--node",
            envvar="DYNCTL_NODE",
            metavar="HOST:PORT",
            callback=_check_node,
            help="The node to talk to; any node serves any key.",
        ),
    ] = DEFAULT_NODE,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", metavar="SECONDS", min=0.001, help="How long to wait for the connection and for each reply."
        ),
    ] = DEFAULT_TIMEOUT_S,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")] = False,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            envvar="DYNCTL_TOKEN_FILE",
            metavar="PATH",
            dir_okay=False,
            help="A file holding a client or admin token (one line) to give the node; "
            "admin operations from another host need an admin token.",
        ),
    ] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option(
            "--tls-ca",
            envvar="DYNCTL_TLS_CA",
            metavar="PATH",
            dir_okay=False,
            help="Connect with TLS, verifying the node's certificate against this CA file (PEM).",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="Print dynctl's version and exit."),
    ] = False,
) -> None:
    ctx.obj = Session(
        node_address=node,
        timeout_s=timeout,
        output=Output(json_mode=json_output),
        token=read_token(token_file),
        ssl_context=tls_context(tls_ca),
    )


def main() -> None:
    app(prog_name="dynctl")
