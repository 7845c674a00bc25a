"""The `dynd` command: parse flags and config, open storage, serve until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import functools
import errno
import gc
import logging
import os
import random
import signal
import sys
import time

import trio

from dynd import __version__
from dynd.config import Config, ConfigError, load_config
from dynd.protocol.address import format_address
from dynd.protocol.errors import DynError
from dynd.shell.commit_engines import WriterProcessEngine
from dynd.shell.committer import GroupCommitter
from dynd.core.cluster import MEMBERSHIP_META
from dynd.core.membership import JOIN, Membership
from dynd.core.actors import ACTOR_META, CLEAN_STOP_META, actor_at_start, clean_stop
from dynd.core.node import Node
from dynd.shell.bootstrap import fetch_membership, new_cluster
from dynd.shell.peers import Peers
from dynd.shell.server import Server
from dynd.shell.storage_port import CommitterStorage
from dynd.shell.udp import UdpEndpoint
from dynd.storage.base import PutMeta
from dynd.storage.lmdb_store import LmdbStore

log = logging.getLogger("dynd")

EXIT_CONFIG = 2
EXIT_STARTUP = 1
NODE_NAME_META = "node_name"
PARTITIONS_META = "partitions"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynd",
        description="dynd: a Dynamo-style key-value store node. Serves get/put/delete over CBOR frames on TCP.",
        epilog="Flags override the config file. Logs go to stderr. SIGTERM or SIGINT stops the node cleanly.",
    )
    parser.add_argument("--name", help="this node's name (its identity; fixed for a data directory)")
    parser.add_argument("--listen", help="HOST:PORT to serve on (default 127.0.0.1:7400)")
    parser.add_argument("--data-dir", dest="data_dir", help="directory of the node's LMDB environment")
    parser.add_argument("--config", help="TOML config file (see deploy/dynd.toml)")
    parser.add_argument("--advertise", help="HOST:PORT other nodes use to reach this one (default: --listen)")
    parser.add_argument("--join", metavar="SEED", help="on first start, join the cluster of the node at SEED (HOST:PORT)")
    parser.add_argument("--seed", dest="seeds", action="append", metavar="HOST:PORT", help="a node to gossip with (repeatable)")
    parser.add_argument("--partitions", type=int, help="Q when creating a cluster (power of two; default 256); a joining node takes the cluster's")
    parser.add_argument("--replicas", type=int, help="N when creating a cluster (default 3)")
    parser.add_argument("--r", type=int, help="default R when creating a cluster (default 2)")
    parser.add_argument("--w", type=int, help="default W when creating a cluster (default 2)")
    parser.add_argument("--log-level", dest="log_level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--version", action="version", version=f"dynd {__version__}")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    overrides = {
        "name": args.name,
        "listen": args.listen,
        "data_dir": args.data_dir,
        "partitions": args.partitions,
        "log_level": args.log_level,
        "advertise": args.advertise,
        "join": args.join,
        "seeds": args.seeds,
        "replicas": args.replicas,
        "r": args.r,
        "w": args.w,
    }
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"dynd: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    logging.basicConfig(
        level=config.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        trio.run(serve, config)
    except* StartupError as group:  # raised at start, possibly from inside the node's nursery
        for exc in _leaves(group):
            log.error("%s", exc)
        sys.exit(EXIT_STARTUP)
    except* KeyboardInterrupt:
        pass


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:  # type: ignore[type-arg]
    return [leaf for exc in group.exceptions for leaf in (_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])]


class StartupError(Exception):
    pass


def open_store(config: Config) -> LmdbStore:
    """Open the data directory and check it belongs to this node."""
    try:
        store = LmdbStore(os.path.join(config.data_dir, "lmdb"), map_bytes=config.limits.lmdb_map_bytes)
    except Exception as exc:
        raise StartupError(f"cannot open storage in {config.data_dir}: {exc}") from None
    owner = store.get_meta(NODE_NAME_META)
    partitions = store.get_meta(PARTITIONS_META)
    explicit = config.partitions
    if owner is not None and owner.decode() != config.name:
        store.close()
        raise StartupError(f"{config.data_dir} belongs to node {owner.decode()!r}, not {config.name!r}")
    if partitions is not None and explicit is not None and int(partitions) != explicit:
        store.close()
        raise StartupError(f"{config.data_dir} was created with {int(partitions)} partitions, not {explicit}")
    if owner is None:
        store.write([PutMeta(NODE_NAME_META, config.name.encode())])
    return store


def start_actor(store: LmdbStore, name: str) -> str:
    """The actor epoch to serve with, stored before serving (`dynd.core.actors`): the last one
    after a clean stop, a new one after a crash or on a new data directory."""
    actor, ops = actor_at_start(name, store.get_meta(ACTOR_META), store.get_meta(CLEAN_STOP_META), random.SystemRandom())
    store.write(ops)
    return actor


JOIN_DEADLINE_S = 60.0
JOIN_RETRY_S = 0.5


async def initial_membership(config: Config, store: LmdbStore) -> Membership:
    """The stored membership; else join through --join, or create a new cluster. Persisted at once."""
    stored = store.get_meta(MEMBERSHIP_META)
    if stored is not None:
        return Membership.decode(stored)
    address = config.advertised_address
    if config.join:
        deadline = trio.current_time() + JOIN_DEADLINE_S
        while True:
            try:
                theirs = await fetch_membership(config.join, config.limits.request_timeout_ms / 1000)
                break
            except DynError as exc:
                if trio.current_time() > deadline:
                    raise StartupError(f"cannot join through {config.join}: {exc.message}") from None
                log.info("waiting for seed %s: %s", config.join, exc.message)
                await trio.sleep(JOIN_RETRY_S)
        if config.partitions is not None and theirs.params.partitions != config.partitions:
            raise StartupError(
                f"the cluster at {config.join} uses {theirs.params.partitions} partitions; "
                f"start this node with --partitions {theirs.params.partitions} on an empty data directory"
            )
        membership = theirs.with_event(JOIN, config.name, origin=config.name, address=address)
        log.info("joining cluster %s through %s", theirs.params.cluster_id, config.join)
    else:
        try:
            membership = new_cluster(config.name, address, config.replicas, config.r, config.w, config.partitions_for_new_cluster)
        except DynError as exc:
            raise StartupError(exc.message) from None
        log.info("created cluster %s (N=%d R=%d W=%d Q=%d)", membership.params.cluster_id, config.replicas, config.r, config.w, membership.params.partitions)
    store.write([PutMeta(MEMBERSHIP_META, membership.encode()), PutMeta(PARTITIONS_META, str(membership.params.partitions).encode())])
    return membership


async def serve(config: Config) -> None:
    store = open_store(config)
    actor = start_actor(store, config.name)
    host, port = config.listen_host_port
    engine = WriterProcessEngine(store.path, config.limits.lmdb_map_bytes)
    limits = config.limits
    try:
        membership = await initial_membership(config, store)
        try:
            await engine.start()
        except DynError as exc:
            raise StartupError(f"cannot start the storage writer: {exc}") from None
        committer = GroupCommitter(
            store, engine, pending_writes_max=limits.pending_writes_max, object_cache_bytes_max=limits.object_cache_bytes_max
        )
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            reason = "address in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise StartupError(f"cannot listen on {format_address(host, port)}: {reason}") from None
        async with trio.open_nursery() as background:
            await background.start(committer.run)
            peers = Peers(config.name, background, request_timeout_s=limits.request_timeout_ms / 1000, retry_s=limits.peer_retry_ms / 1000)
            node = Node(
                config.name,
                config.advertised_address,
                membership,
                CommitterStorage(committer, store),
                peers,
                limits=limits,
                now_ms=wall_clock_ms,
                rng=random.Random(),
                seeds=list(config.seeds),
                actor=actor,
            )
            settle_garbage_collector()
            server = Server(node, limits)
            udp = UdpEndpoint(datagram_bytes_max=limits.datagram_bytes_max)
            async with trio.open_nursery() as front:
                try:
                    await front.start(functools.partial(udp.run, node.swim, host, port))
                except OSError as exc:
                    raise StartupError(f"cannot open the failure detector's UDP port {format_address(host, port)}: {exc}") from None
                peers.datagram_sink = udp.flush
                front.start_soon(_tick_forever, node, limits.tick_interval_ms / 1000)
                if config.join:  # tell the seed at once rather than at the next gossip round
                    node.cluster.announce(config.join)
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    await front.start(trio.serve_listeners, server.handle, listeners)
                    log.info("node %s serving on %s (data in %s)", config.name, format_address(host, port), config.data_dir)
                    async for signum in signals:
                        log.info("received %s: stopping", signal.Signals(signum).name)
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
    finally:
        with trio.CancelScope(shield=True):
            await engine.aclose()
        store.close()


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


def wall_clock_ms() -> int:
    # Timestamps order context entries for pruning, so a wall clock is the right source.
    return time.time_ns() // 1_000_000


async def _tick_forever(node: Node, interval_s: float) -> None:
    """The node's clock: request deadlines, gossip and handoff are deadlines the node ticks."""
    while True:
        await trio.sleep(interval_s)
        try:
            node.tick()
        except Exception:  # a failing coordination must not stop every other one
            log.exception("tick failed")
