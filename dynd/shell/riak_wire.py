"""The pieces of Riak's HTTP KV interface that are pure formatting: routes, query parameters,
vtags, dates, multipart bodies and error statuses. No I/O; `dynd.shell.riak_api` uses them.

- Routes: `/buckets/B/keys/K` and `/types/default/buckets/B/keys/K` (the same object), `/buckets/B/keys`,
  `/buckets/B/props`, `/buckets`, `/ping`, `/stats`, `/`. Segments are percent-decoded to bytes.
- Quorum parameters (`r`, `w`, `pr`, `pw`, `dw`, `rw`): an integer, or `one`, `quorum`, `all`,
  `default`, as Riak takes them.
- A vtag names a sibling: derived from its dot (base62 of an MD5 of actor and counter, 22
  characters), so every node names a sibling alike and it never changes. A sibling's ETag is its
  quoted vtag.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import functools
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qs, quote_from_bytes, unquote_to_bytes

from dynd.protocol.messages import SiblingView

DEFAULT_TYPE = b"default"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
META_PREFIX = "x-riak-meta-"
KEYS_PER_CHUNK = 1000
VTAGS_CACHED = 4096  # keys per JSON object of a `?keys=stream` answer
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# the status and reason of each DynError code; anything else is 500
ERROR_STATUS: dict[str, int] = {
    "bad_request": 400,
    "bad_frame": 400,
    "unknown_op": 400,
    "key_too_large": 400,
    "value_too_large": 413,
    "object_too_large": 413,
    "too_many_siblings": 409,
    "unauthorized": 403,
    "quorum_failed": 503,
    "timeout": 503,
    "unreachable": 503,
    "overloaded": 503,
    "shutting_down": 503,
    "stale_ring": 503,
    "not_a_member": 503,
    "storage_full": 507,
    "internal": 500,
}


class BadParameter(ValueError):
    """A query parameter or header Riak would answer 400 for; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Route:
    """What a path names. `kind`: root, ping, stats, buckets, props, keys, object."""

    kind: str
    bucket: bytes = b""
    key: bytes = b""
    bucket_type: bytes = DEFAULT_TYPE


def route(path: bytes) -> Route | None:
    """The resource `path` (without its query) names, or None for none."""
    if path in (b"/", b""):
        return Route("root")
    parts = [unquote_to_bytes(part) for part in path.strip(b"/").split(b"/")]
    bucket_type = DEFAULT_TYPE
    if parts[:1] == [b"types"] and len(parts) >= 3 and parts[2] == b"buckets":
        bucket_type, parts = parts[1], parts[2:]
    if parts == [b"ping"] and bucket_type == DEFAULT_TYPE:
        return Route("ping")
    if parts == [b"stats"] and bucket_type == DEFAULT_TYPE:
        return Route("stats")
    if not parts or parts[0] != b"buckets":
        return None
    if len(parts) == 1:
        return Route("buckets", bucket_type=bucket_type)
    bucket = parts[1]
    if not bucket:
        return None
    if len(parts) == 3 and parts[2] == b"props":
        return Route("props", bucket, bucket_type=bucket_type)
    if len(parts) == 3 and parts[2] == b"keys":
        return Route("keys", bucket, bucket_type=bucket_type)
    if len(parts) == 4 and parts[2] == b"keys" and parts[3]:
        return Route("object", bucket, parts[3], bucket_type=bucket_type)
    return None


def split_target(target: bytes) -> tuple[bytes, dict[str, list[str]]]:
    path, _, query = target.partition(b"?")
    try:
        params = parse_qs(query.decode("ascii"), keep_blank_values=True, strict_parsing=False, max_num_fields=64)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadParameter(f"bad query string: {exc}") from None
    return path, params


def quorum(params: dict[str, list[str]], name: str, n: int) -> int | None:
    """A quorum parameter as dynd takes it: None for the cluster's default."""
    values = params.get(name)
    if not values:
        return None
    value = values[-1].strip().lower()
    if value == "default":
        return None
    number = {"one": 1, "quorum": n // 2 + 1, "all": n}.get(value)
    if number is None:
        if not value.isdigit():
            raise BadParameter(f"{name} query parameter must be an integer or one, quorum, all, default; not {values[-1][:32]!r}")
        number = int(value)
    if not 1 <= number <= n:
        raise BadParameter(f"Specified {name}={number} is invalid for bucket n value of {n}")
    return number


def flag(params: dict[str, list[str]], name: str) -> bool:
    values = params.get(name)
    if not values:
        return False
    value = values[-1].lower()
    if value not in ("true", "false"):
        raise BadParameter(f"{name} query parameter must be true or false")
    return value == "true"


def vtag_of(view: SiblingView) -> str:
    return _vtag(view.actor, view.counter)


@functools.lru_cache(maxsize=VTAGS_CACHED)
def _vtag(actor: str, counter: int) -> str:
    """Kept for the recently seen dots: each GET of a key names the same siblings again."""
    digest = int.from_bytes(hashlib.md5(f"{actor}\0{counter}".encode()).digest(), "big")
    out = []
    while digest:
        digest, digit = divmod(digest, 62)
        out.append(_BASE62[digit])
    return "".join(reversed(out)).rjust(22, "0")


def http_date(ms: int) -> str:
    return email.utils.formatdate(ms / 1000, usegmt=True)


def encode_vclock(context: bytes) -> str:
    return base64.b64encode(context).decode("ascii")


def decode_vclock(header: bytes) -> bytes:
    try:
        token = base64.b64decode(header.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadParameter("X-Riak-Vclock is not valid base64 (send back the header a GET or PUT gave)") from None
    if not token:
        raise BadParameter("X-Riak-Vclock is empty (leave it out to write without a vclock)")
    return token


def sibling_headers(view: SiblingView) -> list[tuple[str, str]]:
    """The headers that describe one sibling: its content type, ETag, Last-Modified, user metadata."""
    headers = [("Content-Type", view.content_type or DEFAULT_CONTENT_TYPE), ("ETag", f'"{vtag_of(view)}"')]
    if view.modified_ms is not None:
        headers.append(("Last-Modified", http_date(view.modified_ms)))
    for entry in view.usermeta or ():
        headers.append((f"X-Riak-Meta-{_title(entry.name)}", entry.value))
    return headers


def _title(name: str) -> str:
    return "-".join(part[:1].upper() + part[1:] for part in name.split("-"))


def user_meta(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """The X-Riak-Meta-* headers of a request as (name, value) pairs."""
    pairs = []
    for name, value in headers:
        text = name.decode("latin-1")
        if text.startswith(META_PREFIX):
            meta_name = text[len(META_PREFIX) :]
            if not meta_name:
                raise BadParameter("an X-Riak-Meta- header needs a name after the prefix")
            try:
                pairs.append((meta_name, value.decode("ascii")))
            except UnicodeDecodeError:
                raise BadParameter(f"X-Riak-Meta-{meta_name}: the value must be ASCII") from None
    return pairs


def multipart(siblings: list[SiblingView], boundary: str) -> bytes:
    """Every sibling as one part of a multipart/mixed body, each with its own headers."""
    out = []
    for view in siblings:
        head = "".join(f"{name}: {value}\r\n" for name, value in sibling_headers(view))
        out.append(f"\r\n--{boundary}\r\n{head}\r\n".encode("latin-1") + view.value)
    out.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(out)


def accepts_multipart(accept: bytes | None) -> bool:
    return accept is not None and b"multipart/mixed" in accept.lower()


def key_text(key: bytes) -> str:
    """A key as a JSON listing shows it: its UTF-8 text, or percent-encoded when it is not UTF-8."""
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return quote_from_bytes(key, safe="")


def keys_json(keys: list[str], extra: dict[str, object] | None = None) -> bytes:
    return json.dumps({"keys": keys, **(extra or {})}, separators=(",", ":")).encode()


def location(bucket: bytes, key: bytes, bucket_type: bytes | None = None) -> str:
    where = f"/buckets/{quote_from_bytes(bucket, safe='')}/keys/{quote_from_bytes(key, safe='')}"
    return where if bucket_type is None else f"/types/{quote_from_bytes(bucket_type, safe='')}{where}"


def etag_matches(header: bytes | None, etag: str) -> bool:
    """Whether an If-Match / If-None-Match header names `etag` (quoted), or is `*`."""
    if header is None:
        return False
    tags = [tag.strip() for tag in header.decode("latin-1").split(",")]
    return "*" in tags or etag in tags or f"W/{etag}" in tags
