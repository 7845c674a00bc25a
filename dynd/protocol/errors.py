"""Error codes shared by the node, the client and dynctl.

Inside the node a failure raises a `DynError` subclass; the receive boundary turns it into an
`ErrorReply` carrying the stable code, and the client turns that reply back into the same class
with `error_from_code`. `retriable` says whether the same request may succeed if sent again.
"""

from __future__ import annotations

from typing import ClassVar


class DynError(Exception):
    """Base of every error that crosses the wire. Subclasses fix `code` and `retriable`."""

    code: ClassVar[str] = "internal"
    retriable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class BadFrame(DynError):
    """The bytes are not a well-formed frame or CBOR item; the connection may be closed."""

    code = "bad_frame"


class BadRequest(DynError):
    """A well-formed frame whose message is invalid: missing or mistyped fields, bad context."""

    code = "bad_request"


class UnknownOp(DynError):
    code = "unknown_op"


class ProtocolMismatch(DynError):
    code = "protocol_version"


class KeyTooLarge(DynError):
    code = "key_too_large"


class ValueTooLarge(DynError):
    code = "value_too_large"


class TooManySiblings(DynError):
    """The put would leave more siblings than `siblings_max`: read, resolve, write with the context."""

    code = "too_many_siblings"


class ObjectTooLarge(DynError):
    code = "object_too_large"


class StorageFull(DynError):
    code = "storage_full"


class Overloaded(DynError):
    code = "overloaded"
    retriable = True


class QuorumFailed(DynError):
    """Too few replicas answered for R or W; the message says how many did."""

    code = "quorum_failed"
    retriable = True


class StaleRing(DynError):
    """The client routed by an old ring to a node that is not a primary: refresh the ring, retry."""

    code = "stale_ring"
    retriable = True


class Timeout(DynError):
    code = "timeout"
    retriable = True


class Unreachable(DynError):
    code = "unreachable"
    retriable = True


class ShuttingDown(DynError):
    code = "shutting_down"
    retriable = True


class Internal(DynError):
    code = "internal"


class NotAMember(DynError):
    """This node left the cluster (or was removed): it serves no data. Send the request to a
    member (the message names some); this node will never serve it, so retrying here cannot help."""

    code = "not_a_member"


class Unauthorized(DynError):
    """The connection does not hold the role this request needs, or its credential was refused.
    Nothing was changed."""

    code = "unauthorized"


_BY_CODE: dict[str, type[DynError]] = {
    cls.code: cls
    for cls in (
        BadFrame,
        BadRequest,
        UnknownOp,
        ProtocolMismatch,
        KeyTooLarge,
        ValueTooLarge,
        TooManySiblings,
        ObjectTooLarge,
        StorageFull,
        Overloaded,
        QuorumFailed,
        StaleRing,
        Timeout,
        Unreachable,
        ShuttingDown,
        Internal,
        NotAMember,
        Unauthorized,
    )
}


def error_from_code(code: str, message: str) -> DynError:
    """The local exception for an error code received from a peer; unknown codes stay readable."""
    cls = _BY_CODE.get(code)
    if cls is None:
        err = DynError(message)
        err.code = code  # type: ignore[misc]  # keep a code from a newer peer visible
        return err
    return cls(message)


def is_retriable(code: str) -> bool:
    cls = _BY_CODE.get(code)
    return cls.retriable if cls is not None else False
