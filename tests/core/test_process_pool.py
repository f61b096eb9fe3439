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


WORKER_SCRIPT = """
import os, sys, time
from vpp_core.process_pool import spawn_pool

def report_and_wait(_):
    print(os.getpid(), flush=True)
    time.sleep(120)

if __name__ == "__main__":
    with spawn_pool(1) as pool:
        pool.submit(report_and_wait, 0)
        time.sleep(120)
"""


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (a container's init may never reap a reparented one)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_pool_workers_end_when_their_parent_is_killed(tmp_path):
    """A SIGKILLed parent cannot collect its workers' results; they must not keep running (and simulating) for
    ever beside the rerun."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = tmp_path / "parent.py"
    script.write_text(WORKER_SCRIPT)
    repo = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(repo)})
    try:
        worker = int(parent.stdout.readline())
        assert _running(worker)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 20
    while _running(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(worker)
