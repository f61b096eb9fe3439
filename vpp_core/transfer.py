"""Host-to-device copies that do not make the host wait for the GPU.

`cpu_tensor.to("cuda")` copies from pageable memory and then synchronizes the stream: the host waits until every
kernel queued before the copy has finished. Inside a training step that is costly: in stage 2 the instruction's
token ids were uploaded after the frozen U-Net pass had been queued, so the host sat idle for the whole pass and then
launched the action head's kernels one by one behind an idle GPU (about 90 ms of idle GPU per step at batch 32).
Copying from pinned memory with `non_blocking=True` queues the copy and returns at once; the caching host allocator
keeps the pinned buffer alive until the copy has run.
"""

from __future__ import annotations

import torch


def to_device_nonblocking(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`tensor.to(device)` for a CPU tensor bound for a CUDA device, without a host-device synchronization.
    Other moves (CPU to CPU, GPU to GPU, GPU to CPU) are plain `.to(device)`."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
