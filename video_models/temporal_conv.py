"""Other kernels for the U-Net's temporal convolutions (kernel 3 x 1 x 1 over the frames, in every temporal ResNet).

cuDNN runs them as 3-D implicit-GEMM convolutions. In the policy chunk's kernel profile on an H100 they took about
1.2 ms at batch 1, at 230-355 TFLOP/s, where the chunk's matrix products ran near 500 and its 2-D convolutions
430-560 (docs/PERFORMANCE.md, sessions 18 and 25). The same sums can be computed two other ways:

- "conv2d": the frames as the height of a 2-D image whose width is the H x W positions, kernel 3 x 1: a view of the
  same tensors, other cuDNN kernels;
- "matmul": the three neighbouring frames of every position side by side (zero frames beyond the clip's ends), then
  one matrix product with the weight viewed as (out, 3 x in), on cuBLAS. The window tensor costs one extra pass over
  the activations, which inductor can fuse with the GroupNorm and SiLU before it.

Both give the convolution's sums in float32 accumulation, in another order: other rounding, as with any kernel
choice. The modules keep their class's parameters, names and state-dict keys; only `forward` changes, by switching the
instance's class (`set_temporal_conv`), as the attention processors are switched. Opt-in through the harnesses'
`--temporal-conv` until measured.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TEMPORAL_CONV_KINDS = ("conv3d", "conv2d", "matmul")


def is_temporal_conv(module: nn.Module) -> bool:
    """A 3-D convolution over frames only: kernel (k, 1, 1) with k odd, stride 1, 'same' zero padding (k // 2, 0, 0),
    no dilation, no groups: the form of every convolution in the temporal ResNets of diffusers' SVD U-Net."""
    if not isinstance(module, nn.Conv3d):
        return False
    k = module.kernel_size[0]
    return (k % 2 == 1 and tuple(module.kernel_size[1:]) == (1, 1) and tuple(module.stride) == (1, 1, 1)
            and tuple(module.padding) == (k // 2, 0, 0) and tuple(module.dilation) == (1, 1, 1)
            and module.groups == 1 and module.padding_mode == "zeros")


class TemporalConvAs2d(nn.Conv3d):
    """The temporal convolution as a 2-D one: frames as rows, the H x W positions as columns, kernel (k, 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        out = F.conv2d(x.flatten(3), self.weight[..., 0], self.bias, padding=(self.padding[0], 0))
        return out.unflatten(3, (h, w))


class TemporalConvAsMatmul(nn.Conv3d):
    """The temporal convolution as one matrix product over windows of k neighbouring frames."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, k, p = x.shape[2], self.kernel_size[0], self.padding[0]
        frames = F.pad(x.permute(0, 2, 3, 4, 1), (0, 0, 0, 0, 0, 0, p, p))  # (B, T + 2p, H, W, C)
        shifted = [frames[:, i : i + t] for i in range(k)]
        weight = self.weight[..., 0, 0]  # (O, C, k)
        if weight.transpose(1, 2).is_contiguous():  # channels-last weights: (O, k, C) in memory, a free view
            windows, weight = torch.cat(shifted, dim=-1), weight.transpose(1, 2).reshape(self.out_channels, -1)
        else:  # contiguous weights: (O, C, k) in memory
            windows, weight = torch.stack(shifted, dim=-1).flatten(-2), weight.reshape(self.out_channels, -1)
        return F.linear(windows, weight, self.bias).permute(0, 4, 1, 2, 3)  # (B, O, T, H, W), channels-last


_CLASSES = {"conv3d": nn.Conv3d, "conv2d": TemporalConvAs2d, "matmul": TemporalConvAsMatmul}


def set_temporal_conv(module: nn.Module, kind: str) -> int:
    """Compute every temporal convolution of `module` (`is_temporal_conv`) the way `kind` names ("conv3d": cuDNN's
    3-D convolution, as diffusers does). Call it before compiling: compiled graphs keep the kind they traced. Returns
    the number of convolutions switched."""
    if kind not in _CLASSES:
        raise ValueError(f"temporal convolution kind must be one of {list(TEMPORAL_CONV_KINDS)}, got {kind!r}")
    count = 0
    for conv in module.modules():
        if is_temporal_conv(conv):
            conv.__class__ = _CLASSES[kind]
            count += 1
    return count
