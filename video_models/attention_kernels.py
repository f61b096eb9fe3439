"""Choose the attention kernel by query length in the SVD U-Net.

The spatio-temporal U-Net attends over two very different kinds of sequences: spatial attention over up to 32 x 32
positions per frame, and temporal attention over 16 frames for every position (tens of thousands of short
sequences at batch 32). torch's default choice on an H100, cuDNN attention, is the fastest kernel for the long
spatial sequences but not for the short ones: there the memory-efficient kernel took two thirds of cuDNN's time
(`python benchmarks/attention_backends.py --batch 32`: 58.8 -> 45.2 ms of attention per feature pass with the faster
kernel per call; docs/PERFORMANCE.md). The kernels compute the same attention with different rounding, so the
switch is explicit: the full-size configs turn it on for CUDA ("auto"), the tiny ones and the CPU leave it off.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch.nn.attention import SDPBackend, sdpa_kernel

from video_models.temporal_context import SharedContextAttnProcessor

# queries of at most this many tokens (the 16 frames of temporal attention; 64 = the U-Net's 8 x 8 level) use
# SHORT_QUERY_BACKENDS: the measured crossover lies between 64 and 256 tokens
SHORT_QUERY_LENGTH = 64
# (math only where the memory-efficient kernel cannot take a call, e.g. on devices without it)
SHORT_QUERY_BACKENDS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class ShortQueryKernelProcessor(AttnProcessor2_0):
    """diffusers' SDPA processor, with calls whose queries are at most `max_length` tokens long restricted to
    `backends`; longer queries keep torch's own choice."""

    def __init__(self, max_length: int = SHORT_QUERY_LENGTH, backends: list[SDPBackend] | None = None):
        super().__init__()
        self.max_length = max_length
        self.backends = list(SHORT_QUERY_BACKENDS if backends is None else backends)

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        # (B, L, C) sequences, or (B, C, H, W) feature maps that the processor flattens to H * W tokens
        length = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states.shape[2] * hidden_states.shape[3]
        if length > self.max_length:
            return super().__call__(attn, hidden_states, *args, **kwargs)
        with sdpa_kernel(self.backends):
            return super().__call__(attn, hidden_states, *args, **kwargs)


def use_short_query_kernels(model: torch.nn.Module, max_length: int = SHORT_QUERY_LENGTH) -> int:
    """Give every attention layer of `model` a `ShortQueryKernelProcessor`; returns how many layers were changed.
    The temporal cross-attention layers with the shared-context processor keep it: their queries are long (every
    position's frames of a clip, video_models.temporal_context). Layers with another processor than diffusers'
    default SDPA one are refused, so nothing is replaced silently."""
    layers = [m for m in model.modules() if isinstance(m, Attention)
              and not isinstance(m.processor, SharedContextAttnProcessor)]
    others = {type(m.processor).__name__ for m in layers if type(m.processor) not in (AttnProcessor2_0,
                                                                                       ShortQueryKernelProcessor)}
    if others:
        raise ValueError(f"attention layers with processors {sorted(others)}: only AttnProcessor2_0 is replaced")
    processor = ShortQueryKernelProcessor(max_length)
    for m in layers:
        m.set_processor(processor)
    return len(layers)
