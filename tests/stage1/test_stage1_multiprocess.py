"""The stage-1 trainer in two CPU processes (torchrun + gloo), as `accelerate launch` runs it on a GPU node: one run
folder, losses reduced over both ranks, a checkpoint with every rank's random state, and an exact 2-process resume;
with the AdamW states sharded over the processes, the same training and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.torchrun_helpers import run_torchrun
from vpp_core.sharded_optimizer import state_numel

from .helpers import write_latent_dataset

SCRIPT = Path(__file__).resolve().parent / "ddp_stage1_script.py"
UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"


def _run_two_processes(svd: Path, clip: Path, data: Path, out: Path, *pairs: str) -> list[dict]:
    run_torchrun(SCRIPT, [str(svd), str(clip), str(data), str(out), *pairs])
    return [json.loads((out / f"result_{rank}.json").read_text()) for rank in (0, 1)]


def _unet_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / UNET_WEIGHTS))


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


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


def test_sharded_optimizer_states_train_and_resume_as_unsharded(tiny_model_dirs, tmp_path):
    """shard_optimizer_states: each rank holds about half of AdamW's states, yet the run's losses and weights equal
    the unsharded run's, its checkpoint resumes exactly, and an unsharded checkpoint resumes sharded."""
    data = tmp_path / "data"
    write_latent_dataset(data, "robo", {"train": 4, "val": 2}, frames=[8, 6, 7, 8])
    steps = ["max_train_steps=4", "checkpointing_steps=2", "validation_steps=2"]
    plain = _run_two_processes(*tiny_model_dirs, data, tmp_path / "plain", *steps)
    sharded = _run_two_processes(*tiny_model_dirs, data, tmp_path / "sharded", *steps, "shard_optimizer_states=true")

    assert [r["sharded"] for r in plain] == [False, False] and [r["sharded"] for r in sharded] == [True, True]
    n = plain[0]["parameters"]
    # AdamW keeps two tensors of each parameter's size, plus a step count per parameter tensor
    assert all(2 * n < r["optimizer_state_numel"] < 2 * n + 1000 for r in plain)
    shares = [r["optimizer_state_numel"] for r in sharded]
    assert sum(shares) == plain[0]["optimizer_state_numel"]
    assert all(0.4 * 2 * n < share < 0.6 * 2 * n for share in shares)

    assert sharded[0]["train_losses"] == plain[0]["train_losses"] and sharded[0]["val_losses"] == plain[0]["val_losses"]
    plain_dir, sharded_dir = Path(plain[0]["run_dir"]), Path(sharded[0]["run_dir"])
    _assert_same_weights(_unet_weights(sharded_dir / "checkpoint-4"), _unet_weights(plain_dir / "checkpoint-4"))
    # the checkpoint holds the whole optimizer state (rank 0 writes it), in the unsharded layout
    saved = torch.load(sharded_dir / "checkpoint-2" / "training_state" / "optimizer.bin", weights_only=True)
    assert state_numel(saved["state"]) == sum(shares)

    resumed = _run_two_processes(*tiny_model_dirs, data, tmp_path / "sharded", *steps, "shard_optimizer_states=true",
                                 f"resume={sharded_dir / 'checkpoint-2'}")
    assert resumed[0]["train_losses"] == pytest.approx(plain[0]["train_losses"][2:], rel=1e-6, abs=1e-7)
    _assert_same_weights(_unet_weights(sharded_dir / "checkpoint-4"), _unet_weights(plain_dir / "checkpoint-4"))

    crossed = _run_two_processes(*tiny_model_dirs, data, tmp_path / "plain", *steps, "shard_optimizer_states=true",
                                 f"resume={plain_dir / 'checkpoint-2'}")
    assert crossed[0]["train_losses"] == pytest.approx(plain[0]["train_losses"][2:], rel=1e-6, abs=1e-7)
    _assert_same_weights(_unet_weights(plain_dir / "checkpoint-4"), _unet_weights(sharded_dir / "checkpoint-4"))
