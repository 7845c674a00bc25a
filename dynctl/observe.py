"""What `stats`, `info`, `health` and `top` share: asking every member, and reading a StatsOk.

A member list comes from the --node's cluster status; each member is then asked at its own
address, except the --node itself, which is asked where the user pointed dynctl (its advertised
address may not be reachable from here). Members are asked concurrently with a short timeout, so
one dead member costs at most `MEMBER_TIMEOUT_S`, not a --timeout per member.

Rates: "since start" divides the `requests` counters by the uptime; "last 60 s" divides the 60 s
window's histogram count by min(60 s, uptime). Counters and windows a node does not report read as
zero (the metric names are a shared contract, and a consumer tolerates a missing one).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import trio

from dynctl.node import Session
from dynd.client import Client
from dynd.protocol.errors import DynError
from dynd.protocol.messages import ClusterStatusOk, MemberView, StatsOk

T = TypeVar("T")

# Per member, for --all, top and health: short, so a killed member is reported within seconds.
MEMBER_TIMEOUT_S = 2.0
WINDOW_60S_S = 60.0
OPS = ("get", "put", "delete", "replicate", "forward")
WINDOWS = ("60s", "start")
VERSIONS_BUCKETS = ("1", "2", "3", "4+")


@dataclass(frozen=True, slots=True)
class Answer(Generic[T]):
    """One member's answer, or why there is none."""

    name: str
    address: str
    value: T | None
    error: str | None = None


def member_timeout_s(session: Session) -> float:
    return min(session.timeout_s, MEMBER_TIMEOUT_S)


def member_address(session: Session, status: ClusterStatusOk, member: MemberView) -> str:
    """Where to ask `member`: the --node as given for the node itself, else its own address."""
    return session.node_address if member.name == status.node else member.address


async def ask_one(session: Session, name: str, address: str, ask: Callable[[Client], Awaitable[T]]) -> Answer[T]:
    timeout_s = member_timeout_s(session)
    try:
        # The whole exchange (connect, hello, request) under one deadline: a stopped process can
        # accept a connection and never answer.
        with trio.fail_after(timeout_s * 2):
            async with session.open_client(address, timeout_s=timeout_s) as client:
                return Answer(name, address, await ask(client))
    except DynError as exc:
        return Answer(name, address, None, str(exc))
    except trio.TooSlowError:
        return Answer(name, address, None, f"no answer from {address} within {timeout_s * 2:g} s")


async def ask_members(
    session: Session, status: ClusterStatusOk, ask: Callable[[Client], Awaitable[T]]
) -> list[Answer[T]]:
    """`ask` every member that has an address, concurrently; answers in the members' order."""
    members = [member for member in status.members if member.address or member.name == status.node]
    answers: list[Answer[T] | None] = [None] * len(members)

    async def one(index: int, member: MemberView) -> None:
        answers[index] = await ask_one(session, member.name, member_address(session, status, member), ask)

    async with trio.open_nursery() as nursery:
        for index, member in enumerate(members):
            nursery.start_soon(one, index, member)
    return [answer for answer in answers if answer is not None]


# ---- reading a StatsOk ----


def counter_total(stats: StatsOk, name: str) -> dict[str, int]:
    """label -> value for one counter (or gauge list) name."""
    return {metric.label: metric.value for metric in stats.counters if metric.name == name}


def gauge(stats: StatsOk, name: str, label: str = "") -> int:
    return sum(metric.value for metric in stats.gauges if metric.name == name and (not label or metric.label == label))


def ops_per_s(stats: StatsOk, op: str, window: str) -> float:
    uptime_s = max(stats.uptime_ms / 1000.0, 1e-3)
    if window == "60s":
        view = next((v for v in stats.latencies if v.op == op and v.window == "60s"), None)
        return (view.count if view else 0) / min(WINDOW_60S_S, uptime_s)
    requests = [value for label, value in counter_total(stats, "requests").items() if label.split(":", 1)[0] == op]
    if requests:
        return sum(requests) / uptime_s
    # Replica-side ops have no `requests` counter: their histogram counts every one.
    view = next((v for v in stats.latencies if v.op == op and v.window == "start"), None)
    return (view.count if view else 0) / uptime_s


def errors_by_code(stats: StatsOk) -> dict[str, int]:
    """error code -> count over every op (outcome "ok" left out)."""
    errors: dict[str, int] = {}
    for label, value in counter_total(stats, "requests").items():
        op, _, outcome = label.partition(":")
        if outcome and outcome != "ok" and value:
            errors[outcome] = errors.get(outcome, 0) + value
    return dict(sorted(errors.items()))


def versions_shares(stats: StatsOk) -> dict[str, float]:
    """"1", "2", "3", "4+" -> the share (0..1) of gets that saw that many versions."""
    counts = list(stats.versions_per_get)[: len(VERSIONS_BUCKETS)]
    counts += [0] * (len(VERSIONS_BUCKETS) - len(counts))
    total = sum(counts)
    return {bucket: (count / total if total else 0.0) for bucket, count in zip(VERSIONS_BUCKETS, counts, strict=True)}


def ops_document(stats: StatsOk) -> dict[str, dict[str, dict[str, Any]]]:
    """op -> window -> {ops_per_s, count, p50_ms, p99_ms, p999_ms, max_ms}, for the ops the node reports."""
    document: dict[str, dict[str, dict[str, Any]]] = {}
    reported = {view.op for view in stats.latencies}
    for op in [op for op in OPS if op in reported] + sorted(reported - set(OPS)):
        windows: dict[str, dict[str, Any]] = {}
        for window in WINDOWS:
            view = next((v for v in stats.latencies if v.op == op and v.window == window), None)
            if view is None:
                continue
            windows[window] = {
                "ops_per_s": round(ops_per_s(stats, op, window), 3),
                "count": view.count,
                "p50_ms": view.p50_us / 1000,
                "p99_ms": view.p99_us / 1000,
                "p999_ms": view.p999_us / 1000,
                "max_ms": view.max_us / 1000,
            }
        document[op] = windows
    return document


def stats_document(stats: StatsOk) -> dict[str, Any]:
    return {
        "node": stats.node,
        "uptime_s": stats.uptime_ms / 1000,
        "ops": ops_document(stats),
        "errors": errors_by_code(stats),
        "versions_per_get": {
            "counts": list(stats.versions_per_get),
            "shares": {bucket: round(share, 6) for bucket, share in versions_shares(stats).items()},
        },
        "counters": [{"name": m.name, "label": m.label, "value": m.value} for m in stats.counters],
        "gauges": [{"name": m.name, "label": m.label, "value": m.value} for m in stats.gauges],
    }


def p999_ms(stats: StatsOk, op: str, window: str = "60s") -> float | None:
    view = next((v for v in stats.latencies if v.op == op and v.window == window), None)
    return None if view is None or view.count == 0 else view.p999_us / 1000


def format_duration_s(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"
