"""Project the temporal cross-attention's text context once per clip instead of once per position.

In diffusers' `TransformerSpatioTemporalModel`, every temporal transformer block attends, from each of the H x W
positions of a clip, to the text tokens of the clip's first frame. diffusers copies those tokens H x W times,
(B * H * W, 20, 1024), and the block's cross-attention projects every copy to keys and values: H x W identical
projections per clip (1,024 at the 32 x 32 level). In the SVD U-Net those projections are about 4% of the model's
FLOPs, in the policy's feature pass and in stage-1 training alike.

`share_temporal_context` gives each such model a forward that passes the first frame's tokens once per clip,
(B, 20, 1024), and gives the temporal blocks' cross-attention a processor for a context batch that divides the
query batch: the H x W query sequences of clip b all attend to context b. Attention treats every query row on its
own, so the processor folds them into one sequence of H x W x frames queries per clip, which needs neither copies nor
broadcasting. The math is the same; the numbers differ by rounding (other matrix shapes and kernels). Gradients reach
the projection weights as before: the per-position copies summed their gradients, and the one projection gets the sum.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.transformers.transformer_temporal import (
    TransformerSpatioTemporalModel,
    TransformerTemporalModelOutput,
)


class SharedContextAttnProcessor(AttnProcessor2_0):
    """Cross-attention where the context batch b divides the query batch n = b * r: query sequences i * r ... i * r +
    r - 1 attend to context i. Equal batches are ordinary cross-attention (diffusers' SDPA processor)."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args,
                 **kwargs) -> torch.Tensor:
        if encoder_hidden_states is None or encoder_hidden_states.shape[0] == hidden_states.shape[0]:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        n, length, _ = hidden_states.shape
        b = encoder_hidden_states.shape[0]
        if n % b or attention_mask is not None:
            raise ValueError(f"shared-context attention needs a context batch that divides the query batch and no "
                             f"mask; got {b} contexts for {n} query sequences, mask {attention_mask is not None}")
        query = attn.to_q(hidden_states)  # (n, L, inner): rows of one clip are consecutive
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(b, (n // b) * length, attn.heads, head_dim).transpose(1, 2)
        key = key.view(b, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(b, -1, attn.heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value)
        out = out.transpose(1, 2).reshape(n, length, attn.heads * head_dim).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def _check_plain_cross_attention(attn: Attention) -> None:
    """The processor implements plain SDPA cross-attention only; refuse layers configured otherwise."""
    extras = {"spatial_norm": attn.spatial_norm is not None, "group_norm": attn.group_norm is not None,
              "norm_cross": bool(attn.norm_cross), "norm_q": attn.norm_q is not None,
              "norm_k": attn.norm_k is not None, "residual_connection": bool(attn.residual_connection),
              "rescale_output_factor": attn.rescale_output_factor != 1.0}
    used = sorted(k for k, v in extras.items() if v)
    if used:
        raise ValueError(f"temporal cross-attention with {used} is not supported by the shared-context processor")


def _shared_context_forward(self: TransformerSpatioTemporalModel, hidden_states: torch.Tensor,
                            encoder_hidden_states: torch.Tensor | None = None,
                            image_only_indicator: torch.Tensor | None = None, return_dict: bool = True):
    """diffusers' `TransformerSpatioTemporalModel.forward` (0.42), with the temporal blocks' context passed once per
    clip, (B, S, C), instead of copied for each of the H x W positions."""
    batch_frames, _, height, width = hidden_states.shape
    num_frames = image_only_indicator.shape[-1]
    batch_size = batch_frames // num_frames
    # the first frame's tokens of each clip
    time_context = encoder_hidden_states.reshape(batch_size, num_frames, -1, encoder_hidden_states.shape[-1])[:, 0]

    residual = hidden_states
    hidden_states = self.norm(hidden_states)
    inner_dim = hidden_states.shape[1]
    hidden_states = hidden_states.permute(0, 2, 3, 1).reshape(batch_frames, height * width, inner_dim)
    hidden_states = self.proj_in(hidden_states)

    frame_index = torch.arange(num_frames, device=hidden_states.device).repeat(batch_size, 1).reshape(-1)
    # `Timesteps` returns float32; the embedding may run in half precision
    emb = self.time_pos_embed(self.time_proj(frame_index).to(dtype=hidden_states.dtype))[:, None, :]

    for block, temporal_block in zip(self.transformer_blocks, self.temporal_transformer_blocks):
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            hidden_states = self._gradient_checkpointing_func(block, hidden_states, None, encoder_hidden_states, None)
        else:
            hidden_states = block(hidden_states, encoder_hidden_states=encoder_hidden_states)
        hidden_states_mix = temporal_block(hidden_states + emb, num_frames=num_frames,
                                           encoder_hidden_states=time_context)
        hidden_states = self.time_mixer(x_spatial=hidden_states, x_temporal=hidden_states_mix,
                                        image_only_indicator=image_only_indicator)

    hidden_states = self.proj_out(hidden_states)
    hidden_states = hidden_states.reshape(batch_frames, height, width, inner_dim).permute(0, 3, 1, 2).contiguous()
    output = hidden_states + residual
    if not return_dict:
        return (output,)
    return TransformerTemporalModelOutput(sample=output)


def uses_shared_temporal_context(model: torch.nn.Module) -> bool:
    """Whether `model` is a transformer whose forward `share_temporal_context` replaced."""
    return getattr(getattr(model, "forward", None), "__func__", None) is _shared_context_forward


def share_temporal_context(unet: torch.nn.Module) -> int:
    """Give every `TransformerSpatioTemporalModel` of `unet` the once-per-clip temporal context (module docstring).
    Returns how many were changed. Idempotent. Call it before wrapping layers (checkpointing, compiling): a layer
    whose forward is already replaced is refused rather than unwrapped."""
    changed = 0
    for module in unet.modules():
        if not isinstance(module, TransformerSpatioTemporalModel) or uses_shared_temporal_context(module):
            continue
        if "forward" in module.__dict__:
            raise ValueError("share_temporal_context: a transformer's forward is already wrapped (checkpointing or "
                             "compiling); share the temporal context before wrapping the layers")
        for temporal_block in module.temporal_transformer_blocks:
            if temporal_block.attn2 is not None:
                _check_plain_cross_attention(temporal_block.attn2)
                temporal_block.attn2.set_processor(SharedContextAttnProcessor())
        module.forward = types.MethodType(_shared_context_forward, module)
        changed += 1
    return changed
