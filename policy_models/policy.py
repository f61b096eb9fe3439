"""`VPPPolicy`: the stage-2 Video Prediction Policy for every embodiment (vpp_reference §6, §9.3).

    images ─(frozen video U-Net, one pass at sigma 700; TVPEncoder)─▶ features (B, F, cams*h*w, C)
           ─Video_Former─▶ 224 tokens ─DiT encoder with CLIP goal token (+ proprio)─▶ context
           ─EDM / DDIM over `num_sampling_steps`─▶ action chunk (B, chunk_length, action_dim)

Sub-module names match the original so the trainable state_dict is `Video_Former.*` + `model.inner_model.*`
(vpp_reference §11.3-11.4). The frozen video model and CLIP text tower are registered as `tvp_encoder` / `goal_encoder`
(so `.to(device)` moves them) but are excluded from `state_dict()` and ignored by `load_state_dict()`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from policy_models.config import (
    EmbodimentConfig,
    LossGroup,
    PolicyConfig,
    PolicyConfigError,
    policy_config_from,
    proprio_dim,
)
from policy_models.datasets.base import preprocess_rgb
from policy_models.diffusion.dit import DiffusionTransformer
from policy_models.diffusion.edm import GCDenoiser, make_sample_density
from policy_models.diffusion.samplers import get_sampler, get_sigmas, initial_noise
from policy_models.video_former import build_video_former

FROZEN_MODULES = ("tvp_encoder", "goal_encoder")
# DiT parameters that exist (and are saved) but are never trained: pos_emb and goal_emb are unused by design.
ALWAYS_FROZEN = ("model.inner_model.pos_emb", "model.inner_model.goal_emb.")


def weighted_action_loss(
    pred: torch.Tensor, target: torch.Tensor, groups: Sequence[LossGroup], action_dim: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """sum_g weight_g * sum_{[a, b) in g} (b - a) / action_dim * MSE(pred[..., a:b], target[..., a:b]).

    xbot (vpp_reference §9.3): xyz [0:3]+[19:22] weight 2, rotation [3:7]+[22:26] weight 2, hand [7:19]+[26:38]
    weight 1 reproduces the original `2*xyz + 2*rot + hand` with its 3/38, 4/38, 12/38 factors."""
    total = pred.new_zeros(())
    logs: dict[str, torch.Tensor] = {}
    for g in groups:
        part = pred.new_zeros(())
        for a, b in g.slices:
            part = part + (b - a) / action_dim * (pred[..., a:b] - target[..., a:b]).pow(2).mean()
        logs[f"loss_{g.name}"] = part.detach()
        total = total + g.weight * part
    return total, logs


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"expected a numpy array or torch tensor, got {type(x).__name__}")


class VPPPolicy(nn.Module):
    """One policy class for CALVIN, xbot and custom robots; the embodiment comes from the config.

    Build with `VPPPolicy(cfg, tvp_encoder=..., goal_encoder=...)` or `build_policy(cfg, ...)` (loads the frozen
    models from `model.video_model_path` / `model.clip_model_path`). Without the frozen models the policy can still be
    built (parameter counting, checkpoint conversion), but not run on images.
    """

    def __init__(self, cfg: PolicyConfig | Mapping | Any, *, tvp_encoder: nn.Module | None = None,
                 goal_encoder: nn.Module | None = None):
        super().__init__()
        cfg = policy_config_from(cfg)
        m, e = cfg.model, cfg.embodiment
        feature_dim = m.feature.feature_dim
        if tvp_encoder is not None:
            if feature_dim is not None and feature_dim != tvp_encoder.feature_dim:
                raise PolicyConfigError(
                    f"model.feature.feature_dim is {feature_dim} but the video model's tapped up-blocks give "
                    f"{tvp_encoder.feature_dim} channels (extract_layer_idx {m.feature.extract_layer_idx}, "
                    f"use_all_layer {m.feature.use_all_layer}); set it to null or to {tvp_encoder.feature_dim}"
                )
            feature_dim = tvp_encoder.feature_dim
        if feature_dim is None:
            raise PolicyConfigError("model.feature.feature_dim is null and no video model was given to infer it")
        goal_dim = m.dit.goal_dim
        if goal_encoder is not None:
            if goal_dim is not None and goal_dim != goal_encoder.goal_dim:
                raise PolicyConfigError(
                    f"model.dit.goal_dim is {goal_dim} but the CLIP text projection is {goal_encoder.goal_dim} wide"
                )
            goal_dim = goal_encoder.goal_dim
        if goal_dim is None:
            raise PolicyConfigError("model.dit.goal_dim is null and no CLIP text encoder was given to infer it")
        # store the resolved sizes so a saved config rebuilds the same shapes without the frozen models
        m.feature.feature_dim = feature_dim
        m.dit.goal_dim = goal_dim
        self.config = cfg

        self.Video_Former = build_video_former(
            m.former.type,
            dim=m.latent_dim,
            depth=m.former.depth,
            condition_dim=feature_dim,
            dim_head=m.former.dim_head,
            heads=m.former.heads,
            num_latents=m.former.num_latents,
            num_frame=m.former.num_time_embeds,
            num_time_embeds=m.former.num_time_embeds,
        )
        inner = DiffusionTransformer(
            obs_dim=m.latent_dim,
            goal_dim=goal_dim,
            action_dim=e.action_dim,
            proprio_dim=proprio_dim(cfg),
            embed_dim=m.latent_dim,
            n_enc_layers=m.dit.n_enc_layers,
            n_dec_layers=m.dit.n_dec_layers,
            n_heads=m.dit.n_heads,
            num_tokens=m.former.num_latents,
            goal_seq_len=1,
            action_seq_len=e.chunk_length,
            attn_pdrop=m.dit.attn_pdrop,
            resid_pdrop=m.dit.resid_pdrop,
            mlp_pdrop=m.dit.mlp_pdrop,
        )
        self.model = GCDenoiser(inner, sigma_data=m.diffusion.sigma_data)
        train_proprio = self.uses_state and m.dit.train_proprio
        for name, p in self.named_parameters():
            is_proprio = name.startswith("model.inner_model.proprio_emb.")
            if name.startswith(ALWAYS_FROZEN) or (is_proprio and not train_proprio):
                p.requires_grad_(False)

        self.tvp_encoder = tvp_encoder
        self.goal_encoder = goal_encoder
        if tvp_encoder is not None and tvp_encoder.num_frames < m.former.num_time_embeds:
            raise PolicyConfigError(
                f"the video model predicts {tvp_encoder.num_frames} frames, fewer than "
                f"model.former.num_time_embeds={m.former.num_time_embeds}"
            )
        # frozen models: not part of state_dict / load_state_dict, not broadcast by DDP
        self.register_state_dict_post_hook(_drop_frozen_keys)
        self.register_load_state_dict_post_hook(_ignore_frozen_missing)
        self._ddp_params_and_buffers_to_ignore = [
            n for n, _ in self.named_parameters() if n.startswith(tuple(f"{f}." for f in FROZEN_MODULES))
        ] + [n for n, _ in self.named_buffers() if n.startswith(tuple(f"{f}." for f in FROZEN_MODULES))]
        self._sample_density = make_sample_density(
            m.diffusion.sigma_sample_density_type, m.diffusion.sigma_data, m.diffusion.sigma_min, m.diffusion.sigma_max
        )
        self.stats: dict | None = None  # normalisation statistics (set by load_policy for xbot/custom robots)
        self.reset()

    # ------------------------------------------------------------------ properties
    @property
    def embodiment(self) -> EmbodimentConfig:
        return self.config.embodiment

    @property
    def uses_state(self) -> bool:
        return self.config.embodiment.state_dim > 0

    @property
    def device(self) -> torch.device:
        return self.model.inner_model.action_pred.weight.device

    @property
    def resolution(self) -> int:
        self._require_backbone()
        return self.tvp_encoder.resolution

    def _require_backbone(self) -> None:
        if self.tvp_encoder is None or self.goal_encoder is None:
            raise RuntimeError(
                "this VPPPolicy was built without the frozen video model / CLIP text encoder; build it with "
                "policy_models.policy.build_policy(cfg, video_model_path=..., clip_model_path=...) or "
                "policy_models.checkpoints.load_policy(...)"
            )

    # ------------------------------------------------------------------ parameters / state
    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for name, p in self.named_parameters():
            if p.requires_grad and not name.startswith(FROZEN_MODULES):
                yield name, p

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Video Former + DiT, except pos_emb, goal_emb and (without robot state) proprio_emb."""
        return [p for _, p in self.named_trainable_parameters()]

    def optimizer_param_groups(self, weight_decay: float) -> list[dict]:
        """The original's two AdamW groups (DiT, Video Former), both with the same weight decay (also on norms and
        biases), restricted to trainable tensors."""
        dit = [p for n, p in self.named_trainable_parameters() if n.startswith("model.")]
        former = [p for n, p in self.named_trainable_parameters() if n.startswith("Video_Former.")]
        return [{"params": dit, "weight_decay": weight_decay}, {"params": former, "weight_decay": weight_decay}]

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    # ------------------------------------------------------------------ input handling
    def prepare_images(self, images: Any) -> torch.Tensor:
        """One camera's observation -> (B, 3, R, R) float in [-1, 1] (or (B, 4, r, r) scaled latents) on the
        policy's device. Accepts uint8 (H, W, 3) / (B, H, W, 3) numpy or tensors (resized with antialiased bilinear to
        the video model's resolution R), float (B, 3, H, W) / (B, 1, 3, H, W) tensors in [-1, 1] (resized if
        needed), and (B, 4, h, w) / (B, 1, 4, h, w) latents."""
        x = _as_tensor(images)
        if x.dtype == torch.uint8:
            if x.dim() == 3:
                x = x.unsqueeze(0)
            if x.dim() != 4 or x.shape[-1] != 3:
                raise ValueError(f"uint8 images must be (H, W, 3) or (B, H, W, 3), got {tuple(x.shape)}")
            # the datasets' transform (torchvision Resize(antialias) on uint8, /255, Normalize(0.5, 0.5))
            return preprocess_rgb(x.cpu(), self.resolution).to(self.device)
        if not torch.is_floating_point(x):
            raise TypeError(f"images must be uint8 or floating point, got {x.dtype}")
        if x.dim() == 5:
            if x.shape[1] != 1:
                raise ValueError(f"only one observation frame is supported, got shape {tuple(x.shape)}")
            x = x[:, 0]
        if x.dim() != 4 or x.shape[1] not in (3, 4):
            raise ValueError(
                f"float images must be (B, 3, H, W) in [-1, 1] or (B, 4, h, w) latents, got {tuple(x.shape)}"
            )
        x = x.to(self.device)
        if x.shape[1] == 3 and x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x.float(), size=(self.resolution,) * 2, mode="bilinear", antialias=True,
                              align_corners=False)
        return x

    def _camera_inputs(self, rgb_obs: Mapping[str, Any]) -> list[torch.Tensor]:
        cams = self.embodiment.cameras
        missing = [c for c in cams if c not in rgb_obs]
        if missing:
            raise KeyError(f"rgb_obs lacks cameras {missing}; the embodiment expects {cams} (got {sorted(rgb_obs)})")
        imgs = [self.prepare_images(rgb_obs[c]) for c in cams]
        sizes = {tuple(i.shape) for i in imgs}
        if len({s[0] for s in sizes}) != 1:
            raise ValueError(f"cameras have different batch sizes: { {c: tuple(i.shape) for c, i in zip(cams, imgs)} }")
        return imgs

    def _state_input(self, state: Any, batch: int) -> torch.Tensor | None:
        if not self.uses_state:
            return None
        if state is None:
            e = self.embodiment
            raise KeyError(f"embodiment {e.name!r} has state_dim {e.state_dim}: 'state_obs' is required")
        s = _as_tensor(state).to(self.device, torch.float32)
        if s.dim() == 1:
            s = s.unsqueeze(0)
        if s.dim() == 2:
            s = s.unsqueeze(1)
        if s.shape != (batch, 1, self.embodiment.state_dim):
            raise ValueError(f"state_obs must be (B, {self.embodiment.state_dim}) or (B, 1, ...), got {tuple(s.shape)}")
        return s

    # ------------------------------------------------------------------ model pieces
    def extract_features(
        self,
        rgb_obs: Mapping[str, Any],
        texts: Sequence[str],
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        cache_text: bool = False,
    ) -> torch.Tensor:
        """Predictive features of all cameras: (B, num_time_embeds, n_cams * h * w, feature_dim) float32, tokens
        ordered [camera 0 (row-major h*w) | camera 1 | ...]. `noise` (n_cams * B, F, 4, h, w) overrides the draw.
        `cache_text` (inference only) reuses the U-Net text tokens of instructions seen before."""
        self._require_backbone()
        imgs = self._camera_inputs(rgb_obs)
        batch = imgs[0].shape[0]
        if len(texts) != batch:
            raise ValueError(f"got {len(texts)} instructions for a batch of {batch}")
        x = torch.cat(imgs, dim=0)
        feats = self.tvp_encoder(x, list(texts) * len(imgs), generator=generator, noise=noise, cache_text=cache_text)
        feats = rearrange(feats, "b f c h w -> b f (h w) c")[:, : self.config.model.former.num_time_embeds]
        feats = torch.cat(feats.split(batch, dim=0), dim=2)
        return feats.float()

    def encode_goal(self, texts: Sequence[str], cache: bool = False) -> torch.Tensor:
        self._require_backbone()
        return self.goal_encoder(list(texts), cache=cache).to(self.device)

    def encode_observations(
        self, rgb_obs: Mapping[str, Any], texts: Sequence[str], generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None, cache_text: bool = False,
    ) -> torch.Tensor:
        """Visual tokens (B, num_latents, latent_dim) from the Video Former."""
        return self.Video_Former(
            self.extract_features(rgb_obs, texts, generator=generator, noise=noise, cache_text=cache_text)
        )

    # ------------------------------------------------------------------ training
    def compute_loss(
        self, batch: Mapping[str, Any], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """batch: {"rgb_obs": {cam: (B, 1, 3, H, W) float [-1, 1] | (B, 1, 4, h, w) latents}, "lang_text": [str],
        "actions": (B, chunk, action_dim), optional "state_obs": (B, 1, state_dim)} -> (loss, logs).

        logs always has "loss_mse" (plain MSE of F against the EDM target) and one "loss_<group>" per loss group."""
        texts = batch["lang_text"]
        if isinstance(texts, str):
            texts = [texts]
        actions = _as_tensor(batch["actions"]).to(self.device, torch.float32)
        e = self.embodiment
        if actions.dim() != 3 or actions.shape[1:] != (e.chunk_length, e.action_dim):
            raise ValueError(
                f"actions must be (B, {e.chunk_length}, {e.action_dim}) for embodiment {e.name!r}, "
                f"got {tuple(actions.shape)}"
            )
        proprio = self._state_input(batch.get("state_obs"), actions.shape[0])
        tokens = self.encode_observations(batch["rgb_obs"], texts, generator=generator)
        goal = self.encode_goal(texts)
        sigmas = self._sample_density((actions.shape[0],), device=self.device, generator=generator)
        gen_device = generator.device if generator is not None else self.device
        noise = torch.randn(actions.shape, generator=generator, device=gen_device, dtype=actions.dtype).to(self.device)
        mse, output, target = self.model.loss(tokens, actions, goal, noise, sigmas, proprio)
        logs = {"loss_mse": mse.detach()}
        if e.loss_groups:
            loss, group_logs = weighted_action_loss(output, target, e.loss_groups, e.action_dim)
            logs.update(group_logs)
        else:
            loss = mse
        return loss, logs

    def forward(self, batch: Mapping[str, Any], generator: torch.Generator | None = None):
        """Same as `compute_loss` (so DDP-wrapped policies are called as `policy(batch)`)."""
        return self.compute_loss(batch, generator=generator)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def sample_actions(
        self,
        tokens: torch.Tensor,
        goal: torch.Tensor,
        proprio: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        num_steps: int | None = None,
        reuse_encoder: bool = True,
    ) -> torch.Tensor:
        """Sample an action chunk (B, chunk_length, action_dim) from visual tokens and goal. The DiT encoder runs
        once and its context is reused by every sampler step (`reuse_encoder=False` recomputes it each step, as the
        original did; the result is identical in eval mode)."""
        d = self.config.model.diffusion
        sigma_min = d.sigma_min if sigma_min is None else sigma_min
        sigma_max = d.sigma_max if sigma_max is None else sigma_max
        n = d.num_sampling_steps if num_steps is None else num_steps
        sigmas = get_sigmas(d.noise_scheduler, n, sigma_min, sigma_max, device=self.device)
        e = self.embodiment
        x = initial_noise((tokens.shape[0], e.chunk_length, e.action_dim), sigma_max, device=self.device,
                          generator=generator)
        if reuse_encoder:
            context = self.model.encode(tokens, goal, proprio)
            if self.cuda_graph_sampler and context.is_cuda and not self.training:
                return self._graphed_sample(context, x, (d.sampler_type, d.noise_scheduler, n, sigma_min, sigma_max))

            def denoise(x_t, sigma):
                return self.model.denoise(context, x_t, sigma)
        else:

            def denoise(x_t, sigma):
                return self.model(tokens, x_t, goal, sigma, proprio)

        return get_sampler(d.sampler_type)(denoise, x, sigmas)

    def _graphed_sample(self, context: torch.Tensor, x: torch.Tensor, schedule: tuple) -> torch.Tensor:
        """The whole sampler loop (decoder steps on a fixed context) replayed from a captured CUDA graph; the graph
        runs the same kernels on static copies of `context` and `x`. One graph per shape / schedule / weights."""
        sampler_type, noise_scheduler, n, sigma_min, sigma_max = schedule
        weight = self.model.inner_model.action_pred.weight
        key = (tuple(context.shape), context.dtype, tuple(x.shape), x.dtype, context.device, schedule,
               weight.data_ptr(), weight.dtype, torch.is_autocast_enabled())
        cache = self._sampler_graphs
        entry = cache.get(key)
        if entry is None:
            static_ctx, static_x = context.clone(), x.clone()
            sigmas = get_sigmas(noise_scheduler, n, sigma_min, sigma_max, device=context.device)
            sampler = get_sampler(sampler_type)

            def run():
                return sampler(lambda x_t, sigma: self.model.denoise(static_ctx, x_t, sigma), static_x, sigmas)

            side = torch.cuda.Stream(device=context.device)
            side.wait_stream(torch.cuda.current_stream(context.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    run()
            torch.cuda.current_stream(context.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = run()
            if len(cache) >= 4:
                cache.pop(next(iter(cache)))
            # every tensor the graph reads (sigmas included) must outlive it: keep them with the graph
            entry = cache[key] = (graph, static_ctx, static_x, out, sigmas)
        graph, static_ctx, static_x, out, _ = entry
        static_ctx.copy_(context)
        static_x.copy_(x)
        graph.replay()
        return out.clone()

    @torch.no_grad()
    def predict_action_chunk(
        self,
        obs: Mapping[str, Any],
        instruction: str | Sequence[str],
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        cache_text: bool = True,
    ) -> torch.Tensor:
        """obs {"rgb_obs": {cam: uint8 (H, W, 3) / (B, H, W, 3) or float (B, 3, H, W) in [-1, 1]},
        optional "state_obs": (B, state_dim)} -> actions (B, chunk_length, action_dim) float32 (model action space:
        CALVIN relative actions; normalised actions for robots trained with stats). Runs in eval mode.
        `cache_text` reuses the (frozen, string-determined) text features of instructions seen before."""
        self._require_backbone()
        was_training = self.training
        self.eval()
        try:
            # preprocess once (prepared tensors pass through prepare_images unchanged)
            rgb_obs = dict(zip(self.embodiment.cameras, self._camera_inputs(obs["rgb_obs"])))
            batch = next(iter(rgb_obs.values())).shape[0]
            texts = [instruction] * batch if isinstance(instruction, str) else list(instruction)
            proprio = self._state_input(obs.get("state_obs"), batch)
            tokens = self.encode_observations(rgb_obs, texts, generator=generator, noise=noise, cache_text=cache_text)
            goal = self.encode_goal(texts, cache=cache_text)
            return self.sample_actions(tokens, goal, proprio, generator=generator)
        finally:
            self.train(was_training)

    @property
    def cuda_graph_sampler(self) -> bool:
        """Opt-in (default off): run the action sampler from a captured CUDA graph on CUDA devices in eval mode
        (same kernels, no per-step launch overhead). Set `policy.cuda_graph_sampler = True`."""
        return self.__dict__.get("_cuda_graph_sampler", False)

    @cuda_graph_sampler.setter
    def cuda_graph_sampler(self, value: bool) -> None:
        self.__dict__["_cuda_graph_sampler"] = bool(value)
        self.__dict__["_sampler_graphs"] = {}

    @property
    def _sampler_graphs(self) -> dict:
        return self.__dict__.setdefault("_sampler_graphs", {})

    def reset(self) -> None:
        self._step_counter = 0
        self._chunk: torch.Tensor | None = None

    @torch.no_grad()
    def step(self, obs: Mapping[str, Any], instruction: str, generator: torch.Generator | None = None) -> np.ndarray:
        """Closed-loop interface: replans every `model.multistep` calls and returns the current action of the chunk
        as a float32 (action_dim,) array."""
        multistep = self.config.model.multistep
        if self._step_counter % multistep == 0 or self._chunk is None:
            chunk = self.predict_action_chunk(obs, instruction, generator=generator)
            if chunk.shape[0] != 1:
                raise ValueError(f"step() serves one environment; got a batch of {chunk.shape[0]} observations")
            self._chunk = chunk
            self._step_counter = 0
        action = self._chunk[0, self._step_counter]
        self._step_counter = (self._step_counter + 1) % multistep
        return action.float().cpu().numpy()


def _drop_frozen_keys(module, state_dict, prefix, local_metadata) -> None:
    frozen = tuple(f"{prefix}{f}." for f in FROZEN_MODULES)
    for key in [k for k in state_dict if k.startswith(frozen)]:
        del state_dict[key]


def _ignore_frozen_missing(module, incompatible_keys) -> None:
    """The frozen models come from their own folders, never from a policy checkpoint."""
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if not any(f".{f}." in f".{k}" for f in FROZEN_MODULES)]


def build_frozen_encoders(
    cfg: PolicyConfig,
    video_model_path: str | None = None,
    clip_model_path: str | None = None,
    device: str | torch.device = "cpu",
    video_dtype: torch.dtype | str | None = None,
):
    """Load the frozen video model (unet/vae/scheduler) and CLIP text tower and wrap them as (TVPEncoder,
    GoalEncoder) sharing one text encoder."""
    from policy_models.goal_encoder import GoalEncoder
    from policy_models.tvp_encoder import TVPEncoder
    from video_models.builders import load_text_encoder, load_video_model
    from vpp_core.precision import resolve_dtype

    m = cfg.model
    video_model_path = video_model_path or m.video_model_path
    clip_model_path = clip_model_path or m.clip_model_path
    if not video_model_path or not clip_model_path:
        raise PolicyConfigError(
            "the policy needs model.video_model_path (stage-1 SVD folder) and model.clip_model_path (HF CLIP folder); "
            f"got {video_model_path!r} and {clip_model_path!r}"
        )
    vdtype = resolve_dtype(video_dtype if video_dtype is not None else m.video_dtype, device)
    tdtype = resolve_dtype(m.text_dtype, device)
    unet, vae, scheduler = load_video_model(video_model_path, dtype=vdtype, device=device)
    tokenizer, text_encoder = load_text_encoder(clip_model_path, dtype=tdtype, device=device)
    f = m.feature
    tvp = TVPEncoder(
        unet, vae, scheduler, text_encoder, tokenizer,
        num_frames=m.num_frames, num_inference_steps=f.num_inference_steps, extract_layer_idx=f.extract_layer_idx,
        use_all_layer=f.use_all_layer, fps=f.fps, motion_bucket_id=f.motion_bucket_id,
        noise_aug_strength=f.noise_aug_strength, position_encode=f.position_encode, text_max_length=f.text_max_length,
    )
    goal = GoalEncoder(text_encoder, tokenizer, max_length=m.goal_max_length)
    return tvp, goal


def build_policy(
    cfg: PolicyConfig | Mapping | Any,
    video_model_path: str | None = None,
    clip_model_path: str | None = None,
    device: str | torch.device = "cpu",
    video_dtype: torch.dtype | str | None = None,
    with_frozen_models: bool = True,
) -> VPPPolicy:
    """Build a freshly initialised policy (random Video Former / DiT) with its frozen models loaded from the folders
    named in the config (or the given paths, which are then written into the policy's config)."""
    cfg = policy_config_from(cfg)
    tvp = goal = None
    if with_frozen_models:
        tvp, goal = build_frozen_encoders(cfg, video_model_path, clip_model_path, device, video_dtype)
        cfg.model.video_model_path = str(video_model_path or cfg.model.video_model_path)
        cfg.model.clip_model_path = str(clip_model_path or cfg.model.clip_model_path)
        if video_dtype is not None:
            cfg.model.video_dtype = str(video_dtype).replace("torch.", "")
    policy = VPPPolicy(cfg, tvp_encoder=tvp, goal_encoder=goal)
    return policy.to(device)
