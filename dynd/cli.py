"""The `dynd` command: parse flags and config, open storage, serve until SIGTERM or SIGINT.

Before anything touches the data directory: the config, the [security] files (secret, tokens,
TLS) and protected mode are checked, and any problem exits 2 naming the setting. SIGHUP rereads
the secret and tokens files (a rotation, DESIGN.md section 6a) without a restart.

Start-up is atomic: the ports are bound, the data directory checked, the seed asked (`join`) and
the storage writer started before anything is written; then the node's identity, actor epoch, boot
number and membership are written in one transaction. A start that fails before that leaves the
data directory as it found it, and exits 1 when a retry may help (a port in use, a seed down) or 2
when it cannot (a data directory of another node or cluster): systemd restarts the first kind only.

With `workers` above 1 this process is the host's supervisor (`dynd.shell.supervisor`): it checks
the config as above, then runs each worker as `dynd <the same flags> --worker-index I`, which
serves as worker I (`Config.for_worker`). A node tells the service manager it serves
(`dynd.shell.readiness`): itself when alone, through its supervisor when a worker.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import hashlib
import gc
import logging
import os
import random
import signal
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from dynd import __version__
from dynd.config import (
    COMMIT_ENGINES,
    Config,
    ConfigError,
    check_http_listen,
    check_metrics_listen,
    check_protected_mode,
    load_config,
    load_credentials,
)
from dynd.protocol.auth import ADMIN, CLIENT, Keyring, TokenTable
from dynd.protocol.address import format_address, parse_address
from dynd.protocol.errors import DynError, Unauthorized
from dynd.shell.commit_engines import CommitThreadEngine, WriterProcessEngine
from dynd.shell.committer import GroupCommitter
from dynd.core.cluster import MEMBERSHIP_META
from dynd.core.membership import JOIN, Membership
from dynd.core.actors import ACTOR_META, CLEAN_STOP_META, actor_at_start, clean_stop
from dynd.core.node import Node
from dynd.shell.backup import BackupService
from dynd.shell.bootstrap import fetch_membership, new_cluster
from dynd.shell.logs import SHELL_HANDLERS as LOG_HANDLERS, configure_logging
from dynd.shell.http_server import HttpServer
from dynd.shell.metrics_http import MetricsServer
from dynd.shell.riak_api import RiakApi
from dynd.shell.node_stats import NodeStats
from dynd.shell.peers import Peers
from dynd.shell.prometheus import render
from dynd.shell.readiness import SupervisorLink, announce_ready, announce_stopping
from dynd.shell.security import Security
from dynd.shell.server import Server
from dynd.protocol.tls import TlsConfigError, TlsSettings, client_context, server_context
from dynd.shell.storage_port import CommitterStorage
from dynd.shell.supervisor import SupervisorSettings, run_supervisor
from dynd.shell.udp import UdpEndpoint
from dynd.storage.base import PutMeta, WriteOp
from dynd.storage.lmdb_store import LOCK_FILE, LmdbStore
from dynd.workers import WorkersError, layout_problem, worker_dirs_in

log = logging.getLogger("dynd")

EXIT_CONFIG = 2
EXIT_STARTUP = 1
NODE_NAME_META = "node_name"
PARTITIONS_META = "partitions"
BOOT_META = "boot"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynd",
        description="dynd: a Dynamo-style key-value store node. Serves get/put/delete over CBOR frames on TCP.",
        epilog="Flags override the config file. Logs go to stderr. SIGTERM or SIGINT stops the node cleanly; "
        "SIGHUP rereads the secret and tokens files. Without a secret, only a loopback listen address is "
        "allowed (protected mode) unless --trusted-network; see dynd(8), SECURITY. "
        "`dynd restore FILE --data-dir DIR` restores a backup made by `dynctl backup` (dynd restore --help).",
    )
    parser.add_argument("--name", help="this node's name (its identity; fixed for a data directory); required, here or in --config")
    parser.add_argument("--listen", help="HOST:PORT to serve on (default 127.0.0.1:7400)")
    parser.add_argument("--data-dir", dest="data_dir", help="directory of the node's LMDB environment")
    parser.add_argument("--config", help="TOML config file (see deploy/dynd.toml)")
    parser.add_argument(
        "--advertise", help="HOST:PORT other nodes use to reach this one (default: --listen; required when that is 0.0.0.0 or [::]); a change is gossiped"
    )
    parser.add_argument(
        "--join", metavar="SEED", help="on first start (empty data directory), join the cluster of the node at SEED (HOST:PORT); later starts check SEED is in it"
    )
    parser.add_argument(
        "--location",
        metavar="PATH",
        help="where this node runs, as zone/rack/host (default: the host name); nodes of one host share it, and claim keeps a key's copies on distinct hosts and zones",
    )
    parser.add_argument("--seed", dest="seeds", action="append", metavar="HOST:PORT", help="a node to gossip with (repeatable)")
    parser.add_argument("--partitions", type=int, help="Q when creating a cluster (power of two; default 256); a joining node takes the cluster's")
    parser.add_argument("--replicas", type=int, help="N when creating a cluster (default 3)")
    parser.add_argument("--r", type=int, help="default R when creating a cluster (default 2)")
    parser.add_argument("--w", type=int, help="default W when creating a cluster (default 2)")
    parser.add_argument(
        "--log-level", dest="log_level", choices=["debug", "info", "warning", "error"], help="at start (default info); while running: dynctl log-level"
    )
    parser.add_argument(
        "--log-format", dest="log_format", choices=["text", "json"], help="text (default), or json: one object a line with time, level, node, event, fields"
    )
    parser.add_argument(
        "--secret-file", dest="cluster_secret_file", metavar="PATH", help="the cluster secret (hex; make one with: openssl rand -hex 32; mode 0600)"
    )
    parser.add_argument("--tokens-file", dest="client_tokens_file", metavar="PATH", help="client credentials: lines of 'client TOKEN' or 'admin TOKEN'")
    parser.add_argument(
        "--trusted-network",
        dest="trusted_network",
        action="store_const",
        const=True,
        help="without a secret, listen beyond loopback anyway: whoever reaches the port is trusted (logged as a warning)",
    )
    parser.add_argument("--metrics-listen", dest="metrics_listen", metavar="HOST:PORT", help="serve GET /metrics (Prometheus) here; loopback unless --trusted-network")
    parser.add_argument(
        "--http-listen",
        dest="http_listen",
        metavar="HOST:PORT",
        help="serve Riak's HTTP KV interface here (curl, Riak clients); loopback unless a secret or --trusted-network",
    )
    parser.add_argument(
        "--no-metrics", dest="metrics", action="store_const", const=False, help="keep no latency histograms or request counters (to measure what they cost)"
    )
    parser.add_argument(
        "--commit-engine",
        dest="commit_engine",
        choices=list(COMMIT_ENGINES),
        help="who commits to LMDB: a writer process (default) or a thread of this process",
    )
    parser.add_argument(
        "--workers",
        metavar="K",
        help='run K nodes on this host under one supervisor (or "auto": one per core; default 1): '
        "worker I is member NAME-I on port PORT+I with data in DATA_DIR/worker-I; see dynd(8), WORKERS",
    )
    # Set by the supervisor for each worker it starts; by hand, runs one worker of a host alone.
    parser.add_argument("--worker-index", dest="worker_index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--supervisor-fd", dest="supervisor_fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"dynd {__version__}")
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["restore"]:  # `dynd restore FILE --data-dir DIR`: see dynd.restore
        from dynd.restore import main as restore

        sys.exit(restore(argv[1:]))
    args = build_parser().parse_args(argv)
    overrides = {
        "name": args.name,
        "listen": args.listen,
        "data_dir": args.data_dir,
        "partitions": args.partitions,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "advertise": args.advertise,
        "join": args.join,
        "seeds": args.seeds,
        "replicas": args.replicas,
        "r": args.r,
        "w": args.w,
        "cluster_secret_file": args.cluster_secret_file,
        "client_tokens_file": args.client_tokens_file,
        "trusted_network": args.trusted_network,
        "metrics_listen": args.metrics_listen,
        "http_listen": args.http_listen,
        "metrics": args.metrics,
        "commit_engine": args.commit_engine,
        "workers": args.workers,
        "location": args.location,
    }
    try:
        config = load_config(args.config, overrides)
        host_config = config
        if args.worker_index is not None:
            config = config.for_worker(args.worker_index)
        credentials = load_credentials(config)
        open_warning = check_protected_mode(config, has_secret=credentials.keyring is not None)
        check_metrics_listen(config)  # exits 2 before anything starts; the warning is logged when it opens
        check_http_listen(config, has_secret=credentials.keyring is not None)
        server_ssl, client_ssl = tls_contexts(config)
    except (ConfigError, WorkersError) as exc:
        print(f"dynd: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    configure_logging(config.log_level, config.log_format, config.name, sys.stderr)
    if args.worker_index is None:
        if (problem := check_layout(host_config)) is not None:
            log.error("%s", problem)
            sys.exit(EXIT_CONFIG)
        if host_config.workers > 1:  # each worker logs the warnings about its settings
            sys.exit(run_supervisor(supervisor_settings(host_config, argv)))
    for warning in credentials.warnings:
        log.warning("%s", warning)
    if open_warning is not None:
        log.warning("%s", open_warning)
    security = Security(
        keyring=credentials.keyring,
        tokens=credentials.tokens,
        trusted_network=config.trusted_network,
        server_ssl=server_ssl,
        client_ssl=client_ssl,
    )
    # Until the node serves and takes SIGHUP as a reload, a reload sent while it starts must not
    # kill it (SIGHUP's default); the files were read a moment ago.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        link = SupervisorLink(args.supervisor_fd) if args.supervisor_fd is not None else None
    except ValueError as exc:
        log.error("%s", exc)
        sys.exit(EXIT_CONFIG)
    try:
        trio.run(serve, config, security, link)
    except* StartupError as group:  # raised at start, possibly from inside the node's nursery
        failures = _leaves(group)
        for exc in failures:
            log.error("%s", exc)
        sys.exit(max(getattr(exc, "exit_code", EXIT_STARTUP) for exc in failures))
    except* KeyboardInterrupt:
        pass


def check_layout(config: Config) -> str | None:
    """Why the data directory cannot be served with `workers` workers, or None; warns about
    worker directories beyond the count (members of this host that will not be started)."""
    found = worker_dirs_in(config.data_dir)
    problem = layout_problem(config.data_dir, config.workers, os.path.isdir(os.path.join(config.data_dir, "lmdb")), found)
    if problem is None and (beyond := [index for index in found if index >= config.workers]):
        names = ", ".join(f"{config.name}-{index}" for index in beyond)
        log.warning(
            "%s has data of workers %s, beyond workers = %d: members %s are not started; take them out of the cluster "
            "with `dynctl cluster remove` (or start with more workers)",
            config.data_dir, ", ".join(map(str, beyond)), config.workers, names,
        )
    return problem


def supervisor_settings(config: Config, argv: list[str]) -> SupervisorSettings:
    """How to run and keep this host's workers: this command again, with the resolved worker count
    (a later flag wins, so "auto" is not resolved twice) and each worker's index and socket."""
    limits = config.limits

    def command(index: int, fd: int) -> list[str]:
        return [sys.executable, "-m", "dynd", *argv, "--workers", str(config.workers), "--worker-index", str(index), "--supervisor-fd", str(fd)]

    return SupervisorSettings(
        names=tuple(config.for_worker(index).name for index in range(config.workers)),
        command=command,
        restart_backoff_ms=limits.worker_restart_backoff_ms,
        restart_backoff_max_ms=limits.worker_restart_backoff_max_ms,
        restarts_max=limits.worker_restarts_max,
        restart_window_ms=limits.worker_restart_window_ms,
        stop_timeout_ms=limits.worker_stop_timeout_ms,
    )


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:  # type: ignore[type-arg]
    return [leaf for exc in group.exceptions for leaf in (_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])]


class StartupError(Exception):
    """The node could not start, and its data directory is as it was. Exit 1: a later try may
    succeed (a port freed, a seed up)."""

    exit_code = EXIT_STARTUP


class MisconfiguredStart(StartupError):
    """The configuration does not fit the data directory or the cluster: no retry can help, so
    exit 2, as for a bad config (the unit's RestartPreventExitStatus)."""

    exit_code = EXIT_CONFIG


def tls_contexts(config: Config) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """The port's TLS context and the one for reaching peers (mutual TLS), or (None, None)."""
    if not config.tls_enabled:
        return None, None
    try:
        settings = TlsSettings(config.tls_cert_file, config.tls_key_file, config.tls_ca_file)
        return server_context(settings), client_context(settings)
    except TlsConfigError as exc:
        raise ConfigError(f"[security] TLS: {exc}") from None


# ---- credentials on SIGHUP ----


def reload_credentials(config: Config, security: Security, set_keyring: Callable[[Keyring | None], None]) -> bool:
    """Reread the secret and tokens files into `security` (in place, so every connection and the
    failure detector see them at once); on any problem keep what is in force. True if applied.

    A secret can be rotated but not added or removed here: a node that started without one serves
    loopback or a trusted network and its peers hold none either, and a node that has one must not
    be talked out of it by an emptied file (which `load_credentials` refuses)."""
    try:
        fresh = load_credentials(config)
    except ConfigError as exc:
        log.error("SIGHUP: kept the credentials in force: %s", exc)
        return False
    for warning in fresh.warnings:
        log.warning("SIGHUP: %s", warning)
    if security.keyring is None and fresh.keyring is None and not config.cluster_secret_file:
        log.info("SIGHUP: no cluster_secret_file configured; this node started without a secret, and one cannot be added to a running node (restart it with one)")
    changes = [describe_keyring_change(security.keyring, fresh.keyring), describe_tokens_change(security.tokens, fresh.tokens)]
    security.keyring = fresh.keyring
    security.tokens = fresh.tokens
    set_keyring(fresh.keyring)
    log.info("SIGHUP: credentials reloaded: %s", "; ".join(changes))
    return True


def secret_id(secret: bytes) -> str:
    """A short name for a secret in logs, so an operator can compare nodes during a rotation. A
    hash under its own label: it names the secret without giving any of it away."""
    return hashlib.sha256(b"dynd-secret-id\0" + secret).hexdigest()[:8]


def describe_keyring(keyring: Keyring | None) -> str:
    """The secrets in force by id: "d94ca5eb (proves), 7b57ad68 (accepted)" during a rotation."""
    if keyring is None:
        return "none"
    ids = [secret_id(secret) for secret in keyring.secrets]
    if len(ids) == 1:
        return ids[0]
    return f"{ids[0]} (proves), {', '.join(ids[1:])} (accepted)"


def describe_keyring_change(old: Keyring | None, new: Keyring | None) -> str:
    if old == new:
        return f"cluster secret unchanged: {describe_keyring(new)}"
    return f"cluster secret now {describe_keyring(new)}, was {describe_keyring(old)}"


def describe_tokens(tokens: TokenTable) -> str:
    roles = [role for _, role in tokens.entries]
    return f"{roles.count(ADMIN)} admin, {roles.count(CLIENT)} client" if roles else "none"


def describe_tokens_change(old: TokenTable, new: TokenTable) -> str:
    before, after = set(old.entries), set(new.entries)
    if before == after:
        return f"client tokens unchanged: {describe_tokens(new)}"
    return f"client tokens now {describe_tokens(new)} ({len(after - before)} added, {len(before - after)} removed)"


# ---- start-up: everything that can fail is tried before the data directory changes ----


class StoreAtStart:
    """The data directory, opened and checked but not yet written: what a start will commit in
    one transaction once everything that can fail has been tried (`commit_start`). A first start
    that fails before that gives back the LMDB files it made (`give_up`), so a failed start leaves
    no identity, cluster or address behind, and the next start (with the right --join, say) begins
    from nothing."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.lmdb_path = os.path.join(config.data_dir, "lmdb")
        self.made = [path for path in (config.data_dir, self.lmdb_path) if not os.path.exists(path)]
        try:
            self.store = LmdbStore(self.lmdb_path, map_bytes=config.limits.lmdb_map_bytes)
        except Exception as exc:
            raise StartupError(f"cannot open storage in {config.data_dir}: {exc}") from None
        self.committed = False
        try:
            self._check_owner()
        except BaseException:
            self.give_up()
            raise

    def _check_owner(self) -> None:
        config, store = self.config, self.store
        owner = store.get_meta(NODE_NAME_META)
        partitions = store.get_meta(PARTITIONS_META)
        if owner is not None and owner.decode() != config.name:
            raise MisconfiguredStart(f"{config.data_dir} belongs to node {owner.decode()!r}, not {config.name!r}")
        if partitions is not None and config.partitions is not None and int(partitions) != config.partitions:
            raise MisconfiguredStart(f"{config.data_dir} was created with {int(partitions)} partitions, not {config.partitions}")

    def commit_start(self, membership: Membership, stored_membership: bool) -> tuple[str, int]:
        """Write this start's identity, actor epoch, boot number and (when new) membership in one
        transaction; return the actor and boot to serve with (`dynd.core.actors`, `next_boot`)."""
        store = self.store
        ops: list[WriteOp] = []
        if store.get_meta(NODE_NAME_META) is None:
            ops.append(PutMeta(NODE_NAME_META, self.config.name.encode()))
        actor, actor_ops = actor_at_start(self.config.name, store.get_meta(ACTOR_META), store.get_meta(CLEAN_STOP_META), random.SystemRandom())
        ops += actor_ops
        boot = next_boot(store.get_meta(BOOT_META), wall_clock_ms())
        ops.append(PutMeta(BOOT_META, str(boot).encode()))
        if not stored_membership:
            ops += [PutMeta(MEMBERSHIP_META, membership.encode()), PutMeta(PARTITIONS_META, str(membership.params.partitions).encode())]
        store.write(ops)
        self.committed = True
        return actor, boot

    def give_up(self) -> None:
        """Close the store; if this start made the LMDB environment and wrote nothing, remove it
        (and the data directory, if this start made that too)."""
        self.store.close()
        if self.lmdb_path in self.made and not self.committed:
            for name in LMDB_FILES:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.lmdb_path, name))
            for directory in reversed(self.made):
                with contextlib.suppress(OSError):  # not empty: what else is in there is not ours to remove
                    os.rmdir(directory)


LMDB_FILES = ("data.mdb", "lock.mdb", LOCK_FILE)  # what opening an environment creates


def next_boot(stored: bytes | None, wall_ms: int) -> int:
    """This start's boot number: above every earlier start's of the data directory (the stored
    one), and at least the wall clock in ms so it also grows when the directory was wiped."""
    previous = int(stored) if stored is not None else 0
    return max(previous + 1, wall_ms)


JOIN_RETRY_S = 0.5


async def initial_membership(config: Config, store: LmdbStore, security: Security) -> tuple[Membership, bool]:
    """The membership to start with, and whether the data directory holds it already. Without one:
    the cluster of the node at `join`, with this node's join event, or a new cluster. Nothing is
    written here (`StoreAtStart.commit_start` does)."""
    stored = store.get_meta(MEMBERSHIP_META)
    if stored is not None:
        membership = Membership.decode(stored, events_max=config.limits.membership_events_max, members_max=config.limits.membership_members_max)
        if config.join:
            await check_join_target(config, membership, security)
        return membership, True
    address = config.advertised_address
    if config.join:
        theirs = await fetch_seed_membership(config, security)
        if config.partitions is not None and theirs.params.partitions != config.partitions:
            raise MisconfiguredStart(
                f"the cluster at {config.join} uses {theirs.params.partitions} partitions; "
                f"start this node with --partitions {theirs.params.partitions} (or none) on an empty data directory"
            )
        log.info("joining cluster %s through %s", theirs.params.cluster_id, config.join)
        return theirs.with_event(JOIN, config.name, origin=config.name, address=address, location=theirs.location_for_join(config.location)), False
    try:
        membership = new_cluster(config.name, address, config.replicas, config.r, config.w, config.partitions_for_new_cluster, config.location)
    except DynError as exc:
        raise MisconfiguredStart(exc.message) from None
    log.info("created cluster %s (N=%d R=%d W=%d Q=%d)", membership.params.cluster_id, config.replicas, config.r, config.w, membership.params.partitions)
    return membership, False


async def fetch_seed_membership(config: Config, security: Security) -> Membership:
    """The membership of the node at `join`, asked until `join_timeout_ms` has passed (it may be
    starting too). A seed that refuses this node's credentials is not asked again."""
    deadline = trio.current_time() + config.limits.join_timeout_ms / 1000
    request_timeout_s = config.limits.request_timeout_ms / 1000
    while True:
        remaining = deadline - trio.current_time()
        try:
            return await fetch_membership(config.join, max(0.05, min(request_timeout_s, remaining)), security=security, name=config.name)
        except Unauthorized as exc:  # another secret, another cluster: waiting will not help
            raise StartupError(f"cannot join through {config.join}: {exc.message}") from None
        except DynError as exc:
            if trio.current_time() >= deadline:
                waited = config.limits.join_timeout_ms / 1000
                raise StartupError(f"cannot join through {config.join} (tried for {waited:g} s, join_timeout_ms): {exc.message}") from None
            log.info("waiting for seed %s: %s", config.join, exc.message)
            await trio.sleep(min(JOIN_RETRY_S, max(0.0, deadline - trio.current_time())))


async def check_join_target(config: Config, membership: Membership, security: Security) -> None:
    """A restart with `join` set (as every start from a config file that names it is): the seed
    must be in the cluster the data directory belongs to. An address the membership knows needs no
    question; any other seed is asked once. One that does not answer lets the start go on, with a
    warning: a restart must not depend on one other machine being up."""
    if format_address(*parse_address(config.join)) in {m.address for m in membership.members.values()}:
        return
    ours = membership.params.cluster_id
    try:
        theirs = await fetch_membership(config.join, config.limits.request_timeout_ms / 1000, security=security, name=config.name)
    except DynError as exc:
        log.warning("could not check that %s (join) is in cluster %s, which %s belongs to: %s", config.join, ours, config.data_dir, exc.message)
        return
    if theirs.params.cluster_id == ours:
        return
    members = ", ".join(sorted(m.name for m in membership.active())) or "none"
    hint = (
        f"; or, as {config.name} is alone in its cluster, start it without join and run "
        f"`dynctl --node {config.advertised_address} cluster join {config.join}`"
        if [m.name for m in membership.active()] == [config.name]
        else ""
    )
    raise MisconfiguredStart(
        f"{config.data_dir} belongs to cluster {ours} (members: {members}), but the node at {config.join} is in cluster "
        f"{theirs.params.cluster_id}: join takes effect only on an empty data directory. To restart in cluster {ours}, "
        f"remove the join setting (or point it at one of its members); to move {config.name} to the other cluster, "
        f"start it on an empty data directory{hint}"
    )


@dataclass
class BoundPorts:
    """The node's sockets, bound before anything else at start."""

    listeners: list[trio.SocketListener]
    udp: UdpEndpoint
    metrics: list[trio.SocketListener]
    http: list[trio.SocketListener] = field(default_factory=list)

    async def aclose(self) -> None:
        self.udp.close()
        for listener in [*self.listeners, *self.metrics, *self.http]:
            await listener.aclose()


async def bind_ports(config: Config) -> BoundPorts:
    """Bind the TCP port, the failure detector's UDP port (the same number) and the metrics port,
    or raise StartupError naming the one that failed, with none left open."""
    host, port = config.listen_host_port
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise StartupError(f"cannot listen on {format_address(host, port)}: {_reason(exc)}") from None
    bound = BoundPorts(listeners, UdpEndpoint(datagram_bytes_max=config.limits.datagram_bytes_max), [])
    try:
        try:
            await bound.udp.bind(host, port)
        except OSError as exc:
            raise StartupError(f"cannot open the failure detector's UDP port {format_address(host, port)}: {_reason(exc)}") from None
        if config.metrics_listen:
            metrics_host, metrics_port = parse_address(config.metrics_listen)
            try:
                bound.metrics = await trio.open_tcp_listeners(metrics_port, host=metrics_host)
            except OSError as exc:
                raise StartupError(f"cannot serve metrics on {format_address(metrics_host, metrics_port)}: {_reason(exc)}") from None
        if config.http_listen:
            http_host, http_port = parse_address(config.http_listen)
            try:
                bound.http = await trio.open_tcp_listeners(http_port, host=http_host)
            except OSError as exc:
                raise StartupError(f"cannot serve HTTP on {format_address(http_host, http_port)}: {_reason(exc)}") from None
    except BaseException:
        with trio.CancelScope(shield=True):
            await bound.aclose()
        raise
    return bound


def _reason(exc: OSError) -> str:
    return "address in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))


async def serve(config: Config, security: Security, link: SupervisorLink | None = None) -> None:
    ports = await bind_ports(config)
    try:
        at_start = StoreAtStart(config)
    except BaseException:
        with trio.CancelScope(shield=True):
            await ports.aclose()
        raise
    store = at_start.store
    engine: CommitThreadEngine | WriterProcessEngine
    if config.commit_engine == "process":
        engine = WriterProcessEngine(store.path, config.limits.lmdb_map_bytes)
    else:
        engine = CommitThreadEngine(store)
    try:
        membership, stored_membership = await initial_membership(config, store, security)
        try:
            await engine.start()
        except DynError as exc:
            raise StartupError(f"cannot start the storage writer: {exc}") from None
        actor, boot = at_start.commit_start(membership, stored_membership)
    except BaseException:
        with trio.CancelScope(shield=True):
            await engine.aclose()
            await ports.aclose()
        at_start.give_up()
        raise
    try:
        await run_node(config, security, store, engine, ports, membership, actor, boot, link)
    finally:
        with trio.CancelScope(shield=True):
            await engine.aclose()
        store.close()


async def run_node(
    config: Config,
    security: Security,
    store: LmdbStore,
    engine: CommitThreadEngine | WriterProcessEngine,
    ports: BoundPorts,
    membership: Membership,
    actor: str,
    boot: int,
    link: SupervisorLink | None = None,
) -> None:
    """Serve from started (the data directory written) until SIGTERM or SIGINT (or, for a worker,
    until its supervisor is gone)."""
    host, port = config.listen_host_port
    limits = config.limits
    security.cluster_id = membership.params.cluster_id
    committer = GroupCommitter(store, engine, pending_writes_max=limits.pending_writes_max, object_cache_bytes_max=limits.object_cache_bytes_max)
    async with trio.open_nursery() as background:
        await background.start(committer.run)
        peers = Peers(
            config.name,
            background,
            request_timeout_s=limits.request_timeout_ms / 1000,
            retry_s=limits.peer_retry_ms / 1000,
            security=security,
        )
        node = Node(
            config.name,
            config.advertised_address,
            membership,
            CommitterStorage(committer, store),
            peers,
            limits=limits,
            now_ms=monotonic_ms,
            wall_ms=wall_clock_ms,
            rng=random.Random(),
            seeds=list(config.seed_addresses),
            actor=actor,
            keyring=security.keyring,
            boot=boot,
            now_us=monotonic_us,
            shell_readings=lambda: shell_readings(config, store, committer, server),
            measure=config.metrics,
            location=config.location,
        )
        node.swim.on_security_event = security.events.record

        def follow_cluster_id() -> None:  # a running node that joins another cluster takes its id
            security.cluster_id = node.cluster.params.cluster_id

        node.cluster.on_change.append(follow_cluster_id)
        settle_garbage_collector()
        backups = BackupService(store, config.data_dir, limits, identity=lambda: (node.name, node.cluster.params.cluster_id), wall_ms=wall_clock_ms)
        await background.start(backups.run)  # in `background`: ends (copies stopped) before the store closes
        server = Server(node, limits, security, shell_handlers={**LOG_HANDLERS, **backups.handlers})  # log level; dynctl backup
        async with trio.open_nursery() as front:
            await front.start(functools.partial(ports.udp.run, node.swim, host, port))
            peers.datagram_sink = ports.udp.flush
            front.start_soon(_tick_forever, node, limits.tick_interval_ms / 1000)
            if config.join:  # tell the seed at once rather than at the next gossip round
                node.cluster.announce(config.join)
            if link is not None:
                front.start_soon(link.stop_when_gone)
            # SIGHUP rereads the credentials (`reload_credentials`); received from before the port opens.
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                await front.start(trio.serve_listeners, server.handle, ports.listeners)
                if ports.metrics:
                    await serve_metrics(front, config, node, ports.metrics)
                if ports.http:
                    await serve_http(front, config, node, security, ports.http)
                log.info(
                    "node %s serving on %s (advertised as %s; location %s; data in %s; cluster secret: %s; client tokens: %s; TLS: %s)",
                    config.name,
                    format_address(host, port),
                    config.advertised_address,
                    config.location,
                    config.data_dir,
                    describe_keyring(security.keyring),
                    describe_tokens(security.tokens),
                    "on" if security.server_ssl is not None else "off",
                )
                announce_ready(link, f"serving on {config.advertised_address}")
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        reload_credentials(config, security, node.swim.set_keyring)
                        continue
                    log.info("received %s: stopping", signal.Signals(signum).name)
                    announce_stopping(link)
                    break
                front.cancel_scope.cancel()
        peers.close()
        # Writes already queued commit before the node exits; new ones are refused. Then,
        # and only if all of that committed, the epoch may be kept by the next start.
        with trio.CancelScope(shield=True):
            await committer.aclose()
            try:
                await engine.commit(clean_stop(node.replica.actor))
            except DynError as exc:
                log.error("could not record the clean stop (the next start takes a new actor epoch): %s", exc)
        background.cancel_scope.cancel()
    log.info("stopped cleanly after %d commits", committer.stats.commits)


async def serve_metrics(nursery: trio.Nursery, config: Config, node: Node, listeners: list[trio.SocketListener]) -> None:
    """Serve GET /metrics on the bound `metrics_listen` from the node's StatsOk, asked in-process."""
    stats = NodeStats(node)
    metrics = MetricsServer(lambda: render(stats.read(), config.name, __version__))
    await nursery.start(trio.serve_listeners, metrics.handle, listeners)
    log.info("metrics on http://%s/metrics", config.metrics_listen)
    if (open_warning := check_metrics_listen(config)) is not None:
        log.warning("%s", open_warning)


async def serve_http(nursery: trio.Nursery, config: Config, node: Node, security: Security, listeners: list[trio.SocketListener]) -> None:
    """Serve Riak's HTTP KV interface on the bound `http_listen`, through the node's own requests."""
    http = HttpServer(RiakApi(node), config.limits, security)
    await nursery.start(trio.serve_listeners, http.handle, listeners)
    log.info("HTTP (Riak KV interface) on http://%s/", config.http_listen)
    if (open_warning := check_http_listen(config, has_secret=security.keyring is not None)) is not None:
        log.warning("%s", open_warning)


# The cyclic collector's full passes walk every tracked container, and the node holds many for its
# life (Merkle trees, the ring, membership): with the default thresholds those passes stalled
# requests for tens of milliseconds under load. Objects built at start-up are frozen out of the
# collector's view, and it runs a tenth as often; the node's own data structures are not cyclic,
# so what it finds per pass stays small. (3-node insert bench: p99.9 68-81 ms -> 41-46 ms.)
GC_THRESHOLDS = (50_000, 20, 100)


def settle_garbage_collector() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def monotonic_ms() -> int:
    """The node's clock for every deadline, period and timer (`Node(now_ms=...)`): trio's, which
    the peer calls' deadlines (`dynd.shell.peers`, `dynd.client`) and the tick's sleep run on too,
    so the whole process has one monotonic source (CLOCK_MONOTONIC, via `time.perf_counter`); a
    wall clock stepped by NTP or an operator moves none of them. Only valid inside `trio.run`."""
    return int(trio.current_time() * 1000)


def monotonic_us() -> int:
    """The same clock as `monotonic_ms`, finer: only for latencies (`Node(now_us=...)`), as a
    sub-millisecond get would read 0 or 1 ms and its percentiles would mean little."""
    return int(trio.current_time() * 1_000_000)


def shell_readings(config: Config, store: LmdbStore, committer: GroupCommitter, server: Server) -> dict[str, int | str]:
    """What only the shell knows, for the node's StatsOk and InfoOk (`Node(shell_readings=...)`):
    read when an operator asks, never per request."""
    stat = store.stat()
    return {
        "lmdb_used_bytes": (stat["last_page"] + 1) * stat["page_bytes"],  # pages 0..last_pgno are in use
        "lmdb_map_bytes": stat["map_bytes"],
        "pending_writes": committer.pending_writes,
        "open_connections": server.connections,
        "connections_refused": server.connections_refused,
        "frames_refused": server.frames_refused,
        "listen": config.listen,
        "data_dir": config.data_dir,
    }


def wall_clock_ms() -> int:
    """The wall clock, only for what nodes compare with each other (`Node(wall_ms=...)`): a
    write's timestamp (it orders context entries for pruning), tombstone and hint age; and the
    boot number, which must grow across restarts of the machine too."""
    return time.time_ns() // 1_000_000


async def _tick_forever(node: Node, interval_s: float) -> None:
    """The node's clock: request deadlines, gossip and handoff are deadlines the node ticks."""
    while True:
        await trio.sleep(interval_s)
        try:
            node.tick()
        except Exception:  # a failing coordination must not stop every other one
            log.exception("tick failed")
