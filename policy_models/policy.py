"""`VPPPolicy`: the stage-2 Video Prediction Policy for every embodiment (vpp_reference §6, §9.3).

    images ─(frozen video U-Net, one pass at sigma 700; TVPEncoder)─▶ features (B, F, cams*h*w, C)
           ─Video_Former─▶ 224 tokens ─DiT encoder with CLIP goal token (+ proprio)─▶ context
           ─EDM / DDIM over `num_sampling_steps`─▶ action chunk (B, chunk_length, action_dim)

Sub-module names match the original so the trainable state_dict is `Video_Former.*` + `model.inner_model.*`
(vpp_reference §11.3-11.4). The frozen video model and CLIP text tower are registered as `tvp_encoder` / `goal_encoder`
(so `.to(device)` moves them) but are excluded from `state_dict()` and ignored by `load_state_dict()`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

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
from policy_models.cuda_graph import GraphCache, validate_mode
from policy_models.datasets.base import preprocess_rgb
from policy_models.diffusion.dit import DiffusionTransformer
from policy_models.diffusion.edm import GCDenoiser, make_sample_density
from policy_models.diffusion.samplers import get_sampler, get_sigmas, initial_noise
from policy_models.video_former import PerceiverAttentionLayer, build_video_former, use_sdpa_perceiver
from vpp_core.side_stream import SideStream

if TYPE_CHECKING:
    from policy_models.goal_encoder import GoalEncoder
    from policy_models.tvp_encoder import TVPEncoder

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

    def _apply(self, fn, *args, **kwargs):
        # moved or cast weights: the text side stream waits for the main stream once, before its first work, so a
        # stream made before the move could read the text tower before its copy has landed; make new ones
        self.__dict__.pop("_text_stream", None)
        return super()._apply(fn, *args, **kwargs)

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
        return self._preprocess_camera(self._camera_tensor(images))

    def _camera_tensor(self, images: Any) -> torch.Tensor:
        """Validate one camera's observation and move it to the device unchanged: uint8 (B, H, W, 3) or float
        (B, 3 | 4, H, W). The device-side rest is `_preprocess_camera`."""
        x = _as_tensor(images)
        if x.dtype == torch.uint8:
            if x.dim() == 3:
                x = x.unsqueeze(0)
            if x.dim() != 4 or x.shape[-1] != 3:
                raise ValueError(f"uint8 images must be (H, W, 3) or (B, H, W, 3), got {tuple(x.shape)}")
            return x.to(self.device)
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
        return x.to(self.device)

    def _preprocess_camera(self, x: torch.Tensor) -> torch.Tensor:
        """Device tensor from `_camera_tensor` -> video-model input. Shape-static device ops only (the whole-chunk
        CUDA graph runs them): uint8 frames get the datasets' transform (antialiased resize, /255, Normalize(0.5,
        0.5)) on the device they are on, 3-channel floats are resized to R when needed, latents pass through."""
        if x.dtype == torch.uint8:
            return preprocess_rgb(x, self.resolution)
        if x.shape[1] == 3 and x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x.float(), size=(self.resolution,) * 2, mode="bilinear", antialias=True,
                              align_corners=False)
        return x

    def _camera_tensors(self, rgb_obs: Mapping[str, Any]) -> list[torch.Tensor]:
        """`_camera_tensor` of every camera of the embodiment, in its order, with one batch size."""
        cams = self.embodiment.cameras
        missing = [c for c in cams if c not in rgb_obs]
        if missing:
            raise KeyError(f"rgb_obs lacks cameras {missing}; the embodiment expects {cams} (got {sorted(rgb_obs)})")
        xs = [self._camera_tensor(rgb_obs[c]) for c in cams]
        if len({x.shape[0] for x in xs}) != 1:
            raise ValueError(f"cameras have different batch sizes: { {c: tuple(x.shape) for c, x in zip(cams, xs)} }")
        return xs

    def _camera_inputs(self, rgb_obs: Mapping[str, Any]) -> list[torch.Tensor]:
        return [self._preprocess_camera(x) for x in self._camera_tensors(rgb_obs)]

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
        return self._feature_layout(*self._stacked_features(rgb_obs, texts, generator, noise, cache_text))

    def _stacked_features(self, rgb_obs: Mapping[str, Any], texts: Sequence[str], generator: torch.Generator | None,
                          noise: torch.Tensor | None, cache_text: bool,
                          text_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """The U-Net features of the cameras stacked on the batch, (n_cams * B, F, C, h, w), and B."""
        self._require_backbone()
        imgs = self._camera_inputs(rgb_obs)
        if len(texts) != imgs[0].shape[0]:
            raise ValueError(f"got {len(texts)} instructions for a batch of {imgs[0].shape[0]}")
        if text_tokens is None:
            text_tokens = self._unet_text_tokens(texts, cache=cache_text)
        feats = self.tvp_encoder.features(torch.cat(imgs, dim=0), text_tokens, generator=generator, noise=noise)
        return feats, imgs[0].shape[0]

    def _feature_layout(self, feats: torch.Tensor, batch: int) -> torch.Tensor:
        """U-Net features of the cameras stacked on the batch, (n_cams * B, F, C, h, w) -> the Video Former's input
        (B, num_time_embeds, n_cams * h * w, C) float32."""
        feats = rearrange(feats, "b f c h w -> b f (h w) c")[:, : self.config.model.former.num_time_embeds].float()
        # cast before the concatenation: under autocast, torch.cat would otherwise reject fp16 inputs on the CPU
        return torch.cat(feats.split(batch, dim=0), dim=2)

    def _former_tokens(self, feats: torch.Tensor, batch: int) -> torch.Tensor:
        """Video Former tokens (B, num_latents, latent_dim) from the stacked U-Net features. The layout is part of
        it, so that a compiled action head fuses the layout's copies of the features (gigabytes at batch 32)."""
        return self.Video_Former(self._feature_layout(feats, batch))

    def _unet_text_tokens(self, texts: Sequence[str], cache: bool = False) -> torch.Tensor:
        """The U-Net's text tokens of every camera's copy of the batch, (n_cams * B, L, D): cameras stacked as the
        images are."""
        return self.tvp_encoder.text_tokens(list(texts) * len(self.embodiment.cameras), cache=cache)

    def _training_text(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(goal, U-Net text tokens) of a training batch, encoded on the policy's text side stream: the CLIP text
        tower reads its padding mask on the host, which on the main stream would wait for the training step still
        queued there, and the GPU would then idle while the host queues this one (vpp_core.side_stream)."""
        self._require_backbone()
        stream = self.__dict__.get("_text_stream")
        if stream is None:  # made on first use after each move (`_apply`), so it is on the policy's device
            stream = self.__dict__["_text_stream"] = SideStream(self.device)
        return stream.run(lambda: (self.encode_goal(texts), self._unet_text_tokens(texts)))

    def encode_goal(self, texts: Sequence[str], cache: bool = False) -> torch.Tensor:
        self._require_backbone()
        return self.goal_encoder(list(texts), cache=cache).to(self.device)

    def encode_observations(
        self, rgb_obs: Mapping[str, Any], texts: Sequence[str], generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None, cache_text: bool = False, text_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Visual tokens (B, num_latents, latent_dim) from the Video Former. `text_tokens`: the U-Net text tokens of
        `texts` (`_unet_text_tokens`), where the caller has encoded them already."""
        feats, batch = self._stacked_features(rgb_obs, texts, generator, noise, cache_text, text_tokens)
        return self._action_head_fn("former", self._former_tokens)(feats, batch)

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
        # the text first, on its side stream: the frozen U-Net pass is then queued behind nothing that waits
        goal, text_tokens = self._training_text(texts)
        tokens = self.encode_observations(batch["rgb_obs"], texts, generator=generator, text_tokens=text_tokens)
        sigmas = self._sample_density((actions.shape[0],), device=self.device, generator=generator)
        gen_device = generator.device if generator is not None else self.device
        noise = torch.randn(actions.shape, generator=generator, device=gen_device, dtype=actions.dtype).to(self.device)
        mse, output, target = self._action_head_fn("loss", self.model.loss)(tokens, actions, goal, noise, sigmas,
                                                                            proprio)
        logs = {"loss_mse": mse.detach()}
        if e.loss_groups:
            loss, group_logs = weighted_action_loss(output, target, e.loss_groups, e.action_dim)
            logs.update(group_logs)
        else:
            loss = mse
        return loss, logs

    def forward(
        self, batch: Mapping[str, Any], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Same as `compute_loss` (so DDP-wrapped policies are called as `policy(batch)`)."""
        return self.compute_loss(batch, generator=generator)

    # ------------------------------------------------------------------ inference
    def _schedule(self, sigma_min: float | None = None, sigma_max: float | None = None,
                  num_steps: int | None = None) -> tuple:
        """(sampler_type, noise_scheduler, num_steps, sigma_min, sigma_max) with the config's defaults filled in."""
        d = self.config.model.diffusion
        return (d.sampler_type, d.noise_scheduler, d.num_sampling_steps if num_steps is None else num_steps,
                d.sigma_min if sigma_min is None else sigma_min, d.sigma_max if sigma_max is None else sigma_max)

    def _sigmas(self, schedule: tuple, device: torch.device) -> torch.Tensor:
        """The sampler's sigma schedule, computed once per (schedule, device): graphs read it, nobody writes it."""
        cache = self.__dict__.setdefault("_sigma_cache", {})
        key = (schedule, device)
        if key not in cache:
            _, noise_scheduler, n, sigma_min, sigma_max = schedule
            cache[key] = get_sigmas(noise_scheduler, n, sigma_min, sigma_max, device=device)
        return cache[key]

    def _initial_noise(self, batch: int, schedule: tuple, generator: torch.Generator | None = None) -> torch.Tensor:
        e = self.embodiment
        return initial_noise((batch, e.chunk_length, e.action_dim), schedule[4], device=self.device,
                             generator=generator)

    def _denoise_loop(self, context: torch.Tensor, x: torch.Tensor, schedule: tuple) -> torch.Tensor:
        """The sampler's steps: decoder calls on the fixed encoder context (one compiled graph for all steps when
        `compile_action_head` set one)."""
        sigmas = self._sigmas(schedule, context.device)
        return self._action_head_fn("sample", self._planned_sampler)(context, x, sigmas, schedule[0])

    def _planned_sampler(self, context: torch.Tensor, x: torch.Tensor, sigmas: torch.Tensor,
                         sampler_type: str) -> torch.Tensor:
        """The sampler with the decoder's sigma- and context-only work done once for all steps (`GCDenoiser.plan`);
        the schedule's last sigma is the final 0, which no step embeds."""
        plan = self.model.plan(context, sigmas[:-1])
        return get_sampler(sampler_type)(lambda x_t, sigma, i: self.model.denoise_planned(plan, i, x_t, sigma), x,
                                         sigmas)

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
        once, and the decoder's sigma- and context-only work is planned once for all steps. `reuse_encoder=False` runs
        the whole transformer at every step, as the original did: the same math, equal to float rounding in eval
        mode (the planned steps' matrix products take their rows in other groupings)."""
        schedule = self._schedule(sigma_min, sigma_max, num_steps)
        x = self._initial_noise(tokens.shape[0], schedule, generator)
        if not reuse_encoder:
            sigmas = self._sigmas(schedule, self.device)
            return get_sampler(schedule[0])(lambda x_t, sigma, _: self.model(tokens, x_t, goal, sigma, proprio), x,
                                            sigmas)
        return self._sample_from_context(self.model.encode(tokens, goal, proprio), x, schedule, graphed=True)

    def _sample_from_context(self, context: torch.Tensor, x: torch.Tensor, schedule: tuple,
                             graphed: bool) -> torch.Tensor:
        """The sampler loop, replayed from a CUDA graph (same kernels on static copies of `context` and `x`) when
        `graphed` and the policy's `cuda_graph` mode is not 'off' on a CUDA device in eval mode."""
        if graphed and self.cuda_graph != "off" and self._graphable(context):
            key = ("sampler", schedule, self._graph_fingerprint())
            return self._graphs.run(key, lambda c, x0: self._denoise_loop(c, x0, schedule), [context, x],
                                    context.device)
        return self._denoise_loop(context, x, schedule)

    def _graphable(self, t: torch.Tensor) -> bool:
        """Whether graph modes apply to work on `t`: CUDA tensors in eval mode."""
        return t.is_cuda and not self.training

    def _graph_fingerprint(self) -> tuple:
        """What else a graph depends on: where the weights live (a graph reads them by address; in-place updates
        such as load_state_dict are seen by the graph, moved or recast weights need a new one), autocast and the
        compile settings of the video model's passes and of the action head."""
        parts = [self.Video_Former, self.model]
        if self.tvp_encoder is not None:
            parts += [self.tvp_encoder.unet, self.tvp_encoder.vae]
        ptrs = tuple((w.data_ptr(), w.dtype) for w in (next(m.parameters()) for m in parts))
        compile_mode = None if self.tvp_encoder is None else self.tvp_encoder.compile_mode
        return ptrs, torch.is_autocast_enabled(), compile_mode, self.action_head_compile_mode

    def _chunk_inputs(
        self,
        obs: Mapping[str, Any],
        instruction: str | Sequence[str],
        generator: torch.Generator | None,
        noise: torch.Tensor | None,
        cache_text: bool,
    ) -> list[torch.Tensor | None]:
        """Everything `_chunk_from_inputs` reads, computed on the host side of the whole-chunk graph: camera tensors
        on the device, U-Net text tokens and goal (from the per-instruction caches), robot state, and the noise that
        must not be drawn inside a graph: the given `noise` and, with a `generator`, both noise draws (in the eager
        order: video latents, then actions). Absent noise (None) is drawn inside from the default CUDA generator."""
        cams = self._camera_tensors(obs["rgb_obs"])
        batch = cams[0].shape[0]
        texts = [instruction] * batch if isinstance(instruction, str) else list(instruction)
        if len(texts) != batch:
            raise ValueError(f"got {len(texts)} instructions for a batch of {batch}")
        proprio = self._state_input(obs.get("state_obs"), batch)
        tvp = self.tvp_encoder
        text_tokens = tvp.text_tokens(texts * len(cams), cache=cache_text)
        goal = self.encode_goal(texts, cache=cache_text)
        action_noise = None
        if noise is not None:
            noise = noise.to(tvp.device, tvp.dtype)
        elif generator is not None:
            noise = tvp.make_noise(batch * len(cams), generator)
        if generator is not None:
            action_noise = self._initial_noise(batch, self._schedule(), generator)
        return [*cams, text_tokens, goal, proprio, noise, action_noise]

    def _chunk_from_inputs(self, *inputs: torch.Tensor | None, graphed_sampler: bool = False) -> torch.Tensor:
        """The device side of a chunk prediction on the `_chunk_inputs` list: image preprocessing, VAE, partial
        U-Net, feature layout, Video Former, DiT encoder, sampler. Eager and whole-chunk-graph paths both run this,
        which is what makes the graph exact."""
        *cams, text_tokens, goal, proprio, noise, action_noise = inputs
        imgs = torch.cat([self._preprocess_camera(x) for x in cams], dim=0)
        feats = self.tvp_encoder.features(imgs, text_tokens, noise=noise)
        tokens = self._action_head_fn("former", self._former_tokens)(feats, cams[0].shape[0])
        schedule = self._schedule()
        x = self._initial_noise(tokens.shape[0], schedule) if action_noise is None else action_noise
        context = self._action_head_fn("encode", self.model.encode)(tokens, goal, proprio)
        return self._sample_from_context(context, x, schedule, graphed_sampler)

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
        `cache_text` reuses the (frozen, string-determined) text features of instructions seen before.
        With `cuda_graph = "chunk"` on a CUDA device the device side is one CUDA graph replay (see `cuda_graph`);
        noise from an explicit `generator` (and a given `noise`) is then drawn outside the graph and fed to it."""
        self._require_backbone()
        # switching modes walks every submodule (thousands with the SVD U-Net: ~29 ms of host time per switch at full
        # size on a 2-core CPU), so a policy already in eval mode, the usual case at inference, is left as it is
        was_training = self.training
        if was_training:
            self.eval()
        try:
            inputs = self._chunk_inputs(obs, instruction, generator, noise, cache_text)
            if self.cuda_graph == "chunk" and self._graphable(inputs[0]):
                key = ("chunk", len(self.embodiment.cameras), self._schedule(), self._graph_fingerprint())
                return self._graphs.run(key, self._chunk_from_inputs, inputs, self.device)
            return self._chunk_from_inputs(*inputs, graphed_sampler=True)
        finally:
            if was_training:
                self.train()

    @property
    def cuda_graph(self) -> str:
        """CUDA-graph replay at inference (CUDA devices, eval mode; ignored on the CPU), exact (same kernels, outputs
        bit-identical to eager given the same inputs and random state):

        - "off" (default): eager.
        - "sampler": the DDIM loop of `sample_actions` / `predict_action_chunk` is one graph replay.
        - "chunk": all of `predict_action_chunk` after the host-side work (camera tensors to the device, cached text
          features, drawing noise from an explicit generator) is one graph replay: image preprocessing, VAE encode,
          video-latent and action noise (default CUDA generator: fresh on every replay), partial U-Net, Video Former,
          DiT encoder and sampler. `sample_actions` called on its own uses the sampler graph.

        One graph per input shapes / dtypes / device / schedule / weight addresses (the 4 most recent are kept); the
        first call of each captures it after two eager warm-up calls."""
        return self.__dict__.get("_cuda_graph", "off")

    @cuda_graph.setter
    def cuda_graph(self, mode: str) -> None:
        mode = validate_mode(mode)
        self._check_compile_compatible(mode, self.video_compile_mode)
        self._check_compile_compatible(mode, self.action_head_compile_mode)
        self.__dict__["_cuda_graph"] = mode
        self._graphs.clear()

    def use_fastest_exact_inference(self, cudnn_benchmark: bool = False) -> None:
        """The fastest inference that is bit-identical to eager on this device: one CUDA graph per chunk on CUDA
        (about 6x faster at batch 1 on an H100, docs/PERFORMANCE.md), eager elsewhere. Capture happens on the first
        call, so callers must not run other CUDA work of this process concurrently with it.

        `cudnn_benchmark` (opt-in, CUDA only) also sets the process-wide `torch.backends.cudnn.benchmark`: cuDNN
        times its convolution algorithms once per shape and keeps the fastest (0-13% less time per chunk at batch 1
        on an H100). Same math, but other algorithms may round differently than the default choice."""
        self.cuda_graph = "chunk" if self.device.type == "cuda" else "off"  # drops graphs captured before
        if cudnn_benchmark and self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    @property
    def cuda_graph_sampler(self) -> bool:
        """Older switch, kept for compatibility: True is `cuda_graph = "sampler"`, False is "off"; reads True when
        the sampler runs from a graph (modes "sampler" and "chunk")."""
        return self.cuda_graph != "off"

    @cuda_graph_sampler.setter
    def cuda_graph_sampler(self, value: bool) -> None:
        self.cuda_graph = "sampler" if value else "off"

    @property
    def _graphs(self) -> GraphCache:
        return self.__dict__.setdefault("_graph_cache", GraphCache())

    @property
    def video_compile_mode(self) -> str | None:
        return None if self.tvp_encoder is None else self.tvp_encoder.compile_mode

    def compile_video_model(self, mode: str | None = "default", backend: str = "inductor") -> None:
        """Opt-in `torch.compile` of the frozen video model's passes, the VAE encode and the partial U-Net (`mode`,
        `backend` as torch.compile's; `mode=None`: back to eager). Used by inference and by stage-2 training.
        Numerically close to the eager passes but not bit-identical (fused, reordered float work). With
        `cuda_graph = "chunk"` use a mode without inductor's own CUDA graphs ("default",
        "max-autotune-no-cudagraphs"): the compiled kernels are then captured in the chunk graph."""
        self._require_backbone()
        self._check_compile_compatible(self.cuda_graph, mode)
        self.tvp_encoder.compile_passes(mode, backend)
        self._graphs.clear()

    def compile_action_head(self, mode: str | None = "default", backend: str = "inductor") -> None:
        """Opt-in `torch.compile` of the trainable action head (`mode=None`: back to eager).

        Inference: the chunk's work after the U-Net pass, the Video Former, the DiT encoder and the whole sampler
        (its plan and every decoder step, in one graph). At batch 1 these are hundreds of small fp32 kernels; fused,
        the graphed chunk takes about 2 ms less on an H100. Training (`compute_loss`): the Video Former and the DiT's
        loss, forward and backward, which run launch-bound between the large kernels of the frozen U-Net pass
        (docs/PERFORMANCE.md). Close to eager, not bit-identical."""
        self._check_compile_compatible(self.cuda_graph, mode)
        compiled = {}
        if mode is not None:
            def compiled_fn(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
                return torch.compile(fn, mode=mode, backend=backend, dynamic=False)

            compiled = {"former": compiled_fn(self._former_tokens), "encode": compiled_fn(self.model.encode),
                        "sample": compiled_fn(self._planned_sampler), "loss": compiled_fn(self.model.loss)}
        self.__dict__["_compiled_action_head"] = compiled
        self.__dict__["_action_head_compile_mode"] = mode
        self._graphs.clear()

    @property
    def action_head_compile_mode(self) -> str | None:
        """The `torch.compile` mode of the action head at inference, None when it runs eagerly."""
        return self.__dict__.get("_action_head_compile_mode")

    def _action_head_fn(self, name: str, eager: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """The compiled version of an action-head function when `compile_action_head` set one, else `eager`."""
        return self.__dict__.get("_compiled_action_head", {}).get(name, eager)

    def fused_decoder_problem(self) -> str | None:
        """Why `use_fused_decoder` cannot run on this policy (no CUDA device, no triton, an action head that is not
        float32, a decoder layout the kernels do not compute), or None where it can: the test behind the "auto"
        setting of the inference loaders."""
        if self.device.type != "cuda":
            return f"the fused decoder needs a CUDA device; the action head is on {self.device}"
        head_dtype = self.model.inner_model.action_pred.weight.dtype
        if head_dtype != torch.float32:
            return f"the fused decoder runs a float32 action head; this one is {head_dtype}"
        try:
            import triton  # noqa: F401
        except ImportError:
            return ("the fused decoder needs triton (it ships with torch's CUDA builds on Linux): pip install triton, "
                    "or leave the fused decoder off")
        from policy_models.diffusion.fused_decoder import unsupported_layout

        return unsupported_layout(self.model.inner_model)

    def use_fused_decoder(self, enabled: bool = True) -> None:
        """Run the sampler's decoder steps as the Triton kernels of `policy_models.diffusion.fused_decoder`: six
        kernels per decoder block instead of about fifteen, for the latency-bound steps at small batches. Same math,
        other rounding (like compiling). CUDA, float32 action head and inference only; raises where it cannot run
        instead of running something else."""
        dit = self.model.inner_model
        if enabled:
            problem = self.fused_decoder_problem()
            if problem is not None:
                raise ValueError(problem)
        dit.fused_decoding = enabled
        self._graphs.clear()

    @property
    def fused_decoder(self) -> bool:
        """Whether the sampler's decoder steps run as fused Triton kernels (`use_fused_decoder`)."""
        return self.model.inner_model.fused_decoding

    def use_sdpa_perceiver(self, enabled: bool = True) -> None:
        """Compute the Video Former's Perceiver attention with `F.scaled_dot_product_attention` instead of the
        original's explicit softmax (`policy_models.video_former.PerceiverAttentionLayer`). Same math, other
        rounding; any device, training included. The stage-2 trainer's full-size configs turn it on on CUDA
        (`training.sdpa_perceiver`: faster steps); inference keeps the explicit path, which was faster at batch 1
        (docs/PERFORMANCE.md, session 30)."""
        use_sdpa_perceiver(self.Video_Former, enabled)
        self._graphs.clear()

    @property
    def sdpa_perceiver(self) -> bool:
        """Whether the Video Former's Perceiver attention runs as `F.scaled_dot_product_attention`."""
        layers = [m for m in self.Video_Former.modules() if isinstance(m, PerceiverAttentionLayer)]
        return bool(layers) and all(layer.use_sdpa for layer in layers)

    def compile_for_inference(self, mode: str | None = "default") -> None:
        """Opt-in: `compile_video_model` and `compile_action_head` with one mode (`None`: all eager again). With the
        whole-chunk CUDA graph, the fastest inference measured (docs/PERFORMANCE.md); close to eager, not
        bit-identical."""
        self.compile_video_model(mode)
        self.compile_action_head(mode)

    @staticmethod
    def _check_compile_compatible(graph_mode: str, compile_mode: str | None) -> None:
        if graph_mode == "chunk" and compile_mode in ("reduce-overhead", "max-autotune"):
            raise ValueError(
                f"torch.compile mode {compile_mode!r} records its own CUDA graphs, which cannot be captured inside "
                "the whole-chunk graph; use cuda_graph='sampler' with it, or compile mode 'default' / "
                "'max-autotune-no-cudagraphs' with cuda_graph='chunk'"
            )

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
) -> tuple[TVPEncoder, GoalEncoder]:
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
