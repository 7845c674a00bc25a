"""Many nodes per host (`dynd --workers K`): what each worker of a host is called and where it lives.

A host runs K node processes (workers) under one supervisor (`dynd.shell.supervisor`), all from one
config. Worker i (0 <= i < K) is a member of the cluster like any node:

- its name is `<name>-<i>`; its listen and advertise ports, and its metrics port when metrics are
  served, are the configured ones plus i; its data directory is `<data_dir>/worker-<i>`;
- it shares everything else: the location (so claim treats the K workers as one host), the
  secret, the seeds, the limits;
- when `join` is empty (the host creates the cluster), worker 0 creates it and the others join
  through worker 0.

With K = 1 there is no supervisor and nothing is renamed or moved: the node is `<name>` with its
data in `<data_dir>/lmdb`, as before workers existed, so existing deployments keep their identity.
A data directory laid out for one K is refused under the other kind (`layout_problem`): changing
between one worker and several changes the host's members, which is a membership change
(join the new ones, then `dynctl cluster leave` the old), not a restart.

Only names and numbers live here (no I/O but `available_cores`); `Config.for_worker` applies them.
"""

from __future__ import annotations

import os

AUTO = "auto"
WORKER_DIR_PREFIX = "worker-"


class WorkersError(ValueError):
    pass


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and `taskset` narrow),
    else the machine's count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_workers(value: object, workers_max: int, cores: int | None = None) -> int:
    """The worker count a `workers` setting asks for: a positive integer up to `workers_max`, or
    "auto" for one per available core (at most `workers_max`)."""
    if value == AUTO:
        return max(1, min(cores if cores is not None else available_cores(), workers_max))
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if type(value) is not int:
        raise WorkersError(f'workers must be a whole number or "auto", not {value!r}')
    if not 1 <= value <= workers_max:
        raise WorkersError(f"workers must be in 1..{workers_max} (limit workers_max), not {value}")
    return value


def worker_name(name: str, index: int, workers: int) -> str:
    return name if workers == 1 else f"{name}-{index}"


def worker_data_dir(data_dir: str, index: int, workers: int) -> str:
    return data_dir if workers == 1 else os.path.join(data_dir, f"{WORKER_DIR_PREFIX}{index}")


def worker_port(port: int, index: int, setting: str) -> int:
    """`port` + `index`, or WorkersError naming `setting` when that passes 65535."""
    shifted = port + index
    if shifted > 65535:
        raise WorkersError(f"{setting} port {port} + worker {index} is {shifted}, beyond 65535: use a lower port or fewer workers")
    return shifted


def layout_problem(data_dir: str, workers: int, lmdb_exists: bool, worker_dirs: list[int]) -> str | None:
    """Why `data_dir` cannot be served with `workers` workers, or None. `lmdb_exists`: it holds a
    single node's store (`<data_dir>/lmdb`); `worker_dirs`: the worker indexes it has directories for."""
    if workers == 1 and worker_dirs:
        return (
            f"{data_dir} holds the data of {len(worker_dirs)} workers ({WORKER_DIR_PREFIX}{min(worker_dirs)}..), "
            f"but workers = 1 would start one node in {data_dir}/lmdb: start with --workers {max(worker_dirs) + 1}, "
            "or move the host's members to a single node as a membership change (dynd(8), WORKERS)"
        )
    if workers > 1 and lmdb_exists:
        return (
            f"{data_dir} holds the data of a single node (started with workers = 1, in {data_dir}/lmdb), but workers = {workers} "
            f"would start new members in {data_dir}/{WORKER_DIR_PREFIX}N: start with --workers 1, or add workers as a "
            "membership change with another data_dir (dynd(8), WORKERS)"
        )
    return None


def worker_dirs_in(data_dir: str) -> list[int]:
    """The worker indexes `data_dir` has directories for (`worker-<i>`), in order."""
    try:
        names = os.listdir(data_dir)
    except OSError:
        return []
    found = []
    for entry in names:
        suffix = entry[len(WORKER_DIR_PREFIX) :]
        if entry.startswith(WORKER_DIR_PREFIX) and suffix.isdigit() and os.path.isdir(os.path.join(data_dir, entry)):
            found.append(int(suffix))
    return sorted(found)
