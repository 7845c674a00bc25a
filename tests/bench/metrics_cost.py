"""What the node's measurements add to one request (issue 14: at most 3 us): a latency recorded in
its op's histogram plus the outcome counter, timed alone and as `Node._timing` runs them (two
clock reads, the closure, the admission-control feed that was there before).

    PYTHONPATH=$PWD python tests/bench/metrics_cost.py
"""

from __future__ import annotations

import time
import timeit

from dynd.core.metrics import Metrics

NUMBER = 200_000


def per_call_us(statement: object, number: int = NUMBER) -> float:
    return min(timeit.repeat(statement, number=number, repeat=5)) / number * 1e6  # type: ignore[arg-type]


def main() -> None:
    metrics = Metrics()
    now_ms = 1_700_000_000_000
    record = per_call_us(lambda: (metrics.latency("get", 1_234, now_ms), metrics.count("requests", "get:ok")))
    empty = per_call_us(lambda: None)
    print(f"record + counter: {record - empty:.2f} us per request (the lambda's own {empty:.2f} us taken off)")
    clock = time.perf_counter_ns
    now_us = lambda: clock() // 1000  # noqa: E731
    reads = per_call_us(lambda: (now_us(), now_us(), f"{'get'}:{'ok'}"))
    print(f"with the two clock reads and the outcome label: {record - empty + reads - empty:.2f} us per request")


if __name__ == "__main__":
    main()
