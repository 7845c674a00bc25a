"""Hostile and malformed input against one real dynd, over raw sockets.

Each test sends bad bytes, asserts the node's exact reaction (an error frame with the stable code
and, where the frame had a readable id, that id; and/or the connection closing), then checks that a
normal `dynd.client` still works and that nothing changed: the canary key written at module start
is intact and a refused write left no trace.

Before the hello, any bad frame closes the connection; after it, the node answers a bad frame and
keeps the connection only when the stream is still in sync (a length prefix it refuses, or a frame
that never completes, ends it).
"""

from __future__ import annotations

import random
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from dynd.client import BlockingClient
from dynd.core.limits import Limits
from dynd.core.versions import EPOCH_COUNTER_MAX
from dynd.protocol import PROTOCOL_VERSION, codec, messages
from dynd.protocol.address import parse_address
from dynd.protocol.framing import FrameDecoder
from tests.support.procs import DyndProcess

NODE_NAME = "bad1"
# Small limits where they make a case quick; the rest stay at the node's defaults. Building the
# Limits here checks how they relate, as the node will.
LIMITS = Limits(
    frame_bytes_max=128 * 1024,
    frame_timeout_ms=1000,
    handshake_timeout_ms=1000,
    key_bytes_max=64,
    value_bytes_max=64 * 1024,
)
FRAME_BYTES_MAX = LIMITS.frame_bytes_max
FRAME_TIMEOUT_S = LIMITS.frame_timeout_ms / 1000
HANDSHAKE_TIMEOUT_S = LIMITS.handshake_timeout_ms / 1000
KEY_BYTES_MAX = LIMITS.key_bytes_max
VALUE_BYTES_MAX = LIMITS.value_bytes_max
CONTEXT_ENTRIES_MAX = LIMITS.context_entries_max
CONFIG = f"""
[limits]
frame_bytes_max = {FRAME_BYTES_MAX}
frame_timeout_ms = {LIMITS.frame_timeout_ms}
handshake_timeout_ms = {LIMITS.handshake_timeout_ms}
key_bytes_max = {KEY_BYTES_MAX}
value_bytes_max = {VALUE_BYTES_MAX}
"""
CANARY_KEY = b"canary"
CANARY_VALUE = b"the canary survives every bad frame"
REPLY_TIMEOUT_S = 5.0
# How long a test waits for a close that a deadline causes: only a bound on the wait, never a
# measurement (a busy machine may run the node's timer late; it never runs it early).
DEADLINE_WAIT_S = 30.0
SEED = 20240601
COUNTER_LIMIT = 2**62  # counters in a context must be in 1..COUNTER_LIMIT-1 (dynd.core.versions)


# ---- a raw connection ----


class Wire:
    """A plain blocking socket that speaks frames by hand, so tests can send anything at all."""

    def __init__(self, address: str) -> None:
        host, port = parse_address(address)
        self.sock = socket.create_connection((host, port), timeout=REPLY_TIMEOUT_S)
        self.decoder = FrameDecoder(64 * 1024 * 1024)
        self.frames: deque[bytes] = deque()
        self.next_id = 1000

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, payload: bytes) -> None:
        self.send_raw(struct.pack(">I", len(payload)) + payload)

    def send_map(self, item: dict[str, Any]) -> None:
        self.send_frame(cbor2.dumps(item))

    def hello(self) -> None:
        self.send_map({"op": "hello", "version": PROTOCOL_VERSION, "agent": "test_bad_input"})
        reply = self.read()
        assert isinstance(reply, messages.HelloOk), f"hello answered with {reply!r}"
        assert reply.node == NODE_NAME

    def read(self, timeout_s: float = REPLY_TIMEOUT_S) -> messages.Message | None:
        """The next reply frame, or None once the node has closed the connection."""
        deadline = time.monotonic() + timeout_s
        while not self.frames:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no reply and no close within {timeout_s:g} s")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(256 * 1024)
            except TimeoutError:
                continue
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            self.frames.extend(self.decoder.feed(chunk))
        return codec.decode_message(self.frames.popleft())

    def expect_error(self, code: str, request_id: int | None = None, timeout_s: float = REPLY_TIMEOUT_S) -> messages.ErrorReply:
        reply = self.read(timeout_s)
        assert isinstance(reply, messages.ErrorReply), f"expected a {code} error reply, got {reply!r}"
        assert (reply.code, reply.id) == (code, request_id), f"expected {code} for id {request_id}, got {reply!r}"
        assert reply.retriable is False, reply
        assert reply.message, reply
        return reply

    def expect_closed(self, timeout_s: float = REPLY_TIMEOUT_S) -> None:
        reply = self.read(timeout_s)
        assert reply is None, f"expected the node to close the connection, got {reply!r}"

    def expect_open(self) -> None:
        """The stream is still in sync: a ping on the same connection gets its own pong."""
        self.next_id += 1
        self.send_map({"op": "ping", "id": self.next_id})
        reply = self.read()
        assert reply == messages.Pong(id=self.next_id, node=NODE_NAME), f"expected our pong, got {reply!r}"


# ---- the node ----


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DyndProcess]:
    proc = DyndProcess(tmp_path_factory.mktemp("bad-input"), name=NODE_NAME, config_text=CONFIG).start()
    with BlockingClient(proc.address) as client:
        client.put(CANARY_KEY, CANARY_VALUE)
    try:
        yield proc
    finally:
        code = proc.stop()
        print(f"--- {proc!r} stderr (last lines) ---\n{proc.stderr_tail()}")
    assert code == 0, f"after all the bad input, dynd exited {code} on SIGTERM"


@pytest.fixture
def wire(node: DyndProcess) -> Iterator[Wire]:
    connection = Wire(node.address)
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def greeted(wire: Wire) -> Wire:
    wire.hello()
    return wire


def check_still_serving(node: DyndProcess, *, absent: tuple[bytes, ...] = (), unchanged: dict[bytes, bytes] | None = None) -> None:
    """The node is up, a normal client round-trips a put, and nothing the bad input touched changed."""
    assert node.running, f"dynd died:\n{node.stderr_tail()}"
    probe_key = f"probe:{time.monotonic_ns()}".encode()
    with BlockingClient(node.address) as client:
        client.put(probe_key, b"still here")
        assert client.get(probe_key).values == [b"still here"]
        assert client.get(CANARY_KEY).values == [CANARY_VALUE]
        for key in absent:
            assert client.get(key).values == [], f"a refused write created {key!r}"
        for key, value in (unchanged or {}).items():
            assert client.get(key).values == [value], f"a refused write changed {key!r}"


def put_frame(request_id: int, key: bytes, value: bytes, **extra: Any) -> bytes:
    return cbor2.dumps({"op": "put", "id": request_id, "key": key, "value": value, **extra})


def context_token(*vector: Any, cloud: tuple[Any, ...] = ()) -> bytes:
    """A context token in the node's format: CBOR [1, vector, cloud], each a list of
    [actor, counter, timestamp_ms]. Tests forge tokens, so they know the format."""
    return cbor2.dumps([1, [list(entry) for entry in vector], [list(entry) for entry in cloud]])


def own_counter(context: bytes) -> tuple[str, int]:
    """This node's actor (its name plus the epoch of its data directory) and its highest counter
    in a context token."""
    version, vector, cloud = cbor2.loads(context)
    assert version == 1
    ours = [(actor, counter) for actor, counter, _ in [*vector, *cloud] if actor.startswith(NODE_NAME + ".")]
    assert ours, f"no entry of {NODE_NAME} in {vector + cloud}"
    return max(ours, key=lambda entry: entry[1])


# ---- length prefixes ----


@pytest.mark.parametrize("greet", [False, True], ids=["first-frame", "after-hello"])
def test_length_prefix_all_ones(node: DyndProcess, wire: Wire, greet: bool) -> None:
    if greet:
        wire.hello()
    wire.send_raw(b"\xff\xff\xff\xff")
    reply = wire.expect_error("frame_too_large")
    # before its hello a connection may send only small frames (a hello is tiny)
    assert str(FRAME_BYTES_MAX if greet else Limits().handshake_frame_bytes_max) in reply.message
    wire.expect_closed()
    check_still_serving(node)


@pytest.mark.parametrize("greet", [False, True], ids=["first-frame", "after-hello"])
def test_length_one_over_frame_bytes_max(node: DyndProcess, wire: Wire, greet: bool) -> None:
    if greet:
        wire.hello()
    wire.send_raw(struct.pack(">I", FRAME_BYTES_MAX + 1))
    wire.expect_error("frame_too_large")
    wire.expect_closed()
    check_still_serving(node)


def _put_of_exact_size(request_id: int, key: bytes, size: int) -> bytes:
    value_bytes = size - len(put_frame(request_id, key, b""))
    while True:
        payload = put_frame(request_id, key, b"x" * value_bytes)
        if len(payload) == size:
            return payload
        value_bytes -= len(payload) - size


def test_frame_of_exactly_frame_bytes_max_is_read(node: DyndProcess, greeted: Wire) -> None:
    """The limit is inclusive: a frame of exactly frame_bytes_max is decoded (and its oversize value refused)."""
    payload = _put_of_exact_size(7, b"bad:exact-frame", FRAME_BYTES_MAX)
    assert len(payload) == FRAME_BYTES_MAX
    greeted.send_frame(payload)
    greeted.expect_error("value_too_large", 7)
    greeted.expect_open()
    check_still_serving(node, absent=(b"bad:exact-frame",))


@pytest.mark.parametrize("greet", [False, True], ids=["first-frame", "after-hello"])
def test_zero_length_frame(node: DyndProcess, wire: Wire, greet: bool) -> None:
    if greet:
        wire.hello()
    wire.send_raw(b"\x00\x00\x00\x00")
    wire.expect_error("bad_frame")
    if greet:
        wire.expect_open()  # the stream is still in sync
    else:
        wire.expect_closed()
    check_still_serving(node)


# ---- frames that never complete ----


def test_truncated_frame_then_silence(node: DyndProcess, greeted: Wire) -> None:
    payload = put_frame(8, b"bad:truncated", b"v" * 100)
    started = time.monotonic()
    greeted.send_raw(struct.pack(">I", len(payload)) + payload[:20])
    reply = greeted.expect_error("bad_frame", timeout_s=DEADLINE_WAIT_S)
    elapsed = time.monotonic() - started
    greeted.expect_closed()
    assert "an incomplete frame within the deadline" in reply.message, reply
    assert elapsed >= FRAME_TIMEOUT_S * 0.9, f"closed {elapsed:.2f} s after the first byte, before frame_timeout_ms"
    check_still_serving(node, absent=(b"bad:truncated",))


def test_trickled_frame_hits_the_per_frame_deadline(node: DyndProcess, greeted: Wire) -> None:
    """Bytes arriving one at a time do not extend the deadline: it runs from the frame's first byte.

    The whole trickle would take at least 40 s (2,000 bytes, 20 ms apart), 40 times the deadline:
    a deadline that each byte extended would not cut it off before its end."""
    payload = put_frame(9, b"bad:trickle", b"v" * 2000)
    data = struct.pack(">I", len(payload)) + payload
    started = time.monotonic()
    cut_off = False
    for index in range(len(data) - 1):  # never the last byte
        greeted.send_raw(data[index : index + 1])
        readable, _, _ = select.select([greeted.sock], [], [], 0.02)
        if readable:
            cut_off = True
            break
    assert cut_off, "the node waited for the whole trickle: each byte extended the deadline"
    reply = greeted.expect_error("bad_frame")
    elapsed = time.monotonic() - started
    greeted.expect_closed()
    assert "an incomplete frame within the deadline" in reply.message, reply
    assert elapsed >= FRAME_TIMEOUT_S * 0.9, f"closed {elapsed:.2f} s after the first byte, before frame_timeout_ms"
    check_still_serving(node, absent=(b"bad:trickle",))


def test_silence_before_hello(node: DyndProcess, wire: Wire) -> None:
    started = time.monotonic()
    reply = wire.expect_error("bad_frame", timeout_s=DEADLINE_WAIT_S)
    elapsed = time.monotonic() - started
    wire.expect_closed()
    assert "no hello within the deadline" in reply.message, reply
    assert elapsed >= HANDSHAKE_TIMEOUT_S * 0.9, f"closed {elapsed:.2f} s after connecting, before handshake_timeout_ms"
    check_still_serving(node)


# ---- random bytes ----


@pytest.mark.parametrize("greet", [False, True], ids=["first-frame", "after-hello"])
def test_random_bytes(node: DyndProcess, wire: Wire, greet: bool) -> None:
    """Unframed noise: the first four bytes read as a length prefix; whatever follows, the node
    answers with frame errors only and closes (an absurd prefix at once, a short one at its deadline)."""
    rng = random.Random(SEED + greet)
    if greet:
        wire.hello()
    wire.send_raw(rng.randbytes(512))
    replies = []
    while (reply := wire.read(DEADLINE_WAIT_S)) is not None:
        replies.append(reply)
    assert replies, f"seed {SEED + greet}: the node closed without saying why"
    for reply in replies:
        assert isinstance(reply, messages.ErrorReply) and reply.code in ("frame_too_large", "bad_frame"), (SEED, reply)
    check_still_serving(node)


def test_random_payloads_in_valid_frames(node: DyndProcess, greeted: Wire) -> None:
    """Well-framed noise: every frame gets exactly one error reply and the connection stays in sync."""
    rng = random.Random(SEED)
    count = 300
    for _ in range(count):
        greeted.send_frame(rng.randbytes(rng.randint(1, 64)))
    codes: dict[str, int] = {}
    for index in range(count):
        reply = greeted.read()
        assert isinstance(reply, messages.ErrorReply), f"seed {SEED}, frame {index}: {reply!r}"
        assert reply.code in ("bad_frame", "bad_request", "unknown_op"), f"seed {SEED}, frame {index}: {reply!r}"
        codes[reply.code] = codes.get(reply.code, 0) + 1
    print("codes:", codes)
    greeted.expect_open()
    check_still_serving(node)


FUZZ_OPS = ["ping", "get", "put", "delete", "hello", "pong", "get_ok", "put_ok", "error", "frobnicate", ""]
FUZZ_FIELDS = ["key", "value", "context", "w", "r", "version", "agent", "node", "siblings", "code", "bogus"]
FUZZ_INTS = [0, 1, 2, -1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1, -(2**64)]
# every code a node may answer to a malformed or refused request; never `internal`
FUZZ_CODES = {"bad_frame", "bad_request", "unknown_op", "key_too_large", "value_too_large", "too_many_siblings", "object_too_large"}


def _fuzz_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(11 if depth < 2 else 7)
    if kind == 0:
        return rng.choice(FUZZ_INTS) if rng.random() < 0.5 else rng.randrange(1000)
    if kind == 1:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(8)))
    if kind in (2, 3):
        return b"fuzz:" + rng.randbytes(rng.choice([0, 1, 8, KEY_BYTES_MAX]))
    if kind == 4:
        return rng.choice([None, True, False, 1.5, float("nan")])
    if kind == 5:
        actor = rng.choice([NODE_NAME, "someone-else", ""])
        return context_token([actor, rng.choice([1, 2, COUNTER_LIMIT - 1, COUNTER_LIMIT]), rng.choice([0, 2**63 - 1])])
    if kind == 6:
        return b""
    if kind in (7, 8):
        return [_fuzz_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(FUZZ_FIELDS): _fuzz_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _fuzz_context(rng: random.Random) -> bytes:
    def entry() -> list[Any]:
        actor = rng.choice([NODE_NAME, NODE_NAME, "someone-else", "x" * rng.choice([1, 128, 129]), ""])
        counter = rng.choice([1, 2, 3, 10, COUNTER_LIMIT - 1, COUNTER_LIMIT, 0, -1])
        return [actor, counter, rng.choice([0, 1_700_000_000_000, 2**63 - 1, 2**63])]

    return context_token(*[entry() for _ in range(rng.randrange(3))], cloud=tuple(entry() for _ in range(rng.randrange(3))))


def _fuzz_message(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.5:
        # a valid request with a fuzzed context and perhaps one field mangled
        key = b"fuzz:" + bytes([rng.randrange(4)])
        message: dict[str, Any] = rng.choice(
            [
                {"op": "get", "id": rng.randrange(1, 10**6), "key": key},
                {"op": "put", "id": rng.randrange(1, 10**6), "key": key, "value": rng.randbytes(8), "context": _fuzz_context(rng)},
                {"op": "put", "id": rng.randrange(1, 10**6), "key": key, "value": rng.randbytes(8)},
                {"op": "delete", "id": rng.randrange(1, 10**6), "key": key, "context": _fuzz_context(rng)},
            ]
        )
        if rng.random() < 0.5:
            message[rng.choice(list(message))] = _fuzz_value(rng)
        return message
    message = {}
    if rng.random() < 0.9:
        message["op"] = rng.choice(FUZZ_OPS)
    if rng.random() < 0.8:
        message["id"] = rng.choice([rng.randrange(1, 10**6), *FUZZ_INTS, "1"])
    for name in rng.sample(FUZZ_FIELDS, rng.randrange(4)):
        message[name] = _fuzz_value(rng)
    return message


def test_random_messages(node: DyndProcess, greeted: Wire) -> None:
    """Structured noise: CBOR maps of plausible fields with implausible values. Every frame gets
    exactly one reply (in any order: puts answer after their commit), and no error is `internal`."""
    rng = random.Random(SEED)
    count = 600
    for _ in range(count):
        greeted.send_map(_fuzz_message(rng))
    codes: dict[str, int] = {}
    for index in range(count):
        reply = greeted.read()
        assert reply is not None, f"seed {SEED}: the node closed the connection after {index} replies"
        name = reply.code if isinstance(reply, messages.ErrorReply) else reply.OP
        codes[name] = codes.get(name, 0) + 1
        if isinstance(reply, messages.ErrorReply):
            assert reply.code in FUZZ_CODES, f"seed {SEED}: {reply!r}"
    print("replies:", codes)
    greeted.expect_open()
    check_still_serving(node)


# ---- malformed CBOR ----


NOT_MAPS = {
    "list": cbor2.dumps(["op", "ping", "id", 1]),
    "int": cbor2.dumps(1),
    "text": cbor2.dumps("ping"),
    "bytes": cbor2.dumps(b"ping"),
    "null": cbor2.dumps(None),
}


@pytest.mark.parametrize("kind", sorted(NOT_MAPS))
def test_top_level_not_a_map(node: DyndProcess, greeted: Wire, kind: str) -> None:
    greeted.send_frame(NOT_MAPS[kind])
    reply = greeted.expect_error("bad_frame")
    assert "map" in reply.message
    greeted.expect_open()
    check_still_serving(node)


def test_top_level_not_a_map_as_first_frame(node: DyndProcess, wire: Wire) -> None:
    wire.send_frame(NOT_MAPS["list"])
    wire.expect_error("bad_frame")
    wire.expect_closed()
    check_still_serving(node)


def test_trailing_bytes_after_the_item(node: DyndProcess, greeted: Wire) -> None:
    greeted.send_frame(put_frame(10, b"bad:trailing", b"v") + b"\x00")
    reply = greeted.expect_error("bad_frame")  # no id: nothing in a malformed frame is trusted
    assert "trailing" in reply.message
    greeted.expect_open()  # and the put inside was not answered
    check_still_serving(node, absent=(b"bad:trailing",))


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deep_nesting(node: DyndProcess, greeted: Wire, depth: int) -> None:
    nested = b"\x81" * depth + b"\x00"  # [[[...[0]...]]]
    greeted.send_frame(nested)
    greeted.expect_error("bad_frame")
    greeted.expect_open()
    # the same nesting inside an otherwise valid put
    head = cbor2.dumps({"op": "put", "id": 11, "key": b"bad:deep", "value": b"v"})
    greeted.send_frame(bytes([head[0] + 1]) + head[1:] + cbor2.dumps("extra") + nested)
    greeted.expect_error("bad_frame")
    greeted.expect_open()
    check_still_serving(node, absent=(b"bad:deep",))


INDEFINITE = {
    # {_ "op": "ping", "id": 12}
    "map": b"\xbf" + cbor2.dumps("op") + cbor2.dumps("ping") + cbor2.dumps("id") + cbor2.dumps(12) + b"\xff",
    # {"op": "put", "id": 12, "key": [_ ...] as an indefinite array}
    "array": b"\xa4"
    + cbor2.dumps("op")
    + cbor2.dumps("put")
    + cbor2.dumps("id")
    + cbor2.dumps(12)
    + cbor2.dumps("key")
    + b"\x9f\x01\x02\xff"
    + cbor2.dumps("value")
    + cbor2.dumps(b"v"),
    # {"op": "put", "id": 12, "key": (_ h'6b', h'6579'), "value": h'76'}
    "bytes": b"\xa4"
    + cbor2.dumps("op")
    + cbor2.dumps("put")
    + cbor2.dumps("id")
    + cbor2.dumps(12)
    + cbor2.dumps("key")
    + b"\x5f\x41k\x42ey\xff"
    + cbor2.dumps("value")
    + cbor2.dumps(b"v"),
    # {"op": (_ "pi", "ng"), "id": 12}
    "text": b"\xa2" + cbor2.dumps("op") + b"\x7f\x62pi\x62ng\xff" + cbor2.dumps("id") + cbor2.dumps(12),
}


@pytest.mark.parametrize("kind", sorted(INDEFINITE))
def test_indefinite_length_items(node: DyndProcess, greeted: Wire, kind: str) -> None:
    greeted.send_frame(INDEFINITE[kind])
    reply = greeted.expect_error("bad_frame")
    assert "indefinite" in reply.message
    greeted.expect_open()
    check_still_serving(node, absent=(b"key",))


TAGGED = {
    "unknown-tag-9999-on-id": {"op": "ping", "id": cbor2.CBORTag(9999, 13)},
    "datetime-tag-1-on-id": {"op": "ping", "id": cbor2.CBORTag(1, 1_700_000_000)},
    "bignum-tag-2-on-id": {"op": "ping", "id": cbor2.CBORTag(2, b"\x0d")},
    "datetime-tag-0-on-key": {"op": "get", "id": 13, "key": cbor2.CBORTag(0, "2024-01-01T00:00:00Z")},
}


@pytest.mark.parametrize("kind", sorted(TAGGED))
def test_tags_are_refused(node: DyndProcess, greeted: Wire, kind: str) -> None:
    greeted.send_frame(cbor2.dumps(TAGGED[kind]))
    reply = greeted.expect_error("bad_frame")
    assert "tag" in reply.message
    greeted.expect_open()
    check_still_serving(node)


def test_tag_around_the_whole_map(node: DyndProcess, greeted: Wire) -> None:
    # 55799 is CBOR's self-describe marker, the tag a well-meaning encoder is most likely to add
    greeted.send_frame(cbor2.dumps(cbor2.CBORTag(55799, {"op": "ping", "id": 14})))
    greeted.expect_error("bad_frame")
    greeted.expect_open()
    check_still_serving(node)


def test_invalid_utf8_in_op(node: DyndProcess, greeted: Wire) -> None:
    payload = b"\xa2" + cbor2.dumps("op") + b"\x64\xff\xfeng" + cbor2.dumps("id") + cbor2.dumps(15)
    greeted.send_frame(payload)
    greeted.expect_error("bad_frame")
    greeted.expect_open()
    check_still_serving(node)


def test_invalid_utf8_in_op_as_first_frame(node: DyndProcess, wire: Wire) -> None:
    payload = b"\xa3" + cbor2.dumps("op") + b"\x65h\xc3llo" + cbor2.dumps("version") + cbor2.dumps(1)
    payload += cbor2.dumps("agent") + cbor2.dumps("x")
    wire.send_frame(payload)
    wire.expect_error("bad_frame")
    wire.expect_closed()
    check_still_serving(node)


def test_duplicate_map_keys(node: DyndProcess, greeted: Wire) -> None:
    # {"op": "ping", "id": 16, "id": 17}
    payload = b"\xa3" + cbor2.dumps("op") + cbor2.dumps("ping") + cbor2.dumps("id") + cbor2.dumps(16)
    greeted.send_frame(payload + cbor2.dumps("id") + cbor2.dumps(17))
    reply = greeted.expect_error("bad_frame")
    assert "uplicate" in reply.message
    greeted.expect_open()
    # {"op": "get", "id": 18, "key": h'..', "op": "put", "value": h'..'}: which op would win?
    payload = b"\xa5" + cbor2.dumps("op") + cbor2.dumps("get") + cbor2.dumps("id") + cbor2.dumps(18)
    payload += cbor2.dumps("key") + cbor2.dumps(b"bad:dup") + cbor2.dumps("op") + cbor2.dumps("put")
    payload += cbor2.dumps("value") + cbor2.dumps(b"v")
    greeted.send_frame(payload)
    greeted.expect_error("bad_frame")
    greeted.expect_open()
    check_still_serving(node, absent=(b"bad:dup",))


# ---- well-formed CBOR, invalid messages ----


def test_unknown_op(node: DyndProcess, greeted: Wire) -> None:
    greeted.send_map({"op": "frobnicate", "id": 19})
    greeted.expect_error("unknown_op", 19)
    greeted.expect_open()
    check_still_serving(node)


def test_unknown_op_as_first_frame(node: DyndProcess, wire: Wire) -> None:
    wire.send_map({"op": "frobnicate", "id": 20})
    wire.expect_error("unknown_op", 20)
    wire.expect_closed()
    check_still_serving(node)


@pytest.mark.parametrize(
    "message",
    [
        {"op": "pong", "id": 21, "node": "x"},
        {"op": "put_ok", "id": 21, "context": b""},
        {"op": "error", "id": 21, "code": "internal", "message": "x", "retriable": False},
    ],
    ids=lambda m: m["op"],
)
def test_reply_ops_are_not_requests(node: DyndProcess, greeted: Wire, message: dict[str, Any]) -> None:
    greeted.send_map(message)
    greeted.expect_error("bad_request", 21)
    greeted.expect_open()
    check_still_serving(node)


def test_second_hello(node: DyndProcess, greeted: Wire) -> None:
    greeted.send_map({"op": "hello", "version": PROTOCOL_VERSION, "agent": "again"})
    greeted.expect_error("bad_request", None)
    greeted.expect_open()
    check_still_serving(node)


@pytest.mark.parametrize(
    ("message", "request_id"),
    [
        ({"op": "get", "id": 22}, 22),
        ({"op": "put", "id": 22, "key": b"bad:missing"}, 22),
        ({"op": "delete", "id": 22, "key": b"bad:missing"}, 22),
        ({"op": "get", "key": b"bad:missing"}, None),
        ({"id": 22, "key": b"bad:missing"}, 22),
    ],
    ids=["get-no-key", "put-no-value", "delete-no-context", "no-id", "no-op"],
)
def test_missing_field(node: DyndProcess, greeted: Wire, message: dict[str, Any], request_id: int | None) -> None:
    greeted.send_map(message)
    greeted.expect_error("bad_request", request_id)
    greeted.expect_open()
    check_still_serving(node, absent=(b"bad:missing",))


@pytest.mark.parametrize(
    ("message", "request_id"),
    [
        ({"op": "get", "id": 23, "key": "bad:text-key"}, 23),
        ({"op": "put", "id": 23, "key": b"bad:wrong", "value": "text"}, 23),
        ({"op": "put", "id": 23, "key": b"bad:wrong", "value": 5}, 23),
        ({"op": "put", "id": 23, "key": b"bad:wrong", "value": b"v", "context": "text"}, 23),
        ({"op": "put", "id": 23, "key": b"bad:wrong", "value": b"v", "w": 1.5}, 23),
        ({"op": "put", "id": 23, "key": b"bad:wrong", "value": b"v", "w": True}, 23),
        ({"op": "get", "id": 23, "key": b"bad:wrong", "r": -1}, 23),
        ({"op": "ping", "id": "23"}, None),
        ({"op": "ping", "id": -1}, None),
        ({"op": "ping", "id": 2**64 - 1}, None),
        ({"op": "ping", "id": 23.0}, None),
        ({"op": 7, "id": 23}, 23),
        ({"op": "ping", "id": 23, "extra": 1}, 23),
        ({1: "ping", "op": "ping", "id": 23}, 23),
    ],
    ids=[
        "key-text",
        "value-text",
        "value-int",
        "context-text",
        "w-float",
        "w-bool",
        "r-negative",
        "id-text",
        "id-negative",
        "id-2^64-1",
        "id-float",
        "op-int",
        "unknown-field",
        "int-map-key",
    ],
)
def test_field_of_the_wrong_type(node: DyndProcess, greeted: Wire, message: dict[Any, Any], request_id: int | None) -> None:
    greeted.send_map(message)
    reply = greeted.read()
    assert isinstance(reply, messages.ErrorReply), reply
    # a non-text map key is refused by the strict decoder, before any field is read
    expected = ("bad_frame", None) if 1 in message else ("bad_request", request_id)
    assert (reply.code, reply.id) == expected, reply
    greeted.expect_open()
    check_still_serving(node, absent=(b"bad:wrong",))


@pytest.mark.parametrize("op", ["get", "put", "delete"])
def test_empty_key(node: DyndProcess, greeted: Wire, op: str) -> None:
    message: dict[str, Any] = {"op": op, "id": 24, "key": b""}
    if op == "put":
        message["value"] = b"v"
    if op == "delete":
        message["context"] = context_token()
    greeted.send_map(message)
    reply = greeted.expect_error("bad_request", 24)
    assert "empty" in reply.message
    greeted.expect_open()
    check_still_serving(node)


@pytest.mark.parametrize("op", ["get", "put", "delete"])
def test_key_over_key_bytes_max(node: DyndProcess, greeted: Wire, op: str) -> None:
    key = op.encode() + b"k" * (KEY_BYTES_MAX + 1 - len(op))
    message: dict[str, Any] = {"op": op, "id": 25, "key": key}
    if op == "put":
        message["value"] = b"v"
    if op == "delete":
        message["context"] = context_token()
    greeted.send_map(message)
    reply = greeted.expect_error("key_too_large", 25)
    assert str(KEY_BYTES_MAX) in reply.message
    greeted.expect_open()
    # a key of exactly key_bytes_max is fine
    with BlockingClient(node.address) as client:
        client.put(key[:-1], b"at the limit")
        assert client.get(key[:-1]).values == [b"at the limit"]
    check_still_serving(node)


def test_value_over_value_bytes_max(node: DyndProcess, greeted: Wire) -> None:
    greeted.send_frame(put_frame(26, b"bad:big-value", b"v" * (VALUE_BYTES_MAX + 1)))
    reply = greeted.expect_error("value_too_large", 26)
    assert str(VALUE_BYTES_MAX) in reply.message
    greeted.expect_open()
    # over an existing key, the refused put changes nothing; a value at the limit is fine
    with BlockingClient(node.address) as client:
        context = client.put(b"bad:big-existing", b"small")
        greeted.send_frame(put_frame(27, b"bad:big-existing", b"v" * (VALUE_BYTES_MAX + 1), context=context))
        greeted.expect_error("value_too_large", 27)
        client.put(b"bad:at-limit", b"v" * VALUE_BYTES_MAX)
        assert client.get(b"bad:at-limit").values == [b"v" * VALUE_BYTES_MAX]
    check_still_serving(node, absent=(b"bad:big-value",), unchanged={b"bad:big-existing": b"small"})


# ---- forged contexts ----


FORGED_CONTEXTS = {
    "own-counter-2^62": context_token([NODE_NAME, COUNTER_LIMIT, 0]),
    "own-counter-2^63-1": context_token([NODE_NAME, 2**63 - 1, 0]),
    "own-counter-2^64-1": context_token([NODE_NAME, 2**64 - 1, 0]),
    "other-counter-2^64-1": context_token(["someone-else", 2**64 - 1, 0]),
    "other-counter-2^62": context_token(["someone-else", COUNTER_LIMIT, 0]),
    "cloud-counter-2^64-1": context_token(cloud=(["someone-else", 2**64 - 1, 0],)),
    "counter-zero": context_token(["someone-else", 0, 0]),
    "counter-negative": context_token(["someone-else", -1, 0]),
    "timestamp-negative": context_token(["someone-else", 1, -1]),
    "timestamp-2^64-1": context_token(["someone-else", 1, 2**64 - 1]),
    "thousands-of-entries": context_token(*[[f"a{i}", 1, 0] for i in range(5000)]),
    "thousands-of-cloud-dots": context_token(cloud=tuple([NODE_NAME, i + 2, 0] for i in range(5000))),
    "one-over-entries-max": context_token(*[[f"a{i}", 1, 0] for i in range(CONTEXT_ENTRIES_MAX + 1)]),
    "duplicate-actor": context_token(["someone-else", 1, 0], ["someone-else", 2, 0]),
    "duplicate-cloud-dot": context_token(cloud=(["someone-else", 5, 0], ["someone-else", 5, 1])),
    "empty-actor": context_token(["", 1, 0]),
    "long-actor": context_token(["a" * 1000, 1, 0]),
    "actor-bytes": cbor2.dumps([1, [[b"someone", 1, 0]], []]),
    "entry-not-a-triple": cbor2.dumps([1, [["someone-else", 1]], []]),
    "entries-not-a-list": cbor2.dumps([1, {"someone-else": 1}, []]),
    "no-cloud": cbor2.dumps([1, [["someone-else", 1, 0]]]),
    "a-map": cbor2.dumps({"someone-else": 1}),
    "an-int": cbor2.dumps(5),
    "a-list-of-one": cbor2.dumps([1]),
    "format-2": cbor2.dumps([2, [], []]),
    "empty-bytes": b"",
    "not-cbor": b"\xff\x00\x01",
    "trailing-bytes": context_token(["someone-else", 1, 0]) + b"\x00",
    "tagged": cbor2.dumps(cbor2.CBORTag(9999, [1, [], []])),
    "too-deep": cbor2.dumps([1, [[[[[[[[[[[1]]]]]]]]]]], []]),
}


@pytest.mark.parametrize("kind", sorted(FORGED_CONTEXTS))
def test_forged_context_is_refused(node: DyndProcess, greeted: Wire, kind: str) -> None:
    key = f"bad:forged:{kind}".encode()
    with BlockingClient(node.address) as client:
        client.put(key, b"original")
    forged = FORGED_CONTEXTS[kind]
    assert len(forged) < FRAME_BYTES_MAX
    greeted.send_frame(put_frame(28, key, b"forged", context=forged))
    reply = greeted.expect_error("bad_request", 28)
    assert "context" in reply.message
    greeted.send_map({"op": "delete", "id": 29, "key": key, "context": forged})
    greeted.expect_error("bad_request", 29)
    greeted.send_frame(put_frame(30, key + b":new", b"forged", context=forged))
    greeted.expect_error("bad_request", 30)
    greeted.expect_open()
    check_still_serving(node, unchanged={key: b"original"}, absent=(key + b":new",))


def test_context_claiming_a_counter_this_node_never_issued(node: DyndProcess, greeted: Wire) -> None:
    """The node refuses a context whose counter for itself is at or above its next dot; its last
    issued counter is fine."""
    key = b"bad:future-counter"
    with BlockingClient(node.address) as client:
        actor, issued = own_counter(client.put(key, b"original"))
        for claimed in (issued + 1, issued + 1000, COUNTER_LIMIT - 1):
            greeted.next_id += 1
            request_id = greeted.next_id
            greeted.send_frame(put_frame(request_id, key, b"forged", context=context_token([actor, claimed, 0])))
            reply = greeted.expect_error("bad_request", request_id)
            assert "context" in reply.message, reply
            assert client.get(key).values == [b"original"]
        # the counter it did issue is a real context: the put supersedes the original
        greeted.send_frame(put_frame(31, key, b"replaced", context=context_token([actor, issued, 0])))
        reply = greeted.read()
        assert isinstance(reply, messages.PutOk) and reply.id == 31, reply
        assert client.get(key).values == [b"replaced"]
    check_still_serving(node)


def test_forged_own_counter_cannot_make_a_key_unwritable(node: DyndProcess, greeted: Wire) -> None:
    """Whether or not the node refuses a context with its own counter just under the limit, the key
    must stay writable afterwards: an honest read-then-write and a blind put both succeed."""
    key = b"bad:poison"
    with BlockingClient(node.address) as client:
        actor, _ = own_counter(client.put(key, b"original"))
        greeted.send_frame(put_frame(32, key, b"forged", context=context_token([actor, COUNTER_LIMIT - 1, 0])))
        reply = greeted.read()
        assert isinstance(reply, messages.PutOk | messages.ErrorReply) and reply.id == 32, reply
        read = client.get(key)
        context = client.put(key, b"healed", read.context)
        assert client.get(key).values == [b"healed"]
        client.put(key, b"blind")
        assert sorted(client.get(key).values) == [b"blind", b"healed"]
        assert context
    check_still_serving(node)


def test_context_for_another_actor_is_accepted_as_opaque_history(node: DyndProcess, greeted: Wire) -> None:
    """A counter of some other actor cannot be checked here: one an actor epoch could have issued
    is taken as history; one beyond what any epoch issues (EPOCH_COUNTER_MAX) is refused."""
    key = b"bad:other-actor"
    greeted.send_frame(put_frame(33, key, b"v", context=context_token(["someone-else", EPOCH_COUNTER_MAX, 0])))
    reply = greeted.read()
    assert isinstance(reply, messages.PutOk) and reply.id == 33, reply
    greeted.send_frame(put_frame(34, key, b"w", context=context_token(["someone-else", COUNTER_LIMIT - 1, 0])))
    refused = greeted.read()
    assert isinstance(refused, messages.ErrorReply) and refused.id == 34 and refused.code == "bad_request", refused
    check_still_serving(node, unchanged={key: b"v"})


# ---- not dynd at all ----


@pytest.mark.parametrize("request_line", [b"POST / HTTP/1.1", b"GET / HTTP/1.1"])
def test_http_request(node: DyndProcess, wire: Wire, request_line: bytes) -> None:
    wire.send_raw(request_line + b"\r\nHost: x\r\n\r\n")
    reply = wire.expect_error("frame_too_large")
    assert "HTTP" in reply.message
    wire.expect_closed()
    check_still_serving(node)


@pytest.mark.parametrize(
    "message",
    [
        {"op": "ping", "id": 33},
        {"op": "get", "id": 33, "key": CANARY_KEY},
        {"op": "put", "id": 33, "key": b"bad:before-hello", "value": b"v"},
    ],
    ids=lambda m: m["op"],
)
def test_request_before_hello(node: DyndProcess, wire: Wire, message: dict[str, Any]) -> None:
    wire.send_map(message)
    reply = wire.expect_error("bad_request", 33)
    assert "hello" in reply.message
    wire.expect_closed()
    check_still_serving(node, absent=(b"bad:before-hello",))


def test_requests_pipelined_behind_a_refused_first_frame_are_not_served(node: DyndProcess, wire: Wire) -> None:
    wire.send_raw(
        b"".join(
            struct.pack(">I", len(p)) + p
            for p in (
                cbor2.dumps({"op": "put", "id": 34, "key": b"bad:pipelined", "value": b"v"}),
                cbor2.dumps({"op": "hello", "version": PROTOCOL_VERSION, "agent": "late"}),
                cbor2.dumps({"op": "put", "id": 35, "key": b"bad:pipelined", "value": b"v"}),
            )
        )
    )
    wire.expect_error("bad_request", 34)
    wire.expect_closed()
    check_still_serving(node, absent=(b"bad:pipelined",))


@pytest.mark.parametrize("version", [0, PROTOCOL_VERSION + 1, 2**63 - 1])
def test_hello_with_the_wrong_protocol_version(node: DyndProcess, wire: Wire, version: int) -> None:
    wire.send_map({"op": "hello", "version": version, "agent": "from the future"})
    reply = wire.expect_error("protocol_version")
    assert str(PROTOCOL_VERSION) in reply.message
    wire.expect_closed()
    check_still_serving(node)


def test_hello_with_a_malformed_version(node: DyndProcess, wire: Wire) -> None:
    wire.send_map({"op": "hello", "version": "1", "agent": "x"})
    wire.expect_error("bad_request")
    wire.expect_closed()
    check_still_serving(node)


def test_node_log_has_no_tracebacks(node: DyndProcess) -> None:
    """Bad input is answered, never crashes a handler (runs last in this module)."""
    log = node.stderr_text()
    assert "Traceback" not in log, node.stderr_tail(80)
    assert Path(node.stderr_path).exists()
