"""The client's own refinements of `Unreachable`, and how it recognises a port that is not dynd.

Both keep the code `unreachable` (so `except Unreachable` and exit codes built on it still hold);
the class says which of two quite different things went wrong, so a tool can say what to check:

- `CannotConnect`: nothing accepted the connection (refused, no route, or connecting timed out).
- `NotADyndNode`: something accepted it, but its first reply is not a dynd frame. Before the hello
  is done a node sends one short frame (a hello reply or an error), so a length prefix above
  `HELLO_REPLY_BYTES_MAX`, bytes that do not decode as a message, or a close in the middle of a
  frame mean another kind of server. Its first bytes often say which (`describe_foreign`).
"""

from __future__ import annotations

from dynd.protocol.errors import DynError, Unreachable

# Enough of the first reply to recognise the usual servers, and to show a stranger's.
FIRST_BYTES_KEPT = 16
TLS_RECORD_TYPES = (0x15, 0x16)  # alert, handshake: what a TLS server sends a client that is not TLS

# How common servers answer a stranger's bytes (or greet before being asked), by first bytes.
_GREETINGS: tuple[tuple[bytes, str], ...] = (
    (b"HTTP/", "an HTTP server"),
    (b"SSH-", "an SSH server"),
    (b"220 ", "an SMTP or FTP server"),
    (b"220-", "an SMTP or FTP server"),
    (b"* OK", "an IMAP server"),
    (b"+OK", "a POP3 server"),
    (b"-ERR", "a Redis server"),
    (b"-NOAUTH", "a Redis server"),
)


class CannotConnect(Unreachable):
    """The connection was refused or could not be made in time: nothing listens there, or a
    firewall or route is in the way."""


class NotADyndNode(Unreachable):
    """Something answered at the address, but not in dynd's protocol. Retrying will not help."""

    retriable = False


def server_kind(first: bytes) -> str | None:
    """The kind of server whose first bytes are `first` ("an HTTP server"), if we know it."""
    for prefix, kind in _GREETINGS:
        if first.startswith(prefix):
            return kind
    if len(first) >= 2 and first[0] in TLS_RECORD_TYPES and first[1] == 0x03:
        return "a TLS server"
    return None


def is_known_server(first: bytes) -> bool:
    return server_kind(first) is not None


def describe_foreign(first: bytes) -> str:
    """Why `first` (the first bytes of a reply) is not from a dynd node, as a parenthesis."""
    kind = server_kind(first)
    if kind == "a TLS server":
        # A dynd node with TLS on answers a plain connection with a frame in the clear.
        return "it answered in TLS, as no dynd node answers a plain connection"
    if kind is not None:
        return f"it answered like {kind}"
    return f"its first bytes are not a dynd frame: {first[:FIRST_BYTES_KEPT]!r}"


def not_a_dynd_node(address: str, first: bytes) -> NotADyndNode:
    return NotADyndNode(f"{address} is not a dynd node ({describe_foreign(first)})")


def copy_error(error: DynError) -> DynError:
    """A fresh exception of the same class and message, for each waiter on a failed connection
    (one instance raised in many tasks would share a traceback)."""
    fresh = type(error)(error.message)
    if fresh.code != error.code:  # a code from a newer peer, kept on a plain DynError
        fresh.code = error.code  # type: ignore[misc]
    return fresh
