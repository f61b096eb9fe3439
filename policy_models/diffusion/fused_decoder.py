"""The AdaLN decoder's planned sampler steps in six Triton kernels per block (CUDA, inference, float32).

At batch 1 the ten DDIM steps of a chunk are bound by kernel latency, not by arithmetic: about fifteen kernels per
decoder block and step, a few microseconds each (docs/PERFORMANCE.md, session 18: 2.8 ms of the 23.4 ms chunk).
`planned_decoder` computes `DiffusionTransformer.decode_planned`'s decoder and action projection with the kernels of
`decoder_kernels`: per block two for the self-attention, two for the cross-attention and two for the MLP, then one for
the final norm and projection. The math is the same; the rounding differs as between any two matrix-product kernels.
Projections use TF32 unless torch's float32 matmul precision is "highest" (then full float32, like cuBLAS).

It is a torch custom op, so `torch.compile` keeps it as one opaque call and the whole-chunk CUDA graph captures its
kernels. Only inference in float32 on CUDA with Triton installed is supported; anything else raises.
"""

from __future__ import annotations

import torch

# per decoder block, in this order (see `planned_decoder_inputs`)
BLOCK_TENSORS = (
    "ln_1", "qkv_weight", "qkv_bias", "attn_proj", "ln3_weight", "ln3_bias", "cross_query_weight", "cross_query_bias",
    "cross_proj", "ln_2", "mlp_fc", "mlp_proj", "shift_msa", "scale_msa", "gate_msa", "shift_mlp", "scale_mlp",
    "gate_mlp", "cross_keys", "cross_values",
)
LN_EPS = 1e-5
# launch settings per kernel: BN output columns per program, BK columns of the reduction per loop step (capped by the
# padded input width), warps and software-pipelining stages per program; the fastest of a grid search for the ten
# steps at batch 1 on an H100 (docs/PERFORMANCE.md, session 19)
LAUNCH = {
    "projection": {"BN": 16, "BK": 512, "num_warps": 4, "num_stages": 1},
    "attention": {"BN": 16, "num_warps": 8, "num_stages": 1},
    "residual": {"BN": 16, "BK": 512, "num_warps": 2, "num_stages": 2},
    "hidden": {"BN": 16, "BK": 512, "num_warps": 4, "num_stages": 1},
    "action": {"BN": 16, "BK": 512, "num_warps": 4, "num_stages": 1},
}


def _block(n: int, least: int = 16) -> int:
    """The power of two >= n, at least `least` (16: the smallest tile `tl.dot` takes)."""
    return max(least, 1 << (n - 1).bit_length())


def _cdiv(n: int, d: int) -> int:
    return -(-n // d)


def _batch_stride(t: torch.Tensor) -> int:
    """Stride between batch elements of a (B or 1, 1, C) modulation: 0 when it is broadcast over the batch."""
    return 0 if t.shape[0] == 1 else t.stride(0)


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    """The kernels index rows by their strides (weights, modulations, keys and values) but read each row as one run
    of memory; compiled graphs may hand over other layouts."""
    if t.dim() == 2:
        return t.contiguous()
    return t if t.stride(-1) == 1 else t.contiguous()


def _matmul_precision() -> str:
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


@torch.library.custom_op("vpp::planned_decoder", mutates_args=())
def planned_decoder(x: torch.Tensor, blocks: list[torch.Tensor], final: list[torch.Tensor],
                    n_heads: int) -> torch.Tensor:
    """x (B, T, C): the embedded noisy actions; `blocks`: `BLOCK_TENSORS` for every decoder block in turn; `final`:
    the final norm's weight, the action projection's weight (A, C) and bias (A,) -> (B, T, A)."""
    from policy_models.diffusion import decoder_kernels as kernels

    x = x.contiguous()
    blocks = [_unit_last_stride(t) for t in blocks]
    final = [t.contiguous() for t in final]
    batch, tokens, width = x.shape
    head_dim = width // n_heads
    precision = _matmul_precision()
    per_block = len(BLOCK_TENSORS)
    for i in range(0, len(blocks), per_block):
        (ln_1, qkv_w, qkv_b, attn_proj, ln3_w, ln3_b, cross_q_w, cross_q_b, cross_proj, ln_2, mlp_fc, mlp_proj,
         shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp, cross_k, cross_v) = blocks[i : i + per_block]
        qkv = _ln_linear(kernels, "projection", x, ln_1, None, (shift_msa, scale_msa), qkv_w, qkv_b, precision)
        # (B, T, 3C): head h's queries, keys and values at columns h*Dh, C + h*Dh and 2C + h*Dh of each row
        after_self = _attention_residual(kernels, qkv, qkv.stride(1), qkv[..., width:], qkv[..., 2 * width:],
                                         (qkv.stride(0), head_dim, qkv.stride(1)), tokens, attn_proj, x, gate_msa,
                                         n_heads, precision)
        queries = _ln_linear(kernels, "projection", after_self, ln3_w, ln3_b, None, cross_q_w, cross_q_b, precision)
        after_cross = _attention_residual(kernels, queries, queries.stride(1), cross_k, cross_v,
                                          cross_k.stride()[:3], cross_k.shape[2], cross_proj, after_self, None,
                                          n_heads, precision)
        hidden = _ln_linear(kernels, "hidden", after_cross, ln_2, None, (shift_mlp, scale_mlp), mlp_fc, None,
                            precision, gelu=True)
        x = _linear_residual(kernels, hidden, mlp_proj, after_cross, gate_mlp, precision)
    ln_w, pred_w, pred_b = final
    return _ln_linear(kernels, "action", x, ln_w, None, None, pred_w, pred_b, precision)


@planned_decoder.register_fake
def _planned_decoder_shape(x: torch.Tensor, blocks: list[torch.Tensor], final: list[torch.Tensor],
                           n_heads: int) -> torch.Tensor:
    return x.new_empty(*x.shape[:2], final[1].shape[0])


def _launch(kernel: str, reduced: int) -> dict[str, int]:
    """`LAUNCH[kernel]`, with the reduction step no wider than the padded reduced dimension."""
    settings = dict(LAUNCH[kernel])
    settings["BK"] = min(settings["BK"], _block(reduced))
    return settings


def _ln_linear(kernels, kernel: str, x: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor | None,
               modulation: tuple[torch.Tensor, torch.Tensor] | None, weight: torch.Tensor, bias: torch.Tensor | None,
               precision: str, gelu: bool = False) -> torch.Tensor:
    """act(modulate(layer_norm(x)) @ weight^T (+ bias)); modulation: (shift, scale) or None."""
    batch, tokens, width = x.shape
    n = weight.shape[0]
    shift, scale = (ln_weight, ln_weight) if modulation is None else modulation
    settings = _launch(kernel, width)
    out = x.new_empty(batch, tokens, n)
    kernels.ln_linear_kernel[(batch, _cdiv(n, settings["BN"]))](
        x, ln_weight, ln_weight if ln_bias is None else ln_bias, shift, scale,
        0 if modulation is None else _batch_stride(shift), weight, weight if bias is None else bias, out,
        tokens, width, n, LN_EPS,
        HAS_LN_BIAS=ln_bias is not None, MODULATE=modulation is not None, HAS_BIAS=bias is not None, GELU=gelu,
        PREC=precision, BT=_block(tokens), BC=_block(width), **settings)
    return out


def _attention_residual(kernels, queries: torch.Tensor, query_row_stride: int, keys: torch.Tensor,
                        values: torch.Tensor, kv_strides: tuple[int, int, int], n_keys: int, weight: torch.Tensor,
                        base: torch.Tensor, gate: torch.Tensor | None, n_heads: int, precision: str) -> torch.Tensor:
    """base + gate * (causal_attention(queries, keys, values) @ weight^T) (no gate: without the factor). Keys and
    values are addressed by (batch, head, position) strides `kv_strides`, queries by rows of heads side by side."""
    batch, tokens, width = base.shape
    settings = LAUNCH["attention"]
    out = torch.empty_like(base)
    kernels.attention_residual_kernel[(batch, _cdiv(width, settings["BN"]))](
        queries, queries.stride(0), query_row_stride, keys, values, *kv_strides, n_keys,
        weight, base, base if gate is None else gate, 0 if gate is None else _batch_stride(gate), out,
        tokens, width, n_heads, width // n_heads, (width // n_heads) ** -0.5,
        HAS_GATE=gate is not None, PREC=precision, BH=_block(n_heads, 1), BT=_block(tokens),
        BD=_block(width // n_heads), **settings)
    return out


def _linear_residual(kernels, inp: torch.Tensor, weight: torch.Tensor, base: torch.Tensor, gate: torch.Tensor | None,
                     precision: str) -> torch.Tensor:
    """base + gate * (inp @ weight^T) (no gate: base + inp @ weight^T)."""
    batch, tokens, k = inp.shape
    width = weight.shape[0]
    settings = _launch("residual", k)
    out = torch.empty_like(base)
    kernels.linear_residual_kernel[(batch, _cdiv(width, settings["BN"]))](
        inp, weight, base, base if gate is None else gate, 0 if gate is None else _batch_stride(gate), out,
        tokens, k, width, HAS_GATE=gate is not None, PREC=precision, BT=_block(tokens), **settings)
    return out


def unsupported_layout(dit) -> str | None:
    """Why the kernels cannot compute this decoder, or None: they compute the released configuration's bias-free
    output projections, MLP and weight-only ln_1 / ln_2 / final norm (`bias=False`)."""
    biased = [name for name, module in dit.decoder.named_modules()
              if name.endswith(("c_proj", "c_fc", "ln_1", "ln_2")) and getattr(module, "bias", None) is not None]
    if dit.decoder.ln.bias is not None:
        biased.append("ln")
    if biased:
        return f"the fused decoder needs a DiT built with bias=False; these layers have a bias: {biased}"
    return None


def planned_decoder_inputs(dit, plan, step: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The `blocks` and `final` arguments of `planned_decoder` for step `step` of `plan` (a `DecoderPlan`)."""
    blocks: list[torch.Tensor] = []
    for block, modulation, (qkv_w, qkv_b), (keys, values) in zip(
            dit.decoder.blocks, plan.modulations[step], plan.qkv, plan.cross_kv):
        blocks += [block.ln_1.weight, qkv_w, qkv_b, block.attn.c_proj.weight, block.ln3.weight, block.ln3.bias,
                   block.cross_att.query.weight, block.cross_att.query.bias, block.cross_att.c_proj.weight,
                   block.ln_2.weight, block.mlp.c_fc.weight, block.mlp.c_proj.weight, *modulation, keys, values]
    return blocks, [dit.decoder.ln.weight, dit.action_pred.weight, dit.action_pred.bias]
