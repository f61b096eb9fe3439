"""Stage-2 policy at full size (random weights): chunk inference latency and one training step.

    python benchmarks/policy_step.py --mode inference --batch 1
    python benchmarks/policy_step.py --mode inference --batch 1 --cuda-graph chunk --compile
    python benchmarks/policy_step.py --mode inference --batch 1 --cuda-graph chunk --compile --compile-head --components
    python benchmarks/policy_step.py --mode train --batch 32 --precision bf16
    python benchmarks/policy_step.py --tiny --device cpu --mode inference      # smoke run on a laptop
    python benchmarks/policy_step.py --size small_sim --mode train --batch 64  # the simulator experiment's models

The full-size model is the CALVIN configuration (policy_conf/model/calvin.yaml: 2 cameras, 10 x 7 actions) on a
random full-size SVD U-Net/VAE (fp16, as released) and a random CLIP ViT-B/32 text tower. Inference is
`predict_action_chunk` from 200x200 and 84x84 uint8 camera images (preprocessing included), optionally with CUDA-graph
replay (`--cuda-graph sampler|chunk`, exact) and compiled VAE and U-Net passes (`--compile [MODE]`, close, not
bit-identical); with either, the output's "exactness" block gives the largest difference to the eager chunk for the
same noise. `--components` adds the GPU time of each stage of the chunk (benchmarks/chunk_components.py). The
training step is `compute_loss` + backward + AdamW on the trainable Video Former and DiT, as
step2_train_action_calvin.py runs it.
"""

from __future__ import annotations

import argparse
import contextlib

import numpy as np
import torch
from omegaconf import OmegaConf

from benchmarks.chunk_components import component_times
from benchmarks.common import (
    SMALL_VIDEO_CONFIGS,
    add_backend_arguments,
    add_temporal_context_argument,
    configure_backends,
    emit,
    environment,
    host_syncs,
    kernel_profile,
    peak_memory_gib,
    per_position_temporal_context,
    time_fn,
)
from video_models.attention_kernels import use_short_query_kernels

# size -> policy model yaml, on top of the video model of SMALL_VIDEO_CONFIGS; full size is the CALVIN policy on the
# default (SVD) video model with a 512-d CLIP
POLICY_CONFIGS = {"tiny": "policy_conf/model/tiny.yaml", "small_sim": "policy_conf/model/small_sim.yaml"}


def build_random_policy(device: torch.device, size: str, video_dtype: torch.dtype):
    from policy_models.goal_encoder import GoalEncoder
    from policy_models.policy import VPPPolicy
    from policy_models.tvp_encoder import TVPEncoder
    from video_models.builders import build_scheduler, build_video_model
    from vpp_core.config import load_config

    torch.manual_seed(0)
    if size in POLICY_CONFIGS:
        vm_cfg = load_config(SMALL_VIDEO_CONFIGS[size]).model
        cfg = OmegaConf.load(POLICY_CONFIGS[size])
    else:
        vm_cfg = {"text_encoder": {"projection_dim": 512}}
        cfg = OmegaConf.load("policy_conf/model/calvin.yaml")
    with torch.device(device):
        vm = build_video_model(vm_cfg)
    unet, vae = vm.unet.to(video_dtype).eval(), vm.vae.to(video_dtype).eval()
    tvp = TVPEncoder(unet, vae, build_scheduler(), vm.text_encoder.eval(), vm.tokenizer,
                     position_encode=bool(cfg.model.feature.position_encode))
    goal = GoalEncoder(vm.text_encoder, vm.tokenizer)
    with torch.device(device):
        policy = VPPPolicy(cfg, tvp_encoder=tvp, goal_encoder=goal)
    return policy.to(device)


def camera_batch(policy, batch: int, latents: bool, device: torch.device) -> torch.Tensor:
    """One camera's training input: images (B, 1, 3, H, W) in [-1, 1], or scaled VAE latents (B, 1, 4, h, w)."""
    tvp = policy.tvp_encoder
    if latents:
        return torch.randn(batch, 1, tvp.latent_channels, tvp.latent_size, tvp.latent_size, device=device)
    return torch.rand(batch, 1, 3, tvp.resolution, tvp.resolution, device=device) * 2 - 1


def camera_images(policy, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    sizes = {"rgb_static": 200, "rgb_gripper": 84}
    return {cam: rng.integers(0, 256, (batch, sizes.get(cam, 200), sizes.get(cam, 200), 3), dtype=np.uint8)
            for cam in policy.embodiment.cameras}


def use_per_step_sampler(policy) -> None:
    """Measurement control: the sampler as it ran before session 14. Each step embeds its own sigma, computes its
    AdaLN modulations and the context's cross-attention keys and values, and projects queries, keys and values
    separately; with `compile_action_head`, one compiled graph per step instead of one for the whole sampler."""
    from policy_models.diffusion.samplers import get_sampler

    compiled = {}

    def denoise_fn():
        mode = policy.action_head_compile_mode  # followed, so that the exactness check's eager run is eager here too
        if mode is None:
            return policy.model.denoise
        if mode not in compiled:
            compiled[mode] = torch.compile(policy.model.denoise, mode=mode, dynamic=False)
        return compiled[mode]

    def per_step_loop(context: torch.Tensor, x: torch.Tensor, schedule: tuple) -> torch.Tensor:
        sigmas, denoise = policy._sigmas(schedule, context.device), denoise_fn()
        return get_sampler(schedule[0])(lambda x_t, sigma, _: denoise(context, x_t, sigma), x, sigmas)

    policy._denoise_loop = per_step_loop  # shadows the method on this instance only


def split_unet_pass_over_streams(tvp, parts: int) -> None:
    """Experiment: run the U-Net pass as `parts` passes over equal slices of its batch (at batch 1, one camera
    each), each on a CUDA stream of its own, so that one slice's small kernels and launch gaps overlap another's.
    Each slice is the same math as the whole batch (no sample attends to another), so the features differ from the
    batched pass by rounding only (other matrix shapes). Applies to the pass `compile_video_model` set; the exactness
    check's uncompiled reference runs the batched eager pass."""
    inner = tvp.unet_pass
    streams = [torch.cuda.Stream(tvp.device) for _ in range(parts - 1)]

    def split_pass(sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                   added_time_ids: torch.Tensor) -> torch.Tensor:
        if sample.shape[0] % parts:
            raise ValueError(f"--unet-streams {parts}: batch {sample.shape[0]} does not split into {parts} slices")
        slices = list(zip(sample.chunk(parts), encoder_hidden_states.chunk(parts), added_time_ids.chunk(parts)))
        main = torch.cuda.current_stream(tvp.device)
        outs: list[torch.Tensor | None] = [None] * parts
        for i, stream in enumerate(streams, start=1):
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                outs[i] = inner(sample=slices[i][0], timestep=timestep, encoder_hidden_states=slices[i][1],
                                added_time_ids=slices[i][2])
        outs[0] = inner(sample=slices[0][0], timestep=timestep, encoder_hidden_states=slices[0][1],
                        added_time_ids=slices[0][2])
        for stream in streams:
            main.wait_stream(stream)
        return torch.cat(outs, dim=0)

    tvp.__dict__["_compiled_partial_unet"] = split_pass


def exactness(policy, obs: dict, instruction: str, device: torch.device,
              fast_context=contextlib.nullcontext) -> dict[str, float]:
    """Largest |difference| between the chunks of the benchmarked settings and eager ones, for the same noise: drawn
    from an explicit generator (noise made outside any graph) and from the default generator after the same
    `torch.manual_seed` (noise drawn inside the chunk graph). Graph modes are exact (0.0); compiled passes are close.
    With cuDNN autotuning on, the graph is also compared with eager under cuDNN's default algorithm choice; with float32
    matrix products below full precision (TF32, the default), with the uncompiled eager chunk in full float32. The
    uncompiled references also run the original's kernels: the compiled decoder steps, the explicit Perceiver softmax.
    `fast_context` wraps the benchmarked settings' calls only (an autocast under test); eager runs without it."""

    def chunks() -> tuple[torch.Tensor, torch.Tensor]:
        with_generator = policy.predict_action_chunk(obs, instruction, generator=torch.Generator(device).manual_seed(0))
        policy.predict_action_chunk(obs, instruction)  # captures the graph of this call signature if needed
        torch.manual_seed(1)
        return with_generator, policy.predict_action_chunk(obs, instruction)

    mode, compile_mode, head_mode = policy.cuda_graph, policy.video_compile_mode, policy.action_head_compile_mode
    with fast_context():
        fast = chunks()
    policy.cuda_graph = "off"
    eager = chunks()
    out = {f"max_abs_diff_vs_eager_{k}": float((a - b).abs().max()) for k, a, b in
           zip(("same_generator", "same_seed"), fast, eager)}
    precision, fused, sdpa = torch.get_float32_matmul_precision(), policy.fused_decoder, policy.sdpa_perceiver
    other_kernels = compile_mode is not None or head_mode is not None or fused or sdpa
    if other_kernels or precision != "highest":
        policy.compile_for_inference(None)
        policy.use_fused_decoder(False)
        policy.use_sdpa_perceiver(False)
        if other_kernels:
            out["max_abs_diff_vs_uncompiled_eager_same_generator"] = float((fast[0] - chunks()[0]).abs().max())
        if precision != "highest":  # the reference in full float32, as the original evaluation ran the action head
            torch.set_float32_matmul_precision("highest")
            out["max_abs_diff_vs_full_fp32_eager_same_generator"] = float((fast[0] - chunks()[0]).abs().max())
            torch.set_float32_matmul_precision(precision)
        policy.compile_video_model(compile_mode)
        policy.compile_action_head(head_mode)
        policy.use_fused_decoder(fused)
        policy.use_sdpa_perceiver(sdpa)
    if torch.backends.cudnn.benchmark:
        torch.backends.cudnn.benchmark = False  # cuDNN's default algorithm choice
        out["max_abs_diff_vs_default_cudnn_eager_same_generator"] = float((fast[0] - chunks()[0]).abs().max())
        torch.backends.cudnn.benchmark = True
    policy.cuda_graph = mode
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["inference", "train"], default="inference")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="bf16",
                        help="training autocast dtype (the frozen video model is fp16 in both modes)")
    parser.add_argument("--video-dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    parser.add_argument("--size", choices=["full", *POLICY_CONFIGS], default="full",
                        help="model sizes: full (CALVIN configuration), small_sim (the simulator experiment's), tiny")
    parser.add_argument("--tiny", dest="size", action="store_const", const="tiny", help="same as --size tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--cuda-graph", choices=["off", "sampler", "chunk"], default="off",
                        help="inference: CUDA-graph replay of the sampler or of the whole chunk (policy.cuda_graph)")
    parser.add_argument("--cuda-graph-sampler", dest="cuda_graph", action="store_const", const="sampler",
                        help="same as --cuda-graph sampler")
    parser.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                        help="torch.compile the VAE encode and the partial U-Net pass "
                             "(policy.compile_video_model(MODE); MODE defaults to 'default')")
    parser.add_argument("--channels-last", action="store_true",
                        help="frozen U-Net and VAE convolution weights, 2-D and 3-D, in channels-last layout (same "
                             "values, other kernels). --compile does this itself since session 13; sessions 4-7 "
                             "measured the flag with the 2-D weights only")
    parser.add_argument("--contiguous-conv-weights", action="store_true",
                        help="with --compile, measurement: keep the frozen convolution weights in the default layout "
                             "(as before session 13) instead of the channels-last layout compile_video_model sets")
    parser.add_argument("--compile-head", nargs="?", const="default", default=None, metavar="MODE",
                        help="torch.compile the action head (policy.compile_action_head(MODE); MODE defaults to "
                             "'default'): inference, the Video Former, the DiT encoder and the whole sampler; "
                             "training, the Video Former and the DiT loss")
    parser.add_argument("--per-step-sampler", action="store_true",
                        help="inference, measurement: the sampler without its plan (as before session 14): every "
                             "step computes its sigma's conditioning and the context's keys and values itself")
    parser.add_argument("--fused-decoder", action="store_true",
                        help="inference: the sampler's decoder steps as Triton kernels (policy.use_fused_decoder)")
    parser.add_argument("--sdpa-perceiver", action="store_true",
                        help="both modes: the Video Former's Perceiver attention as F.scaled_dot_product_attention "
                             "instead of the original's explicit softmax (policy.use_sdpa_perceiver)")
    parser.add_argument("--inductor-freezing", action="store_true",
                        help="inference, experiment: torch._inductor.config.freezing = True (weights folded into the "
                             "compiled graph as constants; later in-place weight updates are not seen)")
    parser.add_argument("--inductor-cpp-wrapper", action="store_true",
                        help="experiment: torch._inductor.config.cpp_wrapper = True (compiled graphs launch their "
                             "kernels from generated C++ instead of Python: same kernels, less host time)")
    parser.add_argument("--inference-autocast", choices=["bf16", "fp16"], default=None,
                        help="inference, experiment: run the chunk under autocast, so the fp32 Video Former and DiT "
                             "compute in half precision (the frozen video model already runs in its own dtype)")
    parser.add_argument("--components", action="store_true",
                        help="inference: also time each stage of the chunk on its own, as its own CUDA graph")
    parser.add_argument("--no-text-cache", action="store_true",
                        help="inference: re-encode the instruction every call (predict_action_chunk(cache_text=False))")
    parser.add_argument("--latent-inputs", action="store_true",
                        help="train: feed the cameras as precomputed scaled VAE latents (B, 1, 4, 32, 32), as a "
                             "latent data set would, so the step skips the VAE encode")
    parser.add_argument("--short-query-kernels", action="store_true",
                        help="the frozen U-Net's attention with queries of at most 64 tokens on the memory-efficient "
                             "kernel (video_models.attention_kernels; other rounding)")
    parser.add_argument("--unet-streams", type=int, default=1, metavar="N",
                        help="inference on CUDA, experiment: the U-Net pass as N passes over slices of its batch "
                             "(at batch 1, one camera each), each on its own CUDA stream "
                             "(split_unet_pass_over_streams)")
    add_temporal_context_argument(parser)
    add_backend_arguments(parser)
    args = parser.parse_args()
    if args.unet_streams > 1 and not (args.mode == "inference" and args.device.startswith("cuda")):
        parser.error("--unet-streams needs --mode inference on a CUDA device")

    if args.contiguous_conv_weights and args.compile is None:
        parser.error("--contiguous-conv-weights needs --compile")
    device = torch.device(args.device)
    configure_backends(args)
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    policy = build_random_policy(device, args.size, dtypes[args.video_dtype])
    if args.per_position_temporal_context:
        per_position_temporal_context(policy.tvp_encoder.unet)
    if args.channels_last:
        policy.tvp_encoder.set_conv_weight_layout(channels_last=True)
    from torch._inductor import config as inductor_config

    if args.inductor_cpp_wrapper:
        inductor_config.cpp_wrapper = True
    if args.inductor_freezing:
        inductor_config.freezing = True
    if args.short_query_kernels:
        use_short_query_kernels(policy.tvp_encoder.unet)
    if args.compile is not None:
        policy.compile_video_model(args.compile)
        if args.contiguous_conv_weights:  # before the first call, so the compiled graphs trace this layout
            policy.tvp_encoder.set_conv_weight_layout(channels_last=False)
    if args.compile_head:
        policy.compile_action_head(args.compile_head)
    if args.unet_streams > 1:
        split_unet_pass_over_streams(policy.tvp_encoder, args.unet_streams)
    if args.per_step_sampler:
        use_per_step_sampler(policy)
    if args.fused_decoder:
        policy.use_fused_decoder()
    if args.sdpa_perceiver:
        policy.use_sdpa_perceiver()
    policy.cuda_graph = args.cuda_graph
    rng = np.random.default_rng(0)
    e = policy.embodiment
    instruction = "pull the handle to open the drawer"

    if args.mode == "inference":
        # eval mode, as the evaluator and the server load a policy (policy_models.checkpoints); a policy left in
        # training mode pays two mode switches per chunk (tens of ms of host time at full size)
        policy.eval()
        obs = {"rgb_obs": camera_images(policy, args.batch, rng)}

        def inference_autocast():
            if args.inference_autocast is None:
                return contextlib.nullcontext()
            # no cast cache: cached casts made while a CUDA graph is captured would be freed under the graph
            return torch.autocast(device.type, dtype=dtypes[args.inference_autocast], cache_enabled=False)

        def run() -> None:
            with inference_autocast():
                out = policy.predict_action_chunk(obs, instruction, cache_text=not args.no_text_cache)
            assert out.shape == (args.batch, e.chunk_length, e.action_dim)
    else:
        policy.train()
        batch = {
            "rgb_obs": {cam: camera_batch(policy, args.batch, args.latent_inputs, device) for cam in e.cameras},
            "lang_text": [instruction] * args.batch,
            "actions": torch.rand(args.batch, e.chunk_length, e.action_dim, device=device) * 2 - 1,
        }
        fused = device.type == "cuda"
        optimizer = torch.optim.AdamW(policy.optimizer_param_groups(0.05), lr=1e-4, betas=(0.9, 0.9), fused=fused)

        def autocast():
            if args.precision == "fp32":
                return contextlib.nullcontext()
            return torch.autocast(device.type, dtype=dtypes[args.precision])

        def run() -> None:
            with autocast():
                loss, _ = policy.compute_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timing = time_fn(run, device, args.warmup, args.iters)
    result = {
        "benchmark": f"policy_{args.mode}",
        "settings": vars(args),
        "trainable_parameters": policy.num_trainable_parameters(),
        "environment": environment(),
        "time": timing,
        "peak_memory_gib": peak_memory_gib(device),
    }
    if args.profile:  # before the exactness check, which drops the captured graphs (their recapture is not a call)
        result["profile"] = kernel_profile(run, device, args.profile, launchers=args.profile_launchers)
    if args.sync_report:
        result["host_syncs"] = host_syncs(run, device)
    if args.mode == "inference" and args.components:
        with inference_autocast():
            result["components"] = component_times(policy, obs, instruction, args.warmup, args.iters)
    if args.mode == "inference" and (args.cuda_graph != "off" or args.compile is not None or args.cudnn_benchmark
                                     or args.inference_autocast or args.compile_head or args.fused_decoder
                                     or args.sdpa_perceiver or args.unet_streams > 1):
        result["exactness"] = exactness(policy, obs, instruction, device, inference_autocast)
    if args.mode == "train":
        result["samples_per_s"] = args.batch / (timing["median_ms"] / 1000)
    emit(result)


if __name__ == "__main__":
    main()
