"""A Triton matrix product with the GEGLU applied before its output is written (used by `video_models.fused_geglu`).

diffusers' GEGLU projects to twice the feed-forward width and then computes `hidden * gelu(gate)` from the two
halves. At the SVD U-Net's 32 x 32 level the projection writes 32,768 x 2,560 half-precision values only for a second
kernel to read them back and write half as many: about 86 us per call at the memory's speed, 1.2 ms of a policy
chunk (docs/PERFORMANCE.md, session 18). No library matrix product can apply it in its epilogue, because every output
column needs one column of each half, which lie N columns apart. Here each program computes the same block of columns
of both halves, two accumulators side by side, and writes only the product.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def geglu_linear_kernel(x_ptr, w_ptr, b_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_om,
                        HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
                        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    """out[m, n] = h * gelu(g), h = x[m] . w[n] + b[n], g = x[m] . w[N + n] + b[N + n]; x (M, K), w (2N, K), both
    with unit column stride. h and g are rounded to the output's dtype before the GELU, as they are when a library
    product writes them for a separate GEGLU kernel to read (torch.compile's). Programs walk the output tiles in groups
    of GROUP_M row blocks, so a group's weight columns stay in the L2 cache."""
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BM)
    grid_n = tl.cdiv(N, BN)
    per_group = GROUP_M * grid_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m

    rows = pid_m * BM + tl.arange(0, BM)
    cols = pid_n * BN + tl.arange(0, BN)
    # loads wrap around the edges (always in bounds, no masks in the loop); only the store is masked. 64-bit
    # offsets: from about batch 64 of stage-2 training, M * N passes 2**31 at the 32 x 32 level
    rows_in = (rows % M).to(tl.int64)
    cols_in = (cols % N).to(tl.int64)
    ks = tl.arange(0, BK)
    x_ptrs = x_ptr + rows_in[:, None] * stride_xm + ks[None, :]
    h_ptrs = w_ptr + cols_in[None, :] * stride_wn + ks[:, None]
    g_ptrs = h_ptrs + N * stride_wn
    acc_h = tl.zeros((BM, BN), dtype=tl.float32)
    acc_g = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        if EVEN_K:
            a = tl.load(x_ptrs)
            wh = tl.load(h_ptrs)
            wg = tl.load(g_ptrs)
        else:
            k_in = ks < K - k0
            a = tl.load(x_ptrs, mask=k_in[None, :], other=0.0)
            wh = tl.load(h_ptrs, mask=k_in[:, None], other=0.0)
            wg = tl.load(g_ptrs, mask=k_in[:, None], other=0.0)
        acc_h = tl.dot(a, wh, acc_h)
        acc_g = tl.dot(a, wg, acc_g)
        x_ptrs += BK
        h_ptrs += BK
        g_ptrs += BK

    if HAS_BIAS:
        acc_h += tl.load(b_ptr + cols_in).to(tl.float32)[None, :]
        acc_g += tl.load(b_ptr + N + cols_in).to(tl.float32)[None, :]
    acc_h = acc_h.to(out_ptr.dtype.element_ty).to(tl.float32)
    acc_g = acc_g.to(out_ptr.dtype.element_ty).to(tl.float32)
    # exact (erf) GELU, as F.gelu's default
    out = acc_h * (0.5 * acc_g * (1.0 + tl.erf(acc_g * 0.7071067811865476)))
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    tl.store(out_ptr + rows_in[:, None] * stride_om + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)
