"""The `dynctl` Typer app: global options on the callback, commands from their group modules."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated

import typer

from dynctl import backup, bench, cluster, dev, health, kv, log_level, repair, ring, stats, top
from dynctl.node import Session
from dynctl.output import EXIT_CODES_HELP, Output
from dynd.protocol.address import DEFAULT_PORT, format_address, parse_address
from dynd.protocol.auth import AuthConfigError, read_token_file

DEFAULT_NODE = f"127.0.0.1:{DEFAULT_PORT}"
DEFAULT_TIMEOUT_S = 5.0

app = typer.Typer(
    name="dynctl",
    help="Read, write and load-test a dynd key-value store; manage its cluster.\n\n"
    "Keys are UTF-8 text; values are raw bytes. A context token (base64url) says which versions "
    "you have seen: pass the one from `get --context` to put or delete to supersede them.",
    epilog=EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


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
    try:
        return read_token_file(text, str(path))
    except AuthConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--token-file' / DYNCTL_TOKEN_FILE") from None


def tls_context(ca_file: Path | None) -> ssl.SSLContext | None:
    """TLS to the node, verifying its certificate (and host name) against `ca_file`."""
    if ca_file is None:
        return None
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
) -> None:
    ctx.obj = Session(
        node_address=node,
        timeout_s=timeout,
        output=Output(json_mode=json_output),
        token=read_token(token_file),
        ssl_context=tls_context(tls_ca),
    )


app.command("get", epilog=EXIT_CODES_HELP)(kv.get)
app.command("put", epilog=EXIT_CODES_HELP)(kv.put)
app.command("delete", epilog=EXIT_CODES_HELP)(kv.delete)
app.command("bench", epilog=EXIT_CODES_HELP)(bench.bench)
app.command("repair", epilog=EXIT_CODES_HELP)(repair.repair)
app.command("log-level", epilog=EXIT_CODES_HELP)(log_level.log_level)
app.command("stats", epilog=EXIT_CODES_HELP)(stats.stats)
app.command("info", epilog=EXIT_CODES_HELP)(stats.info)
app.command("health", epilog=EXIT_CODES_HELP)(health.health)
app.command("top", epilog=EXIT_CODES_HELP)(top.top)
app.command("backup", epilog=EXIT_CODES_HELP)(backup.backup)
app.add_typer(cluster.app, name="cluster")
app.add_typer(ring.app, name="ring")
app.add_typer(dev.app, name="dev")


def main() -> None:
    app(prog_name="dynctl")
