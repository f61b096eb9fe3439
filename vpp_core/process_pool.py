"""Worker-process pools whose workers start as fresh interpreters ('spawn'), never as forks.

Why: forking a process that already runs threads (torch's OpenMP workers, a tqdm monitor, PyAV's codec threads) copies
into the child every lock those threads held at that moment, and a worker that then needs one waits for ever. A CI run
of the simulator archive's round-trip test hung that way in session 28, both forked workers asleep. Spawned workers
import what they need instead (about 2 s each); their functions and arguments must be picklable, and a script that
starts a pool needs the usual `if __name__ == "__main__":` guard.

Workers also end when the process that started them is gone (`exit_with_parent`): a killed parent can no longer
collect their results, and workers left running would hold CPUs (and a simulator each) against the rerun that
resumes its work.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import SpawnContext

SPAWN: SpawnContext = multiprocessing.get_context("spawn")


def exit_with_parent(poll_s: float = 1.0) -> None:
    """Pool initializer: a daemon thread ends this worker at once when its parent process has died."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        while parent.is_alive():
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def spawn_pool(workers: int) -> ProcessPoolExecutor:
    """A `ProcessPoolExecutor` of `workers` (at least one) spawned processes that end with their parent."""
    return ProcessPoolExecutor(max_workers=max(1, workers), mp_context=SPAWN, initializer=exit_with_parent)
