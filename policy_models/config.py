"""Configuration of the stage-2 VPP policy: one schema for every embodiment.

A config has two blocks (yaml files in `policy_conf/model/*.yaml` carry both, marked `# @package _global_`):

    model:        the network (video-feature taps, Video Former, DiT action head, diffusion, sampler)
    embodiment:   the robot (camera names in order, action/state sizes, chunk length, loss groups)

`policy_config_from(cfg)` validates a (possibly larger, e.g. training) config against this schema: unknown keys and
wrong types are errors that name the key.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf


@dataclass
class LossGroup:
    """A weighted group of action dimensions. Each slice [start, end) contributes
    weight * (end - start) / action_dim * MSE(slice); groups covering all dims with weight 1 give the plain MSE."""

    name: str = "all"
    slices: list[list[int]] = field(default_factory=list)
    weight: float = 1.0


@dataclass
class EmbodimentConfig:
    name: str = "calvin"
    # camera names in the order their tokens are concatenated (CALVIN: static first, then gripper)
    cameras: list[str] = field(default_factory=lambda: ["rgb_static", "rgb_gripper"])
    action_dim: int = 7
    chunk_length: int = 10
    # 0: no proprio token (CALVIN). >0: `state_obs` (B, 1, state_dim) is embedded and appended as the last token.
    state_dim: int = 0
    # per-part loss weighting (xbot: 2*xyz + 2*rot + 1*hand); empty = plain MSE over all dims
    loss_groups: list[LossGroup] = field(default_factory=list)


@dataclass
class FeatureConfig:
    """The predictive-feature (TVP) pass through the frozen video U-Net (vpp_reference §6.3)."""

    num_inference_steps: int = 20  # Karras schedule length; only its first (largest) sigma is used
    extract_layer_idx: int = 1  # last up-block tapped
    use_all_layer: bool = True  # True: up_blocks[0..idx] concatenated (nearest-upsampled); False: only up_blocks[idx]
    fps: int = 4
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.0
    position_encode: bool = False  # must equal the stage-1 model's setting (CALVIN False, xbot True)
    text_max_length: int = 20
    feature_dim: int | None = None  # channels of the tapped features; null = read from the U-Net config


@dataclass
class FormerConfig:
    type: str = "3d"  # '3d' (used) or '2d'
    depth: int = 6
    heads: int = 8
    dim_head: int = 64
    num_time_embeds: int = 16
    num_latents: int = 224


@dataclass
class DiTConfig:
    n_enc_layers: int = 4
    n_dec_layers: int = 4
    n_heads: int = 8
    attn_pdrop: float = 0.3
    resid_pdrop: float = 0.1
    mlp_pdrop: float = 0.05
    goal_dim: int | None = 512  # null = the CLIP text projection width
    proprio_dim: int | None = None  # null = embodiment.state_dim, or 8 (the original's unused default) without state
    train_proprio: bool = True  # the original froze proprio_emb at random init (a bug); only used with state


@dataclass
class DiffusionConfig:
    sigma_data: float = 0.5
    sigma_min: float = 0.001  # training density and sampling; CALVIN evaluation uses 1.0
    sigma_max: float = 80.0
    sigma_sample_density_type: str = "loglogistic"
    sampler_type: str = "ddim"
    num_sampling_steps: int = 10
    noise_scheduler: str = "exponential"


@dataclass
class ModelConfig:
    latent_dim: int = 384  # Video Former width = DiT width
    video_model_path: str | None = None  # stage-1 diffusers folder (svd-robot-calvin)
    clip_model_path: str | None = None  # HF CLIP folder (openai/clip-vit-base-patch32)
    video_dtype: str = "fp16"  # dtype of the frozen video model (fp16 as in the original; fp32 on CPU)
    text_dtype: str = "fp32"  # dtype of the frozen CLIP text tower
    num_frames: int = 16  # predicted frames of the video model
    goal_max_length: int = 77
    multistep: int = 10  # replan every `multistep` env steps in `step()`
    feature: FeatureConfig = field(default_factory=FeatureConfig)
    former: FormerConfig = field(default_factory=FormerConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)


@dataclass
class PolicyConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    embodiment: EmbodimentConfig = field(default_factory=EmbodimentConfig)


class PolicyConfigError(ValueError):
    """The model/embodiment config is invalid; the message names the key."""


def policy_config_from(cfg: DictConfig | dict | PolicyConfig | None) -> PolicyConfig:
    """Validate the `model:` and `embodiment:` blocks of `cfg` (other top-level keys are ignored)."""
    if isinstance(cfg, PolicyConfig):
        return copy.deepcopy(cfg)
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    picked = {k: cfg[k] for k in ("model", "embodiment") if k in cfg}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(PolicyConfig), picked)
        out: PolicyConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except Exception as exc:  # omegaconf's errors name the offending key
        raise PolicyConfigError(f"invalid policy config: {exc}") from exc
    validate(out)
    return out


def validate(cfg: PolicyConfig) -> None:
    m, e = cfg.model, cfg.embodiment
    if not e.cameras:
        raise PolicyConfigError("embodiment.cameras must name at least one camera")
    if len(set(e.cameras)) != len(e.cameras):
        raise PolicyConfigError(f"embodiment.cameras has duplicates: {e.cameras}")
    if e.action_dim <= 0 or e.chunk_length <= 0:
        raise PolicyConfigError("embodiment.action_dim and embodiment.chunk_length must be positive")
    if e.state_dim < 0:
        raise PolicyConfigError("embodiment.state_dim must be >= 0")
    for g in e.loss_groups:
        for s in g.slices:
            if len(s) != 2 or not 0 <= s[0] < s[1] <= e.action_dim:
                raise PolicyConfigError(
                    f"embodiment.loss_groups[{g.name}]: slice {s} is not [start, end) within action_dim {e.action_dim}"
                )
    if m.former.type not in ("3d", "2d"):
        raise PolicyConfigError(f"model.former.type must be '3d' or '2d', got {m.former.type!r}")
    if m.former.num_latents % m.former.num_time_embeds:
        raise PolicyConfigError(
            f"model.former.num_latents ({m.former.num_latents}) must be a multiple of model.former.num_time_embeds "
            f"({m.former.num_time_embeds})"
        )
    if m.former.num_time_embeds > m.num_frames:
        raise PolicyConfigError(
            f"model.former.num_time_embeds ({m.former.num_time_embeds}) exceeds model.num_frames ({m.num_frames})"
        )
    if m.latent_dim % m.dit.n_heads:
        raise PolicyConfigError(f"model.latent_dim ({m.latent_dim}) must be divisible by model.dit.n_heads")
    if m.multistep < 1 or m.multistep > e.chunk_length:
        raise PolicyConfigError(
            f"model.multistep ({m.multistep}) must be in [1, embodiment.chunk_length={e.chunk_length}]"
        )
    if e.state_dim > 0 and m.dit.proprio_dim not in (None, e.state_dim):
        raise PolicyConfigError(
            f"model.dit.proprio_dim ({m.dit.proprio_dim}) must equal embodiment.state_dim ({e.state_dim}) or be null"
        )
    if not 0 < m.diffusion.sigma_min < m.diffusion.sigma_max:
        raise PolicyConfigError("model.diffusion needs 0 < sigma_min < sigma_max")


def proprio_dim(cfg: PolicyConfig) -> int:
    if cfg.model.dit.proprio_dim is not None:
        return cfg.model.dit.proprio_dim
    return cfg.embodiment.state_dim if cfg.embodiment.state_dim > 0 else 8


def to_container(cfg: PolicyConfig) -> dict[str, Any]:
    """Plain dict {'model': ..., 'embodiment': ...} for saving next to a checkpoint."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]
