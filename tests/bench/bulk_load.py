"""Load many fresh keys fast: routed, pipelined puts over a few connections (used by the memory and
handoff benchmarks). Each routing client holds one connection per node and many requests in
flight on each, so the loader is bounded by the servers, not by round trips.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import trio

from dynd.client import open_cluster_client
from dynd.protocol.errors import DynError

LOAD_CONNECTIONS = 4
LOAD_IN_FLIGHT = 64
PUT_ATTEMPTS_MAX = 5


def load_key(prefix: bytes, index: int) -> bytes:
    return b"%s:%010d" % (prefix, index)


async def load(
    seed: str,
    first: int,
    stop: int,
    value_size: int,
    *,
    prefix: bytes = b"load",
    deadline_s: float,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Put keys first..stop-1 (no context: fresh keys), each value `value_size` random-ish bytes.
    Returns how many were written before `deadline_s` (monotonic clock) ran out."""
    value = os.urandom(value_size)
    next_index = [first]
    written = [0]
    async with trio.open_nursery() as nursery:
        clients = [await nursery.start(_client, seed) for _ in range(LOAD_CONNECTIONS)]

        async def worker(worker_index: int) -> None:
            client = clients[worker_index % len(clients)]
            while next_index[0] < stop and time.monotonic() < deadline_s:
                index = next_index[0]
                next_index[0] += 1
                for attempt in range(PUT_ATTEMPTS_MAX):
                    try:
                        await client.put(load_key(prefix, index), value)
                        break
                    except DynError:
                        if attempt == PUT_ATTEMPTS_MAX - 1:
                            raise
                        await trio.sleep(0.05 * (attempt + 1))  # back off: a node may be shedding load
                written[0] += 1
                if progress is not None and written[0] % 10_000 == 0:
                    progress(written[0])

        async with trio.open_nursery() as workers:
            for worker_index in range(LOAD_IN_FLIGHT):
                workers.start_soon(worker, worker_index)
        nursery.cancel_scope.cancel()
    return written[0]


async def _client(seed: str, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    async with open_cluster_client(seed, timeout_s=30.0) as client:
        task_status.started(client)
        await trio.sleep_forever()
