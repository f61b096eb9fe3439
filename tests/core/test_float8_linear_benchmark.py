"""The FP8 measurement harness (benchmarks/float8_linear.py): its quantisation and e4m3 layers do what the harness
says they measure. The timings themselves need an H100."""

import pytest
import torch
from torch import nn

from benchmarks import float8_linear
from benchmarks.float8_linear import (
    E4M3_MAX,
    E4M3Linear,
    is_feed_forward,
    linear_shapes,
    quantize_rows,
    quantize_tensor,
    relative_change,
    use_e4m3_linear,
)


def test_quantize_rows_maps_each_row_max_to_e4m3_max_and_round_trips_within_its_precision():
    x = torch.randn(64, 128) * torch.logspace(-3, 3, 64).unsqueeze(1)  # rows of very different ranges
    values, scale = quantize_rows(x)
    assert values.dtype == torch.float8_e4m3fn and scale.shape == (64, 1)
    assert torch.allclose(values.float().abs().amax(dim=1), torch.full((64,), E4M3_MAX))
    restored = values.float() * scale
    # e4m3 keeps 3 mantissa bits: at most half an ulp, 1/16 of the value, above its subnormal range
    relative = (restored - x).abs() / x.abs().clamp(min=x.abs().amax(dim=1, keepdim=True) * 2**-6)
    assert relative.max() <= 1 / 16 + 1e-6
    assert torch.equal(quantize_rows(torch.zeros(2, 16))[0].float(), torch.zeros(2, 16))  # no division by zero
    values, scale = quantize_tensor(x)
    assert scale.dim() == 0 and values.float().abs().max() == E4M3_MAX


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_e4m3_layer_rounds_large_calls_and_keeps_small_ones_16_bit(dtype):
    torch.manual_seed(0)
    layer = nn.Linear(320, 640).to(dtype)
    reference = nn.Linear(320, 640).to(dtype)
    reference.load_state_dict(layer.state_dict())
    keys = list(layer.state_dict())
    assert use_e4m3_linear(layer) == 1 and type(layer) is E4M3Linear
    assert list(layer.state_dict()) == keys  # the e4m3 copy is not saved
    large = torch.randn(2, E4M3Linear.min_rows, 320).to(dtype)
    small = torch.randn(3, 20, 320).to(dtype)
    exact = nn.functional.linear(large.float(), reference.weight.float(), reference.bias.float())
    with torch.no_grad():
        out_large = layer(large)
        assert torch.equal(layer(small), reference(small))
        assert relative_change(reference(large), exact) < 0.005
    assert out_large.dtype == dtype and out_large.shape == (2, E4M3Linear.min_rows, 640)
    assert 0.005 < relative_change(out_large, exact) < 0.06  # rounded like e4m3, not like 16 bits, yet close
    assert use_e4m3_linear(layer, enabled=False) == 1 and type(layer) is nn.Linear


def test_only_aligned_16_bit_layers_that_pass_the_filter_are_switched():
    model = nn.Sequential()
    model.add_module("ff", nn.Sequential(nn.Linear(320, 640).half(), nn.Linear(640, 20).half()))
    model.add_module("attn", nn.Linear(320, 320).half())
    model.add_module("fp32", nn.Linear(320, 320))
    blocks = nn.Module()
    blocks.block = model
    assert use_e4m3_linear(blocks, include=is_feed_forward) == 1
    assert type(model.ff[0]) is E4M3Linear and type(model.attn) is nn.Linear
    use_e4m3_linear(blocks, enabled=False)
    assert use_e4m3_linear(blocks) == 2  # also the attention layer; never the unaligned or float32 ones


def test_linear_shapes_hold_the_partial_pass_linear_flops():
    shapes = linear_shapes()
    assert all(k % 16 == 0 and n % 16 == 0 for _, k, n, _ in shapes)
    geglu_calls = sum(calls for _, k, n, calls in shapes if n == 8 * k)
    assert geglu_calls == 30  # three GEGLU feed-forwards in each of the pass's ten transformers
    tflop = sum(2 * rows * k * n * calls for rows, k, n, calls in shapes) / 1e12
    assert tflop == pytest.approx(3.08, rel=0.01)  # benchmarks/unet_flops.py --pass partial --batch 2 (session 18)


def test_harness_needs_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="e4m3"):
        float8_linear.main([])


def test_product_variants_compute_the_same_product():
    variants, exact = float8_linear.product_variants(64, 64, 48, torch.device("cpu"))
    assert set(variants) == {"fp16_cublas", "e4m3_rows_fp16_out", "e4m3_rows_bf16_out", "e4m3_tensor_fp16_out",
                             "e4m3_product_only"}
    assert relative_change(variants["fp16_cublas"](), exact) < 0.005
    assert 0.005 < relative_change(variants["e4m3_product_only"](), exact) < 0.06
