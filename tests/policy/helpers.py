"""Shared inputs for the policy tests."""

from collections.abc import Callable

import numpy as np
import torch


def calvin_obs(batch: int = 1, seed: int = 0) -> dict:
    """Random uint8 observations of the CALVIN cameras (200x200 static, 84x84 gripper), batched."""
    rng = np.random.default_rng(seed)
    return {"rgb_obs": {"rgb_static": rng.integers(0, 256, (batch, 200, 200, 3), dtype=np.uint8),
                        "rgb_gripper": rng.integers(0, 256, (batch, 84, 84, 3), dtype=np.uint8)}}


def repeatable_cuda_chunk(policy) -> Callable[[], torch.Tensor]:
    """A chunk of `policy` on CUDA with the same observations, instruction and sampler noise at every call, so that
    two calls differ only in the kernels that ran them (eager, graphed, compiled, fused)."""
    obs, text = calvin_obs(batch=2, seed=3), "open the drawer"
    return lambda: policy.predict_action_chunk(obs, text, generator=torch.Generator("cuda").manual_seed(0))


def run_in_triton_interpreter(code: str) -> str:
    """Run `code` in a fresh Python with TRITON_INTERPRET=1 (it must be set before triton is imported, hence the
    subprocess), so that Triton kernels run on the CPU; fails the test with the output unless it exits cleanly and
    prints "worst relative difference". Skips without triton (a dev dependency on Linux x86-64)."""
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    pytest.importorskip("triton", reason="triton is a dev dependency on Linux x86-64 (pip install -e '.[dev]')")
    root = Path(__file__).resolve().parents[2]
    env = {"TRITON_INTERPRET": "1", "PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "worst relative difference" in run.stdout
    return run.stdout
