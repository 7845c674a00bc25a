"""`SyncClient` (a blocking socket, no trio) against a real dynd, plain and with TLS, and against
ports that are not dynd: what it returns and which errors it raises."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from dynd.client import BlockingClient, CannotConnect, NotADyndNode, SyncClient
from dynd.client.errors import describe_foreign
from dynd.protocol import PROTOCOL_VERSION, codec, messages
from dynd.protocol.errors import BadRequest, Timeout, Unauthorized, Unreachable
from dynd.protocol.framing import FrameDecoder, encode_frame
from dynd.protocol.tls import client_context
from tests.support.foreign import HTTP_REPLY, SSH_BANNER, ForeignServer
from tests.support.procs import PROBE_INTERVAL_S, START_TIMEOUT_S, DyndError, DyndProcess

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DyndProcess]:
    process = DyndProcess(tmp_path_factory.mktemp("sync-client"), name="sync1")
    process.start()
    yield process
    process.stop()


def test_put_get_delete_and_ping(node: DyndProcess) -> None:
    with SyncClient(node.address) as client:
        assert client.node_name == "sync1" and "client" in client.roles
        assert client.ping() == "sync1"
        assert client.get("sync:k").values == []
        first = client.put("sync:k", b"one")
        assert client.get(b"sync:k").values == [b"one"]
        client.put("sync:k", b"two", first)
        result = client.get("sync:k")
        assert result.values == [b"two"] and result.siblings[0].value == b"two"
        client.delete("sync:k", result.context)
        assert client.get("sync:k").found is False


def test_it_reads_what_the_trio_client_wrote(node: DyndProcess) -> None:
    with BlockingClient(node.address) as writer:
        writer.put("sync:shared", b"from trio")
    with SyncClient(node.address) as reader:
        assert reader.get("sync:shared").values == [b"from trio"]


def test_a_node_error_is_raised_and_the_connection_stays_usable(node: DyndProcess) -> None:
    with SyncClient(node.address) as client:
        with pytest.raises(BadRequest, match="empty"):
            client.get(b"")
        assert client.ping() == "sync1"


def test_importing_it_loads_no_event_loop() -> None:
    script = "import sys; from dynd.client import SyncClient; print(sorted(m for m in ('trio', 'ssl', 'dynd.client.connection') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


class SlowFirstPong:
    """A node of one connection that says hello, then answers ping 1 late and ping 2 at once."""

    LATE_S = 0.5

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        decoder = FrameDecoder(1 << 20)
        with connection:
            connection.settimeout(10.0)
            while chunk := connection.recv(65536):
                for frame in decoder.feed(chunk):
                    request = codec.decode_message(frame)
                    if isinstance(request, messages.Hello):
                        reply: Any = messages.HelloOk(version=PROTOCOL_VERSION, node="slow", roles=["client"])
                    else:
                        if request.id == 1:
                            time.sleep(self.LATE_S)
                        reply = messages.Pong(id=request.id, node=f"pong {request.id}")
                    connection.sendall(encode_frame(codec.encode_message(reply)))


def test_a_reply_that_comes_after_its_call_timed_out_is_skipped() -> None:
    server = SlowFirstPong()
    with SyncClient(server.address, timeout_s=5.0) as client:
        with pytest.raises(Timeout, match="within 0.1 s"):
            client.ping(timeout_s=0.1)
        assert client.ping() == "pong 2", "pong 1 arrives first, late: it is not taken for pong 2's reply"
    server.thread.join(timeout=10.0)
    server.listener.close()


# ---- when there is no dynd node ----


def test_a_refused_connection_raises_cannot_connect() -> None:
    with socket.socket() as bound_not_listening:
        bound_not_listening.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{bound_not_listening.getsockname()[1]}"
        with pytest.raises(CannotConnect, match="Connection refused") as caught:
            SyncClient(address, timeout_s=2.0)
    assert isinstance(caught.value, Unreachable) and caught.value.code == "unreachable"


def test_a_silent_server_times_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(Timeout, match="no hello reply"):
            SyncClient(address, timeout_s=0.3)
        assert time.monotonic() - started < 5.0


@pytest.mark.parametrize(
    ("reply", "greet", "says"),
    [
        pytest.param(HTTP_REPLY, False, "it answered like an HTTP server", id="http"),
        pytest.param(SSH_BANNER, True, "it answered like an SSH server", id="ssh"),
        pytest.param(b"\x15\x03\x03\x00\x02\x02\x32", False, "it answered in TLS", id="tls-alert"),
        pytest.param(b"\x00\x00\x00\x05hello", False, "its first bytes are not a dynd frame", id="not-cbor"),
        pytest.param(b"\x00\x00\x01", False, "its first bytes are not a dynd frame", id="cut-short"),
    ],
)
def test_a_port_that_is_not_dynd_says_so(reply: bytes, greet: bool, says: str) -> None:
    with ForeignServer(reply, greet=greet) as server, pytest.raises(NotADyndNode) as caught:
        SyncClient(server.address, timeout_s=5.0)
    assert caught.value.message.startswith(f"{server.address} is not a dynd node ({says}"), caught.value.message
    assert caught.value.code == "unreachable" and not caught.value.retriable


def test_the_trio_client_says_the_same() -> None:
    with ForeignServer(HTTP_REPLY) as server, pytest.raises(NotADyndNode, match="it answered like an HTTP server"):
        BlockingClient(server.address, timeout_s=5.0)


@pytest.mark.parametrize(
    ("first", "phrase"),
    [
        (b"HTTP/1.0 200 OK", "it answered like an HTTP server"),
        (b"SSH-2.0-x", "it answered like an SSH server"),
        (b"220 mail ESMTP", "it answered like an SMTP or FTP server"),
        (b"-ERR unknown command", "it answered like a Redis server"),
        (b"\x16\x03\x01\x00", "it answered in TLS"),
        (b"\x00\x01", "its first bytes are not a dynd frame: b'\\x00\\x01'"),
    ],
)
def test_first_bytes_name_the_server(first: bytes, phrase: str) -> None:
    assert describe_foreign(first).startswith(phrase)


# ---- TLS ----


class TlsNode(DyndProcess):
    """Ready once a SyncClient over TLS gets a ping back (a plain probe is refused)."""

    ssl_context: Any = None

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc is not None
            if (code := self.proc.poll()) is not None:
                raise DyndError(self._describe(f"exited with code {code} before it was ready"))
            try:
                with SyncClient(self.address, timeout_s=1.0, ssl_context=self.ssl_context) as client:
                    return client.ping()
            except Unreachable:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(PROBE_INTERVAL_S)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TlsNode, str, str]]:
    """A node with TLS, its CA file, and a CA file that did not sign it."""
    root = tmp_path_factory.mktemp("sync-tls")
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    other.cert_pem.write_to_path(str(root / "other.pem"))
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    for blob in leaf.cert_chain_pems:
        blob.write_to_path(str(root / "node.pem"), append=True)
    leaf.private_key_pem.write_to_path(str(root / "node.key"))
    config = textwrap.dedent(
        f"""
        [security]
        tls_cert_file = "{root / 'node.pem'}"
        tls_key_file = "{root / 'node.key'}"
        tls_ca_file = "{root / 'ca.pem'}"
        """
    )
    node = TlsNode(root / "node", name="synctls", config_text=config)
    node.ssl_context = client_context(str(root / "ca.pem"))
    node.start()
    yield node, str(root / "ca.pem"), str(root / "other.pem")
    node.stop()


def test_tls_round_trip(tls: tuple[TlsNode, str, str]) -> None:
    node, ca_file, _ = tls
    with SyncClient(node.address, ssl_context=client_context(ca_file)) as client:
        client.put("sync:tls", b"sealed")
        assert client.get("sync:tls").values == [b"sealed"]


def test_tls_with_the_wrong_ca_is_unauthorized(tls: tuple[TlsNode, str, str]) -> None:
    node, _, other_ca = tls
    with pytest.raises(Unauthorized, match="TLS"):
        SyncClient(node.address, timeout_s=5.0, ssl_context=client_context(other_ca))


def test_plain_to_a_tls_node_gets_the_nodes_refusal(tls: tuple[TlsNode, str, str]) -> None:
    node, _, _ = tls
    with pytest.raises(BadRequest, match="speaks TLS only"):
        SyncClient(node.address, timeout_s=5.0)
