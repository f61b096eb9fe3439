"""The stage-1 trainer in two CPU processes (torchrun + gloo), as `accelerate launch` runs it on a GPU node: one run
folder, losses reduced over both ranks, a checkpoint with every rank's random state, and an exact 2-process resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.torchrun_helpers import run_torchrun

from .helpers import write_latent_dataset

SCRIPT = Path(__file__).resolve().parent / "ddp_stage1_script.py"
UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"


def _run_two_processes(svd: Path, clip: Path, data: Path, out: Path, *pairs: str) -> list[dict]:
    run_torchrun(SCRIPT, [str(svd), str(clip), str(data), str(out), *pairs])
    return [json.loads((out / f"result_{rank}.json").read_text()) for rank in (0, 1)]


def test_stage1_two_processes_and_exact_resume(tiny_model_dirs, tmp_path):
    data = tmp_path / "data"
    write_latent_dataset(data, "robo", {"train": 4, "val": 2}, frames=[8, 6, 7, 8])
    out = tmp_path / "out"
    steps = ["max_train_steps=4", "checkpointing_steps=2", "validation_steps=2"]
    full = _run_two_processes(*tiny_model_dirs, data, out, *steps)
    assert [r["world"] for r in full] == [2, 2] and [r["global_step"] for r in full] == [4, 4]
    assert full[0]["run_dir"] == full[1]["run_dir"]  # one run folder, named by rank 0
    assert full[0]["train_losses"] == full[1]["train_losses"] and len(full[0]["train_losses"]) == 4
    assert full[0]["val_losses"] == full[1]["val_losses"] and set(full[0]["val_losses"]) == {"2", "4"}
    run_dir = Path(full[0]["run_dir"])
    state = run_dir / "checkpoint-2" / "training_state"
    assert {p.name for p in state.iterdir()} >= {"random_states_0.pkl", "random_states_1.pkl"}
    final = load_file(str(run_dir / "checkpoint-4" / UNET_WEIGHTS))

    resumed = _run_two_processes(*tiny_model_dirs, data, out, *steps, f"resume={run_dir / 'checkpoint-2'}")
    assert [r["global_step"] for r in resumed] == [4, 4] and resumed[0]["run_dir"] == str(run_dir)
    assert resumed[0]["train_losses"] == pytest.approx(full[0]["train_losses"][2:], rel=1e-6, abs=1e-7)
    again = load_file(str(run_dir / "checkpoint-4" / UNET_WEIGHTS))
    assert set(again) == set(final) and all(torch.equal(again[k], final[k]) for k in final)
