"""Stage-1 training step of the full-size SVD U-Net (random weights): time per step and peak memory.

    python benchmarks/stage1_step.py --batch 6 --precision bf16 --checkpointing layers
    python benchmarks/stage1_step.py --tiny --device cpu --batch 1     # smoke run on a laptop
    python benchmarks/stage1_step.py --size small_sim --batch 16 --checkpointing none   # the simulator experiment's
    python benchmarks/stage1_step.py --batch 6 --bf16-weights     # measurement only: what dropping the casts would save
    python benchmarks/stage1_step.py --batch 6 --compile --compile-scope layers   # compiled layer by layer
    python benchmarks/stage1_step.py --batch 6 --ddp bucket-view   # the memory a multi-GPU run holds per GPU
    python benchmarks/stage1_step.py --batch 6 --compile --compile-scope layers --ddp bucket-view --ddp-graph-cuts
    python benchmarks/stage1_step.py --batch 6 --compile --compile-scope layers --inductor-cpp-wrapper  # less host time

The step is the real training math (video_models.edm.video_diffusion_loss on 16x4x32x32 latents with text tokens
20x1024 at full size), AdamW (lr 5e-6, wd 0) and gradient clipping 1.0, exactly what step1_train_svd.py runs per batch.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

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
    peak_reserved_gib,
    per_position_temporal_context,
    time_fn,
)
from video_models.attention_kernels import use_short_query_kernels
from video_models.builders import build_unet, count_parameters
from video_models.checkpointing import (
    CHECKPOINTING_MODES,
    checkpointed,
    configure_gradient_checkpointing,
    is_checkpointed,
    unet_layers,
)
from video_models.conv_layout import set_conv_weight_layout, to_channels_last
from video_models.edm import micro_conditioning, video_diffusion_loss
from video_models.layer_compile import compile_unet_layers


class _BF16Inputs(torch.nn.Module):
    """Feeds a bf16 U-Net the loss function's fp32 sample and text tokens in bf16 (for --bf16-weights)."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                added_time_ids: torch.Tensor):
        return self.unet(sample.to(torch.bfloat16), timestep,
                         encoder_hidden_states=encoder_hidden_states.to(torch.bfloat16), added_time_ids=added_time_ids)


def _channels_last_output(forward: Callable[..., Any]) -> Callable[..., Any]:
    """`forward` returning its output (alone or first in a tuple, as diffusers' transformers return it) in
    channels-last layout. Compiled, the layout change fuses into the layer's last kernel."""
    @functools.wraps(forward)
    def wrapper(*args, **kwargs):
        out = forward(*args, **kwargs)
        if isinstance(out, tuple):
            return (to_channels_last(out[0]), *out[1:])
        if not torch.is_tensor(out):
            raise TypeError(f"--channels-last-activations: unexpected layer output {type(out).__name__}")
        return to_channels_last(out)

    return wrapper


def channels_last_activations(unet: torch.nn.Module) -> None:
    """Measurement: every convolution, 2-D and the temporal 3-D ones, with weights and inputs in channels-last
    layout, and every ResNet and transformer writing its output in it. cuDNN's kernels for bf16 work in that layout
    and transpose NCHW inputs and outputs around each call (26 ms of a 390 ms step in session 12's profile).
    Inductor's own layout optimisation covers only the 2-D convolutions inside a compiled graph, and diffusers'
    transformers end in `.contiguous()`, which turns their output back to NCHW. Same math. Call after the
    checkpointing is set and before the layers are compiled."""
    set_conv_weight_layout(unet, channels_last=True)
    for module in unet.modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.Conv3d):
            module.register_forward_pre_hook(lambda _module, args: (to_channels_last(args[0]), *args[1:]))
    for layer in unet_layers(unet):
        if is_checkpointed(layer.forward):
            layer.forward = checkpointed(_channels_last_output(layer.forward.__wrapped__))
        else:
            layer.forward = _channels_last_output(layer.forward)


def _one_process_ddp(model: torch.nn.Module, device: torch.device,
                     gradient_as_bucket_view: bool) -> torch.nn.Module:
    """`model` in DistributedDataParallel over a process group of this process alone. DDP allocates its all-reduce
    buckets and hooks as in a multi-GPU run, so the step's peak memory is what each GPU of one holds."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    rendezvous = Path(tempfile.mkdtemp(prefix="stage1_step_ddp_")) / "store"  # no port to collide with
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{rendezvous}", rank=0,
                            world_size=1)
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                   gradient_as_bucket_view=gradient_as_bucket_view)


def train_step(loss_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer,
               params: list[torch.nn.Parameter], scaler: torch.amp.GradScaler) -> None:
    """One step in step1_train_svd.py's order: loss, backward, gradient clipping at 1.0, optimizer step, then the
    gradients dropped. Dropping them only at the start of the next step would hold one fp32 copy of them (5.7 GiB at
    full size) through the next forward pass, which the trainer does not; under DDP their bucket storage stays
    allocated either way."""
    scaler.scale(loss_fn()).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="bf16",
                        help="autocast dtype; weights and optimizer state stay fp32")
    parser.add_argument("--checkpointing", choices=CHECKPOINTING_MODES, default="layers",
                        help="diffusers = ResNet-level (what the original forced on); blocks = whole U-Net blocks; "
                             "layers = every ResNet and transformer; resnets, attentions = only those")
    parser.add_argument("--optimizer", choices=["fused", "foreach", "per-tensor"], default="fused",
                        help="per-tensor = one param group per tensor and no foreach, like the original")
    parser.add_argument("--bf16-weights", action="store_true",
                        help="measurement only: U-Net weights in bf16, no autocast, AdamW on the bf16 weights. An "
                             "upper bound for bf16 weights with fp32 master copies; not a training setting, since "
                             "updates below bf16's resolution are lost")
    parser.add_argument("--compile", action="store_true", help="torch.compile the U-Net (inductor, default mode)")
    parser.add_argument("--compile-scope", choices=["unet", "layers"], default="unet",
                        help="with --compile: the whole U-Net as one graph, or every ResNet and transformer on its "
                             "own inside its checkpointing wrapper (video_models.layer_compile)")
    parser.add_argument("--compile-memory-budget", type=float, default=None, metavar="F",
                        help="with --compile: torch._functorch.config.activation_memory_budget = F (0-1), the share "
                             "of the activations inductor may keep for the backward pass; it recomputes the rest")
    parser.add_argument("--inductor-cpp-wrapper", action="store_true",
                        help="with --compile-scope layers: inductor's cpp_wrapper, so each compiled layer launches "
                             "its kernels from generated C++ instead of Python (same kernels, less host time; the "
                             "trainer's compile_cpp_wrapper)")
    parser.add_argument("--channels-last", action="store_true",
                        help="U-Net convolution weights, 2-D and 3-D, in channels-last layout (session 11 measured "
                             "the flag with the 2-D weights only)")
    parser.add_argument("--channels-last-activations", action="store_true",
                        help="with --compile-scope layers: convolution weights, the U-Net's input and every layer's "
                             "output in channels-last layout (measurement; same math, no cuDNN layout transposes)")
    parser.add_argument("--short-query-kernels", action="store_true",
                        help="the memory-efficient attention kernel for queries of at most 64 tokens "
                             "(video_models.attention_kernels; the policy's short_query_attention)")
    parser.add_argument("--ddp", choices=["off", "bucket-view", "copy"], default="off",
                        help="wrap the U-Net in DistributedDataParallel in a one-process group, to measure what each "
                             "GPU of a multi-GPU run holds: bucket-view = gradients as views into the all-reduce "
                             "buckets (what the trainers ask for), copy = DDP's default, a second copy beside them")
    parser.add_argument("--ddp-graph-cuts", action="store_true",
                        help="with --compile-scope layers and --ddp: keep dynamo's default (optimize_ddp), which cuts "
                             "every graph compiled under DDP at the all-reduce bucket boundaries (25 MB of "
                             "parameters), so one compiled layer becomes several graphs. The trainer switches the "
                             "cuts off")
    parser.add_argument("--size", choices=["full", *SMALL_VIDEO_CONFIGS], default="full",
                        help="U-Net size: full (SVD), small_sim or tiny (video_conf/small_sim.yaml, tiny.yaml)")
    parser.add_argument("--tiny", dest="size", action="store_const", const="tiny", help="same as --size tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    add_temporal_context_argument(parser)
    add_backend_arguments(parser)
    args = parser.parse_args()
    if args.bf16_weights and args.precision == "fp16":
        parser.error("--bf16-weights replaces autocast; use it without --precision fp16")
    if args.compile_scope != "unet" and not args.compile:
        parser.error("--compile-scope needs --compile")
    if args.ddp_graph_cuts and (args.compile_scope != "layers" or args.ddp == "off"):
        parser.error("--ddp-graph-cuts needs --compile --compile-scope layers and --ddp")
    if args.channels_last_activations and args.compile_scope != "layers":
        parser.error("--channels-last-activations needs --compile --compile-scope layers")
    if args.inductor_cpp_wrapper and args.compile_scope != "layers":
        parser.error("--inductor-cpp-wrapper needs --compile --compile-scope layers")
    if args.compile_memory_budget is not None:
        if not args.compile:
            parser.error("--compile-memory-budget needs --compile")
        if not 0.0 <= args.compile_memory_budget <= 1.0:
            parser.error(f"--compile-memory-budget must be in [0, 1], got {args.compile_memory_budget}")
        from torch._functorch import config as functorch_config

        functorch_config.activation_memory_budget = args.compile_memory_budget

    device = torch.device(args.device)
    configure_backends(args)
    if args.size in SMALL_VIDEO_CONFIGS:
        from vpp_core.config import load_config

        video_cfg = load_config(SMALL_VIDEO_CONFIGS[args.size])
        unet_cfg, latent = video_cfg.model.unet, int(video_cfg.train_args.height) // 8
    else:
        unet_cfg, latent = None, 32  # 256 x 256 video, as step1_train_svd.py trains it
    unet = build_unet(unet_cfg).to(device).train()
    if args.per_position_temporal_context:
        per_position_temporal_context(unet)
    if args.bf16_weights:
        unet = unet.to(torch.bfloat16)
    configure_gradient_checkpointing(unet, args.checkpointing)
    if args.channels_last:
        set_conv_weight_layout(unet, channels_last=True)
    if args.channels_last_activations:
        channels_last_activations(unet)
    if args.short_query_kernels:
        use_short_query_kernels(unet)
    frames = 16  # VPP's clip length; the U-Net config's num_frames (25 for the default) is not used by forward
    text_dim = unet.config.cross_attention_dim

    params = [p for p in unet.parameters() if p.requires_grad]
    if args.optimizer == "per-tensor":
        optimizer = torch.optim.AdamW([{"params": [p]} for p in params], lr=5e-6, weight_decay=0.0, foreach=False)
    else:
        fused = args.optimizer == "fused" and device.type == "cuda"
        optimizer = torch.optim.AdamW(params, lr=5e-6, weight_decay=0.0, fused=fused, foreach=not fused)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]

    def autocast():
        if args.precision == "fp32" or args.bf16_weights:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(args.batch, frames, 4, latent, latent, generator=generator).to(device)
    text = torch.randn(args.batch, 20, text_dim, generator=generator).to(device)
    time_ids = micro_conditioning(args.batch, 7, 127, 0.0, device, torch.float32)

    model = unet
    if args.compile and args.compile_scope == "layers":
        compile_unet_layers(unet, "default", cpp_wrapper=args.inductor_cpp_wrapper, ddp_graph_cuts=args.ddp_graph_cuts)
    elif args.compile:
        model = torch.compile(unet)
    if args.ddp != "off":
        model = _one_process_ddp(model, device, gradient_as_bucket_view=args.ddp == "bucket-view")
    if args.bf16_weights:
        model = _BF16Inputs(model)

    def loss() -> torch.Tensor:
        with autocast():
            return video_diffusion_loss(model, latents, text, time_ids, 0.18215, generator=generator)

    def step() -> None:
        train_step(loss, optimizer, params, scaler)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timing = time_fn(step, device, args.warmup, args.iters)
    profile = ({"profile": kernel_profile(step, device, args.profile, launchers=args.profile_launchers)}
               if args.profile else {})
    syncs = {"host_syncs": host_syncs(step, device)} if args.sync_report else {}
    emit({
        "benchmark": "stage1_train_step",
        "settings": {**vars(args), "latent": [frames, 4, latent, latent], "text_tokens": [20, text_dim]},
        "unet_parameters": count_parameters(unet),
        "parameter_dtype": str(next(unet.parameters()).dtype).removeprefix("torch."),
        "environment": environment(),
        "step": timing,
        "samples_per_s": args.batch / (timing["median_ms"] / 1000),
        "peak_memory_gib": peak_memory_gib(device),
        "peak_reserved_gib": peak_reserved_gib(device),
        **profile,
        **syncs,
    })
    if args.ddp != "off":
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
