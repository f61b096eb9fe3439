"""Two CPU processes (torchrun + gloo): sharded validation counts every sample once, every rank saves its RNG, and
resuming a 2-process run is exact."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.torchrun_helpers import run_torchrun

SCRIPT = Path(__file__).resolve().parent / "ddp_train_script.py"


def _run(root, run_dir, *overrides):
    run_torchrun(SCRIPT, [str(root), str(run_dir), *overrides])
    return [json.loads((Path(run_dir) / f"result_{r}.json").read_text()) for r in (0, 1)]


def test_two_processes_validation_and_exact_resume(calvin_root_session, tmp_path):
    common = ["dataloader.batch_size=8", "training.max_steps=7", "training.checkpoint_every_steps=3"]
    full = _run(calvin_root_session, tmp_path / "full", *common)
    for r in full:
        assert r["step"] == 7 and r["epoch"] == 1  # 66 windows / (2 x 8) -> 5 batches per epoch
        assert r["val"][0]["val_mse_elements"] == 33 * 10 * 7  # every validation window once, across both ranks
    assert full[0]["val"][0]["val_mse"] == full[1]["val"][0]["val_mse"]
    ck3 = tmp_path / "full" / "checkpoints" / "step_0000003"
    assert {p.name for p in (ck3 / "training_state").iterdir()} >= {"rng_state_0.pt", "rng_state_1.pt"}
    _run(calvin_root_session, tmp_path / "resumed", *common, f"run.resume={ck3}")
    for f in ("model.safetensors", "ema.safetensors"):
        a = load_file(str(tmp_path / "full" / "checkpoints" / "step_0000007" / f))
        b = load_file(str(tmp_path / "resumed" / "checkpoints" / "step_0000007" / f))
        assert all(torch.equal(a[k], b[k]) for k in a)
