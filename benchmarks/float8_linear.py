"""Would FP8 (e4m3) matrix products speed up the policy's U-Net pass, and how far would they move its features?

An H100 multiplies e4m3 numbers at twice its 16-bit rate, and the U-Net's linear layers hold 3.08 of the chunk's 5.52
TFLOP. Not exact: e4m3 keeps 3 bits of mantissa. So this harness measures both sides; in session 28 FP8 came out
slower once the activations are quantised, and was not built into the models (docs/PERFORMANCE.md):

1. Every linear-layer shape of one chunk's partial U-Net pass (batch 1: two cameras x 16 frames; `linear_shapes`),
   each replayed as a CUDA graph: cuBLAS's 16-bit product (`F.linear`); `torch._scaled_mm` in e4m3 with the
   activations quantised inside one compiled function, per row (fp16 or bf16 output) or per tensor; and the e4m3
   product alone on rows quantised beforehand (a lower bound: quantisation for free). Weights are quantised once, per
   output channel. Each shape's time is weighted by its number of calls per chunk.
2. The random full-size policy's feature pass, eager, with every aligned 16-bit linear layer of the U-Net in e4m3,
   and with only the feed-forward ones: the features' relative change against the 16-bit pass, beside the change
   that perturbing one layer's weights by 0.1% and 1% causes.

    python benchmarks/float8_linear.py            # CUDA with e4m3 support (compute capability 8.9 or later)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import emit, environment, graph_replay_ms

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max


def linear_shapes() -> list[tuple[int, int, int, int]]:
    """(rows, in, out, calls per chunk) of the partial pass's large linear layers at batch 1 (2 x 16 frames of 32 x 32
    latents). Each spatio-temporal transformer of width C runs 14 C -> C products (proj_in/out, the query, key, value
    and output of both attention blocks' self-attention, the query and output of their cross-attention) and three
    GEGLU feed-forwards (C -> 8C, 4C -> C). Transformers per level: two at 32 x 32 (C 320) and 16 x 16 (640), five at
    8 x 8 (1280: two down, three up), one at 4 x 4 (the middle block). Together 3.10 TFLOP: 0.8% more than the 3.08
    that `unet_flops.py --pass partial --batch 2` counts for all of the pass's linear layers, so the list is close to
    the pass, not exact."""
    shapes = []
    for rows, width, transformers in ((32768, 320, 2), (8192, 640, 2), (2048, 1280, 5), (512, 1280, 1)):
        shapes += [(rows, width, width, 14 * transformers), (rows, width, 8 * width, 3 * transformers),
                   (rows, 4 * width, width, 3 * transformers)]
    return shapes


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, k) -> (e4m3 values, float32 scale per row, shape (rows, 1)), x ≈ values * scale: each row's largest
    magnitude maps to e4m3's largest finite value."""
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    scale = torch.clamp(amax, min=torch.finfo(torch.float32).tiny) / E4M3_MAX
    return (x.float() / scale).to(E4M3), scale


def quantize_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """As `quantize_rows` with one scale for the whole tensor (a 0-d float32 tensor)."""
    scale = torch.clamp(x.abs().amax().float(), min=torch.finfo(torch.float32).tiny) / E4M3_MAX
    return (x.float() / scale).to(E4M3), scale


class E4M3Linear(nn.Linear):
    """An `nn.Linear` whose calls multiply in e4m3, rows scaled per row and weights per output channel
    (`use_e4m3_linear` changes a layer's class to this one). Calls with fewer than `min_rows` rows keep the 16-bit
    product: there a layer is bound by its latency, and quantising would only add a kernel."""

    min_rows = 256

    def prepare(self) -> None:
        values, scale = quantize_rows(self.weight.detach())
        self.register_buffer("weight_e4m3", values, persistent=False)
        self.register_buffer("weight_scale", scale.reshape(1, -1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows < self.min_rows:
            return super().forward(x)
        values, scale = quantize_rows(x.reshape(rows, x.shape[-1]))
        out = torch._scaled_mm(values, self.weight_e4m3.t(), scale, self.weight_scale, bias=self.bias,
                               out_dtype=x.dtype, use_fast_accum=True)
        return out.reshape(*x.shape[:-1], self.out_features)


def use_e4m3_linear(model: nn.Module, enabled: bool = True, include: Callable[[str], bool] = lambda name: True) -> int:
    """Switch the 16-bit `nn.Linear` layers of `model` whose dimensions are multiples of 16 (what `_scaled_mm` takes)
    and whose names pass `include` to `E4M3Linear`, or all of them back; returns how many layers changed."""
    changed = 0
    for name, layer in model.named_modules():
        if (enabled and type(layer) is nn.Linear and include(name) and layer.weight.dtype in (torch.float16,
                                                                                                torch.bfloat16)
                and layer.in_features % 16 == 0 and layer.out_features % 16 == 0):
            layer.__class__ = E4M3Linear
            layer.prepare()
            changed += 1
        elif not enabled and type(layer) is E4M3Linear:
            del layer.weight_e4m3, layer.weight_scale
            layer.__class__ = nn.Linear
            changed += 1
    return changed


def is_feed_forward(name: str) -> bool:
    """diffusers' feed-forward layers of the spatial (`ff`) and temporal (`ff_in`, `ff`) transformer blocks."""
    return ".ff." in name or ".ff_in." in name


def relative_change(a: torch.Tensor, reference: torch.Tensor) -> float:
    a, reference = a.detach().float(), reference.detach().float()
    return float((a - reference).norm() / reference.norm())


def product_variants(rows: int, k: int, n: int, device: torch.device) -> tuple[dict[str, Callable], torch.Tensor]:
    """The variants of one (rows x k) @ (k x n) product with bias, on random half-precision data, and its float32
    result."""
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(rows, k, device=device, generator=gen).half()
    weight = (torch.randn(n, k, device=device, generator=gen) / k**0.5).half()
    bias = (torch.randn(n, device=device, generator=gen) * 0.1).half()
    exact = F.linear(x.float(), weight.float(), bias.float())
    w_rows, w_row_scale = quantize_rows(weight)
    w_tensor, w_tensor_scale = quantize_tensor(weight)
    x_rows, x_row_scale = quantize_rows(x)

    def per_row(out_dtype: torch.dtype) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            values, scale = quantize_rows(x)
            return torch._scaled_mm(values, w_rows.t(), scale, w_row_scale.t(), bias=bias.to(out_dtype),
                                    out_dtype=out_dtype, use_fast_accum=True)
        return torch.compile(run)

    def per_tensor() -> torch.Tensor:
        values, scale = quantize_tensor(x)
        return torch._scaled_mm(values, w_tensor.t(), scale, w_tensor_scale, bias=bias, out_dtype=torch.float16,
                                use_fast_accum=True)

    def product_only() -> torch.Tensor:
        return torch._scaled_mm(x_rows, w_rows.t(), x_row_scale, w_row_scale.t(), bias=bias.bfloat16(),
                                out_dtype=torch.bfloat16, use_fast_accum=True)

    return {
        "fp16_cublas": lambda: F.linear(x, weight, bias),
        "e4m3_rows_fp16_out": per_row(torch.float16),
        "e4m3_rows_bf16_out": per_row(torch.bfloat16),
        "e4m3_tensor_fp16_out": torch.compile(per_tensor),
        "e4m3_product_only": product_only,
    }, exact


def product_times(device: torch.device, replays: int) -> dict:
    """Per shape and per chunk: GPU time of each variant and its relative error against the float32 product."""
    rows_out, per_chunk = [], {}
    for rows, k, n, calls in linear_shapes():
        variants, exact = product_variants(rows, k, n, device)
        row = {"rows": rows, "in": k, "out": n, "calls_per_chunk": calls}
        for name, fn in variants.items():
            ms, out = graph_replay_ms(fn, replays)
            row[name] = {"ms": ms, "relative_error_vs_fp32": relative_change(out, exact)}
            per_chunk[name] = per_chunk.get(name, 0.0) + ms * calls
        rows_out.append(row)
    return {"shapes": rows_out, "per_chunk_ms": per_chunk}


def feature_changes(device: torch.device) -> dict:
    """Relative change of the random full-size policy's U-Net features (eager, the same noise) with e4m3 layers,
    against the change that a small perturbation of one layer's weights causes."""
    from benchmarks.chunk_components import chunk_stages
    from benchmarks.policy_step import build_random_policy, camera_images

    policy = build_random_policy(device, "full", torch.float16)
    policy.eval()
    obs = {"rgb_obs": camera_images(policy, 1, np.random.default_rng(0))}
    unet = policy.tvp_encoder.unet

    def features() -> torch.Tensor:
        torch.manual_seed(0)  # the same initial noise in the U-Net's input sample
        return dict((name, inputs) for name, _, inputs in chunk_stages(policy, obs, "open the drawer"))[
            "video_former"][0]

    reference = features()
    out = {}
    for label, include in (("all_linear_layers", lambda name: True), ("feed_forward_layers", is_feed_forward)):
        layers = use_e4m3_linear(unet, include=include)
        out[label] = {"layers": layers, "feature_relative_change": relative_change(features(), reference)}
        use_e4m3_linear(unet, enabled=False)
    weight = unet.down_blocks[0].attentions[0].proj_in.weight
    original = weight.data.clone()
    for perturbation in (1e-3, 1e-2):
        noise = torch.randn(original.shape, device=device, generator=torch.Generator(device).manual_seed(1))
        weight.data = (original.float() * (1 + perturbation * noise)).to(original.dtype)
        out[f"control_first_proj_in_weights_times_1_plus_{perturbation}_noise"] = {
            "feature_relative_change": relative_change(features(), reference)}
        weight.data = original
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replays", type=int, default=200, help="graph replays per variant (timed in groups of 20)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        raise SystemExit("float8_linear.py needs a CUDA device with e4m3 matrix products (compute capability 8.9+)")
    device = torch.device("cuda")
    emit({"benchmark": "float8_linear", "settings": vars(args), "environment": environment(),
          "products": product_times(device, args.replays), "features": feature_changes(device)})


if __name__ == "__main__":
    main()
