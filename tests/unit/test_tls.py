"""The sans-IO TLS layer, as synchronous pairs over an in-memory link: no sockets, no sleeps.

Certificates come from trustme: one cluster CA signing the nodes' certificates, and a second CA
standing for anyone else.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trustme

from dynd.client import open_client
from dynd.protocol.errors import BadRequest, Unauthorized, Unreachable
from dynd.protocol.framing import FrameDecoder, encode_frame
from dynd.protocol.tls import TlsConfigError, TlsError, TlsLayer, TlsSettings, client_context, server_context


@dataclass(frozen=True)
class Pki:
    cluster: TlsSettings  # a node of the cluster: its certificate and the cluster CA
    other_node: TlsSettings  # a certificate from another CA, trusting the cluster CA
    ca_file: str
    other_ca_file: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    other_ca.cert_pem.write_to_path(str(root / "other-ca.pem"))

    def issue(authority: trustme.CA, name: str) -> tuple[str, str]:
        leaf = authority.issue_cert("127.0.0.1", "localhost", f"{name}.dynd.test")
        cert, key = root / f"{name}.pem", root / f"{name}.key"
        for blob in leaf.cert_chain_pems:
            blob.write_to_path(str(cert), append=True)
        leaf.private_key_pem.write_to_path(str(key))
        return str(cert), str(key)

    node_cert, node_key = issue(ca, "n1")
    rogue_cert, rogue_key = issue(other_ca, "rogue")
    return Pki(
        cluster=TlsSettings(node_cert, node_key, str(root / "ca.pem")),
        other_node=TlsSettings(rogue_cert, rogue_key, str(root / "ca.pem")),
        ca_file=str(root / "ca.pem"),
        other_ca_file=str(root / "other-ca.pem"),
    )


# ---- the fake link ----


def pump(a: TlsLayer, b: TlsLayer, chunk_bytes: int = 1 << 20, rounds_max: int = 10_000) -> tuple[bytes, bytes]:
    """Carry raw bytes both ways, `chunk_bytes` at a time, until neither side has any to send.
    Returns the application bytes each side received (a's, b's)."""
    got_a, got_b = bytearray(), bytearray()
    for _ in range(rounds_max):
        moved = False
        for sender, receiver, sink in ((a, b, got_b), (b, a, got_a)):
            raw = sender.outgoing()
            for start in range(0, len(raw), chunk_bytes):
                sink += receiver.receive(raw[start : start + chunk_bytes])
                moved = True
        if not moved:
            return bytes(got_a), bytes(got_b)
    raise AssertionError("the link never went quiet")


def pair(pki: Pki, *, client_cert: bool = True, server_hostname: str | None = None) -> tuple[TlsLayer, TlsLayer]:
    """A client and a server layer, not yet handshaken. With `client_cert` the client is a peer
    node (TlsSettings: presents its certificate, no host-name check); without, a plain client."""
    server = TlsLayer.server(server_context(pki.cluster))
    if client_cert:
        client = TlsLayer.client(client_context(pki.cluster))
    else:
        client = TlsLayer.client(client_context(pki.ca_file), server_hostname=server_hostname or "127.0.0.1")
    return client, server


def handshaken(pki: Pki, **kwargs: object) -> tuple[TlsLayer, TlsLayer]:
    client, server = pair(pki, **kwargs)  # type: ignore[arg-type]
    assert pump(client, server) == (b"", b"")
    assert client.handshake_done and server.handshake_done
    return client, server


# ---- handshakes ----


def test_mutual_handshake_between_peers(pki: Pki) -> None:
    client, server = handshaken(pki)
    assert server.peer_certificate() is not None  # the client proved its certificate
    assert client.peer_certificate() is not None
    assert dict(x[0] for x in server.peer_certificate()["subject"]).get("organizationName") is not None
    assert client.version in ("TLSv1.2", "TLSv1.3")
    assert not client.server_side and server.server_side


def test_client_without_a_certificate_is_accepted(pki: Pki) -> None:
    client, server = handshaken(pki, client_cert=False)
    assert server.peer_certificate() is None
    client.send(b"hello")
    assert pump(client, server) == (b"", b"hello")


def test_client_checks_the_host_name(pki: Pki) -> None:
    client, server = pair(pki, client_cert=False, server_hostname="elsewhere.example")
    with pytest.raises(TlsError, match="not trusted"):
        pump(client, server)


def test_client_refuses_a_server_certificate_from_another_ca(pki: Pki) -> None:
    server = TlsLayer.server(server_context(pki.other_node))
    client = TlsLayer.client(client_context(pki.cluster))
    with pytest.raises(TlsError, match="not trusted") as caught:
        pump(client, server)
    assert not caught.value.clean and caught.value.refused
    assert not client.handshake_done
    with pytest.raises(TlsError):  # failure is final
        client.receive(b"\x17\x03\x03\x00\x01x")
    with pytest.raises(TlsError):
        client.send(b"more")


def test_server_refuses_a_client_certificate_from_another_ca(pki: Pki) -> None:
    server = TlsLayer.server(server_context(pki.cluster))
    # The rogue trusts the cluster CA (so it accepts the server) but its own certificate is not the cluster's.
    client = TlsLayer.client(client_context(pki.other_node))
    client.send(b"data that must never arrive")
    with pytest.raises(TlsError, match="not trusted|certificate") as on_server:
        pump(client, server)
    assert on_server.value.refused
    assert not server.handshake_done
    # The alert the server queued tells the client why, and the client fails too.
    with pytest.raises(TlsError, match="unknown ca|certificate") as on_client:
        client.receive(server.outgoing())
    assert on_client.value.refused


def test_plain_client_sent_before_the_handshake_is_delivered_after_it(pki: Pki) -> None:
    client, server = pair(pki)
    client.send(encode_frame(b"hello"))  # the shell sends its hello at once
    client.send(encode_frame(b"get"))
    assert not client.handshake_done
    got_client, got_server = pump(client, server)
    assert got_server == encode_frame(b"hello") + encode_frame(b"get")
    assert got_client == b""


# ---- carrying frames ----

CHUNK_SIZES = [*range(1, 40), 61, 64, 100, 127, 128, 255, 256, 1000, 1024, 4095, 4096, 16384, 16385, 65536, 1 << 20]


@pytest.mark.parametrize("chunk_bytes", CHUNK_SIZES)
def test_frames_both_ways_in_raw_chunks_of_every_size(pki: Pki, chunk_bytes: int) -> None:
    rng = random.Random(chunk_bytes)
    client, server = pair(pki)
    pump(client, server, chunk_bytes)
    frames_up = [rng.randbytes(rng.choice((0, 1, 7, 100, 1024, 5000, 16380, 40_000))) for _ in range(12)]
    frames_down = [rng.randbytes(rng.choice((0, 3, 512, 16384, 70_000))) for _ in range(8)]
    decoders = FrameDecoder(1 << 20), FrameDecoder(1 << 20)
    received: tuple[list[bytes], list[bytes]] = ([], [])
    for up, down in zip(frames_up, frames_down + [None] * len(frames_up)):
        client.send(encode_frame(up))
        if down is not None:
            server.send(encode_frame(down))
        got_client, got_server = pump(client, server, chunk_bytes)
        received[0].extend(decoders[0].feed(got_client))
        received[1].extend(decoders[1].feed(got_server))
    assert received[1] == frames_up
    assert received[0] == frames_down


@pytest.mark.parametrize("plain_bytes", [1, 2, 1000, 16383, 16384, 16385, 100_000, 1 << 20])
def test_plain_writes_of_every_size_arrive_whole(pki: Pki, plain_bytes: int) -> None:
    client, server = handshaken(pki)
    payload = random.Random(plain_bytes).randbytes(plain_bytes)
    server.send(payload)
    got_client, _ = pump(client, server, chunk_bytes=3333)
    assert got_client == payload


def test_many_small_writes_in_one_raw_chunk(pki: Pki) -> None:
    client, server = handshaken(pki)
    for n in range(500):
        client.send(encode_frame(n.to_bytes(4, "big")))
    raw = client.outgoing()
    assert FrameDecoder(1024).feed(server.receive(raw)) == [n.to_bytes(4, "big") for n in range(500)]


# ---- endings and garbage ----


def test_close_notify_ends_the_session_cleanly(pki: Pki) -> None:
    client, server = handshaken(pki)
    client.send(b"last words")
    client.close()
    raw = client.outgoing()
    assert server.receive(raw) == b"last words"  # data before close_notify is delivered
    with pytest.raises(TlsError) as caught:
        server.receive(b"")
    assert caught.value.clean
    with pytest.raises(TlsError) as closed:
        client.send(b"after close")
    assert closed.value.clean


def test_close_notify_alone_raises_clean(pki: Pki) -> None:
    client, server = handshaken(pki)
    client.close()
    with pytest.raises(TlsError) as caught:
        server.receive(client.outgoing())
    assert caught.value.clean


def test_end_of_file_without_close_notify_is_an_error(pki: Pki) -> None:
    client, server = handshaken(pki)
    with pytest.raises(TlsError, match="without a TLS close_notify") as caught:
        server.receive(b"")
    assert not caught.value.clean


def test_end_of_file_during_the_handshake_is_an_error(pki: Pki) -> None:
    client, server = pair(pki)
    server.receive(client.outgoing())
    with pytest.raises(TlsError, match="during the TLS handshake"):
        server.receive(b"")


def test_plain_dynd_frames_on_a_tls_port_are_recognised(pki: Pki) -> None:
    server = TlsLayer.server(server_context(pki.cluster))
    with pytest.raises(TlsError) as caught:
        server.receive(encode_frame(b"\xa2bopehhello"))
    assert caught.value.not_tls and not caught.value.clean


def test_a_node_without_tls_answering_a_tls_client_is_recognised(pki: Pki) -> None:
    client = TlsLayer.client(client_context(pki.cluster))
    assert client.outgoing()[:1] == b"\x16"  # the ClientHello, ready at once
    with pytest.raises(TlsError, match="does not speak TLS") as caught:
        client.receive(encode_frame(b"\xa3bidxfcodexframe_too_large"))  # what a plain node answers
    assert caught.value.not_tls and not caught.value.refused


GARBAGE: list[Callable[[random.Random], bytes]] = [
    lambda rng: rng.randbytes(rng.randrange(1, 5000)),
    lambda rng: b"\x16\x03\x01" + rng.randbytes(rng.randrange(0, 5000)),  # looks like a handshake record
    lambda rng: b"\x16\x03\x01\xff\xff" + rng.randbytes(20_000),  # an oversize record header
    lambda rng: b"\x17\x03\x03\x00\x10" + rng.randbytes(16),  # application data before any handshake
    lambda rng: b"\x15\x03\x03\x00\x02\x02\x28",  # a fatal alert
]


@pytest.mark.parametrize("seed", range(40))
def test_garbage_to_a_server_is_an_error_not_a_hang(pki: Pki, seed: int) -> None:
    rng = random.Random(seed)
    server = TlsLayer.server(server_context(pki.cluster))
    data = GARBAGE[seed % len(GARBAGE)](rng)
    try:
        for start in range(0, len(data), 977):
            assert server.receive(data[start : start + 977]) == b""
        server.receive(b"")  # the end of file: a handshake never finished
    except TlsError as exc:
        assert not exc.clean
    else:
        raise AssertionError(f"seed {seed}: garbage accepted")
    server.outgoing()  # an alert at most; never raises
    with pytest.raises(TlsError):
        server.receive(b"\x16\x03\x03")


@pytest.mark.parametrize("seed", range(20))
def test_garbage_mid_session_is_an_error(pki: Pki, seed: int) -> None:
    rng = random.Random(seed)
    client, server = handshaken(pki)
    client.send(b"x" * rng.randrange(1, 3000))
    raw = bytearray(client.outgoing())
    position = rng.randrange(len(raw))
    raw[position] ^= 1 << rng.randrange(8)  # one flipped bit: the record's MAC fails or its header lies
    with pytest.raises(TlsError) as caught:
        server.receive(bytes(raw))
        server.receive(b"")  # a header that now claims more bytes waits for them: the end of file settles it
    assert not caught.value.clean


# ---- settings and contexts ----


def test_settings_name_the_missing_file(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(TlsConfigError, match="cert_file .*nope.pem.* does not exist"):
        TlsSettings(str(tmp_path / "nope.pem"), pki.cluster.key_file, pki.ca_file)
    with pytest.raises(TlsConfigError, match="ca_file must name"):
        TlsSettings(pki.cluster.cert_file, pki.cluster.key_file, "")


def test_contexts_explain_bad_files(pki: Pki, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(TlsConfigError, match="cannot load the certificate"):
        server_context(TlsSettings(str(junk), pki.cluster.key_file, pki.ca_file))
    with pytest.raises(TlsConfigError, match="cannot load the certificate"):  # a key that is not the certificate's
        server_context(TlsSettings(pki.cluster.cert_file, pki.other_node.key_file, pki.ca_file))
    with pytest.raises(TlsConfigError, match="CA"):
        server_context(TlsSettings(pki.cluster.cert_file, pki.cluster.key_file, str(junk)))
    with pytest.raises(TlsConfigError, match="does not exist"):
        client_context(str(tmp_path / "missing-ca.pem"))
    with pytest.raises(TlsConfigError, match="server_hostname"):
        TlsLayer.client(client_context(pki.ca_file))


def test_context_choices(pki: Pki) -> None:
    server = server_context(pki.cluster)
    assert server.verify_mode == ssl.CERT_OPTIONAL
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    peer = client_context(pki.cluster)
    assert peer.verify_mode == ssl.CERT_REQUIRED and not peer.check_hostname
    client = client_context(pki.ca_file)
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    assert not client_context(pki.ca_file, check_hostname=False).check_hostname
    # A client with its own certificate (cert and key files) is accepted as a peer is.
    with_cert = client_context(pki.ca_file, pki.cluster.cert_file, pki.cluster.key_file)
    c = TlsLayer.client(with_cert, "localhost")
    s = TlsLayer.server(server)
    pump(c, s)
    assert s.peer_certificate() is not None


# ---- the shell: the real Server and open_client over loopback TCP, a fake node behind ----


class EchoNode:
    """Answers a put with its value as the context (so large replies cross the link), anything
    else with a pong; a member list so a proved peer may act as one."""

    def __init__(self, name: str = "n1") -> None:
        from dynd.core.membership import JOINED, Member

        self.name = name
        self.cluster = SimpleNamespace(membership=SimpleNamespace(members={n: Member(n, "127.0.0.1:1", JOINED) for n in ("n1", "n2")}))
        self.handled = 0

    def handle(self, message: Any, reply: Callable[[Any], None], received_us: int | None = None) -> None:
        from dynd.protocol import messages

        self.handled += 1
        if isinstance(message, messages.Put):
            reply(messages.PutOk(id=message.id, context=message.value))
        else:
            reply(messages.Pong(id=getattr(message, "id", 0) or 0, node=self.name))


@asynccontextmanager
async def tls_server(pki: Pki, node: EchoNode, keyring: Any = None) -> AsyncIterator[tuple[str, Any]]:
    from dynd.core.limits import Limits
    from dynd.shell.security import Security
    from dynd.shell.server import Server

    security = Security(cluster_id="c0ffee", keyring=keyring, server_ssl=server_context(pki.cluster), client_ssl=client_context(pki.cluster))
    server = Server(node, Limits(), security)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
        yield f"127.0.0.1:{listeners[0].socket.getsockname()[1]}", server
        nursery.cancel_scope.cancel()


async def test_shell_client_and_server_speak_tls(pki: Pki) -> None:
    node = EchoNode()
    async with tls_server(pki, node) as (address, server):
        async with open_client(address, ssl_context=client_context(pki.ca_file)) as client:
            assert await client.ping() == "n1"
            for size in (0, 1, 1000, 16_383, 16_384, 16_385, 300_000, 2_000_000):
                value = random.Random(size).randbytes(size)
                assert await client.put(b"k", value) == value

            async def one(i: int) -> None:  # pipelined: the writers batch many frames per record
                assert await client.put(b"p", str(i).encode()) == str(i).encode()

            async with trio.open_nursery() as nursery:
                for i in range(300):
                    nursery.start_soon(one, i)
    assert node.handled == 1 + 8 + 300


async def test_shell_peers_prove_the_secret_over_mutual_tls(pki: Pki) -> None:
    from dynd.client import PeerCredentials
    from dynd.protocol import auth

    keyring = auth.Keyring((b"s" * 32,))
    async with tls_server(pki, EchoNode(), keyring=keyring) as (address, server):
        credentials = PeerCredentials("n2", "c0ffee", keyring)
        async with open_client(address, peer=credentials, expect_node="n1", ssl_context=client_context(pki.cluster)) as client:
            assert client.cluster == "c0ffee" and auth.PEER in client.roles
            assert await client.ping() == "n1"
        with pytest.raises(Unauthorized, match="unknown ca|certificate"):  # a certificate from another CA
            async with open_client(address, peer=credentials, ssl_context=client_context(pki.other_node)):
                pass
        assert server.security.events.counts["hello_refused"] == 1


async def test_shell_plain_client_on_a_tls_port_is_told(pki: Pki) -> None:
    async with tls_server(pki, EchoNode()) as (address, server):
        with trio.fail_after(5):
            with pytest.raises(BadRequest, match="speaks TLS only"):
                async with open_client(address, timeout_s=30):
                    pass
        with trio.fail_after(5):  # a client that distrusts the node's certificate refuses it
            with pytest.raises(Unauthorized, match="not trusted"):
                async with open_client(address, timeout_s=30, ssl_context=client_context(pki.other_ca_file)):
                    pass


async def test_shell_tls_client_to_a_plain_port_is_told(pki: Pki) -> None:
    from dynd.core.limits import Limits
    from dynd.shell.security import Security
    from dynd.shell.server import Server

    server = Server(EchoNode(), Limits(), Security())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
        address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        with trio.fail_after(5):
            with pytest.raises(Unreachable, match="does not speak TLS"):
                async with open_client(address, timeout_s=30, ssl_context=client_context(pki.ca_file)):
                    pass
        nursery.cancel_scope.cancel()


async def test_shell_tls_handshake_must_finish_within_the_hello_deadline(pki: Pki) -> None:
    from dynd.core.limits import Limits
    from dynd.shell.security import Security
    from dynd.shell.server import Server

    limits = dataclasses.replace(Limits(), handshake_timeout_ms=200)
    server = Server(EchoNode(), limits, Security(server_ssl=server_context(pki.cluster)))  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            started = trio.current_time()
            await stream.send_all(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, never finished
            while await stream.receive_some(65536):
                pass  # the server closes the connection at the deadline
        assert 0.15 < trio.current_time() - started < 1.0
        await stream.aclose()
        nursery.cancel_scope.cancel()
