"""The client library: `open_client` (async, trio), `BlockingClient` (plain scripts) and
`open_cluster_client` (routes each request to a primary of its key).

    async with open_client("127.0.0.1:7400") as client:
        result = await client.get(b"cart:42")          # GetResult(values=[...], context=b"...")
        context = await client.put(b"cart:42", b"...", context=result.context)

Failures raise `DynError` subclasses from `dynd.protocol.errors`: `Unreachable` when the node
cannot be reached or the connection drops, `Timeout` when no reply comes in time, and the node's
own error otherwise. TLS: give `ssl_context` (for a client, `dynd.protocol.tls.client_context(ca_file)`,
which checks the host name; a node uses its own mutual-TLS context).

Modules: `connection` (one connection to one node: the hello, requests and replies), `cluster`
(the ring-aware routing client and `key_placement`), `blocking` (`BlockingClient`). The library
sees only `dynd.protocol` (tests/unit/test_layering.py), so `dynctl` loads no part of the node.
"""

from dynd.client.blocking import BlockingClient
from dynd.client.cluster import ClusterClient, KeyPlacement, key_placement, open_cluster_client
from dynd.client.connection import (
    DEFAULT_TIMEOUT_S,
    Client,
    GetResult,
    KeyLike,
    PeerCredentials,
    Sibling,
    open_client,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "BlockingClient",
    "Client",
    "ClusterClient",
    "GetResult",
    "KeyLike",
    "KeyPlacement",
    "PeerCredentials",
    "Sibling",
    "key_placement",
    "open_client",
    "open_cluster_client",
]
