"""video_models.temporal_conv: the temporal convolutions computed as 2-D convolutions or matrix products give
cuDNN's / ATen's 3-D convolution's results (float32, CPU) and gradients, for both weight layouts, and the switch keeps
the U-Net's parameters and state-dict keys."""

from pathlib import Path

import pytest
import torch
from torch import nn

from video_models.builders import build_unet
from video_models.conv_layout import set_conv_weight_layout
from video_models.temporal_conv import is_temporal_conv, set_temporal_conv
from vpp_core.config import load_config

TINY = Path(__file__).resolve().parents[2] / "video_conf" / "tiny.yaml"


def _conv(k: int = 3) -> nn.Conv3d:
    torch.manual_seed(0)
    return nn.Conv3d(5, 7, kernel_size=(k, 1, 1), padding=(k // 2, 0, 0))


@pytest.mark.parametrize("kind", ["conv2d", "matmul"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("k", [3, 5])
def test_switched_convolutions_equal_the_3d_one_with_gradients(kind, channels_last, k):
    reference, switched = _conv(k), _conv(k)
    for conv in (reference, switched):
        set_conv_weight_layout(conv, channels_last)
    assert set_temporal_conv(switched, kind) == 1 and type(switched).__name__ != "Conv3d"
    x = torch.randn(2, 4, 5, 3, 2).permute(0, 2, 1, 3, 4)  # (B, C, T, H, W) as a view of frames-major memory
    x_ref, x_new = x.clone().requires_grad_(), x.clone().requires_grad_()
    want, got = reference(x_ref), switched(x_new)
    assert got.shape == want.shape == (2, 7, 4, 3, 2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(want)
    want.backward(grad)
    got.backward(grad)
    torch.testing.assert_close(x_new.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(switched.weight.grad, reference.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(switched.bias.grad, reference.bias.grad, rtol=1e-5, atol=1e-5)


def test_only_temporal_convolutions_are_switched_and_back():
    model = nn.Sequential(_conv(), nn.Conv3d(5, 5, 3, padding=1), nn.Conv3d(5, 5, (3, 1, 1)),
                          nn.Conv3d(5, 5, (3, 1, 1), padding=(1, 0, 0), stride=(2, 1, 1)), nn.Conv2d(5, 5, 1))
    assert [is_temporal_conv(m) for m in model] == [True, False, False, False, False]
    keys = {name: p for name, p in model.state_dict(keep_vars=True).items()}
    assert set_temporal_conv(model, "matmul") == 1
    assert {name: p for name, p in model.state_dict(keep_vars=True).items()} == keys  # same names, same tensors
    assert [type(m).__name__ for m in model[1:]] == ["Conv3d", "Conv3d", "Conv3d", "Conv2d"]
    assert set_temporal_conv(model, "conv3d") == 1 and type(model[0]) is nn.Conv3d
    with pytest.raises(ValueError, match="conv3d"):
        set_temporal_conv(model, "fft")


def test_the_tiny_unet_gives_the_same_output_with_every_kind():
    """In float64 the kinds agree to rounding (the same math); in float32 each lies as close to the float64 output
    as the 3-D convolution does, within what the random tiny U-Net makes of float32 rounding (it amplifies it to
    about 1e-3 of its output, whichever kernels run)."""
    torch.manual_seed(0)
    unet = build_unet(load_config(TINY).model.unet).eval()
    args = (torch.randn(1, 16, 8, 8, 8), torch.ones(1), torch.randn(1, 20, unet.config.cross_attention_dim))
    kwargs = {"added_time_ids": torch.tensor([[7.0, 127.0, 0.0]])}
    temporal = sum(is_temporal_conv(m) for m in unet.modules())
    with torch.no_grad():
        single = {}
        for kind in ("conv3d", "conv2d", "matmul"):
            assert set_temporal_conv(unet, kind) == temporal > 0
            single[kind] = unet(*args, **kwargs).sample.double()
        unet.double()
        args64 = [a.double() for a in args]
        double = {}
        for kind in ("conv3d", "conv2d", "matmul"):
            set_temporal_conv(unet, kind)
            double[kind] = unet(*args64, added_time_ids=kwargs["added_time_ids"].double()).sample
    scale = double["conv3d"].abs().max()
    for kind in ("conv2d", "matmul"):
        torch.testing.assert_close(double[kind], double["conv3d"], rtol=0, atol=1e-9 * scale)
        assert (single[kind] - double[kind]).abs().max() < 5e-3 * scale
    assert not torch.equal(single["matmul"], single["conv3d"])  # other kernels did run


@pytest.mark.parametrize("kind", ["conv2d", "matmul"])
def test_switched_convolutions_trace_as_one_graph(kind):
    """Switched before compiling, the convolution and the norm before it stay in one dynamo graph (no graph break), so
    inductor can fuse the window tensor with the norm."""
    import torch._dynamo

    block = nn.Sequential(nn.GroupNorm(1, 5), nn.SiLU(), _conv())
    set_temporal_conv(block, kind)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(block)(torch.randn(2, 5, 4, 3, 2))
    assert explained.graph_count == 1 and explained.graph_break_count == 0
