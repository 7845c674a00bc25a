"""What the daemon's shells share about security: the credentials in force and the event log.

`Security` is one mutable holder, made by `dynd.cli` at start and updated in place when SIGHUP
rereads the secret and tokens files, so the server, the peer links and the failure detector see a
rotation at once without a restart. Connections already authenticated stay so.

`SecurityEvents` counts every refusal by kind and logs it with the remote address, at most
`LOG_BURST` lines per kind per `LOG_WINDOW_S`, then one line saying how many were not logged: a
flood of bad hellos must not become a flood of log lines.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from dynd.protocol.auth import EMPTY_TOKENS, Keyring, TokenTable

log = logging.getLogger("dynd.security")

LOG_WINDOW_S = 10.0
LOG_BURST = 5

# Kinds of security event, as counted and logged.
HELLO_REFUSED = "hello_refused"  # bad or missing credential, wrong cluster, proof that fails
UNAUTHORIZED = "unauthorized"  # a request the connection holds no role for
BAD_MAC = "bad_mac"  # a datagram whose MAC fails
REPLAY = "replay"  # a datagram seen before, or from an older life of its sender
SOURCE_MISMATCH = "source_mismatch"  # a datagram from an address that is not its sender's
PEER_LIMIT = "peer_limit"  # data from a peer over a limit a client's write would meet
CONNECTION_LIMIT = "connection_limit"  # connections, partial frames or hellos over their caps
EVICTED = "evicted"  # an idle anonymous connection closed to make room


class SecurityEvents:
    """Counts and rate-limited logs of refusals. `clock` is monotonic seconds (injectable for tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.counts: Counter[str] = Counter()
        self._clock = clock
        self._window: dict[str, tuple[float, int, int]] = {}  # kind -> (window start, logged, suppressed)

    def record(self, kind: str, remote: str, detail: str) -> None:
        self.counts[kind] += 1
        now = self._clock()
        start, logged, suppressed = self._window.get(kind, (now, 0, 0))
        if now - start >= LOG_WINDOW_S:
            if suppressed:
                log.warning("security: %d more %s events in the last %.0f s were not logged", suppressed, kind, now - start)
            start, logged, suppressed = now, 0, 0
        if logged < LOG_BURST:
            log.warning("security: %s from %s: %s", kind, remote, detail[:200])
            logged += 1
        else:
            suppressed += 1
        self._window[kind] = (start, logged, suppressed)

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)


@dataclass
class Security:
    """The credentials in force. `keyring` None: no cluster secret (loopback only, or a network the
    operator declared trusted): every connection holds every role, as in the paper's model."""

    cluster_id: str = ""
    keyring: Keyring | None = None
    tokens: TokenTable = EMPTY_TOKENS
    trusted_network: bool = False
    server_ssl: ssl.SSLContext | None = None  # TLS on the port, when configured
    client_ssl: ssl.SSLContext | None = None  # TLS to peers (with this node's certificate)
    events: SecurityEvents = field(default_factory=SecurityEvents)

    @property
    def open(self) -> bool:
        """No secret: nothing to prove, every connection is trusted."""
        return self.keyring is None
