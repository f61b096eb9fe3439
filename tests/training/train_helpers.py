"""Helpers for the trainer tests: a small stand-in policy and the tiny training config.

The stand-in (`FakePolicy`) has the VPPPolicy surface the trainer uses (forward = compute_loss -> (loss, logs),
predict_action_chunk, embodiment, resolution, config for checkpoint saving) with a few thousand parameters, dropout
and input noise (so exact-resume tests also check the RNG handling) and no video model, so trainer tests take
seconds. The real tiny VPPPolicy is exercised in test_end_to_end.py.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "policy_conf"


def text_id(text: str, n: int = 64) -> int:
    return zlib.crc32(text.encode()) % n


class FakePolicy(nn.Module):
    """Pools each camera image to its mean colour, embeds the instruction by hash, predicts the chunk with an MLP."""

    def __init__(self, cfg, resolution: int = 32):
        super().__init__()
        from policy_models.config import policy_config_from

        resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        self.config = policy_config_from(resolved)
        e = self.config.embodiment
        self._resolution = resolution
        in_dim = 4 * len(e.cameras) + 16 + e.state_dim
        self.text = nn.Embedding(64, 16)
        self.net = nn.Sequential(nn.Linear(in_dim, 64), nn.GELU(), nn.Dropout(0.1),
                                 nn.Linear(64, e.chunk_length * e.action_dim))
        self.frozen = nn.Parameter(torch.zeros(3), requires_grad=False)  # like pos_emb: saved, never trained
        self.stats = None

    @property
    def embodiment(self):
        return self.config.embodiment

    @property
    def resolution(self) -> int:
        return self._resolution

    @property
    def device(self):
        return self.frozen.device

    def _features(self, rgb_obs, texts, state=None):
        feats = []
        for cam in self.embodiment.cameras:
            x = rgb_obs[cam].float()
            if x.dim() == 5:
                x = x[:, 0]
            pooled = x.mean(dim=(2, 3))
            if pooled.shape[1] == 3:
                pooled = torch.cat([pooled, torch.zeros_like(pooled[:, :1])], 1)
            feats.append(pooled)
        ids = torch.tensor([text_id(t) for t in texts], device=feats[0].device)
        feats.append(self.text(ids))
        if self.embodiment.state_dim:
            feats.append(state.reshape(len(texts), -1).float())
        h = torch.cat(feats, 1)
        return h + 0.01 * torch.randn_like(h)  # stochastic features, like the TVP noise

    def forward(self, batch):
        e = self.embodiment
        h = self._features(batch["rgb_obs"], batch["lang_text"], batch.get("state_obs"))
        pred = self.net(h).view(-1, e.chunk_length, e.action_dim)
        mse = (pred - batch["actions"].float()).pow(2).mean()
        return mse, {"loss_mse": mse.detach()}

    compute_loss = forward

    @torch.no_grad()
    def predict_action_chunk(self, obs, instruction, generator=None):
        e = self.embodiment
        texts = [instruction] if isinstance(instruction, str) else list(instruction)
        h = self._features(obs["rgb_obs"], texts, obs.get("state_obs"))
        return self.net(h).view(-1, e.chunk_length, e.action_dim)


def fake_policy_factory(resolution: int = 32):
    def make(cfg, device):
        return FakePolicy(cfg, resolution).to(device)

    return make


def tiny_calvin_cfg(root: Path, run_dir: Path, *overrides: str):
    from policy_models.training.config import compose_config

    return compose_config(
        CONF / "tiny_calvin.yaml",
        [f"root_data_dir={root}", "video_model_path=unused", "text_encoder_path=unused", f"run.run_dir={run_dir}",
         "training.disable_progress_bar=true", "training.log_every=1", "dataloader.num_workers=0",
         "training.keep_last_checkpoints=null", *overrides],
    )
