"""The client library: `open_client` (async, trio), `BlockingClient` (plain scripts, trio in a
thread), `SyncClient` (a blocking socket, no trio: short-lived processes) and `open_cluster_client`
(routes each request to a primary of its key).

    async with open_client("127.0.0.1:7400") as client:
        result = await client.get(b"cart:42")          # GetResult(values=[...], context=b"...")
        context = await client.put(b"cart:42", b"...", context=result.context)

Failures raise `DynError` subclasses from `dynd.protocol.errors`: `Unreachable` when the node
cannot be reached or the connection drops (refined in `dynd.client.errors`: `CannotConnect` when
nothing accepts the connection, `NotADyndNode` when what answers is another kind of server),
`Timeout` when no reply comes in time, and the node's own error otherwise. TLS: give `ssl_context`
(for a client, `dynd.protocol.tls.client_context(ca_file)`, which checks the host name; a node uses
its own mutual-TLS context).

Modules: `connection` (one trio connection to one node: the hello, requests and replies), `sync`
(the same over a blocking socket), `results` (what requests return; no trio), `errors`, `cluster`
(the ring-aware routing client and `key_placement`), `blocking` (`BlockingClient`). The library
sees only `dynd.protocol` (tests/unit/test_layering.py), so `dynctl` loads no part of the node.

The names below load their module on first use (PEP 562), so `from dynd.client import SyncClient`
does not import trio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dynd.client.blocking import BlockingClient
    from dynd.client.cluster import ClusterClient, KeyPlacement, key_placement, open_cluster_client
    from dynd.client.connection import Client, PeerCredentials, open_client
    from dynd.client.errors import CannotConnect, NotADyndNode
    from dynd.client.results import DEFAULT_TIMEOUT_S, GetResult, KeyLike, Sibling
    from dynd.client.sync import SyncClient

_HOMES = {
    "DEFAULT_TIMEOUT_S": "results",
    "GetResult": "results",
    "KeyLike": "results",
    "Sibling": "results",
    "CannotConnect": "errors",
    "NotADyndNode": "errors",
    "SyncClient": "sync",
    "Client": "connection",
    "PeerCredentials": "connection",
    "open_client": "connection",
    "BlockingClient": "blocking",
    "ClusterClient": "cluster",
    "KeyPlacement": "cluster",
    "key_placement": "cluster",
    "open_cluster_client": "cluster",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # found directly next time
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
