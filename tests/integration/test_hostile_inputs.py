"""Hostile inputs on a node's TCP and UDP ports while it serves another client.

One node (with a cluster secret, so the peer handshake and the datagram MACs are in force) is
started once for the module, and a bystander client (`tests.support.hostile.Bystander`, its own
process) gets a key from it every 5 ms throughout. Each input then runs, bounded in count and time,
and afterwards:
- the node is alive and answers a ping on a new connection (0 crashes);
- the bystander's requests made during the input all got answers, and it is answered after it;
- the node's RSS comes back within 10 MB of where it was before the input (polled with a deadline,
  since the allocator gives memory back lazily).

tests/integration/test_bad_input.py checks the exact reply to each malformed frame; this module is
about volume and resources: floods, pipelines, oversize and deeply nested items, slow senders,
handshake abuse and datagrams. `INPUTS` is shared with the benchmark (tests/bench/hostile.py),
which measures the bystander's p99 under each input against its idle p99.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cbor2
import pytest

from dynd.protocol import PROTOCOL_VERSION, codec, messages, swim_wire
from dynd.protocol.framing import encode_frame
from tests.support import hostile
from tests.support.hostile import RawConn, frame_of, raw_frames
from tests.support.procs import DyndProcess

NODE_NAME = "h1"
FRAME_BYTES_MAX = 1024 * 1024
HANDSHAKE_FRAME_BYTES_MAX = 64 * 1024
PARTIAL_FRAMES_BYTES_MAX = 8 * 1024 * 1024
CONNECTIONS_MAX = 256
CONFIG_LIMITS = f"""
[limits]
frame_bytes_max = {FRAME_BYTES_MAX}
partial_frames_bytes_max = {PARTIAL_FRAMES_BYTES_MAX}
handshake_frame_bytes_max = {HANDSHAKE_FRAME_BYTES_MAX}
value_bytes_max = {256 * 1024}
object_bytes_warn = {384 * 1024}
object_bytes_max = {512 * 1024}
connections_max = {CONNECTIONS_MAX}
handshake_timeout_ms = 1000
frame_timeout_ms = 1000
idle_timeout_anonymous_ms = 3000
tick_interval_ms = 20
"""
RSS_SLACK_BYTES = 10 * 1024 * 1024
RSS_DEADLINE_S = 20.0
SEED = 20261205
CANARY = b"canary"


@dataclass
class Target:
    node: DyndProcess
    secret: bytes

    @property
    def address(self) -> str:
        return self.node.address


@dataclass(frozen=True)
class HostileInput:
    name: str
    run: Callable[[Target], None]
    over_limit: bool  # a single request over its own limit: the bystander may wait while it is refused


INPUTS: list[HostileInput] = []


def hostile_input(name: str, *, over_limit: bool = False) -> Callable[[Callable[[Target], None]], Callable[[Target], None]]:
    def register(run: Callable[[Target], None]) -> Callable[[Target], None]:
        INPUTS.append(HostileInput(name, run, over_limit))
        return run

    return register


def config_text(secret_path: Path) -> str:
    return f'[security]\ncluster_secret_file = "{secret_path}"\n{CONFIG_LIMITS}'


def greeted(target: Target) -> RawConn:
    conn = RawConn(target.address)
    reply = conn.hello()
    assert isinstance(reply, messages.HelloOk), reply
    return conn


def drain(conn: RawConn, timeout_s: float = 10.0) -> list[messages.Message]:
    """Read until the node closes or nothing more comes for a moment (bounded)."""
    replies: list[messages.Message] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(replies) < 200_000:
        try:
            reply = conn.read(0.5)
        except AssertionError:
            break
        if reply is None:
            break
        replies.append(reply)
    return replies


def send_frames_then_close(target: Target, payloads: list[bytes], *, hello: bool = True, expect: int | None = None) -> list[messages.Message]:
    with (greeted(target) if hello else RawConn(target.address)) as conn:
        conn.send_raw(raw_frames(*payloads))
        if expect is not None:
            return [r for r in conn.read_n(expect, 20) if r is not None]
        return drain(conn)


def errors_only(replies: list[messages.Message], codes: set[str]) -> None:
    bad = [r for r in replies if not (isinstance(r, messages.ErrorReply) and r.code in codes)]
    assert bad == [], bad[:3]


# ---- connections ----


@hostile_input("connection flood (open and close 500)")
def _conn_flood(target: Target) -> None:
    for _ in range(5):
        hostile.close_all(hostile.open_many(target.address, 100, deadline_s=10))


@hostile_input("connections held to connections_max, no hello")
def _conns_held(target: Target) -> None:
    socks = hostile.open_many(target.address, CONNECTIONS_MAX + 20, deadline_s=10)
    try:
        hostile.ping(target.address)  # a new client still gets in
    finally:
        hostile.close_all(socks)


@hostile_input("idle greeted connections to connections_max")
def _idle_greeted(target: Target) -> None:
    socks = hostile.open_many(target.address, CONNECTIONS_MAX + 20, deadline_s=10)
    hello = frame_of(messages.Hello(version=PROTOCOL_VERSION, agent="idle"))
    try:
        for sock in socks:
            try:
                sock.sendall(hello)
            except OSError:
                pass
        hostile.ping(target.address)
    finally:
        hostile.close_all(socks)


@hostile_input("hello flood (300 connections, hello, close)")
def _hello_flood(target: Target) -> None:
    for _ in range(300):
        with RawConn(target.address) as conn:
            conn.send_message(messages.Hello(version=PROTOCOL_VERSION, agent="flood"))


@hostile_input("peer hello flood with the wrong secret (200)")
def _peer_hello_flood(target: Target) -> None:
    for i in range(200):
        with RawConn(target.address) as conn:
            reply = conn.peer_hello(os.urandom(32), me=f"fake{i % 3}", listener=NODE_NAME, check_listener=False)
            assert reply is None or isinstance(reply, messages.ErrorReply), reply


@hostile_input("RST mid-frame (100 connections)")
def _rst_mid_frame(target: Target) -> None:
    for _ in range(100):
        conn = greeted(target)
        conn.send_raw(encode_frame(b"\xa1" + b"x" * 5000)[:2000])
        conn.reset()


@hostile_input("half-close after pipelined requests")
def _half_close(target: Target) -> None:
    for _ in range(50):
        with greeted(target) as conn:
            conn.send_raw(raw_frames(*[codec.encode_message(messages.Get(id=i + 1, key=CANARY)) for i in range(20)]))
            conn.sock.shutdown(socket.SHUT_WR)
            drain(conn, 5)


# ---- pipelines ----


@hostile_input("10,000 pipelined gets")
def _pipelined_gets(target: Target) -> None:
    payloads = [codec.encode_message(messages.Get(id=i + 1, key=CANARY)) for i in range(10_000)]
    replies = send_frames_then_close(target, payloads, expect=len(payloads))
    assert len(replies) == len(payloads) and all(isinstance(r, messages.GetOk) for r in replies)


@hostile_input("20,000 pipelined pings, never read")
def _pipelined_unread(target: Target) -> None:
    conn = greeted(target)
    conn.sock.settimeout(5)
    data = raw_frames(*[codec.encode_message(messages.Ping(id=i + 1)) for i in range(20_000)])
    try:
        conn.sock.sendall(data)
    except OSError:
        pass  # the node stopped reading: its output buffer for us is full
    conn.close()


@hostile_input("5,000 pipelined puts of fresh keys")
def _pipelined_puts(target: Target) -> None:
    payloads = [codec.encode_message(messages.Put(id=i + 1, key=b"flood:%d" % i, value=b"v" * 100)) for i in range(5_000)]
    replies = send_frames_then_close(target, payloads, expect=len(payloads))
    assert len(replies) == len(payloads)


@hostile_input("3,000 pipelined peer requests without the secret")
def _pipelined_peer_requests(target: Target) -> None:
    kinds = [
        messages.Replicate(id=0, key=b"k", record=b"\x80"),
        messages.Fetch(id=0, key=CANARY),
        messages.Gossip(id=0, membership=b""),
        messages.SegmentKeys(id=0, partition=0, segments=[0], limit=100, tree_segments=256, tree_fanout=16),
        messages.Handoff(id=0, partition=0, items=[messages.HandoffItem(key=b"k", record=b"\x80")]),
        messages.Get(id=0, key=CANARY, forwarded=True),
    ]
    payloads = [cbor2.dumps({**cbor2.loads(codec.encode_message(kinds[i % len(kinds)])), "id": i + 1}) for i in range(3_000)]
    replies = send_frames_then_close(target, payloads, expect=len(payloads))
    errors_only(replies, {"unauthorized"})


@hostile_input("2,000 pipelined admin requests from loopback without a token")
def _pipelined_admin(target: Target) -> None:
    payloads = [codec.encode_message(messages.RepairStatus(id=i + 1, run=i)) for i in range(2_000)]
    send_frames_then_close(target, payloads, expect=len(payloads))


@hostile_input("5,000 zero-length frames")
def _zero_length(target: Target) -> None:
    replies = send_frames_then_close(target, [b""] * 5_000, expect=5_000)
    errors_only(replies, {"bad_frame"})


# ---- malformed CBOR, one frame each kind, many times ----

MALFORMED = {
    "truncated map": cbor2.dumps({"op": "ping", "id": 1})[:-1],
    "reserved additional info": b"\x1c",
    "break alone": b"\xff",
    "indefinite map": b"\xbf\x62op\x64ping\x62id\x01\xff",
    "indefinite bytes": b"\xa3\x62op\x63get\x62id\x01\x63key\x5f\x41a\x41b\xff",
    "tag 1 datetime": cbor2.dumps(cbor2.CBORTag(1, 0)),
    "bignum tag": b"\xa2\x62op\x64ping\x62id\xc2\x49" + b"\x01" * 9,
    "duplicate keys": b"\xa3\x62op\x64ping\x62id\x01\x62id\x02",
    "integer map key": cbor2.dumps({1: "ping", "op": "ping", "id": 1}),
    "invalid utf-8": b"\xa2\x62op\x64pi\xffg\x62id\x01",
    "array top level": cbor2.dumps(["ping", 1]),
    "float fields": cbor2.dumps({"op": "ping", "id": float("nan")}),
    "trailing bytes": cbor2.dumps({"op": "ping", "id": 1}) + b"\x00",
    "byte string claiming 2^63 bytes": b"\x5b" + struct.pack(">Q", 2**63) + b"xx",
    "array claiming 2^32 items": b"\x9b" + struct.pack(">Q", 2**32) + b"\x00",
    "map claiming 2^32 pairs": b"\xbb" + struct.pack(">Q", 2**32) + b"\x00\x00",
    "undefined simple values": b"\xa2\x62op\x64ping\x62id\xf7",
    "half float": b"\xa2\x62op\x64ping\x62id\xf9\x7c\x00",
}


def _malformed(payload: bytes) -> Callable[[Target], None]:
    def run(target: Target) -> None:
        replies = send_frames_then_close(target, [payload] * 2_000, expect=2_000)
        errors_only(replies, {"bad_frame", "bad_request", "unknown_op"})

    return run


for _kind, _payload in MALFORMED.items():
    hostile_input(f"malformed CBOR x2000: {_kind}")(_malformed(_payload))


@hostile_input("nesting 100,000 arrays deep")
def _deep_arrays(target: Target) -> None:
    depth = 100_000
    payload = b"\xa4\x62op\x63put\x62id\x01\x63key\x44deep\x65value" + b"\x81" * depth + b"\x00"
    replies = send_frames_then_close(target, [payload] * 20, expect=20)
    errors_only(replies, {"bad_frame", "bad_request"})


@hostile_input("nesting 50,000 maps deep")
def _deep_maps(target: Target) -> None:
    payload = b"\xa1\x61a" * 50_000 + b"\x00"
    replies = send_frames_then_close(target, [payload] * 20, expect=20)
    errors_only(replies, {"bad_frame", "bad_request"})


@hostile_input("500 frames of random well-framed noise")
def _noise_frames(target: Target) -> None:
    rng = random.Random(SEED)
    payloads = [rng.randbytes(rng.randint(1, 4096)) for _ in range(500)]
    replies = send_frames_then_close(target, payloads, expect=500)
    errors_only(replies, {"bad_frame", "bad_request", "unknown_op"})


@hostile_input("1,000 fuzzed requests (random fields of random types)")
def _fuzzed(target: Target) -> None:
    rng = random.Random(SEED + 1)
    ops = ["ping", "get", "put", "delete", "replicate", "fetch", "gossip", "cluster_remove", "hello", "hello_proof", "handoff", "ring_get",
           "cluster_plan", "cluster_transfers", "partition_sizes"]  # fmt: skip
    fields = ["id", "key", "value", "context", "w", "r", "node", "record", "membership", "proof", "items", "partition", "hint",
              "action", "seed", "address", "force", "local_only"]  # fmt: skip
    values: list[object] = [0, 1, -1, 2**63, 2**64 - 1, "", "x" * 100, b"", b"k", b"\x00" * 300, None, True, 1.5, [], {}, [b"a"] * 10]
    payloads = [cbor2.dumps({"op": rng.choice(ops), **{rng.choice(fields): rng.choice(values) for _ in range(rng.randrange(5))}}) for _ in range(1_000)]
    replies = send_frames_then_close(target, payloads, expect=1_000)
    assert not any(isinstance(r, messages.ErrorReply) and r.code == "internal" for r in replies)


# ---- oversize ----


@hostile_input("length prefixes over frame_bytes_max (200 connections)")
def _oversize_prefix(target: Target) -> None:
    for i in range(200):
        with RawConn(target.address) as conn:
            if i % 2:
                conn.hello()
            conn.send_raw(struct.pack(">I", FRAME_BYTES_MAX + 1 + i))
            drain(conn, 2)


@hostile_input("an oversize length prefix at the head of a 200 KiB chunk (400 connections)")
def _oversize_prefix_big_chunk(target: Target) -> None:
    """Each connection is refused at once; what it sent must be let go with it, not kept (say, by
    a reference cycle through the refusal's traceback) until the cyclic garbage collector runs."""
    data = struct.pack(">I", 2**32 - 1) + b"\x00" * (200 * 1024)
    for i in range(400):
        with RawConn(target.address) as conn:
            if i % 2:
                conn.hello()
            conn.send_raw(data)
            drain(conn, 2)


@hostile_input("a whole maximum-size frame, over and over (20)", over_limit=True)
def _max_frames(target: Target) -> None:
    payload = cbor2.dumps({"op": "ping", "id": 1, "pad": b"p" * (FRAME_BYTES_MAX - 40)})
    assert len(payload) <= FRAME_BYTES_MAX
    replies = send_frames_then_close(target, [payload] * 20, expect=20)
    errors_only(replies, {"bad_request"})


@hostile_input("puts over value_bytes_max (20)", over_limit=True)
def _big_values(target: Target) -> None:
    payloads = [codec.encode_message(messages.Put(id=i + 1, key=b"big", value=b"v" * (256 * 1024 + 1))) for i in range(20)]
    replies = send_frames_then_close(target, payloads, expect=20)
    errors_only(replies, {"value_too_large"})


@hostile_input("keys over key_bytes_max (1,000)")
def _big_keys(target: Target) -> None:
    payloads = [codec.encode_message(messages.Get(id=i + 1, key=b"k" * 4096)) for i in range(1_000)]
    replies = send_frames_then_close(target, payloads, expect=1_000)
    errors_only(replies, {"key_too_large"})


@hostile_input("one-megabyte context tokens, 20 pipelined", over_limit=True)
def _big_contexts(target: Target) -> None:
    token = cbor2.dumps([1, [[f"a{i}", 1, 0] for i in range(90_000)], []])[: FRAME_BYTES_MAX - 200]
    payloads = [codec.encode_message(messages.Put(id=i + 1, key=b"ctx", value=b"v", context=token)) for i in range(20)]
    replies = send_frames_then_close(target, payloads, expect=20)
    errors_only(replies, {"bad_request"})


@hostile_input("slow partial frames: 30 connections each stall 1 MiB less a byte")
def _slow_partial(target: Target) -> None:
    almost = encode_frame(b"\x00" * FRAME_BYTES_MAX)[:-1]
    conns = []
    try:
        for _ in range(30):
            conn = RawConn(target.address)
            conns.append(conn)
            if isinstance(conn.hello(), messages.HelloOk):  # a hello may meet the cap the others filled
                conn.send_raw(almost)
        hostile.ping(target.address)
    finally:
        for conn in conns:
            conn.close()


@hostile_input("slowloris: 200 connections trickling a frame header")
def _slowloris(target: Target) -> None:
    conns = [greeted(target) for _ in range(200)]
    try:
        for index in range(3):
            for conn in conns:
                conn.send_raw(b"\x00\x00\x10\x00"[index : index + 1])
        hostile.ping(target.address)
    finally:
        for conn in conns:
            conn.close()


# ---- the handshake ----


@hostile_input("requests before any hello (300 connections)")
def _hello_less(target: Target) -> None:
    kinds = [messages.Ping(id=1), messages.Put(id=1, key=b"pre", value=b"v"), messages.Replicate(id=1, key=b"pre", record=b"\x80"),
             messages.ClusterRemove(id=1, node=NODE_NAME), messages.Gossip(id=1, membership=b"")]  # fmt: skip
    for i in range(300):
        with RawConn(target.address) as conn:
            conn.send_message(kinds[i % len(kinds)])
            drain(conn, 2)


@hostile_input("hello_proof without a hello (300 connections)")
def _proof_without_hello(target: Target) -> None:
    for _ in range(300):
        with RawConn(target.address) as conn:
            conn.send_message(messages.HelloProof(proof=os.urandom(32)))
            drain(conn, 2)


@hostile_input("hello_proof after a client hello, 1,000 pipelined")
def _proof_after_client_hello(target: Target) -> None:
    send_frames_then_close(target, [codec.encode_message(messages.HelloProof(proof=os.urandom(32)))] * 1_000)


@hostile_input("wrong protocol versions (300 connections)")
def _wrong_version(target: Target) -> None:
    for i in range(300):
        with RawConn(target.address) as conn:
            conn.send_map({"op": "hello", "version": [0, 1, 2**63 - 1, 99][i % 4], "agent": "v"})
            drain(conn, 2)


@hostile_input("hellos with huge nonces and tokens")
def _huge_hello_fields(target: Target) -> None:
    for size in (33, 1024, 60_000, HANDSHAKE_FRAME_BYTES_MAX + 1, 900_000):
        for fields in ({"token": "t" * size}, {"node": "n" * size, "nonce": os.urandom(32)}, {"node": "fake", "nonce": os.urandom(size)},
                       {"agent": "a" * size}, {"cluster": "c" * size, "node": "fake", "nonce": os.urandom(32)}):  # fmt: skip
            with RawConn(target.address) as conn:
                conn.send_map({"op": "hello", "version": PROTOCOL_VERSION, "agent": "x", **fields})
                drain(conn, 2)


@hostile_input("peer hellos claiming members and non-members, proof never sent (200)")
def _peer_hello_no_proof(target: Target) -> None:
    conns = []
    try:
        for i in range(200):
            conn = RawConn(target.address)
            conns.append(conn)
            conn.send_message(messages.Hello(version=PROTOCOL_VERSION, agent="x", node=[NODE_NAME, "ghost", "x" * 64][i % 3], nonce=os.urandom(32)))
        hostile.ping(target.address)
    finally:
        for conn in conns:
            conn.close()


@hostile_input("a second hello on a greeted connection, 1,000 times")
def _second_hello(target: Target) -> None:
    send_frames_then_close(target, [frame_payload(messages.Hello(version=PROTOCOL_VERSION, agent="again"))] * 1_000)


def frame_payload(message: messages.Message) -> bytes:
    return codec.encode_message(message)


@hostile_input("HTTP and TLS client hellos on the port (100 each)")
def _not_dynd(target: Target) -> None:
    tls_hello = bytes.fromhex("160301020001") + b"\x00" * 512
    for data in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", tls_hello, b"\r\n" * 100, b"SSH-2.0-OpenSSH_9.0\r\n"):
        for _ in range(100):
            with RawConn(target.address) as conn:
                conn.send_raw(data)
                drain(conn, 2)


@hostile_input("64 KiB of random bytes on 50 connections")
def _random_stream(target: Target) -> None:
    rng = random.Random(SEED + 2)
    for i in range(50):
        with (greeted(target) if i % 2 else RawConn(target.address)) as conn:
            conn.send_raw(rng.randbytes(64 * 1024))
            drain(conn, 3)


# ---- datagrams ----


def _udp(target: Target, payloads: list[bytes]) -> None:
    answers = hostile.send_udp(target.address, *payloads, answers_wait_s=0.2)
    assert answers == [], f"the node answered a stranger: {len(answers)} datagrams"


def _swim(kind: int, sender: str, target: str, updates: list[list[object]]) -> bytes:
    return cbor2.dumps([swim_wire.TAG, 1, kind, 1, sender, target, updates])


@hostile_input("5,000 random datagrams")
def _udp_random(target: Target) -> None:
    rng = random.Random(SEED + 3)
    _udp(target, [rng.randbytes(rng.randint(0, 1400)) for _ in range(5_000)])


@hostile_input("oversize and empty datagrams")
def _udp_sizes(target: Target) -> None:
    _udp(target, [b"", b"\x00" * 1401, b"\x00" * 9000, b"\x00" * 65507] * 50)


@hostile_input("malformed CBOR datagrams")
def _udp_malformed(target: Target) -> None:
    _udp(target, [payload for payload in MALFORMED.values()] * 50 + [b"\x81" * 1000 + b"\x00"] * 50)


@hostile_input("forged pings, acks and ping-reqs from members and strangers (3,000)")
def _udp_forged(target: Target) -> None:
    payloads = []
    for i in range(3_000):
        kind = [swim_wire.PING, swim_wire.ACK, swim_wire.PING_REQ][i % 3]
        sender = [NODE_NAME, "ghost", "n2"][i // 3 % 3]
        updates = [[NODE_NAME, swim_wire.DEAD, 2**63 - 1], ["ghost", swim_wire.ALIVE, i]]
        payload = _swim(kind, sender, "" if kind == swim_wire.ACK else NODE_NAME, updates)
        payloads.append(payload + os.urandom(16) if i % 2 else payload)
    _udp(target, payloads)


@hostile_input("10,000 pings with made-up MACs")
def _udp_mac_flood(target: Target) -> None:
    base = _swim(swim_wire.PING, "ghost", NODE_NAME, [])
    _udp(target, [os.urandom(16) + base + os.urandom(16) for _ in range(10_000)])


@hostile_input("version-2 datagrams with the public no-secret MAC, a wrong cluster or none (3,000)")
def _udp_v2_forged(target: Target) -> None:
    from dynd.protocol import auth

    with RawConn(target.address) as conn:  # anyone learns the cluster id from a peer hello's answer
        conn.peer_hello(os.urandom(32), me=NODE_NAME, listener=NODE_NAME, check_listener=False)
        cluster = conn.hello_reply.cluster if conn.hello_reply is not None and conn.hello_reply.cluster else ""
    payloads = []
    for i in range(3_000):
        body = cbor2.dumps([swim_wire.TAG, 2, [cluster, "other", ""][i % 3], 2**40 + i, i, 2**63 - 1, swim_wire.PING, i, NODE_NAME, NODE_NAME,
                            [[NODE_NAME, swim_wire.DEAD, 2**63 - 1]]])  # fmt: skip
        payloads.append(body + auth.datagram_mac(None, body) if i % 2 else body + os.urandom(16))
    _udp(target, payloads)


# ---- the module's node and bystander ----


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("hostile")
    secret = hostile.write_secret_file(root / "secret")
    node = DyndProcess(root / NODE_NAME, name=NODE_NAME, config_text=config_text(root / "secret"), extra_args=("--partitions", "8", "--replicas", "1", "--r", "1", "--w", "1")).start()
    try:
        with RawConn(node.address) as conn:
            conn.hello()
            assert isinstance(conn.request(messages.Put(id=1, key=CANARY, value=b"alive")), messages.PutOk)
        yield Target(node, secret)
    finally:
        code = node.stop()
        print(f"--- {node!r} stderr (last lines) ---\n{node.stderr_tail()}")
        node.cleanup()
    assert code == 0, f"after all the hostile input, dynd exited {code} on SIGTERM"


@pytest.fixture(scope="module")
def bystander(target: Target) -> Iterator[hostile.Bystander]:
    with hostile.Bystander(target.address, key=CANARY, seconds=300) as other:
        other.wait_answer_after(time.monotonic() - 1)
        yield other


def test_there_are_at_least_forty_inputs() -> None:
    assert len(INPUTS) >= 40, len(INPUTS)
    assert len({i.name for i in INPUTS}) == len(INPUTS)


@pytest.mark.parametrize("item", INPUTS, ids=[i.name for i in INPUTS])
def test_hostile_input(target: Target, bystander: hostile.Bystander, item: HostileInput) -> None:
    pid = target.node.pid
    baseline = hostile.rss_bytes(pid)
    errors_before = len(bystander.errors)
    started = time.monotonic()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            item.run(target)
        except BaseException as exc:  # noqa: BLE001  (handed back below)
            failure.append(exc)

    runner = threading.Thread(target=run, daemon=True, name="hostile-input")
    runner.start()
    runner.join(60)
    assert not runner.is_alive(), f"{item.name} still running after 60 s"
    ended = time.monotonic()
    assert target.node.running, f"dynd died:\n{target.node.stderr_tail()}"
    assert hostile.ping(target.address) == NODE_NAME
    bystander.wait_answer_after(ended)
    if failure:
        raise failure[0]
    during = bystander.between(started, ended)
    failed = [s for s in during if not s.ok]
    assert failed == [] and len(bystander.errors) == errors_before, f"the bystander failed: {bystander.errors[errors_before:][:5]}"
    rss = hostile.wait_rss_at_most(pid, baseline + RSS_SLACK_BYTES, RSS_DEADLINE_S)
    p99 = hostile.percentile([s.latency_s for s in during], 0.99)
    print(f"{item.name}: {ended - started:.2f} s, bystander {len(during)} gets p99 {p99 * 1000:.1f} ms; RSS {baseline / 2**20:.0f} -> {rss / 2**20:.0f} MiB")


def test_node_log_has_no_tracebacks(target: Target) -> None:
    """Hostile input is answered or dropped, never crashes a handler (runs last in this module)."""
    assert "Traceback" not in target.node.stderr_text(), target.node.stderr_tail(80)
