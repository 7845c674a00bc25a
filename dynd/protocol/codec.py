"""CBOR encoding and strict decoding of messages.

Decoding refuses anything a well-behaved peer never sends: nesting deeper than `CBOR_DEPTH_MAX`,
indefinite-length items, duplicate map keys, non-string map keys, any tag, invalid UTF-8, bytes
after the top-level item, a top level that is not a map, unknown ops and fields, and fields of the
wrong type. No state (such as shared references) carries from one frame to the next: see
`loads_strict`. Size limits on keys and values belong to the node's config and are checked there.

How to check, build and encode each message type is worked out from its dataclass the first time
the type is met, not at import: a short-lived client (`dynctl get`) meets four types of fifty.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import struct
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import cbor2

from dynd.protocol import messages
from dynd.protocol.errors import BadFrame, BadRequest, UnknownOp

CBOR_DEPTH_MAX = 8
INT_MAX = 2**63 - 1


def _reject_tag(decoder: Any, tag: Any = None) -> Any:
    raise ValueError("CBOR tags are not allowed")


class _EveryTag(Mapping[int, Callable[..., Any]]):
    """The rejecting hook for every tag number. cbor2 decodes some tags itself (datetimes, bignums,
    ...) unless `semantic_decoders` names them; this names them all, of any size, without a table."""

    def __getitem__(self, number: int) -> Callable[..., Any]:
        if type(number) is not int:
            raise KeyError(number)
        return _reject_tag

    def __contains__(self, number: object) -> bool:
        return type(number) is int

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


_REJECT_ALL_TAGS = _EveryTag()


# Strict decoders ready for reuse: making a CBORDecoder with these options costs about as much as
# decoding a kilobyte frame with it. Reuse carries nothing from one item to the next: the only state
# a cbor2 decoder keeps across items is what tags create (shared and string references), and every
# tag is refused; its depth count starts again at each `decode`. A decoder an error interrupted is
# dropped all the same. A free list rather than one decoder, so threads never share one (a list's
# pop and append are atomic).
_IDLE_DECODERS: list[Any] = []
_NO_INPUT = io.BytesIO()


def _strict_decoder() -> Any:
    return cbor2.CBORDecoder(
        _NO_INPUT,
        tag_hook=_reject_tag,
        semantic_decoders=_REJECT_ALL_TAGS,
        str_errors="strict",
        max_depth=CBOR_DEPTH_MAX,
        allow_indefinite=False,
        allow_duplicate_keys=False,
        strict_hashable_types=True,
    )


def loads_strict(data: bytes) -> Any:
    """Decode exactly one CBOR item from `data` under the strict rules above."""
    if not data:
        raise BadFrame("empty frame")
    try:
        decoder = _IDLE_DECODERS.pop()
    except IndexError:
        decoder = _strict_decoder()
    stream = io.BytesIO(data)
    decoder.fp = stream
    try:
        item = decoder.decode()
    except (cbor2.CBORDecodeError, ValueError, RecursionError, OverflowError) as exc:
        raise BadFrame(f"malformed CBOR: {exc}") from None
    decoder.fp = _NO_INPUT  # so the idle decoder does not keep the frame alive
    _IDLE_DECODERS.append(decoder)
    if stream.tell() != len(data):
        raise BadFrame(f"{len(data) - stream.tell()} trailing bytes after the CBOR item")
    return item


def dumps(item: Any) -> bytes:
    return cbor2.dumps(item)


# ---- CBOR written by hand, for the fixed shapes encoded on every write ----
#
# cbor2 (6.x) checks each list and tuple against the Mapping ABC before encoding it, about half a
# microsecond apiece, and the records, context tokens and replies built on every put are mostly
# small lists. Those encoders join these pieces instead. Each piece is exactly what cbor2 writes
# for the same value (shortest heads, definite lengths), so the bytes are identical.

MAJOR_UINT = 0
MAJOR_BYTES = 2
MAJOR_TEXT = 3
MAJOR_ARRAY = 4
MAJOR_MAP = 5
CBOR_TRUE = b"\xf5"
CBOR_NULL = b"\xf6"
TEXT_CACHE_MAX = 4096  # distinct strings kept encoded by `cbor_text` (actor and field names)

_SHORT_HEADS = tuple(tuple(bytes([major << 5 | n]) for n in range(24)) for major in range(8))
_HEAD_1 = struct.Struct(">BB").pack
_HEAD_2 = struct.Struct(">BH").pack
_HEAD_4 = struct.Struct(">BI").pack
_HEAD_8 = struct.Struct(">BQ").pack


def cbor_head(major: int, n: int) -> bytes:
    """The head of an item of `major` type with argument `n` (a uint's value, a length); a
    negative `n` raises struct.error."""
    if 0 <= n < 24:
        return _SHORT_HEADS[major][n]
    if n < 0x100:
        return _HEAD_1(major << 5 | 24, n)
    if n < 0x10000:
        return _HEAD_2(major << 5 | 25, n)
    if n < 0x100000000:
        return _HEAD_4(major << 5 | 26, n)
    return _HEAD_8(major << 5 | 27, n)


def cbor_uint(n: int) -> bytes:
    return _SHORT_HEADS[MAJOR_UINT][n] if 0 <= n < 24 else cbor_head(MAJOR_UINT, n)


@functools.lru_cache(maxsize=TEXT_CACHE_MAX)
def cbor_text(text: str) -> bytes:
    encoded = text.encode("utf-8")
    return cbor_head(MAJOR_TEXT, len(encoded)) + encoded


# ---- field checking, built once per message type from its annotations ----

Checker = Callable[[Any, str], Any]


def _check_int(value: Any, name: str) -> int:
    if type(value) is not int or not 0 <= value <= INT_MAX:
        raise BadRequest(f"field {name!r} must be an integer in 0..2^63-1")
    return value


def _exact(kind: type) -> Checker:
    def check(value: Any, name: str) -> Any:
        if type(value) is not kind:
            raise BadRequest(f"field {name!r} must be {kind.__name__}, not {type(value).__name__}")
        return value

    return check


def _optional(inner: Checker) -> Checker:
    def check(value: Any, name: str) -> Any:
        return None if value is None else inner(value, name)

    return check


def _list_of(inner: Checker) -> Checker:
    def check(value: Any, name: str) -> list[Any]:
        if type(value) is not list:
            raise BadRequest(f"field {name!r} must be a list")
        return [inner(item, f"{name}[{index}]") for index, item in enumerate(value)]

    return check


def _checker_for(annotation: Any) -> Checker:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {annotation}")
        return _optional(_checker_for(args[0]))
    if origin is list:
        (item,) = typing.get_args(annotation)
        return _list_of(_checker_for(item))
    if annotation is int:
        return _check_int
    if annotation in (bytes, str, bool):
        return _exact(annotation)
    if dataclasses.is_dataclass(annotation):
        return _record_checker(annotation)
    raise TypeError(f"unsupported field type {annotation}")


_SCALARS = (int, bytes, str, bool)
_OP_ONLY = frozenset({"op"})


def _flat_field(field: dataclasses.Field[Any], annotation: Any) -> tuple[str, type, bool, bool] | None:
    """(name, exact type, may be None, may be absent) for a scalar field, optional or not."""
    if annotation in _SCALARS and field.default is dataclasses.MISSING:
        return field.name, annotation, False, False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and field.default in (None, dataclasses.MISSING):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1 and args[0] in _SCALARS:
            return field.name, args[0], True, field.default is None
    return None


class _Spec:
    """How to check and build one dataclass from a decoded map (made once per type, on first use)."""

    def __init__(self, cls: type) -> None:
        hints = typing.get_type_hints(cls)
        self.cls = cls
        self.fields = [f for f in dataclasses.fields(cls)]
        self.checkers = {f.name: _checker_for(hints[f.name]) for f in self.fields}
        self.required = {f.name for f in self.fields if f.default is dataclasses.MISSING}
        self.names = frozenset(self.checkers)
        self.names_and_op = self.names | _OP_ONLY
        # Messages whose fields are all scalars (the hot requests and replies among them) get a
        # straight-line check that builds the message positionally; anything it does not accept
        # goes through `build`, which accepts or explains exactly as before.
        flat = [_flat_field(f, hints[f.name]) for f in self.fields]
        self.flat: tuple[tuple[str, type, bool, bool], ...] | None = None if None in flat else tuple(flat)  # type: ignore[arg-type]

    def build_message(self, mapping: dict[str, Any]) -> Any:
        """`build` of a top-level message map (which also holds "op")."""
        if self.flat is not None and mapping.keys() <= self.names_and_op:
            args = []
            for name, kind, may_be_none, may_be_absent in self.flat:
                value = mapping.get(name)
                if value is None:
                    if not may_be_none or not (may_be_absent or name in mapping):
                        break
                elif type(value) is not kind or (kind is int and not 0 <= value <= INT_MAX):
                    break
                args.append(value)
            else:
                return self.cls(*args)
        return self.build(mapping, ignore=_OP_ONLY)

    def build(self, mapping: dict[str, Any], ignore: frozenset[str] = frozenset()) -> Any:
        unknown = mapping.keys() - self.names - ignore
        if unknown:
            raise BadRequest(f"unknown field(s) {sorted(map(str, unknown))} for {self.cls.__name__}")
        missing = self.required - mapping.keys()
        if missing:
            raise BadRequest(f"missing field(s) {sorted(missing)} for {self.cls.__name__}")
        kwargs = {name: self.checkers[name](value, name) for name, value in mapping.items() if name in self.names}
        return self.cls(**kwargs)


_RECORD_SPECS: dict[type, _Spec] = {}


def _record_checker(cls: type) -> Checker:
    def check(value: Any, name: str) -> Any:
        if type(value) is not dict:
            raise BadRequest(f"field {name!r} must be a map")
        spec = _RECORD_SPECS.get(cls)
        if spec is None:
            spec = _RECORD_SPECS[cls] = _Spec(cls)
        return spec.build(value)

    return check


_TYPES_BY_OP: dict[str, type] = {cls.OP: cls for cls in messages.MESSAGE_TYPES}  # type: ignore[attr-defined]
_SPECS: dict[str, _Spec] = {}  # by op, filled by `_spec_of`


def _spec_of(op: str) -> _Spec | None:
    spec = _SPECS.get(op)
    if spec is None:
        cls = _TYPES_BY_OP.get(op)
        if cls is None:
            return None
        spec = _SPECS[op] = _Spec(cls)
    return spec


# ---- public API ----


def decode_message(frame: bytes) -> messages.Message:
    """Decode one frame's payload into a message, or raise BadFrame, BadRequest or UnknownOp.

    BadRequest and UnknownOp carry `request_id` when the map had a usable `id`, so the reply can
    name the request that failed.
    """
    item = loads_strict(frame)
    if type(item) is not dict:
        raise BadFrame(f"top level must be a map, not {type(item).__name__}")
    raw_id = item.get("id")
    request_id = raw_id if type(raw_id) is int and 0 <= raw_id <= INT_MAX else None
    op = item.get("op")
    try:
        if type(op) is not str:
            raise BadRequest("missing or non-text 'op'")
        spec = _SPECS.get(op) or _spec_of(op)
        if spec is None:
            raise UnknownOp(f"unknown op {op[:64]!r}")
        return spec.build_message(item)  # type: ignore[no-any-return]
    except (BadRequest, UnknownOp) as exc:
        exc.request_id = request_id  # type: ignore[attr-defined]
        raise


_ENCODED_TYPES = frozenset((*messages.MESSAGE_TYPES, *messages.RECORD_TYPES))
# Per type: (field name, omit when None) in declaration order, filled by `_encode_fields`.
_ENCODE_FIELDS: dict[type, tuple[tuple[str, bool], ...]] = {}


def _encode_fields(cls: type) -> tuple[tuple[str, bool], ...]:
    fields = _ENCODE_FIELDS.get(cls)
    if fields is None:
        fields = _ENCODE_FIELDS[cls] = tuple((f.name, f.default is None) for f in dataclasses.fields(cls))
    return fields


def to_plain(value: Any) -> Any:
    """Messages and records as the maps and lists cbor2 encodes."""
    if type(value) is list:
        return [to_plain(item) for item in value]
    kind = type(value)
    spec = _ENCODE_FIELDS.get(kind)
    if spec is None:
        if kind not in _ENCODED_TYPES:
            return value
        spec = _encode_fields(kind)
    # a field whose default is None is left out while None, in records as in messages
    return {name: to_plain(field) for name, omit_none in spec if (field := getattr(value, name)) is not None or not omit_none}


def _text_piece(text: str) -> bytes:
    encoded = text.encode("utf-8")
    return cbor_head(MAJOR_TEXT, len(encoded)) + encoded


# Messages of scalar fields only: (the "op" entry, then per field its name's CBOR and whether None
# is omitted), for `encode_message` to write without building a dict for cbor2; None for the
# others. Filled by `_flat_encoding`.
_FlatEncoding = tuple[bytes, tuple[tuple[str, bytes, bool], ...]]
_FLAT_ENCODINGS: dict[type, _FlatEncoding | None] = {}
_MESSAGE_TYPES = frozenset(messages.MESSAGE_TYPES)
_UNSEEN: Any = object()


def _flat_encoding(cls: type) -> _FlatEncoding | None:
    if cls not in _MESSAGE_TYPES:
        raise KeyError(f"{cls.__name__} is not a message")
    spec = _spec_of(cls.OP)  # type: ignore[attr-defined]
    flat: _FlatEncoding | None = None
    if spec is not None and spec.flat is not None:
        flat = (
            cbor_text("op") + _text_piece(cls.OP),  # type: ignore[attr-defined]
            tuple((name, _text_piece(name), omit_none) for name, omit_none in _encode_fields(cls)),
        )
    _FLAT_ENCODINGS[cls] = flat
    return flat


def _encode_flat(message: messages.Message, op_entry: bytes, fields: tuple[tuple[str, bytes, bool], ...]) -> bytes:
    out = [b"", op_entry]
    entries = 1
    for name, name_cbor, omit_none in fields:
        value = getattr(message, name)
        if value is None:
            if omit_none:
                continue
            out += (name_cbor, CBOR_NULL)
        elif type(value) is bytes:
            out += (name_cbor, cbor_head(MAJOR_BYTES, len(value)), value)
        elif type(value) is int and value >= 0:
            out += (name_cbor, cbor_uint(value))
        elif type(value) is str:
            out += (name_cbor, _text_piece(value))
        else:  # a bool, or anything unusual: cbor2 writes it
            out += (name_cbor, cbor2.dumps(value))
        entries += 1
    out[0] = cbor_head(MAJOR_MAP, entries)
    return b"".join(out)


def encode_message(message: messages.Message) -> bytes:
    """The CBOR payload (no length prefix) for a message; optional fields left at None are omitted."""
    kind = type(message)
    flat = _FLAT_ENCODINGS.get(kind, _UNSEEN)
    if flat is _UNSEEN:
        flat = _flat_encoding(kind)
    if flat is not None:
        return _encode_flat(message, *flat)
    out: dict[str, Any] = {"op": message.OP}
    for name, omit_none in _encode_fields(kind):
        value = getattr(message, name)
        if value is None and omit_none:
            continue
        out[name] = to_plain(value)
    return cbor2.dumps(out)


_GET_OK_HEAD = b"\xa4" + cbor2.dumps("op") + cbor2.dumps(messages.GetOk.OP) + cbor2.dumps("id")
_SIBLINGS_KEY = cbor2.dumps("siblings")
_CONTEXT_KEY = cbor2.dumps("context")


def encode_get_ok_preencoded(request_id: int, siblings_cbor: bytes, context_cbor: bytes) -> bytes:
    """A get_ok payload stitched from CBOR the node stored with the object, without re-encoding it.

    `siblings_cbor` is cbor2.dumps(to_plain(list of SiblingView)) and `context_cbor` is
    cbor2.dumps(context token); the result decodes to the same GetOk as `encode_message` gives.
    """
    return b"".join((_GET_OK_HEAD, cbor2.dumps(request_id), _SIBLINGS_KEY, siblings_cbor, _CONTEXT_KEY, context_cbor))


def request_id_of(exc: BaseException) -> int | None:
    return getattr(exc, "request_id", None)
