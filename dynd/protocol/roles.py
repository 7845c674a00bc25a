"""The roles a connection may hold (DESIGN.md section 6a), from least to most trusted.

Only the names and what each implies: who gets which role, and the proofs, are `dynd.protocol.auth`.
Apart so the message table (`dynd.protocol.messages`, which names the role each request needs)
does not load the hashing and address parsing that checking credentials needs.
"""

from __future__ import annotations

CLIENT, ADMIN, PEER = "client", "admin", "peer"
ROLES = (CLIENT, ADMIN, PEER)
# What each role implies: a higher role may do everything a lower one may.
ROLE_GRANTS: dict[str, frozenset[str]] = {
    CLIENT: frozenset({CLIENT}),
    ADMIN: frozenset({CLIENT, ADMIN}),
    PEER: frozenset({CLIENT, ADMIN, PEER}),
}
ALL_ROLES = ROLE_GRANTS[PEER]
