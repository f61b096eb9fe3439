"""Tiny policies on top of the tiny random video model (video_conf/tiny.yaml)."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

POLICY_CONF = Path(__file__).resolve().parents[2] / "policy_conf" / "model"


def tiny_config(**embodiment):
    cfg = OmegaConf.load(POLICY_CONF / "tiny.yaml")
    for k, v in embodiment.items():
        cfg.embodiment[k] = v
    return cfg


@pytest.fixture(scope="session")
def tiny_policy(tiny_model_dirs):
    from policy_models.policy import build_policy

    torch.manual_seed(0)
    svd, clip = tiny_model_dirs
    return build_policy(tiny_config(), video_model_path=str(svd), clip_model_path=str(clip)).eval()


@pytest.fixture(scope="session")
def tiny_robot_policy(tiny_model_dirs):
    """Three cameras, 6-D state token, 5-D actions, chunk 4, per-part loss weights."""
    from policy_models.policy import build_policy

    torch.manual_seed(1)
    svd, clip = tiny_model_dirs
    cfg = tiny_config(
        name="robot", cameras=["a", "b", "c"], action_dim=5, chunk_length=4, state_dim=6,
        loss_groups=[{"name": "arm", "slices": [[0, 3]], "weight": 2.0},
                     {"name": "hand", "slices": [[3, 5]], "weight": 1.0}],
    )
    cfg.model.multistep = 4
    return build_policy(cfg, video_model_path=str(svd), clip_model_path=str(clip)).eval()


@pytest.fixture()
def policy(tiny_policy):
    """A private copy of the tiny policy (its caches and graphs are per instance), with empty text caches."""
    import copy

    p = copy.deepcopy(tiny_policy)
    p.tvp_encoder.clear_text_cache()
    p.goal_encoder.clear_cache()
    return p
