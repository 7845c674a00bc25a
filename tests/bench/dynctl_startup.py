"""How long does one `dynctl get KEY` take, start to exit? The median wall time over R runs.

    python tests/bench/dynctl_startup.py [--node HOST:PORT] [--runs 20] [--source DIR ...] [--importtime N]

Without --node it starts one dynd node on 127.0.0.1 in a temporary directory (and stops it at the
end). It writes a small value under one key, then runs `python -m dynctl --node NODE get KEY`
R times with stdout to /dev/null and reports the median, the fastest and the 90th percentile of the
wall time, beside the same figures for `python -c pass`, the interpreter's own floor on this machine.
It also reports the median CPU time (user + system) of the runs: on a VM shared with other work the
wall time includes waiting for a core, and the CPU time shows what dynctl itself costs.

The runs may write bytecode (PYTHONDONTWRITEBYTECODE is dropped from their environment, and the
first, untimed run writes it), as an installed dynctl has it: compiling dynctl and dynd from source
on every run would add tens of milliseconds that no installation pays. `--no-bytecode` measures
that case instead.

`--source DIR` (repeatable) measures the dynctl of each source tree (put first on PYTHONPATH), so
one run compares two revisions: `--source /work/main --source .`. Runs are interleaved, one of each
source in turn, so a machine that drifts (a shared VM) slows every source alike. `--importtime N`
also prints the N costliest imports (cumulative, from `python -X importtime`) of one run per source.

A benchmark, not a test: nothing here passes or fails; the target (at most 120 ms median on the
2-core development VM, where `python -c pass` takes 20-50 ms) is read off the report.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.procs import DyndProcess  # noqa: E402

KEY = f"bench:dynctl-startup:{uuid.uuid4().hex[:12]}"  # fresh each run: an earlier run's value would add a sibling
VALUE = b"a small value"
RUN_DEADLINE_S = 30.0


BYTECODE = True  # set from --no-bytecode


def environment(source: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in ("DYNCTL_NODE", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    env["PYTHONPATH"] = str(source)
    if not BYTECODE:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(argv: list[str], source: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of running `argv` to its exit; a failed run stops the benchmark."""
    cpu_before = children_cpu_s()
    started = time.perf_counter()
    # cwd: `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH.
    result = subprocess.run(argv, env=environment(source), cwd=source, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=RUN_DEADLINE_S)
    took = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.decode(errors='replace')}")
    return took, children_cpu_s() - cpu_before


def summary_ms(samples: list[tuple[float, float]]) -> str:
    wall = sorted(took for took, _ in samples)
    p90 = wall[min(len(wall) - 1, round(0.9 * (len(wall) - 1)))]
    cpu = statistics.median(cpu for _, cpu in samples)
    return (
        f"median {statistics.median(wall) * 1000:6.1f} ms   min {wall[0] * 1000:6.1f} ms   p90 {p90 * 1000:6.1f} ms"
        f"   (CPU median {cpu * 1000:6.1f} ms)"
    )


def top_imports(python: str, source: Path, node: str, count: int) -> list[str]:
    """The `count` imports with the largest cumulative time in one `dynctl get`."""
    argv = [python, "-X", "importtime", "-m", "dynctl", "--node", node, "get", KEY]
    result = subprocess.run(argv, env=environment(source), cwd=source, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=RUN_DEADLINE_S)
    rows: list[tuple[int, int, str]] = []
    for line in result.stderr.decode(errors="replace").splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        own, cumulative, name = line.removeprefix("import time:").split("|", 2)
        rows.append((int(cumulative), int(own), name.rstrip()))
    rows.sort(reverse=True)
    return [f"{cumulative / 1000:7.1f} ms cumulative {own / 1000:6.1f} ms own  {name}" for cumulative, own, name in rows[:count]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node", metavar="HOST:PORT", help="a running node (default: start one)")
    parser.add_argument("--runs", type=int, default=20, help="runs per source (default 20)")
    parser.add_argument("--source", type=Path, action="append", metavar="DIR", help="a source tree to measure (default: this one)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter (default: this one)")
    parser.add_argument("--importtime", type=int, default=0, metavar="N", help="print the N costliest imports per source")
    parser.add_argument("--no-bytecode", action="store_true", help="compile every module from source on every run")
    args = parser.parse_args()
    global BYTECODE
    BYTECODE = not args.no_bytecode
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    sources = [path.resolve() for path in (args.source or [ROOT])]

    node_process = None
    node = args.node
    if node is None:
        node_process = DyndProcess(name="bench1")
        node_process.start()
        node = node_process.address
    try:
        write = [args.python, "-m", "dynctl", "--node", node, "put", KEY, "-"]
        subprocess.run(write, input=VALUE, env=environment(sources[0]), cwd=sources[0], check=True, capture_output=True, timeout=RUN_DEADLINE_S)
        floor: list[tuple[float, float]] = []
        times: dict[Path, list[tuple[float, float]]] = {source: [] for source in sources}
        read = [args.python, "-m", "dynctl", "--node", node, "get", KEY]
        for source in sources:  # untimed: writes the bytecode, warms the page cache
            timed_run(read, source)
        for _ in range(args.runs):
            floor.append(timed_run([args.python, "-c", "pass"], sources[0]))
            for source in sources:
                times[source].append(timed_run(read, source))
        cached = "bytecode cached" if BYTECODE else "no bytecode: every module compiled on every run"
        print(f"dynctl get, {args.runs} runs each, against {node} ({args.python}; {cached})")
        print(f"  {'python -c pass':<40} {summary_ms(floor)}")
        for source in sources:
            print(f"  {str(source):<40} {summary_ms(times[source])}")
        for source in sources if args.importtime else ():
            print(f"\nthe {args.importtime} costliest imports of one `dynctl get` from {source}:")
            for line in top_imports(args.python, source, node, args.importtime):
                print(f"  {line}")
    finally:
        if node_process is not None:
            node_process.stop()
            node_process.cleanup()


if __name__ == "__main__":
    main()
