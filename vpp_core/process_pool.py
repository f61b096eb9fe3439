"""Worker-process pools whose workers start as fresh interpreters ('spawn'), never as forks.

Why: forking a process that already runs threads (torch's OpenMP workers, a tqdm monitor, PyAV's codec threads) copies
into the child every lock those threads held at that moment, and a worker that then needs one waits for ever. A CI run
of the simulator archive's round-trip test hung that way in session 28, both forked workers asleep. Spawned workers
import what they need instead (about 2 s each); their functions and arguments must be picklable, and a script that
starts a pool needs the usual `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import SpawnContext

SPAWN: SpawnContext = multiprocessing.get_context("spawn")


def spawn_pool(workers: int) -> ProcessPoolExecutor:
    """A `ProcessPoolExecutor` of `workers` (at least one) spawned processes."""
    return ProcessPoolExecutor(max_workers=max(1, workers), mp_context=SPAWN)
