"""The deterministic simulator (issue 4): many real core nodes in one process, seeded faults,
checkers, replay by seed.

    python -m dynd.sim --seed 7                       one seed; prints the trace hash
    python -m dynd.sim --seeds 0..999 --jobs 2         many, with a progress bar and a summary

Modules: `loop` (virtual clock, trace hash), `process` (a node's life: crash, pause),
`network` and `disk` (the ports the node calls), `world` (hosts and nodes), `faults`
(schedules), `workload` (set-add clients and their history), `checkers`, `run` (one run, phase by
phase).
"""

from dynd.sim.run import SimConfig, SimResult, run_seed

__all__ = ["SimConfig", "SimResult", "run_seed"]
