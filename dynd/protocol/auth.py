"""Who may talk to a node: the cluster secret, client tokens, roles and the proofs of the hello.

No I/O here: the shell reads the files (`load_keyring`, `load_tokens` take their text) and
keeps the results; the server, the peer links and the failure detector call the pure functions.

Roles (DESIGN.md section 6a), from least to most trusted:
- `client`: get, put, delete, ping, ring. Anyone, unless the operator configures client tokens.
- `admin`: membership changes, repair, cluster status. An admin token, or a connection from the
  node's own host (loopback).
- `peer`: replication, handoff, hints, gossip, anti-entropy, forwarded requests. Only a holder of
  the cluster secret, proved in the hello. The secret is the cluster's root credential (whoever
  holds it can act as any member), so a peer holds every role.

The peer hello is a mutual challenge-response. The dialer D sends a fresh nonce Nd with its
name and the cluster id; the listener L answers with its own nonce Nl and
HMAC-SHA256(K, ["listener", cluster, D, L, Nd, Nl]); D checks that proof (and that L is the member
it meant to reach), then proves itself with HMAC-SHA256(K, ["dialer", cluster, D, L, Nd, Nl]).
The label keeps a listener's proof from ever serving as a dialer's; the nonces keep any proof from
being replayed on another connection. Without TLS this authenticates the ends of a connection,
not the bytes that follow: an attacker who can already rewrite traffic on the path needs TLS.

Rotation: a keyring holds one or two secrets. The first proves; any of them is accepted. Moving a
cluster from secret A to B without downtime: give every node "A then B", then "B then A", then
"B" alone (SIGHUP rereads the file), and at every step every pair of nodes shares a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
from dataclasses import dataclass

import cbor2

# The role names live in `roles` (the message table needs them without the hashing here); they
# stay importable from auth, where callers have always found them.
from dynd.protocol.roles import ADMIN, ALL_ROLES, CLIENT, PEER, ROLE_GRANTS, ROLES  # noqa: F401

SECRET_BYTES_MIN = 32
SECRETS_MAX = 2  # the current one and, during a rotation, one more
NONCE_BYTES = 32
PROOF_BYTES = 32  # HMAC-SHA256
TOKEN_CHARS_MIN = 16
TOKENS_MAX = 1024


_HEX_LINE = re.compile(r"^[0-9a-fA-F]+$")


class AuthConfigError(ValueError):
    """A secret or token file that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True, slots=True)
class Keyring:
    """The cluster secrets: `secrets[0]` proves, every one of them is accepted."""

    secrets: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.secrets) <= SECRETS_MAX:
            raise AuthConfigError(f"a keyring holds 1 or {SECRETS_MAX} secrets, not {len(self.secrets)}")
        for secret in self.secrets:
            if len(secret) < SECRET_BYTES_MIN:
                raise AuthConfigError(f"a cluster secret must be at least {SECRET_BYTES_MIN} bytes")

    @property
    def current(self) -> bytes:
        return self.secrets[0]


def load_keyring(text: str, source: str = "the secret file") -> Keyring:
    """Parse a secret file: one secret per line as hex (at least 64 hex digits, 32 bytes), the
    first the one this node proves with; a second line during a rotation. '#' starts a comment."""
    secrets: list[bytes] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not _HEX_LINE.match(line) or len(line) % 2:
            raise AuthConfigError(f"{source} line {number}: a secret is written as hex digits (make one with: openssl rand -hex 32)")
        secret = bytes.fromhex(line)
        if len(secret) < SECRET_BYTES_MIN:
            raise AuthConfigError(
                f"{source} line {number}: a secret must be at least {SECRET_BYTES_MIN} bytes ({2 * SECRET_BYTES_MIN} hex digits); "
                "make one with: openssl rand -hex 32"
            )
        secrets.append(secret)
    if not secrets:
        raise AuthConfigError(f"{source} holds no secret (make one with: openssl rand -hex 32)")
    if len(secrets) > SECRETS_MAX:
        raise AuthConfigError(f"{source} holds {len(secrets)} secrets; at most {SECRETS_MAX} (the current one, and the other during a rotation)")
    return Keyring(tuple(secrets))


def new_secret_text() -> str:
    """A new secret file's contents (32 random bytes as hex)."""
    return os.urandom(SECRET_BYTES_MIN).hex() + "\n"


@dataclass(frozen=True, slots=True)
class TokenTable:
    """Client credentials: SHA-256 digests of tokens and the role each grants (client or admin).

    Only digests are kept, and a presented token is compared with every one of them in constant
    time, so neither the comparison's time nor a memory dump gives a token away."""

    entries: tuple[tuple[bytes, str], ...]

    @property
    def has_client_tokens(self) -> bool:
        return bool(self.entries)

    def role_of(self, token: str) -> str | None:
        digest = hashlib.sha256(token.encode()).digest()
        found: str | None = None
        for stored, role in self.entries:
            if hmac.compare_digest(stored, digest) and (found is None or role == ADMIN):
                found = role
        return found


EMPTY_TOKENS = TokenTable(())


def load_tokens(text: str, source: str = "the tokens file") -> TokenTable:
    """Parse a tokens file: lines of `ROLE TOKEN` (role `client` or `admin`; a token of at least
    16 printable characters, no spaces). '#' starts a comment."""
    entries: list[tuple[bytes, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in (CLIENT, ADMIN):
            raise AuthConfigError(f"{source} line {number}: expected 'client TOKEN' or 'admin TOKEN'")
        role, token = parts
        if len(token) < TOKEN_CHARS_MIN or not token.isprintable():
            raise AuthConfigError(f"{source} line {number}: a token must be at least {TOKEN_CHARS_MIN} printable characters")
        entries.append((hashlib.sha256(token.encode()).digest(), role))
    if len(entries) > TOKENS_MAX:
        raise AuthConfigError(f"{source} holds {len(entries)} tokens; at most {TOKENS_MAX}")
    return TokenTable(tuple(entries))


def read_token_file(text: str, source: str = "the token file") -> str:
    """A client's token file: the token alone on its first non-empty line."""
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            return line
    raise AuthConfigError(f"{source} holds no token")


# ---- proofs ----

LISTENER, DIALER = "listener", "dialer"


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def proof(secret: bytes, side: str, cluster: str, dialer: str, listener: str, dialer_nonce: bytes, listener_nonce: bytes) -> bytes:
    """HMAC-SHA256 over an unambiguous encoding of everything both ends agreed on."""
    message = cbor2.dumps(["dynd-hello-1", side, cluster, dialer, listener, dialer_nonce, listener_nonce])
    return hmac.new(secret, message, hashlib.sha256).digest()


def make_proof(keyring: Keyring, side: str, cluster: str, dialer: str, listener: str, dialer_nonce: bytes, listener_nonce: bytes) -> bytes:
    return proof(keyring.current, side, cluster, dialer, listener, dialer_nonce, listener_nonce)


def check_proof(
    keyring: Keyring, given: bytes, side: str, cluster: str, dialer: str, listener: str, dialer_nonce: bytes, listener_nonce: bytes
) -> bool:
    """True when `given` was made with any secret of the keyring (each compared in constant time)."""
    ok = False
    for secret in keyring.secrets:
        expected = proof(secret, side, cluster, dialer, listener, dialer_nonce, listener_nonce)
        ok |= hmac.compare_digest(expected, given)
    return ok


# ---- datagram MACs (the failure detector) ----

DATAGRAM_MAC_BYTES = 16  # HMAC-SHA256 truncated to 128 bits, as IPsec and TLS truncate theirs
_NO_SECRET = b"dynd-no-secret"  # loopback or declared-trusted clusters: integrity, not authenticity


def datagram_mac(secret: bytes | None, body: bytes) -> bytes:
    return hmac.new(secret or _NO_SECRET, body, hashlib.sha256).digest()[:DATAGRAM_MAC_BYTES]


def check_datagram_mac(keyring: Keyring | None, body: bytes, given: bytes) -> bool:
    secrets: tuple[bytes | None, ...] = keyring.secrets if keyring is not None else (None,)
    ok = False
    for secret in secrets:
        ok |= hmac.compare_digest(datagram_mac(secret, body), given)
    return ok


# ---- addresses ----


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1, an IPv4-mapped loopback, and the name localhost."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
