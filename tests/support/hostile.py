"""Tools for attacking a real dynd on purpose: raw frames, raw datagrams, memory and a bystander.

    conn = RawConn(node.address)                  # plain blocking TCP, optionally from a chosen source
    conn.hello()                                  # a client hello; conn.peer_hello(secret, ...) proves one
    conn.send_message(messages.Ping(id=1)); conn.read()   # any frame, any bytes, replies under a deadline
    send_udp(node.address, payload)               # one datagram from a fresh socket
    rss_bytes(node.pid)                           # resident memory, from /proc/PID/status
    with Bystander(node.address) as other: ...    # another client, in its own process, timing its gets

The bystander runs `python -m tests.support.hostile bystander ADDRESS ...` in a subprocess (so the
attacking test's own work never shows up in its latencies): it says hello, then sends one get every
`interval_s`, at most `count` of them and for at most `seconds`, and prints one line per request
(start time on the shared monotonic clock, latency, ok). A reader thread here collects the lines.

Every loop here is bounded by a count and a deadline; waits are polls under a deadline.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2

from dynd.protocol import PROTOCOL_VERSION, codec, messages
from dynd.protocol.address import parse_address
from dynd.protocol.framing import FrameDecoder, encode_frame

REPLY_TIMEOUT_S = 5.0
READ_CHUNK_BYTES = 256 * 1024
REPLY_FRAME_BYTES_MAX = 64 * 1024 * 1024
POLL_S = 0.05


# ---- addresses ----


def non_loopback_host() -> str | None:
    """A local IPv4 address that is not loopback, if this machine has one (connecting to it from
    this machine gives a non-loopback source address, with no privileges needed)."""
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        parts = line.split()
        if "inet" not in parts:
            continue
        address = parts[parts.index("inet") + 1].split("/", 1)[0]
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            continue
        if not parsed.is_loopback and not parsed.is_link_local:
            return address
    return None


# ---- credentials ----


def write_secret_file(path: Path, secrets: Iterable[bytes] = ()) -> bytes:
    """A cluster secret file (hex, mode 0600); returns the secret it proves with."""
    chosen = list(secrets) or [os.urandom(32)]
    path.write_text("".join(s.hex() + "\n" for s in chosen))
    path.chmod(0o600)
    return chosen[0]


def write_tokens_file(path: Path, tokens: dict[str, str]) -> None:
    """A client tokens file from {token: role}."""
    path.write_text("".join(f"{role} {token}\n" for token, role in tokens.items()))
    path.chmod(0o600)


# ---- one raw TCP connection ----


class RawConn:
    """A blocking socket that speaks frames by hand, so a test can send anything at all."""

    def __init__(self, address: str, *, source_host: str | None = None, timeout_s: float = REPLY_TIMEOUT_S) -> None:
        host, port = parse_address(address)
        self.address = address
        source = (source_host, 0) if source_host is not None else None
        self.sock = socket.create_connection((host, port), timeout=timeout_s, source_address=source)
        self.decoder = FrameDecoder(REPLY_FRAME_BYTES_MAX)
        self.frames: deque[bytes] = deque()
        self.next_id = 1
        self.hello_reply: messages.HelloOk | None = None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def reset(self) -> None:
        """Close with an RST instead of a FIN (SO_LINGER 0)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    # ---- sending ----

    def send_raw(self, data: bytes) -> bool:
        """Send bytes; False when the node has already closed the connection."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            return False
        return True

    def send_frame(self, payload: bytes) -> bool:
        return self.send_raw(encode_frame(payload))

    def send_map(self, item: dict[Any, Any]) -> bool:
        return self.send_frame(cbor2.dumps(item))

    def send_message(self, message: messages.Message) -> bool:
        return self.send_frame(codec.encode_message(message))

    # ---- receiving ----

    def read(self, timeout_s: float = REPLY_TIMEOUT_S) -> messages.Message | None:
        """The next reply, or None once the node has closed the connection; AssertionError if
        neither happens within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not self.frames:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no reply and no close from {self.address} within {timeout_s:g} s")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(READ_CHUNK_BYTES)
            except TimeoutError:
                continue
            except (ConnectionResetError, ConnectionAbortedError):
                return None
            if not chunk:
                return None
            self.frames.extend(self.decoder.feed(chunk))
        return codec.decode_message(self.frames.popleft())

    def read_until_closed(self, timeout_s: float = REPLY_TIMEOUT_S, frames_max: int = 100_000) -> list[messages.Message]:
        """Every reply until the node closes the connection (bounded in count and time)."""
        replies: list[messages.Message] = []
        deadline = time.monotonic() + timeout_s
        while len(replies) < frames_max:
            reply = self.read(max(0.01, deadline - time.monotonic()))
            if reply is None:
                return replies
            replies.append(reply)
        raise AssertionError(f"more than {frames_max} replies before the close")

    def read_n(self, count: int, timeout_s: float = REPLY_TIMEOUT_S) -> list[messages.Message | None]:
        """`count` replies (None for each one missing because the connection closed)."""
        deadline = time.monotonic() + timeout_s
        replies: list[messages.Message | None] = []
        for _ in range(count):
            reply = self.read(max(0.01, deadline - time.monotonic()))
            replies.append(reply)
            if reply is None:
                replies += [None] * (count - len(replies))
                break
        return replies

    def is_closed(self, timeout_s: float = 0.0) -> bool:
        """True when the node has closed the connection (waits up to `timeout_s` for it). Frames
        it sent first are kept for `read`."""
        deadline = time.monotonic() + timeout_s
        for _ in range(10_000):
            readable, _, _ = select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))
            if not readable:
                return False
            try:
                self.sock.setblocking(False)
                data = self.sock.recv(READ_CHUNK_BYTES)
            except BlockingIOError:
                return False
            except OSError:
                return True
            finally:
                self.sock.setblocking(True)
            if not data:
                return True
            self.frames.extend(self.decoder.feed(data))
        return False

    # ---- requests ----

    def request(self, message: messages.Message, timeout_s: float = REPLY_TIMEOUT_S) -> messages.Message | None:
        self.send_message(message)
        return self.read(timeout_s)

    def hello(self, *, token: str | None = None, agent: str = "tests.hostile", **fields: Any) -> messages.Message | None:
        """A client hello; returns the reply (HelloOk, or an ErrorReply, or None when closed)."""
        self.send_message(messages.Hello(version=PROTOCOL_VERSION, agent=agent, token=token, **fields))
        reply = self.read()
        if isinstance(reply, messages.HelloOk):
            self.hello_reply = reply
        return reply

    def peer_hello(self, secret: bytes, *, me: str, listener: str, cluster: str | None = None, check_listener: bool = True) -> messages.Message | None:
        """The dialer's side of the mutual peer hello (dynd.protocol.auth), proving `secret`.

        `cluster` None lets the listener name its cluster id (its hello_ok carries it); the proofs
        are then made over that. Returns the final reply: HelloProofOk when the node accepted the
        proof, else what it said (None when it closed). AssertionError if the listener's proof fails."""
        from dynd.protocol import auth

        nonce = auth.new_nonce()
        self.send_message(messages.Hello(version=PROTOCOL_VERSION, agent="tests.hostile", node=me, cluster=cluster, nonce=nonce))
        reply = self.read()
        if not isinstance(reply, messages.HelloOk):
            return reply
        self.hello_reply = reply
        if reply.nonce is None or reply.proof is None:
            return reply  # a node without a secret: nothing to prove
        cluster_id = reply.cluster if reply.cluster is not None else (cluster or "")
        keyring = auth.Keyring((secret,))
        assert not check_listener or auth.check_proof(keyring, reply.proof, auth.LISTENER, cluster_id, me, listener, nonce, reply.nonce), "the listener's proof is wrong"
        self.send_message(messages.HelloProof(proof=auth.proof(secret, auth.DIALER, cluster_id, me, listener, nonce, reply.nonce)))
        return self.read()


def raw_frames(*payloads: bytes) -> bytes:
    return b"".join(encode_frame(p) for p in payloads)


def frame_of(message: messages.Message) -> bytes:
    return encode_frame(codec.encode_message(message))


def open_many(address: str, count: int, *, source_host: str | None = None, deadline_s: float = 30.0) -> list[socket.socket]:
    """`count` plain connections (nothing sent), opened under one deadline; stops early at the deadline
    or at the first refusal, returning what it opened."""
    host, port = parse_address(address)
    deadline = time.monotonic() + deadline_s
    socks: list[socket.socket] = []
    source = (source_host, 0) if source_host is not None else None
    for _ in range(count):
        if time.monotonic() >= deadline:
            break
        try:
            socks.append(socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic()), source_address=source))
        except OSError:
            break
    return socks


def close_all(socks: Iterable[socket.socket]) -> None:
    for sock in socks:
        try:
            sock.close()
        except OSError:
            pass


def count_closed(socks: Iterable[socket.socket]) -> int:
    """How many of the sockets the other side has closed (or reset) by now; never blocks."""
    closed = 0
    for sock in socks:
        try:
            sock.setblocking(False)
            data = sock.recv(65536)
        except BlockingIOError:
            continue
        except OSError:
            closed += 1
            continue
        if data == b"":
            closed += 1
        else:  # an error frame before the close: drain it and look again next time
            try:
                more = sock.recv(65536)
                if more == b"":
                    closed += 1
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
    return closed


# ---- datagrams ----


def send_udp(address: str, *payloads: bytes, source_host: str | None = None, answers_wait_s: float = 0.0) -> list[bytes]:
    """Send datagrams to `address` from one fresh socket; return whatever comes back to that socket
    within `answers_wait_s` (the amplification check: a node answers members, never a stranger)."""
    host, port = parse_address(address)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        if source_host is not None:
            sock.bind((source_host, 0))
        for payload in payloads:
            try:
                sock.sendto(payload, (host, port))
            except OSError:
                pass  # e.g. EMSGSIZE for a datagram over 65507 bytes, or ECONNREFUSED from an earlier ICMP
        answers: list[bytes] = []
        deadline = time.monotonic() + answers_wait_s
        while len(answers) < 10_000:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            readable, _, _ = select.select([sock], [], [], remaining)
            if not readable:
                break
            try:
                answers.append(sock.recv(65536))
            except OSError:
                continue
        return answers


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def send_udp_spoofed(source: str, destination: str, payload: bytes) -> None:
    """One IPv4 datagram from a forged source HOST:PORT (raw socket: root only)."""
    src_host, src_port = parse_address(source)
    dst_host, dst_port = parse_address(destination)
    udp_length = 8 + len(payload)
    pseudo = socket.inet_aton(src_host) + socket.inet_aton(dst_host) + struct.pack("!BBH", 0, socket.IPPROTO_UDP, udp_length)
    header = struct.pack("!HHHH", src_port, dst_port, udp_length, 0)
    checksum = _checksum(pseudo + header + payload) or 0xFFFF
    udp = struct.pack("!HHHH", src_port, dst_port, udp_length, checksum) + payload
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP) as sock:
        sock.sendto(udp, (dst_host, dst_port))


def can_spoof() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP).close()
    except OSError:
        return False
    return True


def capture_udp(predicate: Callable[[str, str, bytes], bool], *, count: int = 1, deadline_s: float = 10.0) -> list[tuple[str, str, bytes]]:
    """Datagrams seen on the loopback interface (an AF_PACKET socket: root only), as (source
    HOST:PORT, destination HOST:PORT, payload), keeping those `predicate` accepts; returns once
    `count` are kept or at the deadline, with what it has."""
    eth_p_ip = 0x0800
    kept: list[tuple[str, str, bytes]] = []
    with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(eth_p_ip)) as sock:
        sock.bind(("lo", 0))
        deadline = time.monotonic() + deadline_s
        while len(kept) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            readable, _, _ = select.select([sock], [], [], remaining)
            if not readable:
                break
            packet, address = sock.recvfrom(65_600)
            if address[2] == socket.PACKET_OUTGOING:  # loopback shows each packet leaving and arriving
                continue
            if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_UDP:
                continue
            header_bytes = (packet[0] & 0x0F) * 4
            src, dst = socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20])
            src_port, dst_port, length = struct.unpack("!HHH", packet[header_bytes : header_bytes + 6])
            payload = packet[header_bytes + 8 : header_bytes + length]
            source, destination = f"{src}:{src_port}", f"{dst}:{dst_port}"
            if predicate(source, destination, payload):
                kept.append((source, destination, payload))
    return kept


def can_capture() -> bool:
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800)).close()
    except (OSError, AttributeError):
        return False
    return True


# ---- memory ----


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/PID/status (VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def wait_rss_at_most(pid: int, limit_bytes: int, deadline_s: float = 20.0) -> int:
    """Poll until the process's RSS is at most `limit_bytes`; return it, or fail at the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        rss = rss_bytes(pid)
        if rss <= limit_bytes:
            return rss
        if time.monotonic() >= deadline:
            raise AssertionError(f"RSS of {pid} still {rss / 2**20:.1f} MiB after {deadline_s:g} s (limit {limit_bytes / 2**20:.1f} MiB)")
        time.sleep(POLL_S)  # poll interval; the condition is the RSS read above


class RssSampler:
    """Samples a process's RSS in a thread (every `interval_s`, at most `samples_max` times) to
    catch the peak during an attack."""

    def __init__(self, pid: int, interval_s: float = 0.02, samples_max: int = 50_000) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples_max = samples_max
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def _run(self) -> None:
        for _ in range(self.samples_max):
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except (OSError, AssertionError):
                return
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> RssSampler:
        self.peak = rss_bytes(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ---- liveness ----


def ping(address: str, timeout_s: float = REPLY_TIMEOUT_S) -> str:
    """Hello and ping on a fresh raw connection; the node's name, or AssertionError."""
    with RawConn(address, timeout_s=timeout_s) as conn:
        reply = conn.hello()
        assert isinstance(reply, messages.HelloOk), f"hello answered with {reply!r}"
        pong = conn.request(messages.Ping(id=7), timeout_s)
        assert isinstance(pong, messages.Pong) and pong.id == 7, f"ping answered with {pong!r}"
        return pong.node


def wait_until(what: str, check: Callable[[], Any], deadline_s: float = 10.0, interval_s: float = POLL_S) -> Any:
    deadline = time.monotonic() + deadline_s
    last: Any = None
    while True:
        try:
            last = check()
        except (AssertionError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not happen within {deadline_s:g} s (last: {last!r})")
        time.sleep(interval_s)  # poll interval


# ---- the bystander: another client, in its own process ----


@dataclass(frozen=True, slots=True)
class Sample:
    started: float  # time.monotonic() in the bystander process (the same clock on Linux)
    latency_s: float
    ok: bool


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Bystander:
    """Another client getting `key` every `interval_s` through its own process, bounded by
    `count` requests and `seconds`; `samples` grows as it answers."""

    def __init__(self, address: str, *, key: bytes = b"bystander", interval_s: float = 0.005, count: int = 200_000, seconds: float = 600.0,
                 timeout_s: float = REPLY_TIMEOUT_S) -> None:  # fmt: skip
        self.address = address
        self.argv = [
            sys.executable, "-m", "tests.support.hostile", "bystander", address,
            "--key", key.hex(), "--interval", str(interval_s), "--count", str(count), "--seconds", str(seconds), "--timeout", str(timeout_s),
        ]  # fmt: skip
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._ready = threading.Event()

    def start(self, deadline_s: float = 20.0) -> Bystander:
        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self._proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env, cwd=root)
        self._reader = threading.Thread(target=self._read, daemon=True, name="bystander-reader")
        self._reader.start()
        if not self._ready.wait(deadline_s) or self._proc.poll() is not None:
            self.stop()
            raise AssertionError(f"bystander did not start: {self.errors} {self._stderr()}")
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.startswith("ready"):
                self._ready.set()
            elif line.startswith("s "):
                _, started, latency, ok = line.split()
                self.samples.append(Sample(float(started), float(latency), ok == "1"))
            elif line.startswith("e "):
                self.errors.append(line[2:].strip())
        self._ready.set()

    def _stderr(self) -> str:
        if self._proc is None or self._proc.stderr is None or self._proc.poll() is None:
            return ""
        return self._proc.stderr.read()[-2000:]

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._reader is not None:
            self._reader.join(10)

    def __enter__(self) -> Bystander:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in list(self.samples) if start <= s.started <= end]

    def wait_answer_after(self, moment: float, deadline_s: float = 10.0) -> Sample:
        """Poll until the bystander has an answered request that started after `moment`."""

        def answered() -> Sample | None:
            for sample in reversed(list(self.samples)):
                if sample.started < moment:
                    return None
                if sample.ok:
                    return sample
            return None

        return wait_until("an answer to the bystander", answered, deadline_s)


def _bystander_main(args: argparse.Namespace) -> int:
    """The bystander process: hello, then one get at a time, paced; prints a line per request."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    key = bytes.fromhex(args.key)
    out = sys.stdout
    conn: RawConn | None = None
    ended = time.monotonic() + args.seconds
    sent = 0
    while sent < args.count and time.monotonic() < ended and not stopping.is_set():
        if conn is None:
            try:
                conn = RawConn(args.address, timeout_s=args.timeout)
                reply = conn.hello(agent="tests.hostile.bystander")
                if not isinstance(reply, messages.HelloOk):
                    raise OSError(f"hello answered with {reply!r}")
            except (OSError, AssertionError) as exc:
                out.write(f"e connect: {exc!r}\n")
                out.flush()
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.1)  # pacing of reconnects
                continue
            out.write("ready\n")
            out.flush()
        sent += 1
        started = time.monotonic()
        request_id = conn.new_id()
        ok = False
        try:
            conn.send_message(messages.Get(id=request_id, key=key))
            reply = conn.read(args.timeout)
            ok = isinstance(reply, messages.GetOk) and reply.id == request_id
            if not ok:
                out.write(f"e get: {reply!r}\n")
        except (OSError, AssertionError) as exc:
            out.write(f"e get: {exc!r}\n")
        latency = time.monotonic() - started
        out.write(f"s {started:.6f} {latency:.6f} {int(ok)}\n")
        out.flush()
        if not ok:
            conn.close()
            conn = None
        pause = args.interval - latency
        if pause > 0:
            time.sleep(pause)  # pacing: one request per interval
    if conn is not None:
        conn.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.hostile")
    sub = parser.add_subparsers(dest="command", required=True)
    bystander = sub.add_parser("bystander")
    bystander.add_argument("address")
    bystander.add_argument("--key", default=b"bystander".hex())
    bystander.add_argument("--interval", type=float, default=0.005)
    bystander.add_argument("--count", type=int, default=200_000)
    bystander.add_argument("--seconds", type=float, default=600.0)
    bystander.add_argument("--timeout", type=float, default=REPLY_TIMEOUT_S)
    args = parser.parse_args(argv)
    return _bystander_main(args)


if __name__ == "__main__":
    sys.exit(main())

