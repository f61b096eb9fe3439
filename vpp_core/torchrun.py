"""Start a script as several processes under torchrun, the way `accelerate launch` starts the trainers (the scaling
harness and the multi-process tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path


def run_torchrun(script: Path, args: Sequence[str], nproc: int, env: Mapping[str, str] | None = None,
                 timeout: float | None = None, cwd: Path | None = None) -> tuple[int | None, str, str]:
    """`script args` in `nproc` torchrun processes on this node, with `env` added to this process's environment;
    (exit code, stdout, stderr), the exit code None after a timeout. The launcher gets a process group of its own, so
    a timeout ends its workers too and none is left holding a GPU."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(script), *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        return None, stdout, stderr
    return proc.returncode, stdout, stderr
