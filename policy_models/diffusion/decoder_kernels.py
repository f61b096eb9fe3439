"""Triton kernels for the action head's AdaLN decoder at inference (used by `policy_models.diffusion.fused_decoder`).

At batch 1 a sampler step is ten action tokens of 384 channels: every matrix product and attention call takes a few
microseconds no matter how little it computes, and a decoder block took about fifteen of them. These kernels do a
block's work in six, each split into programs over blocks of output columns that need no other program's results:

* `ln_linear_kernel`: layer norm (and AdaLN modulation), `@ W^T (+ bias)` (and GELU): the query/key/value
  projections, the cross-attention's queries, the MLP's first layer, and the final norm with the action projection;
* `attention_residual_kernel`: causal attention of all heads, its output projection and the gated residual;
* `linear_residual_kernel`: `base + gate * (inp @ W^T)`, the MLP's second layer.

Every program reads whole rows of its input, so a layer norm never needs another program's statistics, and recomputes
the attention of all heads (ten tokens: far less work than reading its block of the projection). Sizes are
padded to powers of two (at least 16, for `tl.dot`) and masked. Matrix products of the projections use the
precision given as `PREC` ("tf32" or "ieee"); the attention scores and the weighted sum of values use "ieee".
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _row_stats(x_ptr, T, C, eps, BT: tl.constexpr, BC: tl.constexpr):
    """Mean and 1/sqrt(var + eps) of each of the T rows of a (T, C) row-major matrix (biased variance, as
    `F.layer_norm`)."""
    t = tl.arange(0, BT)[:, None]
    c = tl.arange(0, BC)[None, :]
    mask = (t < T) & (c < C)
    x = tl.load(x_ptr + t * C + c, mask=mask, other=0.0)
    mean = tl.sum(x, axis=1) / C
    centred = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(centred * centred, axis=1) / C
    return mean, 1.0 / tl.sqrt(var + eps)


@triton.jit
def _normalized_chunk(x_ptr, T, C, k0, mean, rstd, ln_w_ptr, ln_b_ptr, shift_ptr, scale_ptr,
                      HAS_LN_BIAS: tl.constexpr, MODULATE: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    """Columns k0 .. k0 + BK of layer_norm(x) (* w (+ b)), modulated as `shift + x * scale`; padding is zero."""
    t = tl.arange(0, BT)[:, None]
    k = k0 + tl.arange(0, BK)
    kmask = k < C
    mask = (t < T) & kmask[None, :]
    x = tl.load(x_ptr + t * C + k[None, :], mask=mask, other=0.0)
    xn = (x - mean[:, None]) * rstd[:, None] * tl.load(ln_w_ptr + k, mask=kmask, other=0.0)[None, :]
    if HAS_LN_BIAS:
        xn = xn + tl.load(ln_b_ptr + k, mask=kmask, other=0.0)[None, :]
    if MODULATE:
        shift = tl.load(shift_ptr + k, mask=kmask, other=0.0)[None, :]
        xn = shift + xn * tl.load(scale_ptr + k, mask=kmask, other=0.0)[None, :]
    return tl.where(mask, xn, 0.0)


@triton.jit
def _weight_tile_t(w_ptr, row0, n_rows, K, k0, BK: tl.constexpr, BN: tl.constexpr):
    """Rows row0 .. row0 + n_rows of a (*, K) row-major weight, columns k0 .. k0 + BK, transposed to (BK, BN)."""
    n = tl.arange(0, BN)
    k = k0 + tl.arange(0, BK)
    mask = (n[None, :] < n_rows) & (k[:, None] < K)
    return tl.load(w_ptr + (row0 + n)[None, :] * K + k[:, None], mask=mask, other=0.0)


@triton.jit
def _store_gated_residual(acc, out_ptr, base_ptr, gate_ptr, gate_bstride, b, n0, T, N,
                          HAS_GATE: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr):
    """out[b, :, n0:n0 + BN] = base[b, :, n0:n0 + BN] + gate[b, n0:n0 + BN] * acc (no gate: + acc), for (B, T, N)
    row-major `out` and `base`; the epilogue of both residual kernels."""
    t = tl.arange(0, BT)[:, None]
    cols = n0 + tl.arange(0, BN)
    cmask = cols < N
    if HAS_GATE:
        acc = acc * tl.load(gate_ptr + b * gate_bstride + cols, mask=cmask, other=0.0)[None, :]
    mask = (t < T) & cmask[None, :]
    offsets = b * T * N + t * N + cols[None, :]
    tl.store(out_ptr + offsets, tl.load(base_ptr + offsets, mask=mask, other=0.0) + acc, mask=mask)


@triton.jit
def ln_linear_kernel(x_ptr, ln_w_ptr, ln_b_ptr, shift_ptr, scale_ptr, mod_bstride, w_ptr, bias_ptr, out_ptr,
                     T, C, N, eps,
                     HAS_LN_BIAS: tl.constexpr, MODULATE: tl.constexpr, HAS_BIAS: tl.constexpr,
                     GELU: tl.constexpr, PREC: tl.constexpr,
                     BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr):
    """out[b] = act(modulate(layer_norm(x[b])) @ W[n0:n0 + BN]^T (+ bias)) for x (B, T, C), W (N, C)."""
    b = tl.program_id(0)
    n0 = tl.program_id(1) * BN
    x_row = x_ptr + b * T * C
    mean, rstd = _row_stats(x_row, T, C, eps, BT, BC)
    acc = tl.zeros((BT, BN), dtype=tl.float32)
    for k0 in range(0, C, BK):
        xk = _normalized_chunk(x_row, T, C, k0, mean, rstd, ln_w_ptr, ln_b_ptr, shift_ptr + b * mod_bstride,
                               scale_ptr + b * mod_bstride, HAS_LN_BIAS, MODULATE, BT, BK)
        acc = tl.dot(xk, _weight_tile_t(w_ptr, n0, N - n0, C, k0, BK, BN), acc, input_precision=PREC)
    n = n0 + tl.arange(0, BN)
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + n, mask=n < N, other=0.0)[None, :]
    if GELU:  # exact (erf) GELU, as nn.GELU()
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    t = tl.arange(0, BT)[:, None]
    tl.store(out_ptr + b * T * N + t * N + n[None, :], acc, mask=(t < T) & (n[None, :] < N))


@triton.jit
def linear_residual_kernel(inp_ptr, w_ptr, base_ptr, gate_ptr, gate_bstride, out_ptr, T, K, N,
                           HAS_GATE: tl.constexpr, PREC: tl.constexpr,
                           BT: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr):
    """out[b] = base[b] + gate[b] * (inp[b] @ W[n0:n0 + BN]^T) for inp (B, T, K), W (N, K), base (B, T, N)."""
    b = tl.program_id(0)
    n0 = tl.program_id(1) * BN
    t = tl.arange(0, BT)[:, None]
    acc = tl.zeros((BT, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        k = k0 + tl.arange(0, BK)[None, :]
        a = tl.load(inp_ptr + b * T * K + t * K + k, mask=(t < T) & (k < K), other=0.0)
        acc = tl.dot(a, _weight_tile_t(w_ptr, n0, N - n0, K, k0, BK, BN), acc, input_precision=PREC)
    _store_gated_residual(acc, out_ptr, base_ptr, gate_ptr, gate_bstride, b, n0, T, N, HAS_GATE, BT, BN)


@triton.jit
def attention_residual_kernel(q_ptr, q_bstride, q_tstride, k_ptr, v_ptr, kv_bstride, kv_hstride, kv_sstride, S,
                              w_ptr, base_ptr, gate_ptr, gate_bstride, out_ptr, T, C, H, Dh, sm_scale,
                              HAS_GATE: tl.constexpr, PREC: tl.constexpr, BH: tl.constexpr, BT: tl.constexpr,
                              BD: tl.constexpr, BN: tl.constexpr):
    """out[b] = base[b] + gate[b] * (attention(q[b], k[b], v[b]) @ W[n0:n0 + BN]^T), all H heads at once.

    Causal attention, top-left aligned: query t sees keys 0 .. min(t, S - 1), so only the first T keys are read.
    Head h of the queries is columns h*Dh .. (h+1)*Dh of row t (q_ptr + b*q_bstride + t*q_tstride); its keys and
    values are at b*kv_bstride + h*kv_hstride + s*kv_sstride. Every program recomputes the (small) attention of all
    heads and applies its block of the output projection, W (C, C): no other program's results are needed.
    """
    b = tl.program_id(0)
    n0 = tl.program_id(1) * BN
    h = tl.arange(0, BH)[:, None, None]
    row = tl.arange(0, BT)[None, :, None]
    d = tl.arange(0, BD)[None, None, :]
    head_mask = (h < H) & (d < Dh)
    q = tl.load(q_ptr + b * q_bstride + row * q_tstride + h * Dh + d, mask=head_mask & (row < T), other=0.0)
    kv_offsets = b * kv_bstride + h * kv_hstride + row * kv_sstride + d
    kv_mask = head_mask & (row < S) & (row < T)
    keys = tl.load(k_ptr + kv_offsets, mask=kv_mask, other=0.0)
    values = tl.load(v_ptr + kv_offsets, mask=kv_mask, other=0.0)
    scores = tl.dot(q, tl.permute(keys, (0, 2, 1)), input_precision="ieee") * sm_scale  # (BH, BT, BT)
    key = tl.arange(0, BT)[None, None, :]
    scores = tl.where((key <= row) & (key < S), scores, float("-inf"))
    p = tl.exp(scores - tl.max(scores, axis=2)[:, :, None])
    attended = tl.dot(p, values, input_precision="ieee") / tl.sum(p, axis=2)[:, :, None]  # (BH, BT, BD)
    # W[n0 + n, h*Dh + d] as (BH, BD, BN): the output projection summed over heads
    n = tl.arange(0, BN)[None, None, :]
    dw = tl.arange(0, BD)[None, :, None]
    w = tl.load(w_ptr + (n0 + n) * C + h * Dh + dw, mask=(h < H) & (dw < Dh) & (n0 + n < C), other=0.0)
    acc = tl.sum(tl.dot(attended, w, input_precision=PREC), axis=0)  # (BT, BN)
    _store_gated_residual(acc, out_ptr, base_ptr, gate_ptr, gate_bstride, b, n0, T, C, HAS_GATE, BT, BN)
