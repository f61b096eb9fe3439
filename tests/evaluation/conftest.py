"""Fixtures for the CALVIN evaluation tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parents[3] / "shared" / "reference_data" / "calvin" / "eval_sequences_1000.json"


@pytest.fixture(scope="session")
def golden_sequences() -> list[dict]:
    """The official 1000 (initial_condition, sequence, robot_obs, scene_obs) entries, in get_sequences order."""
    if not GOLDEN.is_file():
        pytest.skip(f"golden CALVIN sequences not found at {GOLDEN}")
    return json.loads(GOLDEN.read_text())


@pytest.fixture()
def save_tiny_checkpoint(tiny_model_dirs):
    """Writes a tiny random VPP policy (policy_conf/model/tiny.yaml, seed 0) as a stage-2 checkpoint folder and
    returns (folder, video model dir, CLIP dir): what the evaluation CLIs load."""
    import torch
    from omegaconf import OmegaConf

    from policy_models.checkpoints import save_policy_checkpoint
    from policy_models.policy import build_policy

    svd, clip = tiny_model_dirs

    def save(folder: Path) -> tuple[Path, Path, Path]:
        torch.manual_seed(0)
        cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "policy_conf" / "model" / "tiny.yaml")
        policy = build_policy(cfg, video_model_path=str(svd), clip_model_path=str(clip)).eval()
        save_policy_checkpoint(folder, policy)
        return folder, svd, clip

    return save
