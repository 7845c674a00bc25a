"""`BlockingClient`: the client's calls without async, for plain scripts and tests.

A private thread runs trio and one connection (`dynd.client.connection`); each call crosses into
it with `trio.from_thread.run` and blocks until the reply.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import trio

from dynd.client.connection import Client, open_client
from dynd.client.results import DEFAULT_TIMEOUT_S, GetResult, KeyLike
from dynd.protocol import messages
from dynd.protocol.errors import Unreachable

T = TypeVar("T")


class BlockingClient:
    """The same calls without async: a private thread runs trio and the connection.

        with BlockingClient("127.0.0.1:7400") as client:
            client.put("greeting", b"hello")
    """

    def __init__(
        self, address: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, token: str | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._token_credential = token
        self._ssl_context = ssl_context
        self._ready = threading.Event()
        self._client: Client | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(address, timeout_s), daemon=True, name="dynd-client")
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _run(self, address: str, timeout_s: float) -> None:
        async def main() -> None:
            try:
                async with open_client(address, timeout_s=timeout_s, token=self._token_credential, ssl_context=self._ssl_context) as client:
                    self._client = client
                    self._token = trio.lowlevel.current_trio_token()
                    self._stop = trio.Event()
                    self._ready.set()
                    await self._stop.wait()
            except BaseException as exc:  # reported to the constructing thread
                self._error = exc
            finally:
                self._ready.set()

        trio.run(main)

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        if self._client is None or self._token is None:
            raise Unreachable("client is closed")

        async def call() -> T:
            return await fn(*args, **kwargs)

        return trio.from_thread.run(call, trio_token=self._token)

    def get(self, key: KeyLike, *, r: int | None = None, pr: int | None = None) -> GetResult:
        assert self._client is not None
        return self._call(self._client.get, key, r=r, pr=pr)

    def put(
        self,
        key: KeyLike,
        value: bytes,
        context: bytes | None = None,
        *,
        w: int | None = None,
        pw: int | None = None,
        content_type: str | None = None,
        usermeta: Mapping[str, str] | None = None,
    ) -> bytes:
        assert self._client is not None
        return self._call(self._client.put, key, value, context, w=w, pw=pw, content_type=content_type, usermeta=usermeta)

    def delete(self, key: KeyLike, context: bytes, *, w: int | None = None, pw: int | None = None) -> bytes:
        assert self._client is not None
        return self._call(self._client.delete, key, context, w=w, pw=pw)

    def ping(self) -> str:
        assert self._client is not None
        return self._call(self._client.ping)

    def cluster_status(self, *, local_only: bool = False) -> messages.ClusterStatusOk:
        assert self._client is not None
        return self._call(self._client.cluster_status, local_only=local_only)

    def repair_start(self, partition: int | None = None) -> messages.RepairProgressOk:
        assert self._client is not None
        return self._call(self._client.repair_start, partition)

    def repair_status(self, run: int) -> messages.RepairProgressOk:
        assert self._client is not None
        return self._call(self._client.repair_status, run)

    def cluster_join(self, seed: str) -> str:
        assert self._client is not None
        return self._call(self._client.cluster_join, seed)

    def cluster_leave(self, node: str | None = None) -> str:
        assert self._client is not None
        return self._call(self._client.cluster_leave, node)

    def cluster_remove(self, node: str, *, force: bool = False) -> str:
        assert self._client is not None
        return self._call(self._client.cluster_remove, node, force=force)

    def cluster_plan(self, action: str, node: str | None = None, *, seed: str | None = None, address: str | None = None) -> messages.ClusterPlanOk:
        assert self._client is not None
        return self._call(self._client.cluster_plan, action, node, seed=seed, address=address)

    def cluster_transfers(self, *, local_only: bool = False) -> messages.ClusterTransfersOk:
        assert self._client is not None
        return self._call(self._client.cluster_transfers, local_only=local_only)

    def log_level(self, level: str) -> messages.LogLevelOk:
        assert self._client is not None
        return self._call(self._client.log_level, level)

    def stats(self) -> messages.StatsOk:
        assert self._client is not None
        return self._call(self._client.stats)

    def info(self) -> messages.InfoOk:
        assert self._client is not None
        return self._call(self._client.info)

    def ring(self) -> messages.RingOk:
        assert self._client is not None
        return self._call(self._client.ring)

    def close(self) -> None:
        if self._token is not None and self._stop is not None:
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join()
        self._client = None

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
