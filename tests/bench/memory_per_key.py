"""Memory and disk per key on one node: RSS and LMDB bytes used as 1 KiB keys pile up.

    python tests/bench/memory_per_key.py [--checkpoints 100000,300000,1000000] [--value-size 1024]
                                         [--deadline-s 600]

Starts one dynd (N=1 R=1 W=1) in a temporary directory, loads fresh keys with the routed, pipelined
loader (tests/bench/bulk_load.py) and at each checkpoint prints: keys, load time so far, the node's
LMDB bytes used (`info`: disk_used_bytes) and per key, and the RSS of the dynd process and of its
children (the LMDB writer), split into anonymous memory (the heap: what the node itself keeps per
key) and file-backed memory (LMDB's map pages the kernel holds resident, reclaimable cache), each per
key. Stops at the deadline and says how far it got.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import trio
from bulk_load import load
from cluster import dynd
from foundation import HOST, free_port, start, stop, wait_until_accepting

from dynd.client import BlockingClient


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of one process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            fields[name] = int(rest.split()[0])
    return fields


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", default="100000,300000,1000000")
    parser.add_argument("--value-size", type=int, default=1024)
    parser.add_argument("--deadline-s", type=float, default=600.0, help="stop loading after this long")
    args = parser.parse_args(argv)
    checkpoints = sorted(int(text) for text in args.checkpoints.split(","))
    with tempfile.TemporaryDirectory(prefix="dynd-memory-") as scratch_dir:
        scratch = Path(scratch_dir)
        port = free_port()
        node = dynd("mem1", port, scratch / "data", scratch / "mem1.log", "--replicas", "1", "--r", "1", "--w", "1")
        start(node)
        try:
            wait_until_accepting(node)
            assert node.process is not None
            pid = node.process.pid
            with BlockingClient(node.address) as client:
                empty_used = client.info().disk_used_bytes
            print(f"one node, N=1, {args.value_size} B values; empty store uses {empty_used:,} B of LMDB")
            print("| keys | load s (cumulative) | keys/s | LMDB used MiB | LMDB B/key | dynd RSS MiB | anon B/key | file-backed MiB | writer RSS MiB |")
            print("|---|---|---|---|---|---|---|---|---|")
            started = time.monotonic()
            deadline = started + args.deadline_s
            loaded = 0
            base_anon = rss_kib(pid)["RssAnon"]
            for checkpoint in checkpoints:
                loaded += trio.run(lambda: load(node.address, loaded, checkpoint, args.value_size, deadline_s=deadline))  # noqa: B023
                elapsed = time.monotonic() - started
                with BlockingClient(node.address) as client:
                    info = client.info()
                main_rss = rss_kib(pid)
                writer_rss = sum(rss_kib(child)["VmRSS"] for child in children(pid))
                used = info.disk_used_bytes
                print(
                    f"| {info.keys:,} | {elapsed:.0f} | {loaded / elapsed:,.0f} | {used / 2**20:,.0f} | {(used - empty_used) / max(1, info.keys):,.0f} "
                    f"| {main_rss['VmRSS'] / 1024:,.0f} | {(main_rss['RssAnon'] - base_anon) * 1024 / max(1, info.keys):,.0f} "
                    f"| {main_rss['RssFile'] / 1024:,.0f} | {writer_rss / 1024:,.0f} |",
                    flush=True,
                )
                if loaded < checkpoint:
                    print(f"deadline of {args.deadline_s:g} s reached at {loaded:,} keys; later checkpoints skipped")
                    break
        finally:
            stop(node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
