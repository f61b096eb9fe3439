"""The Video Former: per-frame Perceiver resampler with interleaved temporal self-attention (vpp_reference §6.5).

Names equal the original (`latents`, `time_pos_emb`, `goal_emb.{0,2}`, `layers.L.0` perceiver attention,
`layers.L.1` temporal attention, `layers.L.2` feed-forward, `norm`), so the state_dict under `Video_Former.` matches
vpp_reference §11.3 key for key and in order.

Input: (B, F, N, C) features (F frames, N tokens per frame over all cameras, C feature channels).
Output: (B, F * Q, dim) tokens, token index = frame * Q + query.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn


def feed_forward_layer(dim: int, mult: int = 4, activation: str = "gelu") -> nn.Sequential:
    """LayerNorm -> Linear(dim, mult*dim, no bias) -> GELU -> Linear(mult*dim, dim, no bias)."""
    if activation != "gelu":
        raise ValueError(f"only the 'gelu' activation is supported, got {activation!r}")
    inner_dim = int(dim * mult)
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, inner_dim, bias=False), nn.GELU(), nn.Linear(inner_dim, dim, bias=False)
    )


class PerceiverAttentionLayer(nn.Module):
    """Latents attend to [media ; latents] (both layer-normed); no biases; explicit stabilised softmax.

    `use_sdpa` (off by default; `use_sdpa_perceiver` sets it for a whole Video Former) computes the same attention with
    `F.scaled_dot_product_attention`, one kernel that reads the heads of the key and value projections in place. The
    explicit path, the original's, materialises the scores and copies the keys and values into the head-major layout
    of its two batched products. Same math, other rounding: the subtracted row maximum leaves the softmax unchanged.
    Timed on an H100 (docs/PERFORMANCE.md, session 30): 2.3% faster stage-2 training steps at batch 32, so the
    trainer's full-size configs turn it on (`training.sdpa_perceiver`); 0.05-0.09 ms slower in the chunk at batch 1,
    so inference keeps the explicit path."""

    def __init__(self, *, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        self.dim_head = dim_head
        self.use_sdpa = False
        inner_dim = dim_head * heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_k = nn.Linear(dim, inner_dim, bias=False)
        self.to_v = nn.Linear(dim, inner_dim, bias=False)
        self.to_out = nn.Linear(inner_dim, dim, bias=False)

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """features (b, n, dim), latents (b, q, dim) -> (b, q, dim)."""
        x = self.norm_media(features)
        latents = self.norm_latents(latents)
        h = self.heads
        q = self.to_q(latents)
        kv_input = torch.cat((x, latents), dim=-2)
        k = self.to_k(kv_input)
        v = self.to_v(kv_input)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=h) for t in (q, k, v))
        if self.use_sdpa:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
            return self.to_out(rearrange(out, "b h n d -> b n (h d)"))
        q = q * self.scale
        sim = torch.einsum("... i d, ... j d -> ... i j", q, k)
        sim = sim - sim.amax(dim=-1, keepdim=True).detach()
        alphas = sim.softmax(dim=-1)
        out = torch.einsum("... i j, ... j d -> ... i d", alphas, v)
        out = rearrange(out, "b h n d -> b n (h d)")
        return self.to_out(out)


class Attention(nn.Module):
    """timm-style self-attention: fused qkv (bias), head dim dim/num_heads, output proj (bias). The original passes an
    additive all-ones float mask, which does not change softmax; it is omitted."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class _VideoFormerBase(nn.Module):
    def __init__(self, *, dim, depth, condition_dim, dim_head, heads, num_latents, num_frame, num_time_embeds,
                 ff_mult, use_temporal):
        super().__init__()
        if num_latents % num_frame:
            raise ValueError(f"num_latents ({num_latents}) must be a multiple of num_frame ({num_frame})")
        self.dim = dim
        self.num_frame = num_frame
        self.num_queries = num_latents // num_frame
        self.use_temporal = use_temporal
        self.goal_emb = nn.Sequential(nn.Linear(condition_dim, dim * 2), nn.GELU(), nn.Linear(dim * 2, dim))
        self.latents = nn.Parameter(torch.randn(num_frame, self.num_queries, dim))
        self.time_pos_emb = nn.Parameter(torch.randn(num_time_embeds, 1, dim))
        self.layers = nn.ModuleList([])
        for _ in range(depth):
            parts = [PerceiverAttentionLayer(dim=dim, dim_head=dim_head, heads=heads)]
            if use_temporal:
                parts.append(Attention(dim, num_heads=heads, qkv_bias=True))
            parts.append(feed_forward_layer(dim=dim, mult=ff_mult))
            self.layers.append(nn.ModuleList(parts))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x_f: torch.Tensor) -> torch.Tensor:
        """x_f (B, F, N, condition_dim) -> (B, F * num_queries, dim)."""
        if x_f.dim() != 4:
            raise ValueError(f"Video Former expects (B, frames, tokens, channels), got shape {tuple(x_f.shape)}")
        b, T = x_f.shape[:2]
        if T > self.time_pos_emb.shape[0] or T != self.num_frame:
            raise ValueError(
                f"Video Former was built for {self.num_frame} frames ({self.time_pos_emb.shape[0]} time embeddings), "
                f"got {T}"
            )
        x_f = self.goal_emb(x_f)
        x_f = x_f + self.time_pos_emb[:T].unsqueeze(0)
        x_f = rearrange(x_f, "b T n d -> (b T) n d")
        latents = repeat(self.latents, "T q d -> (b T) q d", b=b)
        for layer in self.layers:
            attn, ffw = layer[0], layer[-1]
            latents = latents + attn(x_f, latents)
            if self.use_temporal:
                latents = rearrange(latents, "(b T) q d -> (b q) T d", b=b)
                latents = latents + layer[1](latents)
                latents = rearrange(latents, "(b q) T d -> (b T) q d", b=b)
            latents = latents + ffw(latents)
        latents = rearrange(latents, "(b T) q d -> b (T q) d", b=b)
        return self.norm(latents)


class Video_Former_3D(_VideoFormerBase):  # noqa: N801 - original class name
    """Perceiver cross-attention per frame + temporal self-attention across frames for each query slot."""

    def __init__(self, *, dim=384, depth=6, condition_dim=2560, dim_head=64, heads=8, num_latents=224, num_frame=16,
                 num_time_embeds=16, ff_mult=4):
        super().__init__(dim=dim, depth=depth, condition_dim=condition_dim, dim_head=dim_head, heads=heads,
                         num_latents=num_latents, num_frame=num_frame, num_time_embeds=num_time_embeds,
                         ff_mult=ff_mult, use_temporal=True)


class Video_Former_2D(_VideoFormerBase):  # noqa: N801 - original class name
    """As the 3D variant without the temporal attention (layers.L.0 perceiver, layers.L.1 feed-forward).
    [INFERRED] from the reference ("same without the temporal attention"); no released weights use it."""

    def __init__(self, *, dim=384, depth=6, condition_dim=2560, dim_head=64, heads=8, num_latents=224, num_frame=16,
                 num_time_embeds=16, ff_mult=4):
        super().__init__(dim=dim, depth=depth, condition_dim=condition_dim, dim_head=dim_head, heads=heads,
                         num_latents=num_latents, num_frame=num_frame, num_time_embeds=num_time_embeds,
                         ff_mult=ff_mult, use_temporal=False)


def use_sdpa_perceiver(former: nn.Module, enabled: bool = True) -> None:
    """Switch every Perceiver attention of `former` between `F.scaled_dot_product_attention` (True) and the
    original's explicit softmax (False); see `PerceiverAttentionLayer`. Parameters and state-dict keys stay as they
    are; a compiled pass recompiles, since dynamo guards the attribute."""
    layers = [m for m in former.modules() if isinstance(m, PerceiverAttentionLayer)]
    if not layers:
        raise ValueError(f"{type(former).__name__} has no Perceiver attention layers to switch")
    for layer in layers:
        layer.use_sdpa = enabled


def build_video_former(kind: str, **kwargs) -> nn.Module:
    if kind == "3d":
        return Video_Former_3D(**kwargs)
    if kind == "2d":
        return Video_Former_2D(**kwargs)
    raise ValueError(f"unknown former type {kind!r}; expected '3d' or '2d'")
