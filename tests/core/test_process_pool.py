"""Worker pools spawn fresh interpreters: forking a process that runs threads can leave its workers waiting for ever
on a lock copied mid-use (vpp_core.process_pool)."""

import math
import os
import threading

from vpp_core.process_pool import spawn_pool


def test_pool_workers_are_spawned_and_run_while_the_parent_has_threads():
    stop = threading.Event()
    busy = threading.Thread(target=stop.wait, daemon=True)  # a live thread, as a progress bar's monitor would be
    busy.start()
    try:
        with spawn_pool(2) as pool:
            assert pool._mp_context.get_start_method() == "spawn"
            assert list(pool.map(math.sqrt, [4.0, 9.0])) == [2.0, 3.0]
            assert os.getpid() not in set(pool.map(_pid, range(2)))
    finally:
        stop.set()


def _pid(_: int) -> int:
    return os.getpid()
