"""Every attention call of one full-size U-Net pass, timed on each scaled_dot_product_attention backend.

    python benchmarks/attention_backends.py --batch 32              # stage-2 feature pass: fp16, forward only
    python benchmarks/attention_backends.py --batch 1               # the policy's pass at inference
    python benchmarks/attention_backends.py --stage1 --batch 6      # stage-1 training: bf16, forward + backward
    python benchmarks/attention_backends.py --tiny --device cpu     # smoke run

The SVD U-Net attends over very different shapes: spatial attention over up to 32 x 32 positions, temporal attention
over 16 frames for every position, cross-attention to 20 text tokens. torch picks one backend per call; this harness
records the calls' shapes (the U-Net runs once with the attention function wrapped), then times each distinct shape on
every backend that accepts it, so the fastest backend per kind of call can be compared with torch's own choice
("default"). Backends compute the same attention with different rounding.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.common import SMALL_VIDEO_CONFIGS, emit, environment, synchronize
from video_models.builders import build_unet
from video_models.edm import micro_conditioning

BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}

# (query shape, key shape, dtype): what a backend's speed depends on
Call = tuple[tuple[int, ...], tuple[int, ...], str]


def record_attention_calls(fn: Callable[[], Any]) -> Counter[Call]:
    """The scaled_dot_product_attention calls that `fn` makes, by (query shape, key shape, dtype). Calls with a mask,
    dropout or causal masking are not expected in the U-Net and are refused, so they cannot be timed wrongly."""
    calls: Counter[Call] = Counter()
    original = F.scaled_dot_product_attention

    def recording(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        if attn_mask is not None or dropout_p or is_causal or kwargs.get("enable_gqa"):
            raise NotImplementedError("this harness times unmasked attention without dropout only")
        calls[(tuple(query.shape), tuple(key.shape), str(query.dtype).removeprefix("torch."))] += 1
        return original(query, key, value, **kwargs)

    F.scaled_dot_product_attention = recording
    try:
        fn()
    finally:
        F.scaled_dot_product_attention = original
    return calls


def time_call(call: Call, backend: str, backward: bool, device: torch.device, iters: int) -> float | None:
    """Mean ms of one attention call (forward, or forward + backward) on `backend` ("default": torch's choice) over
    `iters` back-to-back calls; None where the backend does not accept the shape."""
    q_shape, k_shape, dtype = call
    dtype = getattr(torch, dtype)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=backward)
               for shape in (q_shape, k_shape, k_shape))
    grad = torch.randn(q_shape, device=device, dtype=dtype) if backward else None

    def run() -> None:
        out = F.scaled_dot_product_attention(q, k, v)
        if backward:
            out.backward(grad)

    chosen = sdpa_kernel([BACKENDS[backend]]) if backend != "default" else contextlib.nullcontext()
    with chosen, torch.set_grad_enabled(backward):
        try:
            run()  # warm-up
        except RuntimeError:  # no kernel of this backend for the shape / dtype / device
            return None
        synchronize(device)
        start = time.perf_counter()
        for _ in range(iters):
            run()
        synchronize(device)
    return (time.perf_counter() - start) * 1000 / iters


def unet_pass(args, device: torch.device) -> tuple[Callable[[], Any], int]:
    """The pass whose attention calls are recorded, and the number of clips it runs."""
    if args.stage1:
        unet_cfg, latent = None, 32
        if args.size in SMALL_VIDEO_CONFIGS:
            from vpp_core.config import load_config

            video_cfg = load_config(SMALL_VIDEO_CONFIGS[args.size])
            unet_cfg, latent = video_cfg.model.unet, int(video_cfg.train_args.height) // 8
        dtype = torch.bfloat16
        unet = build_unet(unet_cfg).to(device, dtype).eval()
        sample = torch.randn(args.batch, 16, 8, latent, latent, device=device, dtype=dtype)
        text = torch.randn(args.batch, 20, unet.config.cross_attention_dim, device=device, dtype=dtype)
        time_ids = micro_conditioning(args.batch, 7, 127, 0.0, device, dtype)
        return lambda: unet(sample, torch.ones(args.batch, device=device), text, added_time_ids=time_ids), args.batch
    from benchmarks.policy_step import build_random_policy

    # fp16 as released; the CPU smoke run keeps fp32, which every CPU kernel supports
    policy = build_random_policy(device, args.size, torch.float16 if device.type == "cuda" else torch.float32)
    tvp = policy.tvp_encoder
    clips = len(policy.embodiment.cameras) * args.batch
    images = torch.rand(clips, 3, tvp.resolution, tvp.resolution, device=device) * 2 - 1
    tokens = tvp.text_tokens(["pull the handle to open the drawer"] * clips)
    return lambda: tvp.features(images, tokens), clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--stage1", action="store_true",
                        help="stage-1 training: the whole U-Net in bf16, forward and backward timed; default: the "
                             "policy's feature pass (one clip per camera and sample, fp16, forward only)")
    parser.add_argument("--size", choices=["full", *SMALL_VIDEO_CONFIGS], default="full")
    parser.add_argument("--tiny", dest="size", action="store_const", const="tiny", help="same as --size tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    run_pass, clips = unet_pass(args, device)
    with torch.no_grad():
        calls = record_attention_calls(run_pass)
    del run_pass
    names = ["default", *BACKENDS]
    rows = []
    for call, count in sorted(calls.items(), key=lambda item: -item[1]):
        ms = {name: time_call(call, name, args.stage1, device, args.iters) for name in names}
        accepted = {name: t for name, t in ms.items() if t is not None and name != "default"}
        rows.append({"query": call[0], "key": call[1], "dtype": call[2], "calls_per_pass": count,
                     "ms_per_call": ms, "fastest": min(accepted, key=accepted.get) if accepted else None})
    per_pass = {name: sum(r["calls_per_pass"] * r["ms_per_call"][name] for r in rows) for name in names
                if all(r["ms_per_call"][name] is not None for r in rows)}
    per_pass["fastest_per_call"] = sum(r["calls_per_pass"] * r["ms_per_call"][r["fastest"]] for r in rows)
    emit({
        "benchmark": "attention_backends",
        "settings": {**vars(args), "clips": clips, "timed": "forward + backward" if args.stage1 else "forward"},
        "environment": environment(),
        "calls": rows,
        # backends that do not accept every call of the pass are left out
        "ms_per_pass": per_pass,
    })


if __name__ == "__main__":
    main()
