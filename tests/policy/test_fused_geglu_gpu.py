"""The fused GEGLU's Triton kernel on CUDA (run with `pytest -m gpu tests/policy`): at the full-size U-Net's
feed-forward shapes against cuBLAS's product and the unfused gating, and in the tiny policy's chunk, eager, graphed
and compiled."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from video_models.fused_geglu import geglu_linear

from .helpers import repeatable_cuda_chunk

pytestmark = pytest.mark.gpu


def _cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tokens,width", [(32768, 320), (8192, 640), (2048, 1280), (300, 320), (257, 80)])
def test_fused_geglu_is_as_close_to_float32_as_the_unfused_layer(tokens, width, dtype):
    device = _cuda()
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(tokens, width, device=device, generator=gen).to(dtype)
    weight = (torch.randn(8 * width, width, device=device, generator=gen) * width ** -0.5).to(dtype)
    bias = (torch.randn(8 * width, device=device, generator=gen) * 0.1).to(dtype)
    with torch.no_grad():
        hidden, gate = F.linear(x, weight, bias).chunk(2, -1)
        unfused = hidden * F.gelu(gate)
        hidden32, gate32 = F.linear(x.float(), weight.float(), bias.float()).chunk(2, -1)
        exact = hidden32 * F.gelu(gate32)
        fused = geglu_linear(x, weight, bias)
    assert fused.shape == unfused.shape and fused.dtype == dtype
    # the summation order differs from cuBLAS's; the error against float32 stays of the same size
    assert (fused.float() - exact).abs().max() <= 2 * (unfused.float() - exact).abs().max()


def test_policy_chunks_with_the_fused_geglu(tiny_policy):
    _cuda()
    policy = copy.deepcopy(tiny_policy).cuda().eval()
    policy.tvp_encoder.unet.half()
    policy.tvp_encoder.vae.half()
    chunk = repeatable_cuda_chunk(policy)

    policy.cuda_graph = "off"
    reference = chunk()
    policy.use_fused_geglu()
    assert policy.fused_geglu
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        eager = chunk()
    assert any("geglu_linear_kernel" in e.key for e in prof.key_averages())
    scale = reference.abs().max()
    assert (eager - reference).abs().max() <= 1e-2 * scale
    policy.cuda_graph = "chunk"
    chunk()  # captures
    assert torch.equal(chunk(), eager)  # the graph replays the fused kernel exactly
    policy.compile_video_model("default")
    compiled = chunk()
    assert (compiled - reference).abs().max() <= 1e-2 * scale
