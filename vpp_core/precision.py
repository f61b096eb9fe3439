"""Precision names used in configs, mapped to torch dtypes."""

from __future__ import annotations

import torch

_NAMES = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "no": torch.float32,
}


def resolve_dtype(name: str | torch.dtype, device: str | torch.device | None = None) -> torch.dtype:
    """Map a config name to a dtype. "auto" means bf16 on a CUDA device that supports it, else fp32 (CPU)."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).lower()
    if key == "auto":
        dev = torch.device(device) if device is not None else None
        on_cuda = dev is not None and dev.type == "cuda" if dev is not None else torch.cuda.is_available()
        if on_cuda and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if key not in _NAMES:
        raise ValueError(f"unknown precision {name!r}; expected one of {sorted(_NAMES)} or 'auto'")
    return _NAMES[key]


def mixed_precision_name(dtype: torch.dtype) -> str:
    """The accelerate `mixed_precision` string for a dtype."""
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "no")
