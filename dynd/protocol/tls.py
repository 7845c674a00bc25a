"""Optional TLS for dynd's fd-based connections, sans-IO: raw bytes in, plain bytes out.

The server and the client read with `os.read` after `trio.lowlevel.wait_readable` and write with
`os.write` (DESIGN.md section 10), so TLS cannot be a trio stream in between. `TlsLayer` is an
`ssl.SSLObject` over two memory BIOs: the caller feeds it what the socket gave (`receive`), gets
back the application bytes, and writes whatever `outgoing()` returns. It never blocks and never
does I/O; the handshake happens inside `receive` and `send`.

It lives in the protocol package because both ends use it: the node's server (`dynd.shell.server`)
and the client library (`dynd.client`), which may import nothing but the protocol. Like
`dynd.protocol.auth` it reads credential files (the contexts below) and touches no socket.

States of a `TlsLayer` (a failure or a close is final):

    state        receive(raw)                          send(plain)          next state
    handshaking  advances the handshake; returns the   queued until open    open (handshake done),
                 application bytes that follow it                           failed (bad peer)
    open         decrypts                              encrypts             closed (close_notify),
                                                                            failed (bad record)
    closed       raises TlsError(clean=True)           raises               -
    failed       raises the same TlsError              raises               -

After every `receive`, `send` and `close` the caller writes `outgoing()` to the socket when it is not
empty: it holds handshake records, encrypted data and alerts. After a `TlsError` the caller may
still write `outgoing()` once (it may hold the alert that tells the peer why) and then closes the
connection.

Contexts (`server_context`, `client_context`) and the choices they make:

- TLS 1.2 or later; no session tickets (dynd connections are long-lived, nothing resumes them).
- The server asks every peer for a certificate and verifies one that is presented against the
  cluster CA (CERT_OPTIONAL): nodes present theirs (mutual TLS between peers) while clients without
  a certificate can still connect over TLS. A certificate from another CA fails the handshake.
- A node connecting to a peer (`client_context(settings)`) requires the peer's certificate to chain
  to the cluster CA and presents its own, but does not check the host name: peers are addressed by
  whatever IP or name the membership holds, which certificates need not list, and the peer's
  identity (its node name) is proven anyway by the cluster-secret hello that follows. The CA proves
  the far end belongs to the cluster; the hello proves which member it is.
- A client (`client_context(ca_file)`) checks the host name (or IP) it connects to against the
  server's certificate unless told not to (`check_hostname=False`).
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Any

TLS_RECORD_HANDSHAKE = 0x16  # the first byte of every TLS connection (a handshake record)
READ_BYTES = 16 * 1024  # one TLS record's plaintext at most (2^14 bytes): one read per record


class TlsConfigError(ValueError):
    """A TLS file is missing, unreadable or not what it should be."""


class TlsError(Exception):
    """The TLS session cannot go on: the caller closes the connection.

    `clean`: the peer ended the session with close_notify (not a failure).
    `not_tls`: the peer does not speak TLS at all (a plain-TCP client on a TLS port, or a node
    without TLS answering a TLS client).
    `refused`: a certificate was refused, by this side or (an alert says) by the peer.
    """

    def __init__(self, message: str, *, clean: bool = False, not_tls: bool = False, refused: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.clean = clean
        self.not_tls = not_tls
        self.refused = refused


# ---- settings and contexts ----


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """A node's TLS files, all PEM: its certificate (chain), its private key (may be the same file
    as the certificate) and the cluster CA that signs every node's certificate."""

    cert_file: str
    key_file: str
    ca_file: str

    def __post_init__(self) -> None:
        for name in ("cert_file", "key_file", "ca_file"):
            path = getattr(self, name)
            if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
                raise TlsConfigError(f"tls {name} must name a PEM file")
            _check_readable(f"tls {name}", os.fspath(path))


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """The context for a node's port: presents the node's certificate; verifies a client
    certificate against the cluster CA when one is presented (CERT_OPTIONAL)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    _load_chain(context, settings.cert_file, settings.key_file)
    _load_ca(context, settings.ca_file)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.num_tickets = 0
    return context


def client_context(
    settings_or_ca: TlsSettings | str | os.PathLike[str],
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
    *,
    check_hostname: bool | None = None,
) -> ssl.SSLContext:
    """The context for connecting to a node.

    Given `TlsSettings` (a node reaching its peers): presents the node's certificate, requires the
    peer's to chain to the cluster CA, and does not check host names unless `check_hostname=True`
    (see the module docstring). Given a CA file (a client): verifies the node against that CA and
    checks the host name unless `check_hostname=False`; `cert` and `key` add a client certificate.
    """
    if isinstance(settings_or_ca, TlsSettings):
        if cert is not None or key is not None:
            raise TlsConfigError("give either TlsSettings or a CA file with cert and key, not both")
        ca_file, cert, key = settings_or_ca.ca_file, settings_or_ca.cert_file, settings_or_ca.key_file
        default_check = False
    else:
        ca_file = os.fspath(settings_or_ca)
        _check_readable("tls CA file", ca_file)
        default_check = True
    if key is not None and cert is None:
        raise TlsConfigError("a client key needs its certificate (cert)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(context)
    context.check_hostname = default_check if check_hostname is None else check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    _load_ca(context, os.fspath(ca_file))
    if cert is not None:
        cert_file = os.fspath(cert)
        _check_readable("tls certificate file", cert_file)
        key_file = cert_file if key is None else os.fspath(key)
        _check_readable("tls key file", key_file)
        _load_chain(context, cert_file, key_file)
    return context


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION


def _check_readable(what: str, path: str) -> None:
    if not os.path.isfile(path):
        raise TlsConfigError(f"{what} {path!r} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise TlsConfigError(f"{what} {path!r} is not readable by this user")


def _load_chain(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise TlsConfigError(
            f"cannot load the certificate {cert_file!r} with the key {key_file!r} "
            f"(both PEM, the key unencrypted and matching the certificate): {exc.reason or exc}"
        ) from None
    except OSError as exc:
        raise TlsConfigError(f"cannot read {cert_file!r} or {key_file!r}: {exc.strerror or exc}") from None


def _load_ca(context: ssl.SSLContext, ca_file: str) -> None:
    try:
        context.load_verify_locations(cafile=ca_file)
    except ssl.SSLError as exc:
        raise TlsConfigError(f"cannot load the CA {ca_file!r} (PEM certificates expected): {exc.reason or exc}") from None
    except OSError as exc:
        raise TlsConfigError(f"cannot read the CA {ca_file!r}: {exc.strerror or exc}") from None
    if not context.get_ca_certs():
        raise TlsConfigError(f"the CA file {ca_file!r} holds no certificate")


# ---- the layer ----

_HANDSHAKING, _OPEN, _CLOSED, _FAILED = "handshaking", "open", "closed", "failed"
_HANDSHAKE_FAILED = "TLS handshake failed"


class TlsLayer:
    """One side of one TLS session over memory. Make it with `TlsLayer.server(context)` or
    `TlsLayer.client(context, server_hostname)`; a client's hello is in `outgoing()` at once."""

    __slots__ = ("_incoming", "_outgoing", "_ssl", "_state", "_pending", "_error", "_server_side", "_seen_bytes", "_handshook")

    def __init__(self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        if not server_side and context.check_hostname and not server_hostname:
            raise TlsConfigError("this context checks host names: give server_hostname")
        self._ssl = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=None if server_side else server_hostname
        )
        self._state = _HANDSHAKING
        self._pending: list[bytes] = []  # plain bytes sent before the handshake finished
        self._error: TlsError | None = None
        self._server_side = server_side
        self._seen_bytes = False
        self._handshook = False
        if not server_side:
            self._advance_handshake()  # the ClientHello

    @classmethod
    def server(cls, context: ssl.SSLContext) -> TlsLayer:
        return cls(context, server_side=True)

    @classmethod
    def client(cls, context: ssl.SSLContext, server_hostname: str | None = None) -> TlsLayer:
        return cls(context, server_side=False, server_hostname=server_hostname)

    # ---- events in ----

    def receive(self, raw: bytes) -> bytes:
        """Feed bytes read from the socket; return the application bytes they complete (often b"").
        `raw` empty means the socket reached end of file. Raises TlsError when the session fails or
        the peer closed it."""
        if self._state is not _OPEN:
            self._check_usable()
        if not raw:
            return self._eof()
        if not self._seen_bytes:
            self._seen_bytes = True
            if self._server_side and raw[0] != TLS_RECORD_HANDSHAKE:
                raise self._fail(TlsError("the peer does not speak TLS (its first bytes are not a TLS handshake)", not_tls=True))
        self._incoming.write(raw)
        if self._state is _HANDSHAKING and not self._advance_handshake():
            return b""
        return self._read_all()

    def send(self, plain: bytes) -> None:
        """Encrypt application bytes; they are in `outgoing()` now (or once the handshake is done)."""
        if self._state is _OPEN:
            if plain:
                self._write(plain)
            return
        self._check_usable()
        if plain:
            self._pending.append(bytes(plain))

    def close(self) -> None:
        """Queue a close_notify (in `outgoing()`); the layer accepts nothing more."""
        if self._state is _OPEN:
            try:
                self._ssl.unwrap()
            except (ssl.SSLWantReadError, ssl.SSLError):
                pass  # the peer's close_notify is not awaited
        if self._state in (_HANDSHAKING, _OPEN):
            self._state = _CLOSED

    # ---- effects out ----

    def outgoing(self) -> bytes:
        """Raw bytes to write to the socket now (b"" when there are none)."""
        return self._outgoing.read()

    @property
    def wants_write(self) -> bool:
        return self._outgoing.pending > 0

    # ---- what the session is ----

    @property
    def handshake_done(self) -> bool:
        """The handshake finished (and stays so after the session closes or fails)."""
        return self._handshook

    @property
    def server_side(self) -> bool:
        return self._server_side

    def peer_certificate(self, binary: bool = False) -> Any:
        """The peer's verified certificate (a dict as `ssl.SSLSocket.getpeercert` gives, or DER
        bytes when `binary`), or None when the peer presented none or the handshake is not done."""
        if not self._handshook:
            return None
        try:
            certificate = self._ssl.getpeercert(binary_form=binary)
        except ValueError:
            return None
        return certificate or None

    @property
    def version(self) -> str | None:
        return self._ssl.version()

    @property
    def cipher(self) -> str | None:
        cipher = self._ssl.cipher()
        return cipher[0] if cipher else None

    # ---- machinery ----

    def _check_usable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._state is _CLOSED:
            raise TlsError("the TLS session is closed", clean=True)

    def _advance_handshake(self) -> bool:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as exc:
            raise self._fail(_translate(exc, _HANDSHAKE_FAILED)) from None
        self._state = _OPEN
        self._handshook = True
        pending, self._pending = self._pending, []
        for plain in pending:
            self._write(plain)
        return True

    def _read_all(self) -> bytes:
        chunks: list[bytes] = []
        read, pending, incoming = self._ssl.read, self._ssl.pending, self._incoming
        while True:
            try:
                data = read(READ_BYTES)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify, as some versions report it
                self._state = _CLOSED
                break
            except ssl.SSLEOFError:  # end of file without close_notify (only after receive(b""))
                self._fail(TlsError("the peer closed the connection without a TLS close_notify"))
                break
            except ssl.SSLError as exc:
                raise self._fail(_translate(exc, "TLS record refused")) from None
            if not data:  # close_notify (SSLObject reads it as b""): what came before it is still delivered
                self._state = _CLOSED
                break
            chunks.append(data)
            if not incoming.pending and not pending():
                break  # every byte fed is used and nothing decrypted waits: another read would only fail
        if not chunks:
            if self._state is not _OPEN:
                self._check_usable()
            return b""
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _write(self, plain: bytes) -> None:
        try:
            self._ssl.write(plain)  # memory BIOs never push back: it takes everything
        except ssl.SSLError as exc:
            raise self._fail(_translate(exc, "TLS write failed")) from None

    def _eof(self) -> bytes:
        self._incoming.write_eof()
        if self._state is _HANDSHAKING:
            raise self._fail(TlsError("the peer closed the connection during the TLS handshake"))
        data = self._read_all()  # raises unless the bytes before the end of file held application data
        if data:
            return data
        raise self._fail(TlsError("the peer closed the connection without a TLS close_notify"))

    def _fail(self, error: TlsError) -> TlsError:
        self._state = _FAILED
        self._error = error
        self._pending.clear()
        return error


# OpenSSL's reasons when the bytes that came back are not TLS records at all.
_NOT_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "PACKET_LENGTH_TOO_LONG"})


def _translate(exc: ssl.SSLError, what: str) -> TlsError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TlsError(f"{what}: the peer's certificate is not trusted ({exc.verify_message})", refused=True)
    if isinstance(exc, ssl.SSLZeroReturnError):
        return TlsError("the peer closed the TLS session", clean=True)
    reason = exc.reason or str(exc)
    text = reason.lower().replace("_", " ")
    if reason in _NOT_TLS_REASONS and what == _HANDSHAKE_FAILED:
        return TlsError(f"{what}: {text} (the peer does not speak TLS)", not_tls=True)
    # An alert from the peer about our certificate (unknown ca, bad certificate, certificate required ...).
    refused = "ALERT" in reason and ("CERTIFICATE" in reason or "UNKNOWN_CA" in reason)
    return TlsError(f"{what}: {text}", refused=refused)
