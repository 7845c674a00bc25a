"""Requests between nodes: sent without awaiting, answered through a callback, expired on a deadline.

The core's Network port (`dynd.core.ports`) never awaits: it hands over `build(request_id)` and an
`on_reply` callback. `PeerLink` does that over one connection of the client library
(`dynd.client.connection.Client`, which also proves the cluster secret in its hello):

- `call(build, on_reply)` sends at once and files a callback waiter under the request's id; the
  connection's reader task resolves it with the reply, or an `ErrorReply` as the `DynError` it
  stands for, or the error that broke the connection.
- A peer that never answers: a sweeper task, living as long as the connection, wakes every
  `CALLBACK_SWEEP_S` and fails each request past its deadline with `Timeout`; a reply that comes
  later is dropped. Deadlines are on trio's monotonic clock. Sweeping the waiting table every
  100 ms costs nothing per request, where a timer per request would.
"""

from __future__ import annotations

import logging

import trio

from dynd.client.connection import Client
from dynd.core.ports import Builder, ReplyCallback
from dynd.protocol import messages
from dynd.protocol.errors import DynError, Timeout, error_from_code

log = logging.getLogger("dynd.peers")

CALLBACK_SWEEP_S = 0.1


class _Callback:
    """A request whose reply goes to `on_reply`, unless `deadline` (trio's clock) passes first."""

    __slots__ = ("on_reply", "deadline")

    def __init__(self, on_reply: ReplyCallback, deadline: float) -> None:
        self.on_reply = on_reply
        self.deadline = deadline

    def resolve(self, reply: messages.Message | DynError) -> None:
        if isinstance(reply, messages.ErrorReply):
            reply = error_from_code(reply.code, reply.message)
        try:
            self.on_reply(reply)
        except Exception:  # the callback's bug must not break the connection for everyone else
            log.exception("a reply callback failed")


class PeerLink:
    """Callback requests over one open connection, each failed with `Timeout` after `timeout_s`."""

    __slots__ = ("client", "timeout_s")

    def __init__(self, client: Client, timeout_s: float) -> None:
        self.client = client
        self.timeout_s = timeout_s
        client.start_soon(self._sweep)

    @property
    def usable(self) -> bool:
        return self.client.usable

    def call(self, build: Builder, on_reply: ReplyCallback) -> None:
        """Send `build(request_id)`; call `on_reply(reply or DynError)` later, from the event loop
        (at once when the connection is broken already). Never awaits."""
        self.client.submit(build, _Callback(on_reply, trio.current_time() + self.timeout_s))

    async def _sweep(self) -> None:
        address = self.client.address
        while True:
            await trio.sleep(CALLBACK_SWEEP_S)
            now = trio.current_time()
            for waiter in self.client.withdraw(lambda waiter: isinstance(waiter, _Callback) and waiter.deadline <= now):
                waiter.resolve(Timeout(f"no reply from {address} in time"))
