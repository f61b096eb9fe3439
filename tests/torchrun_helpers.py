"""Run a script as several CPU processes under torchrun (gloo), the way `accelerate launch` starts the trainers."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpp_core.torchrun import run_torchrun as _run_torchrun


def run_torchrun(script: Path, args: list[str], nproc: int = 2, timeout: float = 600) -> None:
    """`script args` in `nproc` processes; a failure or a timeout fails the test with the end of their output."""
    code, stdout, stderr = _run_torchrun(script, args, nproc, {"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"},
                                         timeout)
    if code is None:
        pytest.fail("torchrun timed out:\n" + stdout[-2000:] + stderr[-2000:])
    assert code == 0, stdout[-3000:] + stderr[-3000:]
