"""get, put and delete: one key at a time.

Siblings are never silently collapsed: when a key holds concurrent values, `get` exits 5 and, in a
pipe, writes nothing to stdout, so a script cannot take one sibling for the value. The way out is
the context: `get --context` prints a token covering every sibling, and a put with it supersedes them.

Each command makes one request over a blocking socket (`dynctl.node.run_sync`): no trio, and rich
only for the sibling table on a terminal, so a shell loop over keys pays for little but Python.
What can be checked here is checked before connecting (an empty key, a token that cannot be a
context, a quorum outside 1..16): a usage error (exit 2) that sends nothing.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from dynctl.node import Session, run_sync
from dynctl.output import ExitCode, Output
from dynctl.tokens import BadToken, context_from_token, encode_token
from dynd.client.results import REPLICAS_MAX, GetResult, Sibling
from dynd.protocol.buckets import BUCKET_BYTES_MAX, bucket_key
from dynd.protocol.errors import BadRequest, QuorumFailed

if TYPE_CHECKING:
    from rich.table import Table

    from dynd.client.sync import SyncClient

PREVIEW_CHARS_MAX = 40
PREVIEW_BYTES_MAX = 16

KEY_HELP = "The key, as UTF-8 text."
# The client cannot know the cluster's N, but no cluster has more than REPLICAS_MAX replicas of a
# key: above that (or below 1) is a usage error here; above N, the node refuses it (exit 4).
QUORUM_NOTE = f" 1 to {REPLICAS_MAX}; above the cluster's N the node refuses it."
R_HELP = "Replies to wait for before answering (default: the cluster's R)." + QUORUM_NOTE
W_HELP = "Stores to wait for before answering (default: the cluster's W)." + QUORUM_NOTE

KeyArgument = Annotated[str, typer.Argument(metavar="KEY", help=KEY_HELP, show_default=False)]
ReadQuorumOption = Annotated[int | None, typer.Option("--r", min=1, max=REPLICAS_MAX, metavar="N", help=R_HELP)]
WriteQuorumOption = Annotated[int | None, typer.Option("--w", min=1, max=REPLICAS_MAX, metavar="N", help=W_HELP)]
PR_HELP = "How many of the replies must come from primaries, not fallbacks standing in (default: none)."
PW_HELP = "How many of the stores must be on primaries, not fallbacks standing in (default: none)."
PrimaryReadOption = Annotated[int | None, typer.Option("--pr", min=1, max=REPLICAS_MAX, metavar="N", help=PR_HELP)]
PrimaryWriteOption = Annotated[int | None, typer.Option("--pw", min=1, max=REPLICAS_MAX, metavar="N", help=PW_HELP)]
BUCKET_HELP = (
    "The key's bucket, as the HTTP door names it (/buckets/BUCKET/keys/KEY): the same object curl and Riak "
    f"clients reach. 1 to {BUCKET_BYTES_MAX} bytes of UTF-8."
)
BucketOption = Annotated[str | None, typer.Option("--bucket", "-b", metavar="BUCKET", help=BUCKET_HELP)]


def key_bytes(key: str) -> bytes:
    try:
        return key.encode("utf-8")
    except UnicodeEncodeError:
        # argv that was not UTF-8 arrives as lone surrogates; say so rather than guess an encoding.
        raise typer.BadParameter("the key must be valid UTF-8", param_hint="KEY") from None


def request_key(key: str, bucket: str | None = None) -> bytes:
    """The key of a get, put or delete: a node stores no empty key, so one is a usage error here.
    With a bucket, the stored key of KEY in BUCKET (`dynd.protocol.buckets`)."""
    if not key:
        raise typer.BadParameter("the key is empty", param_hint="KEY")
    raw = key_bytes(key)
    if bucket is None:
        return raw
    try:
        return bucket_key(key_bytes(bucket), raw)
    except BadRequest as exc:
        raise typer.BadParameter(exc.message, param_hint="'--bucket'") from None


def context_bytes(token: str, option: str = "--context") -> bytes:
    try:
        return context_from_token(token)
    except BadToken as exc:
        raise typer.BadParameter(str(exc), param_hint=f"'{option}'") from None


def _standard_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _sibling_document(sibling: Sibling) -> dict[str, Any]:
    actor, counter = sibling.dot
    return {
        "value": _standard_base64(sibling.value),
        "size": len(sibling.value),
        "dot": {"actor": actor, "counter": counter},
        "clock": dict(sibling.clock),
        "content_type": sibling.content_type,
        "meta": dict(sibling.usermeta),
        "modified_ms": sibling.modified_ms,
    }


def get_document(key: str, result: GetResult) -> dict[str, Any]:
    """The --json form of a get: `value` is set only when there is exactly one, so it is never a sibling."""
    return {
        "key": key,
        "found": result.found,
        "value": _standard_base64(result.values[0]) if len(result.values) == 1 else None,
        "siblings": [_sibling_document(sibling) for sibling in result.siblings],
        "context": encode_token(result.context),
    }


def _preview(value: bytes) -> str:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        head = value[:PREVIEW_BYTES_MAX].hex(" ")
        return f"hex {head}{' …' if len(value) > PREVIEW_BYTES_MAX else ''}"
    shown = repr(text[:PREVIEW_CHARS_MAX])
    return shown + (" …" if len(text) > PREVIEW_CHARS_MAX else "")


def _clock_text(clock: dict[str, int]) -> str:
    return ", ".join(f"{actor}:{counter}" for actor, counter in sorted(clock.items())) or "-"


def _sibling_table(key: str, result: GetResult) -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{len(result.siblings)} siblings of {key!r}", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("value")
    table.add_column("size", justify="right")
    table.add_column("dot")
    table.add_column("clock")
    for index, sibling in enumerate(result.siblings, start=1):
        actor, counter = sibling.dot
        table.add_row(
            str(index),
            Text(_preview(sibling.value)),
            str(len(sibling.value)),
            Text(f"{actor}:{counter}"),
            Text(_clock_text(sibling.clock)),
        )
    return table


def _abort_with_siblings(output: Output, key: str, result: GetResult) -> NoReturn:
    message = f"{key!r} has {len(result.siblings)} siblings (concurrent values)"
    if output.json_mode:
        output.write_json(get_document(key, result))
    elif output.stdout_is_terminal:
        output.write_table(_sibling_table(key, result))
    else:
        message += "; wrote nothing to stdout"
    hint = f"To resolve them, put the value you want with the token from: dynctl get --context {key!r}"
    if not output.json_mode:
        hint = f"To see them all: dynctl --json get {key!r}. " + hint
    output.abort(message, ExitCode.SIBLINGS, hint=hint)


def get(
    ctx: typer.Context,
    key: KeyArgument,
    context_only: Annotated[
        bool, typer.Option("--context", help="Print only the context token (exit 0 even if not found or siblings).")
    ] = False,
    r: ReadQuorumOption = None,
    pr: PrimaryReadOption = None,
    bucket: BucketOption = None,
) -> None:
    """Write the key's value to stdout as raw bytes.

    Exits 1 if there is no live value and 5 if there are siblings (with --json, every sibling is
    printed, with its content type and metadata when it has them; on a terminal, a table; in a
    pipe, nothing).
    """
    session: Session = ctx.obj
    output = session.output
    raw_key = request_key(key, bucket)
    result = run_sync(session, lambda client: client.get(raw_key, r=r, pr=pr))
    if context_only:
        if output.json_mode:
            output.write_json({"key": key, "context": encode_token(result.context)})
        else:
            output.write_line(encode_token(result.context))
        return
    if not result.found:
        if output.json_mode:
            output.write_json(get_document(key, result))
        output.abort(f"not found: {key!r}", ExitCode.NOT_FOUND)
    if len(result.values) > 1:
        _abort_with_siblings(output, key, result)
    if output.json_mode:
        output.write_json(get_document(key, result))
    else:
        output.write_bytes(result.values[0])


def _read_value(value: str | None, file: Path | None) -> bytes:
    if (value is None) == (file is None):
        raise typer.BadParameter("give exactly one of VALUE, '-' (stdin) or --file", param_hint="VALUE")
    if file is not None:
        try:
            return file.read_bytes()
        except OSError as exc:
            raise typer.BadParameter(
                f"cannot read {str(file)!r}: {exc.strerror or exc}", param_hint="'--file'"
            ) from None
    assert value is not None
    if value == "-":
        return sys.stdin.buffer.read()
    # surrogateescape gives back the exact bytes of an argument that was not UTF-8.
    return value.encode("utf-8", "surrogateescape")


def put(
    ctx: typer.Context,
    key: KeyArgument,
    value: Annotated[
        str | None, typer.Argument(metavar="VALUE", help="The value as text, or - to read raw bytes from stdin.")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", "-f", metavar="FILE", exists=True, dir_okay=False, readable=True, help="Read the value from FILE."
        ),
    ] = None,
    context: Annotated[
        str | None,
        typer.Option(
            "--context",
            metavar="TOKEN",
            help="Token from `get --context`: the versions this write supersedes. Without it the write "
            "supersedes nothing, so it becomes a sibling of any existing value.",
        ),
    ] = None,
    w: WriteQuorumOption = None,
    pw: PrimaryWriteOption = None,
    bucket: BucketOption = None,
    content_type: Annotated[
        str | None,
        typer.Option("--content-type", metavar="TYPE", help="Store TYPE with the value (served as its Content-Type over HTTP)."),
    ] = None,
    meta: Annotated[
        list[str] | None,
        typer.Option("--meta", metavar="NAME=VALUE", help="User metadata stored with the value (X-Riak-Meta-NAME over HTTP); repeatable."),
    ] = None,
) -> None:
    """Store a value and print the new context token.

    The value comes from exactly one of VALUE, stdin (VALUE is -) or --file. Keep the printed token
    and pass it with your next put to overwrite this value rather than add a sibling.
    """
    session: Session = ctx.obj
    raw_key = request_key(key, bucket)
    # An empty token is "no context": the same as leaving --context out.
    seen = context_bytes(context) if context else None
    payload = _read_value(value, file)
    usermeta = _user_meta(meta or [])

    def store(client: SyncClient) -> bytes:
        return client.put(raw_key, payload, seen, w=w, pw=pw, content_type=content_type, usermeta=usermeta)

    new_context = run_sync(session, store, {QuorumFailed: _not_undone_hint(key)})
    _print_context(session.output, key, new_context)


def delete(
    ctx: typer.Context,
    key: KeyArgument,
    context: Annotated[
        str, typer.Option("--context", metavar="TOKEN", help="Token from `get --context`: the versions to delete.")
    ],
    w: WriteQuorumOption = None,
    pw: PrimaryWriteOption = None,
    bucket: BucketOption = None,
) -> None:
    """Delete what the context token covers and print the tombstone's context token.

    The token is required so a delete never removes a value its author has not seen.
    """
    session: Session = ctx.obj
    raw_key = request_key(key, bucket)
    seen = context_bytes(context)
    new_context = run_sync(session, lambda client: client.delete(raw_key, seen, w=w, pw=pw), {QuorumFailed: _not_undone_hint(key)})
    _print_context(session.output, key, new_context)


def _user_meta(items: list[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise typer.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="'--meta'")
        if name.lower() in pairs:
            raise typer.BadParameter(f"{name!r} is given twice", param_hint="'--meta'")
        pairs[name.lower()] = value
    return pairs


def _not_undone_hint(key: str) -> str:
    # A write that missed its quorum may still be on some replicas (the node's message says how many).
    return f"If it was stored, it stays: to replace it rather than add a sibling, put with the token from: dynctl get --context {key!r}"


def _print_context(output: Output, key: str, context: bytes) -> None:
    if output.json_mode:
        output.write_json({"key": key, "context": encode_token(context)})
    else:
        output.write_line(encode_token(context))
