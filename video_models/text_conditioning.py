"""Text conditioning of the video U-Net (vpp_reference §3.2).

SVD cross-attends to a CLIP *image* embedding; VPP replaces it with CLIP *text* token features: the last hidden state
of the CLIP text tower for 20 tokens (with attention mask), optionally plus a fixed sin-cos position table (on for the
xbot/xhand model, off for the CALVIN model), duplicated along channels to the U-Net's cross-attention width (512 -> 1024
for the real model). There is no learned projection, so these details must match the released weights exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import CLIPTextModelWithProjection, PreTrainedTokenizerBase

from vpp_core.transfer import to_device_nonblocking

DEFAULT_MAX_LENGTH = 20


def sincos_position_table(num_positions: int, dim: int) -> torch.Tensor:
    """MAE-style 1-D table (num_positions, dim): first half sin(pos * w_k), second half cos(pos * w_k),
    w_k = 1 / 10000^(k / (dim/2)), k = 0 .. dim/2 - 1."""
    if dim % 2:
        raise ValueError(f"position table width must be even, got {dim}")
    half = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)
    angles = torch.arange(num_positions, dtype=torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()


def tokenize(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int, device: torch.device
) -> dict[str, torch.Tensor]:
    tokens = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": to_device_nonblocking(tokens["input_ids"], device),
            "attention_mask": to_device_nonblocking(tokens["attention_mask"], device)}


def encode_text(
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    text_encoder: CLIPTextModelWithProjection,
    *,
    cross_attention_dim: int,
    max_length: int = DEFAULT_MAX_LENGTH,
    position_encode: bool = False,
) -> torch.Tensor:
    """CLIP token features for the U-Net: (B, max_length, cross_attention_dim), in the text encoder's dtype."""
    if isinstance(texts, str):
        raise TypeError("encode_text expects a list of instructions, not a single string")
    device = text_encoder.device
    hidden = text_encoder(**tokenize(tokenizer, texts, max_length, device)).last_hidden_state
    if position_encode:
        table = to_device_nonblocking(sincos_position_table(hidden.shape[1], hidden.shape[2]), hidden.device)
        hidden = hidden + table.to(hidden.dtype)
    width = hidden.shape[-1]
    if cross_attention_dim % width:
        raise ValueError(f"cross_attention_dim {cross_attention_dim} is not a multiple of the text width {width}")
    return hidden.repeat(1, 1, cross_attention_dim // width)


def drop_text_embeddings(
    embeddings: torch.Tensor, drop_prob: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Classifier-free-guidance dropout: replace each sample's whole embedding by zeros with probability `drop_prob`
    (zeros are also the negative embedding at sampling time)."""
    if drop_prob <= 0:
        return embeddings
    keep = torch.rand(embeddings.shape[0], generator=generator, device="cpu") >= drop_prob
    keep = to_device_nonblocking(keep, embeddings.device).to(embeddings.dtype)
    return embeddings * keep.view(-1, *([1] * (embeddings.dim() - 1)))
