"""The goal-conditioned diffusion transformer action head (MDT-style `DiffusionTransformer`, vpp_reference §6.7).

Module and parameter names equal the original's, so the policy's state_dict under `model.inner_model.` matches
vpp_reference §11.4 key for key and in order. Behaviour the released weights depend on (§12.1) is reproduced on
purpose:

* the decoder's cross-attention is called with `is_causal=True` on a 10 x 225 (query x key) problem, i.e. PyTorch's
  *top-left* aligned causal mask: action token i sees context tokens 0..i only;
* AdaLN modulation is `shift + x * scale` (not `x * (1 + scale)`), the modulation Linear is not zero-initialised, and
  the cross-attention sub-layer has neither gate nor modulation;
* `pos_emb` exists (and is saved) but is never added; `goal_emb` exists but the goal goes through `lang_emb`;
* ln_1 / ln_2 / final ln are weight-only LayerNorms (eps 1e-5), ln3 is a full `nn.LayerNorm`.

`encode` (goal + visual tokens [+ proprio] -> context) does not depend on sigma; `decode` runs the AdaLN decoder. The
split lets the sampler run the encoder once per chunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from policy_models.diffusion.fused_decoder import planned_decoder, planned_decoder_inputs

# shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp of one decoder block
Modulation = tuple[torch.Tensor, ...]


class DecoderPlan(NamedTuple):
    """What every sampler step of the decoder shares, computed once per action chunk: per step and block the AdaLN
    modulation of the step's sigma (the schedule is known before the first step), per block the fused query/key/value
    projection, and per block the cross-attention keys and values of the encoder's context (sigma-independent)."""

    modulations: list[list[Modulation]]
    qkv: list[tuple[torch.Tensor, torch.Tensor]]
    cross_kv: list[tuple[torch.Tensor, torch.Tensor]]


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (bias=False here: weight only), eps 1e-5."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class SinusoidalPosEmb(nn.Module):
    """[sin(x * f_k), cos(x * f_k)], f_k = exp(-k * ln(10000) / (dim/2 - 1)), k = 0 .. dim/2 - 1."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half_dim = self.dim // 2
        emb = math.log(10000) / (half_dim - 1)
        emb = torch.exp(torch.arange(half_dim, device=x.device) * -emb)
        emb = x[:, None] * emb[None, :]
        return torch.cat((emb.sin(), emb.cos()), dim=-1)


class Attention(nn.Module):
    """Multi-head attention with separate key/query/value projections (bias) and an output c_proj (bias=`bias`).
    With `context`, queries come from x and keys/values from the context. `causal` is passed to SDPA as is_causal
    (top-left aligned for non-square problems)."""

    def __init__(self, n_embd: int, n_heads: int, attn_pdrop: float, resid_pdrop: float, causal: bool = False,
                 bias: bool = False):
        super().__init__()
        if n_embd % n_heads:
            raise ValueError(f"embed dim {n_embd} is not divisible by the number of heads {n_heads}")
        self.key = nn.Linear(n_embd, n_embd)
        self.query = nn.Linear(n_embd, n_embd)
        self.value = nn.Linear(n_embd, n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.attn_dropout = nn.Dropout(attn_pdrop)
        self.resid_dropout = nn.Dropout(resid_pdrop)
        self.n_head = n_heads
        self.n_embd = n_embd
        self.causal = causal

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, heads, N, C / heads)."""
        return t.view(t.shape[0], -1, self.n_head, self.n_embd // self.n_head).transpose(1, 2)

    def project_kv(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of `src` in head layout. A fixed context's can be computed once and attended many times."""
        return self._split_heads(self.key(src)), self._split_heads(self.value(src))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Projected queries (B, T, C) attend to keys and values in head layout; output projection and dropout."""
        B, T, C = q.shape
        y = F.scaled_dot_product_attention(
            self._split_heads(q), k, v, attn_mask=None, dropout_p=self.attn_dropout.p if self.training else 0.0,
            is_causal=self.causal,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        k, v = self.project_kv(x if context is None else context)
        return self.attend(self.query(x), k, v)

    def fused_qkv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight (3C, C) and bias (3C,) of the query, key and value projections stacked: one matrix product gives
        all three, which saves two small kernels per self-attention in the sampler's launch-bound steps."""
        return (torch.cat([self.query.weight, self.key.weight, self.value.weight]),
                torch.cat([self.query.bias, self.key.bias, self.value.bias]))

    def self_attend_fused(self, x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor) -> torch.Tensor:
        """Self-attention of x with the `fused_qkv` projection: the same products as `forward(x)`."""
        q, k, v = F.linear(x, qkv_weight, qkv_bias).chunk(3, dim=-1)
        return self.attend(q, self._split_heads(k), self._split_heads(v))


class MLP(nn.Module):
    def __init__(self, n_embd: int, bias: bool, dropout: float = 0.0):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm encoder block: x + attn(ln_1 x); x + mlp(ln_2 x)."""

    def __init__(self, n_embd, n_heads, attn_pdrop, resid_pdrop, mlp_pdrop, causal=False, bias=False):
        super().__init__()
        self.ln_1 = LayerNorm(n_embd, bias=bias)
        self.attn = Attention(n_embd, n_heads, attn_pdrop, resid_pdrop, causal=causal, bias=bias)
        self.ln_2 = LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, bias, mlp_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The original's modulation: shift + x * scale (NOT x * (1 + scale))."""
    return shift + (x * scale)


class AdaLNZero(nn.Module):
    """SiLU -> Linear(cond, 6 * hidden); the zero-init of the DiT paper is *not* applied (as in the original)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, c: torch.Tensor):
        # shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
        return self.modulation(c).chunk(6, dim=-1)


class ConditionedBlock(nn.Module):
    """Decoder block: AdaLN-modulated causal self-attention, (causal, top-left) cross-attention without modulation or
    gate, AdaLN-modulated MLP."""

    def __init__(self, n_embd, n_heads, attn_pdrop, resid_pdrop, mlp_pdrop, causal=True, bias=False):
        super().__init__()
        self.ln_1 = LayerNorm(n_embd, bias=bias)
        self.attn = Attention(n_embd, n_heads, attn_pdrop, resid_pdrop, causal=causal, bias=bias)
        self.cross_att = Attention(n_embd, n_heads, attn_pdrop, resid_pdrop, causal=causal, bias=bias)
        self.ln3 = nn.LayerNorm(n_embd)
        self.ln_2 = LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, bias, mlp_pdrop)
        self.adaLN_zero = AdaLNZero(n_embd)

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        cross_kv = None if context is None else self.cross_att.project_kv(context)
        return self.modulated(x, self.adaLN_zero(c), self.attn, cross_kv)

    def forward_planned(self, x: torch.Tensor, modulation: Modulation, qkv: tuple[torch.Tensor, torch.Tensor],
                        cross_kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """`forward` with the step's modulation, the fused self-attention projection and the context's keys and
        values computed beforehand (`DiffusionTransformer.plan_decoding`)."""
        return self.modulated(x, modulation, lambda h: self.attn.self_attend_fused(h, *qkv), cross_kv)

    def modulated(self, x: torch.Tensor, modulation: Modulation, self_attention: Callable[[torch.Tensor], torch.Tensor],
                  cross_kv: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation
        x = x + gate_msa * self_attention(modulate(self.ln_1(x), shift_msa, scale_msa))
        if cross_kv is not None:
            x = x + self.cross_att.attend(self.cross_att.query(self.ln3(x)), *cross_kv)
        x = x + gate_mlp * self.mlp(modulate(self.ln_2(x), shift_mlp, scale_mlp))
        return x


class TransformerEncoder(nn.Module):
    def __init__(self, embed_dim, n_heads, n_layers, attn_pdrop, resid_pdrop, mlp_pdrop, bias=False):
        super().__init__()
        self.blocks = nn.Sequential(
            *[Block(embed_dim, n_heads, attn_pdrop, resid_pdrop, mlp_pdrop, causal=False, bias=bias)
              for _ in range(n_layers)]
        )
        self.ln = LayerNorm(embed_dim, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.blocks:
            x = layer(x)
        return self.ln(x)


class TransformerFiLMDecoder(nn.Module):
    def __init__(self, embed_dim, n_heads, n_layers, attn_pdrop, resid_pdrop, mlp_pdrop, bias=False):
        super().__init__()
        self.blocks = nn.Sequential(
            *[ConditionedBlock(embed_dim, n_heads, attn_pdrop, resid_pdrop, mlp_pdrop, causal=True, bias=bias)
              for _ in range(n_layers)]
        )
        self.ln = LayerNorm(embed_dim, bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.blocks:
            x = layer(x, c, context)
        return self.ln(x)

    def forward_planned(self, x: torch.Tensor, plan: DecoderPlan, step: int) -> torch.Tensor:
        for layer, modulation, qkv, cross_kv in zip(self.blocks, plan.modulations[step], plan.qkv, plan.cross_kv):
            x = layer.forward_planned(x, modulation, qkv, cross_kv)
        return self.ln(x)


class DiffusionTransformer(nn.Module):
    """Encoder over [goal token, visual tokens (, proprio token)], AdaLN decoder over the noisy action tokens.

    Args mirror the original's fixed values for VPP: embed_dim 384, 4 + 4 layers, 8 heads, dropouts 0.3 / 0.1 / 0.05,
    goal_dim 512, proprio_dim 8 (CALVIN, unused) or the robot state size.
    """

    def __init__(
        self,
        obs_dim: int = 384,
        goal_dim: int = 512,
        action_dim: int = 7,
        proprio_dim: int = 8,
        embed_dim: int = 384,
        n_enc_layers: int = 4,
        n_dec_layers: int = 4,
        n_heads: int = 8,
        num_tokens: int = 224,
        goal_seq_len: int = 1,
        action_seq_len: int = 10,
        embed_pdrop: float = 0.0,
        attn_pdrop: float = 0.3,
        resid_pdrop: float = 0.1,
        mlp_pdrop: float = 0.05,
        bias: bool = False,
    ):
        super().__init__()
        seq_size = goal_seq_len + num_tokens + action_seq_len
        self.tok_emb = nn.Linear(obs_dim, embed_dim)
        hidden = embed_dim * 2
        self.goal_emb = nn.Sequential(nn.Linear(goal_dim, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))
        self.lang_emb = nn.Sequential(nn.Linear(goal_dim, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))
        # registered before the sub-modules in the original too; never added to any input (vpp_reference §12.1.3)
        self.pos_emb = nn.Parameter(torch.zeros(1, seq_size, embed_dim))
        self.drop = nn.Dropout(embed_pdrop)
        drops = (attn_pdrop, resid_pdrop, mlp_pdrop)
        self.encoder = TransformerEncoder(embed_dim, n_heads, n_enc_layers, *drops, bias)
        self.decoder = TransformerFiLMDecoder(embed_dim, n_heads, n_dec_layers, *drops, bias)
        self.proprio_emb = nn.Sequential(nn.Linear(proprio_dim, hidden), nn.Mish(), nn.Linear(hidden, embed_dim))
        self.sigma_emb = nn.Sequential(
            SinusoidalPosEmb(embed_dim), nn.Linear(embed_dim, hidden), nn.Mish(), nn.Linear(hidden, embed_dim)
        )
        self.action_emb = nn.Linear(action_dim, embed_dim)
        self.action_pred = nn.Linear(embed_dim, action_dim)
        self.embed_dim = embed_dim
        self.action_dim = action_dim
        self.goal_dim = goal_dim
        # decode_planned through the Triton kernels of fused_decoder (VPPPolicy.use_fused_decoder sets it)
        self.fused_decoding = False
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            torch.nn.init.zeros_(module.bias)
            torch.nn.init.ones_(module.weight)
        elif isinstance(module, DiffusionTransformer):
            torch.nn.init.normal_(module.pos_emb, mean=0.0, std=0.02)

    def encode(self, tokens: torch.Tensor, goal: torch.Tensor, proprio: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, N, obs_dim), goal (B, 1, goal_dim) or (B, goal_dim), proprio (B, 1, proprio_dim) or
        (B, proprio_dim) or None -> context (B, 1 + N (+1), embed_dim)."""
        if goal.dim() == 2:
            goal = goal.unsqueeze(1)
        parts = [self.drop(self.lang_emb(goal)), self.drop(self.tok_emb(tokens))]
        if proprio is not None:
            if proprio.dim() == 2:
                proprio = proprio.unsqueeze(1)
            parts.append(self.drop(self.proprio_emb(proprio)))
        return self.encoder(torch.cat(parts, dim=1))

    def sigma_embedding(self, sigma: torch.Tensor) -> torch.Tensor:
        """sigma (B,) -> (B, 1, embed_dim) from c_noise = ln(sigma) / 4."""
        return self.sigma_emb((sigma.log() / 4).unsqueeze(-1))

    def plan_decoding(self, context: torch.Tensor, sigmas: torch.Tensor) -> DecoderPlan:
        """The work of `decode` that depends neither on the noisy actions nor on earlier steps, for a sampler that
        calls `decode` on one `context` with the sigmas (n,), one per step, for every batch element. A sampler step
        at batch 1 is launch-bound: this leaves it the action tokens' own work, and saves about 20 small kernels a
        step (the same math; the matrix products differ only in how many rows they take at once)."""
        emb = self.sigma_embedding(sigmas)  # (n, 1, D): each step's, broadcast over the batch
        per_block = [block.adaLN_zero(emb) for block in self.decoder.blocks]
        modulations = [[tuple(m[i : i + 1] for m in chunks) for chunks in per_block] for i in range(len(sigmas))]
        return DecoderPlan(
            modulations=modulations,
            qkv=[block.attn.fused_qkv() for block in self.decoder.blocks],
            cross_kv=[block.cross_att.project_kv(context) for block in self.decoder.blocks],
        )

    def decode_planned(self, plan: DecoderPlan, step: int, actions: torch.Tensor) -> torch.Tensor:
        """`decode(context, actions, sigmas[step])` for the context and sigmas of `plan`; with `fused_decoding` set,
        the decoder and the action projection run as the Triton kernels of `fused_decoder` (CUDA inference)."""
        x = self.drop(self.action_emb(actions))
        if self.fused_decoding:
            if self.training or not x.is_cuda or x.dtype != torch.float32:
                raise RuntimeError("the fused decoder runs float32 inference on CUDA only (set fused_decoding = False "
                                   f"for {'training' if self.training else f'{x.dtype} on {x.device}'})")
            return planned_decoder(x, *planned_decoder_inputs(self, plan, step), self.decoder.blocks[0].attn.n_head)
        return self.action_pred(self.decoder.forward_planned(x, plan, step))

    def decode(self, context: torch.Tensor, actions: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """context (B, S, D), (already c_in-scaled) actions (B, T, action_dim), sigma (B,) -> F (B, T, action_dim)."""
        emb_t = self.sigma_embedding(sigma)
        x = self.drop(self.action_emb(actions))
        x = self.decoder(x, emb_t, context)
        return self.action_pred(x)

    def forward(
        self,
        tokens: torch.Tensor,
        actions: torch.Tensor,
        goal: torch.Tensor,
        sigma: torch.Tensor,
        proprio: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.decode(self.encode(tokens, goal, proprio), actions, sigma)
