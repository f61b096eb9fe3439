"""The memory layout of convolution weights: channels-last for the compiled frozen passes.

cuDNN's half-precision convolution kernels on Hopper read and write channels-last tensors (NHWC, NDHWC). Handed
NCHW tensors, cuDNN transposes them around every call. Inside a compiled graph, inductor hands the 2-D convolutions
channels-last activations, but it converts every NCHW weight again on every call, and it leaves the 3-D convolutions
(the U-Net's temporal ResNets, kernel 3 x 1 x 1) in NCHW. On an H100 the policy chunk's kernel profile showed cuDNN
transposing the temporal weights of the 1280-channel levels on every call: 2.2 of its 27 ms of GPU time
(docs/PERFORMANCE.md, session 13). Stored once in channels-last, the weights need neither.

The values are the same. Other kernels may round differently, so only the compiled passes, which are close to eager
but not bit-identical anyway, use it: eager GroupNorms run slower on channels-last activations.
"""

from __future__ import annotations

import torch
from torch import nn


def to_channels_last(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` in channels-last layout: NHWC for 4-D tensors, NDHWC for 5-D ones; other ranks as they are."""
    if tensor.dim() == 4:
        return tensor.contiguous(memory_format=torch.channels_last)
    if tensor.dim() == 5:
        return tensor.contiguous(memory_format=torch.channels_last_3d)
    return tensor


def set_conv_weight_layout(module: nn.Module, channels_last: bool) -> int:
    """Store every 2-D and 3-D convolution weight of `module` in channels-last layout (`channels_last=True`) or in
    the default contiguous layout. The parameters stay the same objects with the same values, so optimizers and
    hooks are unaffected; `module.to(memory_format=...)` cannot do this, since it rejects the 3-D weights. Returns
    the number of convolutions."""
    count = 0
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d | nn.Conv3d):
            weight = conv.weight.data
            conv.weight.data = to_channels_last(weight) if channels_last else weight.contiguous()
            count += 1
    return count
