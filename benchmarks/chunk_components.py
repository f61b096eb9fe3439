"""Where one action chunk's time goes: each stage of `VPPPolicy._chunk_from_inputs` timed on its own.

The whole-chunk CUDA graph hides its stages in one replay, and an eager run of them is bound by kernel launches, not
by the GPU. So each stage is captured as its own CUDA graph (`policy_models.cuda_graph.StaticGraph`) on the inputs
the stage before it produced, and its replays are timed: the figures are GPU time per stage, comparable with the
graphed chunk, whose stages they are (their sum differs from it by the graph boundaries only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from benchmarks.common import time_fn
from policy_models.cuda_graph import StaticGraph

Stage = tuple[str, Callable[..., torch.Tensor], Sequence[torch.Tensor | None]]


def chunk_stages(policy, obs: dict, instruction: str) -> list[Stage]:
    """(name, function, inputs) of the chunk's stages in their order, each stage's inputs computed by running the
    stages before it once. The VAE and U-Net passes are the ones `features` runs (compiled when the policy's are)."""
    tvp = policy.tvp_encoder
    *cams, text_tokens, goal, proprio, _, _ = policy._chunk_inputs(obs, instruction, None, None, True)
    batch = cams[0].shape[0]
    schedule = policy._schedule()

    def preprocess(*cameras: torch.Tensor) -> torch.Tensor:
        return torch.cat([policy._preprocess_camera(x) for x in cameras], dim=0)

    # the video model's stages run with autocast off, as `TVPEncoder.features` runs them
    def vae_encode(images: torch.Tensor) -> torch.Tensor:
        with tvp._autocast_off():
            return tvp.vae_pass(images)

    def unet_inputs(latents: torch.Tensor) -> torch.Tensor:
        with tvp._autocast_off():
            return tvp.unet_sample(latents)

    def partial_unet(sample: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        timestep, _, _ = tvp._scheduler_constants()
        with tvp._autocast_off():
            return tvp.unet_pass(sample=sample, timestep=timestep, encoder_hidden_states=tokens,
                             added_time_ids=tvp.added_time_ids(sample.shape[0]))

    # the action head's stages as the chunk runs them: compiled where `compile_action_head` compiled them
    def video_former(features: torch.Tensor) -> torch.Tensor:
        return policy._action_head_fn("former", policy._former_tokens)(features, batch)

    def dit_encoder(tokens: torch.Tensor, goal_: torch.Tensor, proprio_: torch.Tensor | None) -> torch.Tensor:
        return policy._action_head_fn("encode", policy.model.encode)(tokens, goal_, proprio_)

    def sampler(context: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return policy._denoise_loop(context, x, schedule)

    with torch.no_grad():
        images = preprocess(*cams)
        latents = vae_encode(images)
        sample = unet_inputs(latents)
        features = partial_unet(sample, text_tokens)
        tokens = video_former(features)
        context = dit_encoder(tokens, goal, proprio)
        x = policy._initial_noise(batch, schedule)
    return [
        ("preprocess", preprocess, cams),
        ("vae_encode", vae_encode, [images]),
        ("unet_inputs", unet_inputs, [latents]),
        ("unet_pass", partial_unet, [sample, text_tokens]),
        ("video_former", video_former, [features]),
        ("dit_encoder", dit_encoder, [tokens, goal, proprio]),
        ("sampler", sampler, [context, x]),
    ]


def component_times(policy, obs: dict, instruction: str, warmup: int, iters: int) -> dict[str, Any]:
    """Median time per stage (ms) and their sum: GPU time of each stage replayed as its own CUDA graph on a CUDA
    device, eager wall time elsewhere (where there are no graphs and no launch overheads to hide)."""
    device = policy.device
    graphed = device.type == "cuda"
    out: dict[str, Any] = {"method": "cuda_graph_replay_per_stage" if graphed else "eager_per_stage"}
    total = 0.0
    with torch.no_grad():
        for name, fn, inputs in chunk_stages(policy, obs, instruction):
            out[f"{name}_ms"] = time_fn(_stage_call(fn, inputs, device, graphed), device, warmup, iters)["median_ms"]
            total += out[f"{name}_ms"]
    out["sum_ms"] = total
    return out


def _stage_call(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor | None], device: torch.device,
                graphed: bool) -> Callable[[], torch.Tensor]:
    if not graphed:
        return lambda: fn(*inputs)
    graph = StaticGraph(fn, inputs, device)
    return lambda: graph(inputs)
