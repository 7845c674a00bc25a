"""The `dynd` command: parse flags and config, open storage, serve until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys

import trio

from dynd import __version__
from dynd.config import Config, ConfigError, load_config
from dynd.core.replica import LocalReplica
from dynd.protocol.address import format_address
from dynd.protocol.errors import DynError
from dynd.shell.commit_engines import WriterProcessEngine
from dynd.shell.committer import GroupCommitter
from dynd.shell.node import Node
from dynd.shell.server import Server
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
    parser.add_argument("--partitions", type=int, help="Q, partitions of the ring (power of two; default 256)")
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
    except StartupError as exc:
        log.error("%s", exc)
        sys.exit(EXIT_STARTUP)
    except KeyboardInterrupt:
        pass


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
    if owner is not None and owner.decode() != config.name:
        store.close()
        raise StartupError(f"{config.data_dir} belongs to node {owner.decode()!r}, not {config.name!r}")
    if partitions is not None and int(partitions) != config.partitions:
        store.close()
        raise StartupError(f"{config.data_dir} was created with {int(partitions)} partitions, not {config.partitions}")
    if owner is None:
        store.write([PutMeta(NODE_NAME_META, config.name.encode()), PutMeta(PARTITIONS_META, str(config.partitions).encode())])
    return store


async def serve(config: Config) -> None:
    store = open_store(config)
    host, port = config.listen_host_port
    engine = WriterProcessEngine(store.path, config.limits.lmdb_map_bytes)
    try:
        try:
            await engine.start()
        except DynError as exc:
            raise StartupError(f"cannot start the storage writer: {exc}") from None
        committer = GroupCommitter(store, engine, pending_writes_max=config.limits.pending_writes_max)
        replica = LocalReplica(config.name, config.limits, config.partitions)
        node = Node(config.name, replica, committer)
        server = Server(node, config.limits)
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            reason = "address in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise StartupError(f"cannot listen on {format_address(host, port)}: {reason}") from None
        async with trio.open_nursery() as background:
            await background.start(committer.run)
            async with trio.open_nursery() as front:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    await front.start(trio.serve_listeners, server.handle, listeners)
                    log.info("node %s serving on %s (data in %s)", config.name, format_address(host, port), config.data_dir)
                    async for signum in signals:
                        log.info("received %s: stopping", signal.Signals(signum).name)
                        break
                    front.cancel_scope.cancel()
            # Writes already queued commit before the node exits; new ones are refused.
            with trio.CancelScope(shield=True):
                await committer.aclose()
        log.info("stopped cleanly after %d commits", committer.stats.commits)
    finally:
        with trio.CancelScope(shield=True):
            await engine.aclose()
        store.close()
