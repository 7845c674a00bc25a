"""Context tokens on the command line: the node's opaque context bytes as unpadded base64url.

base64url because a token must survive shells, URLs and file names unquoted; no padding because
`=` adds nothing a decoder needs. The bytes stay opaque: dynctl checks only that they are what
every context is (DESIGN.md section 2), one CBOR array, so a token cut short or mangled is a usage
error here instead of a refusal from the node; what is inside is the node's to judge.
"""

from __future__ import annotations

import base64
import binascii
import re

from dynd.protocol.codec import loads_strict
from dynd.protocol.errors import DynError

_TOKEN_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")


class BadToken(ValueError):
    pass


def encode_token(context: bytes) -> str:
    return base64.urlsafe_b64encode(context).rstrip(b"=").decode("ascii")


def decode_token(token: str) -> bytes:
    """The context bytes of `token`; raise BadToken, naming the problem, if it is not base64url."""
    token = token.strip()
    # The stdlib decoder silently skips characters outside the alphabet, so check them first:
    # a token mangled by a copy and paste must fail here, not become a different context.
    if not _TOKEN_ALPHABET.fullmatch(token):
        bad = sorted({char for char in token if not _TOKEN_ALPHABET.fullmatch(char)})
        raise BadToken(f"not a base64url token: unexpected character(s) {''.join(bad)!r}")
    if len(token) % 4 == 1:
        raise BadToken("not a base64url token: its length is impossible (truncated?)")
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as exc:
        raise BadToken(f"not a base64url token: {exc}") from None


def context_from_token(token: str) -> bytes:
    """The context `token` carries; raise BadToken, naming the problem, if it cannot be one."""
    context = decode_token(token)
    check_context(context)
    return context


def check_context(context: bytes) -> None:
    """Raise BadToken unless `context` is one well-formed CBOR array, as every context is."""
    if not context:
        raise BadToken("the token is empty")
    try:
        item = loads_strict(context)
    except DynError:
        item = None
    if not isinstance(item, list):
        raise BadToken("not a context token: it decodes, but not to a context (cut short, or from somewhere else?)")
