"""Language goal: CLIP text `text_embeds` (pooled EOT feature @ text projection) as a (B, 1, 512) goal token.

The original CALVIN policy used an OpenAI-CLIP re-implementation (`LangClip`, 77 tokens, zero padding); the xbot
policy used HF `CLIPTextModelWithProjection.text_embeds`. Both are the same network and weights (HF's is a conversion of
OpenAI's ViT-B/32); pooling picks the first EOT token, which under the causal mask is independent of what follows, so
the padding convention does not matter. The text tower instance is shared with the TVP encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from policy_models.text_cache import TextFeatureCache
from vpp_core.transfer import to_device_nonblocking


class GoalEncoder(nn.Module):
    def __init__(self, text_encoder, tokenizer, max_length: int = 77):
        super().__init__()
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        limit = getattr(text_encoder.config, "max_position_embeddings", max_length)
        self.max_length = min(max_length, limit)
        self.text_encoder.requires_grad_(False)
        self.text_encoder.eval()
        # inference-only: instruction -> (1, projection_dim) goal row (see forward(cache=True))
        self.text_cache = TextFeatureCache()

    def train(self, mode: bool = True):
        super().train(mode)
        self.text_encoder.eval()
        return self

    @property
    def goal_dim(self) -> int:
        return self.text_encoder.config.projection_dim

    def clear_cache(self) -> None:
        self.text_cache.clear()

    @torch.no_grad()
    def forward(self, texts: Sequence[str], cache: bool = False) -> torch.Tensor:
        """list of B instructions -> (B, 1, projection_dim) float32. With `cache` (inference only) each distinct
        instruction is encoded once and kept in a small LRU cache, invalidated when the text tower changes device or
        dtype."""
        if isinstance(texts, str):
            raise TypeError("GoalEncoder expects a list of instructions, not a single string")
        texts = list(texts)
        if not cache:
            return self._encode(texts)
        te = self.text_encoder
        return self.text_cache.lookup(texts, (te.device, te.dtype, id(self.tokenizer), self.max_length), self._encode)

    def _encode(self, texts: list[str]) -> torch.Tensor:
        device = self.text_encoder.device
        tokens = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        device_type = device.type if device.type in ("cuda", "cpu", "xpu", "mps") else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            out = self.text_encoder(
                input_ids=to_device_nonblocking(tokens["input_ids"], device),
                attention_mask=to_device_nonblocking(tokens["attention_mask"], device),
            )
        return out.text_embeds.unsqueeze(1).float()
