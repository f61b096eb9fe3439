"""Where the SVD U-Net's FLOPs are: one forward pass counted by operator kind with torch.utils.flop_counter.

    python benchmarks/unet_flops.py --pass full --batch 1       # stage 1: one 16-frame clip, 32 x 32 latents (~1 min)
    python benchmarks/unet_flops.py --pass partial --batch 2    # the policy: its partial pass, 2 cameras, one chunk
    python benchmarks/unet_flops.py --tiny                      # smoke run

The counts are the model's math, the same on any device, so this runs on the CPU. They bound what a faster kernel
for one kind of operator can buy: FP8 matrix products, for example, speed up the linear layers' share and nothing
else. Attention is counted through torch's math kernel, whose matrix products the counter sees (the fused kernels
are not counted by it). A training step (forward and backward) costs about three times the forward pass.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import SMALL_VIDEO_CONFIGS, emit, environment
from video_models.builders import build_video_model, count_parameters
from video_models.edm import micro_conditioning

# aten operator name -> the kind of work it is; under the math attention kernel, batched matrix products are
# attention's (the U-Net's linear layers run as addmm / mm)
OPERATOR_KINDS = {"addmm": "linear", "mm": "linear", "convolution": "convolution", "bmm": "attention",
                  "baddbmm": "attention"}


def count_by_kind(fn: Callable[[], object]) -> dict[str, float]:
    """FLOPs of `fn()` by operator kind (OPERATOR_KINDS; anything else under its own aten name)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        fn()
    kinds: dict[str, float] = {}
    for op, flops in counter.get_flop_counts()["Global"].items():
        name = str(op).removeprefix("aten.").split(".")[0]
        kind = OPERATOR_KINDS.get(name, name)
        kinds[kind] = kinds.get(kind, 0.0) + float(flops)
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pass", dest="unet_pass", choices=["full", "partial"], default="full",
                        help="full = the whole U-Net (stage-1 training); partial = the policy's pass up to "
                             "up_blocks[1] (policy_models.tvp_encoder)")
    parser.add_argument("--batch", type=int, default=1, help="clips (full) or camera images (partial)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--latent", type=int, default=32, help="latent height and width (256 x 256 images: 32)")
    parser.add_argument("--size", choices=["full", *SMALL_VIDEO_CONFIGS], default="full")
    parser.add_argument("--tiny", dest="size", action="store_const", const="tiny", help="same as --size tiny")
    args = parser.parse_args()

    model_cfg = {}
    if args.size in SMALL_VIDEO_CONFIGS:
        from vpp_core.config import load_config

        model_cfg = load_config(SMALL_VIDEO_CONFIGS[args.size]).model
    model = build_video_model(model_cfg, seed=0)
    unet = model.unet.eval()
    generator = torch.Generator().manual_seed(0)
    channels = unet.config.in_channels
    sample = torch.randn(args.batch, args.frames, channels, args.latent, args.latent, generator=generator)
    text = torch.randn(args.batch, 20, unet.config.cross_attention_dim, generator=generator)
    timestep = torch.tensor([1.0])
    if args.unet_pass == "full":
        time_ids = micro_conditioning(args.batch, 7, 127, 0.0, "cpu", torch.float32)  # as step1_train_svd.py

        def forward():
            return unet(sample, timestep, encoder_hidden_states=text, added_time_ids=time_ids).sample
    else:
        from policy_models.tvp_encoder import TVPEncoder

        encoder = TVPEncoder(unet, model.vae, model.scheduler, model.text_encoder, model.tokenizer,
                             num_frames=args.frames)
        time_ids = encoder.added_time_ids(args.batch)

        def forward():
            return encoder.partial_unet(sample, timestep, text, time_ids)

    kinds = count_by_kind(forward)
    total = sum(kinds.values())
    emit({
        "benchmark": "unet_flops",
        "settings": {**vars(args), "sample": list(sample.shape), "text_tokens": list(text.shape[1:])},
        "unet_parameters": count_parameters(unet),
        "environment": environment(),
        "forward_tflop": total / 1e12,
        "tflop_by_kind": {k: v / 1e12 for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "share_by_kind": {k: v / total for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
    })


if __name__ == "__main__":
    main()
