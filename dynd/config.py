"""dynd's configuration: a TOML file, overridden by command-line flags, checked before start.

    [node]
    name = "node1"              # this node's identity; also the actor in the dots it writes
    listen = "127.0.0.1:7400"
    data_dir = "/var/lib/dynd"
    log_level = "info"
    log_format = "text"         # text | json (one object per line: time, level, node, event, fields)

    advertise = ""              # HOST:PORT other nodes use to reach this one (default: listen)
    seeds = []                  # HOST:PORT of nodes to gossip with besides the members
    join = ""                   # on first start, join the cluster of the node at HOST:PORT
    metrics_listen = ""         # HOST:PORT serving GET /metrics (Prometheus); off when empty
    http_listen = ""            # HOST:PORT serving Riak's HTTP KV interface; off when empty
    metrics = true              # false: no latency histograms or request counters (to measure their cost)
    commit_engine = "process"   # who commits to LMDB: "process" (a writer child) or "thread" (in this process)
    workers = 1                 # node processes on this host, or "auto" (one per core): see dynd.workers
    location = ""               # where this node runs, zone/rack/host (default: the host name); see dynd(8)

    [security]                  # DESIGN.md section 6a; man dynd(8), SECURITY
    cluster_secret_file = ""    # hex secrets, one or two lines (openssl rand -hex 32); mode 0600
    client_tokens_file = ""     # lines of `client TOKEN` or `admin TOKEN`
    trusted_network = false     # without a secret, listen beyond loopback anyway (logged)
    tls_cert_file = ""          # TLS on the port: all three, PEM; this node's certificate,
    tls_key_file = ""           #   its key,
    tls_ca_file = ""            #   and the CA that signs every node's (peers verify each other)

    [cluster]                   # used only by the node that creates the cluster
    partitions = 256            # Q, a power of two, fixed at creation
    replicas = 3                # N
    r = 2
    w = 2

    [limits]                    # every field of dynd.core.limits.Limits, by name
    value_bytes_max = 1048576

Unknown tables or keys, and values of the wrong type, are errors that name the offending key.

The files [security] names are read by `load_credentials` (at start and on SIGHUP), not by
`load_config`: their errors name the setting too. `check_protected_mode` is the rule that a node
without a secret serves loopback only unless the network is declared trusted.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import stat
import tomllib
from dataclasses import dataclass, field
from typing import Any

from dynd.core.limits import Limits
from dynd.core.partition import check_partition_count
from dynd.protocol.address import DEFAULT_PORT, format_address, parse_address
from dynd.protocol.locations import LocationError, check_location, default_location
from dynd.protocol.auth import EMPTY_TOKENS, AuthConfigError, Keyring, TokenTable, is_loopback_host, load_keyring, load_tokens
from dynd.workers import WorkersError, parse_workers, worker_data_dir, worker_name, worker_port

NODE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")  # dynd.shell.logs writes them
COMMIT_ENGINES = ("thread", "process")  # dynd.shell.commit_engines: CommitThreadEngine, WriterProcessEngine
DEFAULT_PARTITIONS = 256


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Config:
    name: str = ""
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    data_dir: str = ""
    log_level: str = "info"
    log_format: str = "text"
    advertise: str = ""
    seeds: tuple[str, ...] = ()
    join: str = ""
    metrics_listen: str = ""  # "" : no metrics endpoint
    http_listen: str = ""  # "" : no HTTP door (dynd.shell.http_server)
    metrics: bool = True  # False: the node keeps no latency histograms or request counters
    commit_engine: str = "process"  # one of COMMIT_ENGINES: see dynd.shell.commit_engines
    workers: int = 1  # node processes on this host ("auto" resolved at load): see dynd.workers
    location: str = ""  # a path (dynd.protocol.locations); load_config makes "" the host name's; "" here: unknown
    partitions: int | None = None  # None: the cluster's (when joining or restarting), else DEFAULT_PARTITIONS
    replicas: int = 3
    r: int = 2
    w: int = 2
    cluster_secret_file: str = ""
    client_tokens_file: str = ""
    trusted_network: bool = False
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_file: str = ""
    limits: Limits = field(default_factory=Limits)

    @property
    def tls_enabled(self) -> bool:
        """TLS on the port, for clients and peers (mutual between peers): all three files set."""
        return bool(self.tls_cert_file and self.tls_key_file and self.tls_ca_file)

    @property
    def partitions_for_new_cluster(self) -> int:
        return self.partitions if self.partitions is not None else DEFAULT_PARTITIONS

    @property
    def advertised_address(self) -> str:
        """HOST:PORT the other nodes and the clients they refer reach this node at: `advertise`,
        else `listen` (which `_validate` requires not to be a wildcard then)."""
        return format_address(*parse_address(self.advertise or self.listen))

    @property
    def seed_addresses(self) -> tuple[str, ...]:
        """`seeds`, each written as the membership writes addresses (so a node knows itself among them)."""
        return tuple(format_address(*parse_address(seed)) for seed in self.seeds)

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return parse_address(self.listen)

    def for_worker(self, index: int) -> Config:
        """Worker `index`'s config (dynd.workers): its name, ports and data directory; the rest
        shared. With one worker, this config itself. WorkersError when a name or port does not fit."""
        if not 0 <= index < self.workers:
            raise WorkersError(f"worker {index} does not exist: workers = {self.workers}")
        if self.workers == 1:
            return self
        name = worker_name(self.name, index, self.workers)
        if not NODE_NAME_PATTERN.match(name):
            raise WorkersError(f"node name {self.name!r} is too long for {self.workers} workers: worker {index} would be {name!r}, beyond 64 characters")
        host, port = self.listen_host_port
        join = self.join
        if not join and index > 0:  # this host creates the cluster: worker 0 does, the others join it
            join = self.for_worker(0).advertised_address
        return dataclasses.replace(
            self,
            name=name,
            listen=format_address(host, worker_port(port, index, "listen")),
            advertise=_shifted(self.advertise, index, "advertise"),
            metrics_listen=_shifted(self.metrics_listen, index, "metrics_listen"),
            http_listen=_shifted(self.http_listen, index, "http_listen"),
            data_dir=worker_data_dir(self.data_dir, index, self.workers),
            join=join,
        )


def _shifted(address: str, index: int, setting: str) -> str:
    if not address:
        return address
    host, port = parse_address(address)
    return format_address(host, worker_port(port, index, setting))


_SECTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "node": {"name": str, "listen": str, "data_dir": str, "log_level": str, "log_format": str, "advertise": str, "seeds": list, "join": str, "metrics_listen": str, "http_listen": str, "metrics": bool, "commit_engine": str, "workers": (int, str), "location": str},
    "cluster": {"partitions": int, "replicas": int, "r": int, "w": int},
    "security": {
        "cluster_secret_file": str,
        "client_tokens_file": str,
        "trusted_network": bool,
        "tls_cert_file": str,
        "tls_key_file": str,
        "tls_ca_file": str,
    },
}


def load_config(path: str | None, overrides: dict[str, Any]) -> Config:
    """Read the TOML file at `path` (if any), apply non-None `overrides`, and validate the result."""
    values: dict[str, Any] = {}
    limit_values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as handle:
                document = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        for section, table in document.items():
            if section == "limits":
                limit_values = _check_table(section, table, {f.name: int for f in dataclasses.fields(Limits)})
            elif section in _SECTIONS:
                values.update(_check_table(section, table, _SECTIONS[section]))
            else:
                raise ConfigError(f"unknown config table [{section}] (known: {', '.join([*_SECTIONS, 'limits'])})")
    values.update({key: value for key, value in overrides.items() if value is not None})
    if not values.get("location"):
        values["location"] = default_location(socket.gethostname())
    if "seeds" in values:
        if not all(isinstance(seed, str) for seed in values["seeds"]):
            raise ConfigError("[node] seeds must be a list of HOST:PORT strings")
        values["seeds"] = tuple(values["seeds"])
    try:
        limits = Limits(**limit_values)
    except ValueError as exc:
        raise ConfigError(f"[limits]: {exc}") from None
    try:
        values["workers"] = parse_workers(values.get("workers", 1), limits.workers_max)
    except WorkersError as exc:
        raise ConfigError(str(exc)) from None
    config = Config(**values, limits=limits)
    _validate(config)
    return config


def _check_table(section: str, table: Any, schema: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] must be a table")
    checked: dict[str, Any] = {}
    for key, value in table.items():
        expected = schema.get(key)
        if expected is None:
            raise ConfigError(f"unknown key {key!r} in [{section}] (known: {', '.join(sorted(schema))})")
        allowed = expected if isinstance(expected, tuple) else (expected,)
        if type(value) not in allowed:
            raise ConfigError(f"[{section}] {key} must be {' or '.join(t.__name__ for t in allowed)}, got {type(value).__name__}")
        checked[key] = value
    return checked


WILDCARD_HOSTS = ("0.0.0.0", "::")


def _validate(config: Config) -> None:
    if not config.name:
        raise ConfigError("no node name: give --name NAME, or --config FILE with [node] name (see dynd --help)")
    if not NODE_NAME_PATTERN.match(config.name):
        raise ConfigError(
            f"node name {config.name!r} must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if not config.data_dir:
        raise ConfigError("no data directory: give --data-dir DIR, or [node] data_dir in the --config file")
    try:
        config.listen_host_port
    except ValueError as exc:
        raise ConfigError(f"listen address: {exc}") from None
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
    if config.commit_engine not in COMMIT_ENGINES:
        raise ConfigError(f"commit_engine must be one of {', '.join(COMMIT_ENGINES)}, not {config.commit_engine!r}")
    if config.location:
        try:
            check_location(config.location)
        except LocationError as exc:
            raise ConfigError(f"[node] location (--location): {exc}") from None
    if config.log_format not in LOG_FORMATS:
        raise ConfigError(f"log_format must be one of {', '.join(LOG_FORMATS)}, not {config.log_format!r}")
    try:
        check_partition_count(config.partitions_for_new_cluster)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    named = [("advertise", config.advertise), ("join", config.join), ("metrics_listen", config.metrics_listen), ("http_listen", config.http_listen)]
    for label, address in [*named, *(("seed", s) for s in config.seeds)]:
        if address:
            try:
                parse_address(address)
            except ValueError as exc:
                raise ConfigError(f"{label} address: {exc}") from None
    _validate_advertise(config)
    _validate_tls(config)
    _validate_workers(config)
    if not 1 <= config.replicas <= 16:
        raise ConfigError("replicas (N) must be in 1..16")
    if not 1 <= config.r <= config.replicas or not 1 <= config.w <= config.replicas:
        raise ConfigError(f"need 1 <= r, w <= replicas; got replicas={config.replicas} r={config.r} w={config.w}")


def _validate_advertise(config: Config) -> None:
    """The address the node gives the others must be one they can reach it at. A wildcard listen
    (0.0.0.0, ::) is no such address, so it needs `advertise`. The failure detector's datagrams
    leave from the listen port and members drop those whose source is not the sender's advertised
    address, so the two ports must match; and a node cannot join the cluster through itself."""
    listen_host, listen_port = config.listen_host_port
    if not config.advertise:
        if listen_host in WILDCARD_HOSTS:
            raise ConfigError(
                f"listen {config.listen} is every address of this host, which the other nodes cannot use to reach it: "
                f"set [node] advertise (or --advertise) to the HOST:{listen_port} they reach this node at"
            )
        advertise_host, advertise_port = listen_host, listen_port
    else:
        advertise_host, advertise_port = parse_address(config.advertise)
        if advertise_host in WILDCARD_HOSTS:
            raise ConfigError(f"advertise {config.advertise} is a wildcard: give the HOST:PORT the other nodes reach this node at")
        if advertise_port != listen_port:
            raise ConfigError(
                f"advertise {config.advertise} and listen {config.listen} must use the same port: the failure detector's "
                "datagrams leave from the listen port, and members drop those whose source is not the advertised address"
            )
    if config.join and parse_address(config.join) == (advertise_host, advertise_port):
        raise ConfigError(
            f"join {config.join} is this node's own address: on the node that creates the cluster leave join empty; "
            "on the others, name a node already in the cluster"
        )


def _validate_workers(config: Config) -> None:
    """Every worker's name and ports must fit (the last worker's are the longest and highest)."""
    try:
        config.for_worker(config.workers - 1)
    except WorkersError as exc:
        raise ConfigError(str(exc)) from None


def _validate_tls(config: Config) -> None:
    """TLS takes all three files: a node's port serves clients and peers alike, and peers verify
    each other's certificates against the cluster CA (mutual TLS), so a certificate without the CA
    would leave peers unable to connect. Whether the files hold what they should is checked when
    the contexts are built (`dynd.protocol.tls`), still before start."""
    names = ("tls_cert_file", "tls_key_file", "tls_ca_file")
    given = [name for name in names if getattr(config, name)]
    if given and len(given) < len(names):
        missing = [name for name in names if name not in given]
        raise ConfigError(
            f"[security] {' and '.join(given)} set without {' and '.join(missing)}: TLS needs the node's certificate, "
            "its key and the cluster CA that signs every node's certificate"
        )
    for setting in given:
        path = getattr(config, setting)
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"[security] {setting} {path}: cannot read it: {exc.strerror or exc}") from None


# ---- credentials: the files [security] names, read at start and on SIGHUP ----

CREDENTIAL_FILE_BYTES_MAX = 1024 * 1024


@dataclass(frozen=True)
class Credentials:
    """What the secret and tokens files hold now. `keyring` None: no cluster secret configured."""

    keyring: Keyring | None = None
    tokens: TokenTable = EMPTY_TOKENS
    warnings: tuple[str, ...] = ()  # said at start and on reload, never fatal


def load_credentials(config: Config) -> Credentials:
    """Read `cluster_secret_file` and `client_tokens_file`; raise ConfigError naming the setting
    when one cannot be read, is malformed, or (the secret) can be read by other users."""
    warnings: list[str] = []
    keyring = None
    tokens = EMPTY_TOKENS
    if config.cluster_secret_file:
        text = _read_credential_file("cluster_secret_file", config.cluster_secret_file, warnings, others_may_read=False)
        try:
            keyring = load_keyring(text, f"[security] cluster_secret_file {config.cluster_secret_file}")
        except AuthConfigError as exc:
            raise ConfigError(str(exc)) from None
    if config.client_tokens_file:
        text = _read_credential_file("client_tokens_file", config.client_tokens_file, warnings, others_may_read=True)
        try:
            tokens = load_tokens(text, f"[security] client_tokens_file {config.client_tokens_file}")
        except AuthConfigError as exc:
            raise ConfigError(str(exc)) from None
    return Credentials(keyring, tokens, tuple(warnings))


def _read_credential_file(setting: str, path: str, warnings: list[str], *, others_may_read: bool) -> str:
    """The file's text, after checking who else may read it: the secret is the cluster's root
    credential, so a secret file open to other users is refused (as ssh refuses such a key) and
    one open to its group is warned about. A tokens file open to others is only warned about."""
    where = f"[security] {setting} {path}"
    try:
        # Non-blocking, so a FIFO named by mistake is refused instead of waited on.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(descriptor, "rb") as handle:
            mode = os.fstat(descriptor).st_mode
            if not stat.S_ISREG(mode):
                raise ConfigError(f"{where}: not a regular file")
            data = handle.read(CREDENTIAL_FILE_BYTES_MAX + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    if len(data) > CREDENTIAL_FILE_BYTES_MAX:
        raise ConfigError(f"{where}: larger than {CREDENTIAL_FILE_BYTES_MAX} bytes; is it the right file?")
    permissions = stat.S_IMODE(mode)
    if permissions & 0o007:
        message = f"{where} is open to other users (mode {permissions:04o}); make it private: chmod 600 {path}"
        if not others_may_read:
            raise ConfigError(message)
        warnings.append(message)
    elif permissions & 0o070 and not others_may_read:
        warnings.append(f"{where} is open to its group (mode {permissions:04o}); chmod 600 {path} unless the group is meant to hold the secret")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not UTF-8 text") from None


# ---- protected mode ----


def check_protected_mode(config: Config, has_secret: bool) -> str | None:
    """Raise ConfigError when a node with no cluster secret would listen beyond loopback and the
    network is not declared trusted (Redis's protected mode). Returns the warning to log at start
    when `trusted_network` is what lets it listen there, else None."""
    host, port = config.listen_host_port
    if has_secret or is_loopback_host(host):
        return None
    address = format_address(host, port)
    if not config.trusted_network:
        raise ConfigError(
            f"refusing to listen on {address} without a cluster secret (protected mode): anyone who reached it could "
            "read every key, change the membership and pose as a member. Set [security] cluster_secret_file "
            "(or --secret-file) to a file made with `openssl rand -hex 32`, listen on 127.0.0.1, or, if only "
            "trusted hosts can reach this address, set [security] trusted_network = true (or --trusted-network)"
        )
    return (
        f"trusted_network = true and no cluster secret: anyone who reaches {address} can read and write every key, "
        "change the membership and pose as a member of this cluster; set [security] cluster_secret_file unless only "
        "trusted hosts can reach it"
    )


def check_metrics_listen(config: Config) -> str | None:
    """Raise ConfigError when the metrics endpoint would listen beyond loopback and the network is
    not declared trusted: /metrics has no authentication (a scraper presents none), and what it
    serves, request counts, latencies, backlogs and member names, tells a stranger how the cluster
    is built and loaded (never a key or value). Returns the warning to log when trusted_network is
    what lets it listen there, else None."""
    if not config.metrics_listen:
        return None
    host, port = parse_address(config.metrics_listen)
    if is_loopback_host(host):
        return None
    address = format_address(host, port)
    if not config.trusted_network:
        raise ConfigError(
            f"refusing to serve metrics on {address}: [node] metrics_listen (--metrics-listen) beyond loopback needs "
            "[security] trusted_network = true (or --trusted-network), since /metrics has no authentication and "
            "anyone reaching it reads request counts, latencies and member names; or use 127.0.0.1"
        )
    return f"metrics on {address} without authentication (trusted_network = true): whoever reaches it reads request counts, latencies and member names"


def check_http_listen(config: Config, has_secret: bool) -> str | None:
    """The HTTP door follows the rule of the node's own port (`check_protected_mode`): beyond
    loopback only with a cluster secret (then requests meet the client tokens, if any, as
    `Authorization: Bearer TOKEN`) or a network declared trusted. It speaks plain HTTP, so with
    TLS configured for the node it stays on loopback: bearer tokens and values would otherwise
    cross the network in the clear where the operator asked for encryption. Returns the warning
    to log when trusted_network is what lets it listen beyond loopback, else None."""
    if not config.http_listen:
        return None
    host, port = parse_address(config.http_listen)
    if is_loopback_host(host):
        return None
    address = format_address(host, port)
    if config.tls_enabled:
        raise ConfigError(
            f"refusing to serve HTTP on {address}: the HTTP door speaks plain HTTP and this node is configured for TLS; "
            "serve it on 127.0.0.1 (behind a TLS proxy if remote clients need it), or leave [node] http_listen empty"
        )
    if has_secret:
        return None
    if not config.trusted_network:
        raise ConfigError(
            f"refusing to serve HTTP on {address} without a cluster secret (protected mode): anyone who reached it could "
            "read and write every key. Set [security] cluster_secret_file (and client_tokens_file to require a token), "
            "use 127.0.0.1, or, if only trusted hosts can reach this address, set [security] trusted_network = true"
        )
    return f"HTTP on {address} without a cluster secret (trusted_network = true): whoever reaches it can read and write every key"
