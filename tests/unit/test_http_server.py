"""The HTTP door's transport (`dynd.shell.http_server`) over an in-memory stream: pipelined
requests answered in order on one connection, refusals before the app sees anything, and who
holds which role."""

from __future__ import annotations

import trio
import trio.testing

from dynd.core.limits import Limits
from dynd.protocol import auth
from dynd.protocol.auth import load_tokens
from dynd.shell.http_server import HttpRequest, HttpResponse, HttpServer, roles_for
from dynd.shell.security import Security

TOKENS = load_tokens("client " + "c" * 20 + "\nadmin " + "a" * 20 + "\n")


class Recorder:
    def __init__(self) -> None:
        self.seen: list[HttpRequest] = []

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        self.seen.append(request)
        if request.target == b"/slow":
            await trio.sleep(0.05)  # answered after the request behind it would be, were order not kept
        return HttpResponse(200, [("Content-Type", "text/plain")], request.target)


async def exchange(data: bytes, limits: Limits = Limits()) -> tuple[bytes, Recorder]:
    app = Recorder()
    server = HttpServer(app, limits, Security())
    client, served = trio.testing.memory_stream_pair()
    received = b""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle, served)
        await client.send_all(data)
        await client.send_eof()
        while chunk := await client.receive_some(65536):
            received += chunk
    return received, app


async def test_pipelined_requests_are_answered_in_order() -> None:
    data = b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\nGET /last HTTP/1.1\r\nHost: x\r\n\r\n"
    received, app = await exchange(data)
    assert [request.target for request in app.seen] == [b"/slow", b"/fast", b"/last"]
    bodies = [part.rsplit(b"\r\n\r\n", 1)[-1] for part in received.split(b"HTTP/1.1 200 OK")[1:]]
    assert [body[:5] for body in bodies] == [b"/slow", b"/fast", b"/last"]


async def test_an_oversize_body_is_refused_before_the_app_and_before_it_is_read() -> None:
    limits = Limits(http_body_bytes_max=100)
    received, app = await exchange(b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n" + b"x" * 101, limits)
    assert received.startswith(b"HTTP/1.1 413") and app.seen == []


def test_roles_follow_the_cbor_ports_hello_rules() -> None:
    open_node = Security()
    assert roles_for(open_node, False, None) == (frozenset({auth.CLIENT, auth.ADMIN}), False)
    secured = Security(keyring=object(), tokens=TOKENS)  # type: ignore[arg-type]
    assert roles_for(secured, False, None) == (frozenset(), False)
    assert roles_for(secured, True, None)[0] == frozenset({auth.CLIENT, auth.ADMIN})
    assert roles_for(secured, False, b"Bearer " + b"c" * 20) == (frozenset({auth.CLIENT}), False)
    assert roles_for(secured, False, b"bearer " + b"a" * 20)[0] == frozenset({auth.CLIENT, auth.ADMIN})
    assert roles_for(secured, False, b"Bearer wrong")[1] is True
    assert roles_for(secured, False, b"Basic " + b"c" * 20)[1] is True
    no_tokens = Security(keyring=object())  # type: ignore[arg-type]
    assert roles_for(no_tokens, False, None)[0] == frozenset({auth.CLIENT})
