"""The ceiling of this stack: a trio + cbor2 server that speaks dynd's framing and stores nothing.

    python tests/bench/echo_server.py --listen 127.0.0.1:7499 [--value-size 1024]

It answers hello, ping, get (one sibling of `--value-size` bytes), put and delete with canned
replies, so `dynctl bench --node 127.0.0.1:7499` measures what the client, the framing, CBOR and
the event loop cost on their own. A dynd that gets close to these numbers spends little on anything
else. It is written the fast way on purpose (one reader task per connection, every frame in a chunk
decoded with plain `cbor2.loads`, one `send_all` per chunk): a slower ceiling would flatter dynd.
It checks nothing beyond what it needs to answer, so never point it at anything but benchmarks.
"""

from __future__ import annotations

import argparse
import contextlib
import struct
import sys
from functools import partial

import cbor2
import trio

PROTOCOL_VERSION = 2
NODE_NAME = "echo"
# Refuse absurd length prefixes rather than buffering them: this is a benchmark target, not a node.
FRAME_BYTES_MAX = 64 * 1024 * 1024
RECEIVE_CHUNK_BYTES = 256 * 1024
LENGTH_PREFIX = struct.Struct(">I")
# Opaque to clients; it only has to be small and the same every time.
CANNED_CONTEXT = cbor2.dumps([[NODE_NAME, 1]])


def _frame(message: dict[str, object]) -> bytes:
    payload = cbor2.dumps(message)
    return LENGTH_PREFIX.pack(len(payload)) + payload


class CannedReplies:
    """Every reply the server sends, built once; only the request id changes per reply."""

    def __init__(self, value_size: int) -> None:
        sibling = {
            "value": b"v" * value_size,
            "actor": NODE_NAME,
            "counter": 1,
            "clock": [{"actor": NODE_NAME, "counter": 1}],
        }
        self.hello = _frame({"op": "hello_ok", "version": PROTOCOL_VERSION, "node": NODE_NAME})
        self._siblings = [sibling]

    def reply_to(self, request: object) -> bytes:
        if type(request) is not dict:
            return _frame({"op": "error", "id": None, "code": "bad_frame", "message": "not a map", "retriable": False})
        op = request.get("op")
        request_id = request.get("id")
        if op == "get":
            return _frame({"op": "get_ok", "id": request_id, "siblings": self._siblings, "context": CANNED_CONTEXT})
        if op == "put":
            return _frame({"op": "put_ok", "id": request_id, "context": CANNED_CONTEXT})
        if op == "delete":
            return _frame({"op": "delete_ok", "id": request_id, "context": CANNED_CONTEXT})
        if op == "ping":
            return _frame({"op": "pong", "id": request_id, "node": NODE_NAME})
        if op == "hello":
            return self.hello
        message = f"echo server does not know op {op!r}"
        return _frame({"op": "error", "id": request_id, "code": "unknown_op", "message": message, "retriable": False})


async def serve_connection(replies: CannedReplies, stream: trio.SocketStream) -> None:
    buffer = bytearray()
    unpack_length = LENGTH_PREFIX.unpack_from
    loads = cbor2.loads
    async with stream:
        while True:
            try:
                chunk = await stream.receive_some(RECEIVE_CHUNK_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not chunk:
                return
            buffer += chunk
            out: list[bytes] = []
            start = 0
            end = len(buffer)
            while end - start >= 4:
                (length,) = unpack_length(buffer, start)
                if length > FRAME_BYTES_MAX:
                    return
                if end - start - 4 < length:
                    break
                try:
                    request = loads(bytes(buffer[start + 4 : start + 4 + length]))
                except Exception:  # any undecodable frame: tell the client, like a node would
                    request = None
                out.append(replies.reply_to(request))
                start += 4 + length
            if start:
                del buffer[:start]
            if out:
                try:
                    await stream.send_all(b"".join(out))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


async def serve(host: str, port: int, value_size: int) -> None:
    replies = CannedReplies(value_size)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    print(
        f"echo server listening on {bound[0]}:{bound[1]} (value size {value_size} bytes)", file=sys.stderr, flush=True
    )
    await trio.serve_listeners(partial(serve_connection, replies), listeners)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 7499), metavar="HOST:PORT")
    parser.add_argument(
        "--value-size", type=int, default=1024, metavar="BYTES", help="size of the value every get returns"
    )
    args = parser.parse_args(argv)
    if args.value_size < 0:
        parser.error("--value-size must be >= 0")
    host, port = args.listen
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a person stops it
        trio.run(serve, host, port, args.value_size)


if __name__ == "__main__":
    main()
