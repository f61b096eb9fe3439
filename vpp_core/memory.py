"""The GPU memory a training run has needed so far, for its metrics log."""

from __future__ import annotations

import torch


def peak_memory_record(device: torch.device) -> dict[str, float]:
    """Peak allocated and reserved memory (GiB) on a CUDA `device` since the process started; {} elsewhere. Logged with
    the step rates, so a run shows whether its settings would fit a smaller GPU (reserved is what must fit)."""
    if device.type != "cuda":
        return {}
    return {"peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30}
