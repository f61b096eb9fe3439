"""Run folders, checkpoint folders and the exact-resume training state.

    <run_dir>/run_config.yaml                   resolved training config (config.yaml would mark a checkpoint folder)
    <run_dir>/metrics.jsonl, log.txt            training/validation metrics, python log
    <run_dir>/checkpoints/step_0001234/         policy checkpoint (policy_models.checkpoints.save_policy_checkpoint)
        training_state/trainer_state.json       step, epoch, batches consumed in the epoch, best val, world size
        training_state/optimizer.pt             optimizer state dict
        training_state/scheduler.pt             LR scheduler state dict
        training_state/rng_state_<rank>.pt      python / numpy / torch / cuda RNG of every process
    <run_dir>/last, <run_dir>/best              text files naming the checkpoint folder (relative to the run folder)

A checkpoint is written into ``.step_XXXXXXX.tmp`` and renamed when complete, then ``last`` is replaced atomically,
so an interrupted save never leaves a checkpoint that looks complete. Everything is loadable with
``torch.load(weights_only=True)`` (RNG states are stored as tensors, not pickled numpy/python objects).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policy_models.checkpoints import CheckpointError
from vpp_core.io import atomic_json_dump, atomic_torch_save, atomic_write

TRAINING_STATE = "training_state"
CKPT_RE = re.compile(r"^step_(\d{7,})$")


@dataclass
class TrainerState:
    step: int = 0                  # optimizer steps taken
    epoch: int = 0                 # current epoch (0-based)
    batch_in_epoch: int = 0        # batches of `epoch` already consumed
    best_val: float | None = None  # best validation MSE so far
    best_checkpoint: str | None = None
    world_size: int = 1
    samples_seen: int = 0


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def write_pointer(run_dir: Path, name: str, target: Path) -> None:
    with atomic_write(run_dir / name) as tmp:
        tmp.write_text(os.path.relpath(target, run_dir) + "\n")


def read_pointer(run_dir: Path, name: str) -> Path | None:
    p = run_dir / name
    if not p.is_file():
        return None
    target = Path(p.read_text().strip())
    return target if target.is_absolute() else run_dir / target


# ---------------------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python_version": torch.tensor(py[0]),
        "python": torch.tensor(py[1], dtype=torch.int64),
        "python_gauss": torch.tensor(float("nan") if py[2] is None else py[2], dtype=torch.float64),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": torch.tensor(np_state[2]),
        "numpy_has_gauss": torch.tensor(np_state[3]),
        "numpy_cached_gauss": torch.tensor(np_state[4], dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
        state["cuda_device"] = torch.tensor(torch.cuda.current_device())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    gauss = float(state["python_gauss"])
    random.setstate((int(state["python_version"]), tuple(int(x) for x in state["python"].tolist()),
                     None if gauss != gauss else gauss))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(state["numpy_pos"]),
                         int(state["numpy_has_gauss"]), float(state["numpy_cached_gauss"])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---------------------------------------------------------------------------------------------------------- save/load
def save_training_state(folder: Path, state: TrainerState, optimizer: torch.optim.Optimizer,
                        scheduler: Any) -> None:
    """Main process: optimizer, scheduler and trainer counters (RNG is per process: `save_rng`)."""
    ts = folder / TRAINING_STATE
    ts.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(optimizer.state_dict(), ts / "optimizer.pt")
    atomic_torch_save(scheduler.state_dict(), ts / "scheduler.pt")
    atomic_json_dump(asdict(state), ts / "trainer_state.json")


def save_rng(folder: Path, rank: int) -> None:
    atomic_torch_save(rng_state(), folder / TRAINING_STATE / f"rng_state_{rank}.pt")


def load_trainer_state(folder: Path) -> TrainerState:
    path = folder / TRAINING_STATE / "trainer_state.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {folder} is not a resumable checkpoint (no training_state/)")
    return TrainerState(**json.loads(path.read_text()))


def load_torch(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"resume: {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (EOFError, OSError, RuntimeError, pickle.UnpicklingError) as exc:  # cut short, or not a torch file
        raise CheckpointError(f"resume: cannot read {path} (truncated or not a torch file): {exc}") from exc


def list_checkpoints(run_dir: Path) -> list[Path]:
    ck = run_dir / "checkpoints"
    if not ck.is_dir():
        return []
    return sorted(p for p in ck.iterdir() if p.is_dir() and CKPT_RE.match(p.name))


def prune_checkpoints(run_dir: Path, keep_last: int | None, protect: list[Path | None]) -> None:
    """Delete all but the newest `keep_last` step checkpoints, never the protected ones (best, last)."""
    if not keep_last or keep_last <= 0:
        return
    protected = {p.resolve() for p in protect if p is not None}
    ckpts = list_checkpoints(run_dir)
    for p in ckpts[: max(0, len(ckpts) - keep_last)]:
        if p.resolve() not in protected:
            shutil.rmtree(p, ignore_errors=True)
