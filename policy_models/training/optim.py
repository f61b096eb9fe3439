"""AdamW over the trainable policy parameters and the learning-rate schedules (vpp_reference §6.11).

* Optimizer: AdamW, lr 1e-4, betas (0.9, 0.9), eps 1e-8, weight decay 0.05 on every trainable tensor (norms and
  biases included, as the original), in the original's two groups (DiT action head, Video Former). Fused kernels on
  CUDA, multi-tensor (foreach) otherwise.
* Schedules: ``constant`` (default; the original's scheduler drove an orphan optimizer, so the released weights were
  trained at a constant 1e-4) or ``tri_stage`` (what the original *meant*): linear warmup from init_lr_scale*lr to lr
  over phase_ratio[0]*total_steps, hold lr for phase_ratio[1]*total_steps, cosine decay to final_lr_scale*lr over
  phase_ratio[2]*total_steps, then stay at final_lr_scale*lr.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

SCHEDULES = ("constant", "tri_stage")


def trainable_named_parameters(policy: nn.Module) -> list[tuple[str, nn.Parameter]]:
    if hasattr(policy, "named_trainable_parameters"):
        return list(policy.named_trainable_parameters())
    return [(n, p) for n, p in policy.named_parameters() if p.requires_grad]


def param_groups(policy: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    if hasattr(policy, "optimizer_param_groups"):
        groups = policy.optimizer_param_groups(weight_decay)
    else:
        groups = [{"params": [p for _, p in trainable_named_parameters(policy)], "weight_decay": weight_decay}]
    groups = [g for g in groups if len(g["params"])]
    if not groups:
        raise ValueError("the policy has no trainable parameters")
    return groups


def build_optimizer(policy: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.AdamW:
    wd = float(cfg.get("weight_decay", 0.05))
    groups = param_groups(policy, wd)
    impl = cfg.get("impl", "auto")
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    kwargs: dict[str, Any] = {}
    if impl == "fused" or (impl == "auto" and on_cuda):
        kwargs["fused"] = True
    elif impl in ("auto", "foreach"):
        kwargs["foreach"] = True
    elif impl != "plain":
        raise ValueError(f"optimizer.impl must be auto, fused, foreach or plain, got {impl!r}")
    betas = tuple(float(b) for b in cfg.get("betas", (0.9, 0.9)))
    return torch.optim.AdamW(groups, lr=float(cfg.get("lr", 1e-4)), betas=betas, eps=float(cfg.get("eps", 1e-8)),
                             weight_decay=wd, **kwargs)


def tri_stage_factor(step: int, total_steps: int, phase_ratio: Sequence[float], init_lr_scale: float,
                     final_lr_scale: float) -> float:
    """LR multiplier (relative to the peak lr) after ``step`` optimizer steps (fairseq/MDT tri-stage with a cosine
    decay stage, as the VPP code implements it)."""
    if len(phase_ratio) != 3 or abs(sum(phase_ratio) - 1.0) > 1e-6:
        raise ValueError(f"phase_ratio must be three fractions summing to 1, got {list(phase_ratio)}")
    warmup = int(total_steps * phase_ratio[0])
    hold = int(total_steps * phase_ratio[1])
    decay = int(total_steps * phase_ratio[2])
    if step < warmup:
        return init_lr_scale + (1.0 - init_lr_scale) * step / warmup
    step -= warmup
    if step < hold:
        return 1.0
    step -= hold
    if step <= decay and decay > 0:
        return final_lr_scale + (1.0 - final_lr_scale) * 0.5 * (1.0 + math.cos(math.pi * step / decay))
    return final_lr_scale


def build_scheduler(optimizer: torch.optim.Optimizer,
                    cfg: Mapping[str, Any] | None) -> torch.optim.lr_scheduler.LambdaLR:
    cfg = dict(cfg or {})
    kind = cfg.get("type", "constant")
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if kind == "tri_stage":
        total = int(cfg.get("total_steps", 50000))
        ratio = [float(r) for r in cfg.get("phase_ratio", (0.02, 0.08, 0.9))]
        init_s, final_s = float(cfg.get("init_lr_scale", 0.1)), float(cfg.get("final_lr_scale", 1e-6))
        tri_stage_factor(0, total, ratio, init_s, final_s)  # validates the ratios now
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: tri_stage_factor(step, total, ratio, init_s, final_s))
    raise ValueError(f"lr_scheduler.type must be one of {SCHEDULES}, got {kind!r}")
