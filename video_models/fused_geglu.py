"""The U-Net's GEGLU feed-forward projections as one Triton kernel each (inference, opt-in).

`use_fused_geglu(model)` makes every diffusers `GEGLU` of `model` compute `proj(x)`'s two halves and
`hidden * gelu(gate)` in one kernel (`video_models.geglu_kernel`), so the projection's full-width output is never
written to memory. The math is the same; the matrix product's summation order is Triton's instead of cuBLAS's, so
results differ by rounding, as between any two matrix-product kernels. The halves are rounded to the model's dtype
before the GELU, as the unfused path stores them.

`geglu_linear` is a torch custom op: `torch.compile` keeps it as one opaque call and CUDA graphs capture it. Only
half-precision inference on CUDA is supported (or in Triton's interpreter, `TRITON_INTERPRET=1`, for tests on the
CPU); anything else raises rather than running the unfused layer.
"""

from __future__ import annotations

import os

import torch
from diffusers.models.activations import GEGLU

# launch settings: BM x BN output tile per program (BN columns of each half), BK reduction columns per loop step,
# GROUP_M row blocks per group of programs, warps and software-pipelining stages per program
LAUNCH = {"BM": 128, "BN": 128, "BK": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}
DTYPES = (torch.float16, torch.bfloat16)


def geglu_linear_launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        settings: dict[str, int]) -> torch.Tensor:
    """`geglu_linear` with explicit launch settings (see `LAUNCH`); for the launch-settings search of
    benchmarks/geglu_linear.py."""
    import triton

    from video_models import geglu_kernel

    if x.dtype not in DTYPES or weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise ValueError(f"the fused GEGLU computes in float16 or bfloat16 with one dtype for the input, weight and "
                         f"bias; got {x.dtype}, {weight.dtype}, {None if bias is None else bias.dtype}")
    k = x.shape[-1]
    if weight.dim() != 2 or weight.shape[1] != k or weight.shape[0] % 2:
        raise ValueError(f"GEGLU weight of shape {tuple(weight.shape)} for inputs of width {k}: expected (2N, {k})")
    n = weight.shape[0] // 2
    rows = x.reshape(-1, k)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    out = x.new_empty(rows.shape[0], n)
    if rows.shape[0] == 0:  # no programs to launch (the kernel's loads wrap around the row count)
        return out.reshape(*x.shape[:-1], n)
    settings = dict(settings)
    block_m, block_n, block_k = settings.pop("BM"), settings.pop("BN"), settings.pop("BK")
    grid = (triton.cdiv(rows.shape[0], block_m) * triton.cdiv(n, block_n),)
    geglu_kernel.geglu_linear_kernel[grid](
        rows, weight, weight if bias is None else bias, out, rows.shape[0], n, k, rows.stride(0), weight.stride(0),
        out.stride(0), HAS_BIAS=bias is not None, EVEN_K=k % block_k == 0, BM=block_m, BN=block_n, BK=block_k,
        **settings)
    return out.reshape(*x.shape[:-1], n)


@torch.library.custom_op("vpp::geglu_linear", mutates_args=())
def geglu_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (..., K), weight (2N, K), bias (2N,) or None -> (..., N): `h * gelu(g)` for `h, g = F.linear(x, weight,
    bias).chunk(2, -1)`, in one kernel."""
    return geglu_linear_launch(x, weight, bias, LAUNCH)


@geglu_linear.register_fake
def _geglu_linear_shape(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0] // 2)


class FusedGEGLU(GEGLU):
    """A diffusers `GEGLU` whose projection and gating run as `geglu_linear` (same parameters, same state dict)."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if torch.is_grad_enabled() and (hidden_states.requires_grad or self.proj.weight.requires_grad):
            raise RuntimeError("the fused GEGLU has no backward pass: run the model under torch.no_grad() or "
                               "torch.inference_mode(), or turn it off (use_fused_geglu(model, False))")
        return geglu_linear(hidden_states, self.proj.weight, self.proj.bias)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_fused_geglu(model: torch.nn.Module, enabled: bool = True) -> int:
    """Turn the fused GEGLU on (or back off) for every diffusers `GEGLU` of `model`; returns how many layers it
    changed. The layers keep their parameters: only their class changes, so state dicts, optimisers and hooks are
    unaffected. Raises ValueError for layers outside CUDA or outside float16 / bfloat16, and ImportError without
    triton; compiled graphs of the model must be recompiled to see the change."""
    layers = [m for m in model.modules() if isinstance(m, GEGLU)]
    if not enabled:
        for layer in layers:
            layer.__class__ = GEGLU
        return len(layers)
    try:
        from video_models import geglu_kernel  # noqa: F401
    except ImportError as exc:
        raise ImportError("the fused GEGLU needs triton (it ships with torch's CUDA builds on Linux): pip install "
                          "triton, or leave the fused GEGLU off") from exc
    for layer in layers:
        weight = layer.proj.weight
        if weight.device.type != "cuda" and not _interpreted():
            raise ValueError(f"the fused GEGLU needs a CUDA device; a GEGLU layer is on {weight.device}")
        if weight.dtype not in DTYPES:
            raise ValueError(f"the fused GEGLU computes in float16 or bfloat16; a GEGLU layer is {weight.dtype}")
    for layer in layers:
        layer.__class__ = FusedGEGLU
    return len(layers)
