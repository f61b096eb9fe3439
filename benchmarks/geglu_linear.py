"""The U-Net's GEGLU feed-forward projections of one policy chunk, unfused (compiled, as the chunk runs them: a cuBLAS
product, then inductor's `gelu(gate) * hidden` kernel) against the fused Triton kernel of `video_models.fused_geglu`
over a grid of launch settings. Each call is replayed as a CUDA graph.

    python benchmarks/geglu_linear.py --batch 1
    python benchmarks/geglu_linear.py --batch 1 --grid default      # LAUNCH only

The shapes are those the full-size CALVIN policy's partial U-Net pass hands its GEGLU layers (recorded with forward
hooks during one chunk), with random fp16 inputs and weights of the same sizes. CUDA only.
"""

from __future__ import annotations

import argparse
import itertools
from collections import Counter
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.activations import GEGLU

from benchmarks.common import emit, environment, graph_replay_ms
from benchmarks.policy_step import build_random_policy, camera_images
from video_models import fused_geglu


def chunk_geglu_shapes(batch: int) -> Counter:
    """(tokens, input width, output width) -> calls, for the GEGLU layers of one full-size policy chunk."""
    device = torch.device("cuda")
    policy = build_random_policy(device, "full", torch.float16).eval()
    shapes: Counter = Counter()

    def record(module, args, out):
        shapes[(out.numel() // out.shape[-1], args[0].shape[-1], out.shape[-1])] += 1

    hooks = [m.register_forward_hook(record) for m in policy.tvp_encoder.unet.modules() if isinstance(m, GEGLU)]
    obs = {"rgb_obs": camera_images(policy, batch, np.random.default_rng(0))}
    policy.predict_action_chunk(obs, "pull the handle to open the drawer")
    for hook in hooks:
        hook.remove()
    del policy
    torch.cuda.empty_cache()
    return shapes


def unfused(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    hidden, gate = F.linear(x, weight, bias).chunk(2, dim=-1)
    return hidden * F.gelu(gate)


SHARED_MEMORY_BYTES = 227 * 1024  # per thread block on an H100


def launch_grid(name: str) -> list[dict[str, int]]:
    if name == "default":
        return [dict(fused_geglu.LAUNCH)]
    grid = []
    for bm, bn, bk, warps, stages in itertools.product((64, 128, 256), (64, 128), (32, 64, 128), (4, 8), (2, 3, 4)):
        if bm * bn * 2 // (32 * warps) > 256:  # two float32 accumulators per thread beyond the register file
            continue
        if stages * (bm * bk + 2 * bk * bn) * 2 > SHARED_MEMORY_BYTES:  # the pipelined input tiles
            continue
        if (bk == 128 and stages == 4) or (bk < 128 and stages == 2):  # 2 stages for the widest steps only
            continue
        grid.append({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8, "num_warps": warps, "num_stages": stages})
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--replays", type=int, default=200)
    parser.add_argument("--grid", choices=["search", "default"], default="search")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("the fused GEGLU's kernel and its launch settings need a CUDA device")
    shapes = chunk_geglu_shapes(args.batch)
    compiled = torch.compile(unfused, dynamic=False)
    grid = launch_grid(args.grid)
    rows = []
    for (m, k, n), calls in sorted(shapes.items()):
        gen = torch.Generator("cuda").manual_seed(0)
        x = torch.randn(m, k, device="cuda", dtype=torch.float16, generator=gen)
        weight = torch.randn(2 * n, k, device="cuda", dtype=torch.float16, generator=gen) * k ** -0.5
        bias = torch.randn(2 * n, device="cuda", dtype=torch.float16, generator=gen) * 0.1
        with torch.no_grad():
            unfused_ms, reference = graph_replay_ms(partial(compiled, x, weight, bias), args.replays)
            settings = []
            for launch in grid:
                try:
                    ms, out = graph_replay_ms(
                        partial(fused_geglu.geglu_linear_launch, x, weight, bias, launch), args.replays)
                except Exception as exc:  # a setting the compiler or the device refuses (shared memory, registers)
                    settings.append({"launch": launch, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                    continue
                settings.append({"launch": launch, "ms": ms,
                                 "max_abs_diff_vs_unfused": float((out - reference).abs().max())})
        timed = [s for s in settings if "ms" in s]
        best = min(timed, key=lambda s: s["ms"])
        default = next((s for s in timed if s["launch"] == fused_geglu.LAUNCH), None)
        rows.append({"tokens": m, "in": k, "out": n, "calls": calls, "unfused_ms": unfused_ms,
                     "reference_abs_max": float(reference.abs().max()), "best": best,
                     "default_launch_ms": None if default is None else default["ms"], "settings": settings})
    totals = {}  # one launch setting for every shape: per-chunk time of each setting that ran on all of them
    for i in range(len(grid)):
        times = [r["settings"][i].get("ms") for r in rows]
        if None not in times:
            totals[i] = sum(t * r["calls"] for t, r in zip(times, rows))
    single = min(totals, key=totals.get)
    result = {
        "benchmark": "geglu_linear", "settings": vars(args), "environment": environment(), "shapes": rows,
        "per_chunk_ms": {
            "unfused": sum(r["unfused_ms"] * r["calls"] for r in rows),
            "fused_best_per_shape": sum(r["best"]["ms"] * r["calls"] for r in rows),
            "fused_default_launch": (None if any(r["default_launch_ms"] is None for r in rows)
                                     else sum(r["default_launch_ms"] * r["calls"] for r in rows)),
            "fused_best_single_launch": totals[single],
        },
        "best_single_launch": grid[single],
    }
    emit(result)


if __name__ == "__main__":
    main()
