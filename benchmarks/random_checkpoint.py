"""A random stage-2 checkpoint for one embodiment, written the way training writes one, so that the harnesses load it
through the same code a robot's process or the policy server uses for the released checkpoints.

The action head gets random weights, and an embodiment with a state gets random normalisation statistics. The
video model and text tower are the folders given (benchmarks/random_model_folders.py makes full-size random ones);
without them, tiny random folders are made beside the checkpoint and the model sizes come from
policy_conf/model/tiny.yaml, with the embodiment kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
# embodiment -> its full-size model config under policy_conf/model
MODEL_CONFIGS = {"calvin": "calvin.yaml", "xbot": "xbot.yaml"}


def write_random_checkpoint(out: Path, embodiment: str, video_model_path: str | None = None,
                            clip_model_path: str | None = None, seed: int = 0) -> tuple[Path, str, str]:
    """(checkpoint folder, video model folder, CLIP folder) of a random `embodiment` policy. The checkpoint folder,
    `out`/checkpoint, holds config.yaml, model.safetensors, and stats.json for an embodiment with a state."""
    from omegaconf import OmegaConf

    from policy_models.checkpoints import save_policy_checkpoint
    from policy_models.normalization import Stats
    from policy_models.policy import build_policy

    if embodiment not in MODEL_CONFIGS:
        raise ValueError(f"no model config for embodiment {embodiment!r}; known: {sorted(MODEL_CONFIGS)}")
    if (video_model_path is None) != (clip_model_path is None):
        raise ValueError("give both the video model and the CLIP folder, or neither (tiny random ones)")
    tiny = video_model_path is None
    if tiny:
        from video_models.builders import make_tiny_video_model_folders

        video_model_path, clip_model_path = (str(f) for f in make_tiny_video_model_folders(out, seed=seed))
    full = OmegaConf.load(REPO / "policy_conf" / "model" / MODEL_CONFIGS[embodiment])
    cfg = OmegaConf.load(REPO / "policy_conf" / "model" / "tiny.yaml") if tiny else full
    cfg.embodiment = full.embodiment
    cfg.model.multistep = int(full.embodiment.chunk_length)
    e = cfg.embodiment
    torch.manual_seed(seed)
    policy = build_policy(cfg, video_model_path=video_model_path, clip_model_path=clip_model_path).eval()
    stats = None
    if e.state_dim:  # statistics come with the state (xbot); CALVIN's actions are already in [-1, 1], as its data
        rng = np.random.default_rng(seed)
        low = rng.uniform(-1, 0, e.state_dim)
        stats = Stats(state_01=low, state_99=low + 1.0, action_01=np.full(e.action_dim, -0.1),
                      action_99=np.full(e.action_dim, 0.2)).to_dict()
    return save_policy_checkpoint(out / "checkpoint", policy, cfg, stats=stats), video_model_path, clip_model_path
