"""The opt-in attention-kernel choice by query length (video_models.attention_kernels) on the tiny U-Net: short
queries (the 16-frame temporal attention) run with only the memory-efficient and math kernels allowed, longer ones
with torch's full choice; the output is the same attention, and the U-Net still compiles as one graph."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from video_models.attention_kernels import ShortQueryKernelProcessor, use_short_query_kernels
from video_models.builders import build_unet
from video_models.temporal_context import SharedContextAttnProcessor
from vpp_core.config import load_config

TINY = Path(__file__).resolve().parents[2] / "video_conf" / "tiny.yaml"


@pytest.fixture(params=["diffusers", "shared_context"])
def unet_and_inputs(request):
    """The tiny U-Net with diffusers' own transformer forward, and as build_unet makes it (the temporal context
    projected once per clip, video_models.temporal_context)."""
    torch.manual_seed(0)
    unet = build_unet(load_config(TINY).model.unet).eval()
    if request.param == "diffusers":
        for m in unet.modules():
            m.__dict__.pop("forward", None)
            if isinstance(m, Attention):
                m.set_processor(AttnProcessor2_0())
    latent = 8
    inputs = (torch.randn(1, 16, 8, latent, latent), torch.ones(1),
              torch.randn(1, 20, unet.config.cross_attention_dim))
    return unet, inputs, {"added_time_ids": torch.tensor([[7.0, 127.0, 0.0]])}


def test_short_queries_run_on_the_efficient_kernels_only(unet_and_inputs, monkeypatch):
    unet, args, kwargs = unet_and_inputs
    with torch.no_grad():
        reference = unet(*args, **kwargs).sample
    layers = [m for m in unet.modules() if isinstance(m, Attention)]
    shared = [m for m in layers if isinstance(m.processor, SharedContextAttnProcessor)]
    assert use_short_query_kernels(unet, max_length=16) == len(layers) - len(shared) > 0
    # the temporal cross-attention keeps its shared-context processor: its queries are every position's frames
    assert all(isinstance(m.processor, SharedContextAttnProcessor) for m in shared)
    assert all(isinstance(m.processor, ShortQueryKernelProcessor) for m in layers if m not in shared)

    seen = []
    original = F.scaled_dot_product_attention

    def recording(query, *a, **k):
        seen.append((query.shape[-2], torch.backends.cuda.flash_sdp_enabled(),
                     torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled()))
        return original(query, *a, **k)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    with torch.no_grad():
        out = unet(*args, **kwargs).sample
    lengths = {length for length, *_ in seen}
    assert 16 in lengths and any(length > 16 for length in lengths)  # temporal and spatial attention both ran
    for length, flash, cudnn, efficient in seen:
        assert efficient
        if not shared:  # (the shared-context calls choose freely; at the 1 x 1 level they have 16 queries too)
            assert (flash, cudnn) == ((False, False) if length <= 16 else (True, True)), length
    # the same attention through other kernels (on the CPU: math instead of flash); the random tiny U-Net's
    # GroupNorms amplify the kernels' rounding differences to about 1e-4 of the output's scale
    assert (out - reference).abs().max() < 1e-3 * reference.abs().max()


def test_other_processors_are_refused(unet_and_inputs):
    unet = unet_and_inputs[0]
    next(m for m in unet.modules() if isinstance(m, Attention)).set_processor(AttnProcessor())
    with pytest.raises(ValueError, match="AttnProcessor"):
        use_short_query_kernels(unet)


def test_the_unet_still_traces_as_one_graph(unet_and_inputs):
    unet, args, kwargs = unet_and_inputs
    use_short_query_kernels(unet)
    with torch.no_grad():
        explanation = torch._dynamo.explain(unet)(*args, **kwargs)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0
