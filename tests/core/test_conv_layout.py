"""Convolution weights stored channels-last and back: same parameters, same values, other strides."""

import torch
from torch import nn

from video_models.conv_layout import set_conv_weight_layout


def test_conv_weights_switch_layout_in_place():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv3d(8, 8, (3, 1, 1)), nn.Linear(4, 4), nn.GroupNorm(2, 8))
    params = list(model.parameters())
    values = [p.detach().clone() for p in params]
    assert set_conv_weight_layout(model, channels_last=True) == 2
    conv2d, conv3d, linear = model[0].weight, model[1].weight, model[2].weight
    assert conv2d.is_contiguous(memory_format=torch.channels_last) and not conv2d.is_contiguous()
    assert conv3d.is_contiguous(memory_format=torch.channels_last_3d) and not conv3d.is_contiguous()
    assert linear.is_contiguous()
    assert list(model.parameters()) == params  # the same Parameter objects: optimizers and hooks keep them
    assert all(torch.equal(p, v) for p, v in zip(model.parameters(), values))
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(model[0](x), nn.functional.conv2d(x, values[0], values[1]))
    set_conv_weight_layout(model, channels_last=False)
    assert all(p.is_contiguous() for p in model.parameters())
    assert all(torch.equal(p, v) for p, v in zip(model.parameters(), values))
