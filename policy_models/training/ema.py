"""Exponential moving average of the trainable policy weights (vpp_reference §6.11: decay 0.9999 after every step,
initialised as a copy). Unlike the original, the average is saved (``ema.safetensors``) and restored on resume; it
covers only the trainable tensors (never a second copy of the frozen video model)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn


class EMA:
    """`warmup_power` (opt-in; None is the original's plain decay): the decay at update k (0-based) is
    min(decay, 1 - (1 + k) ** -warmup_power), the schedule of the original's unused PL callback (power 2/3). Short runs
    need it: with a plain 0.999 the average still holds 0.999 ** 3000 = 5% of the initial random weights after 3000
    steps, while the warm-up's decay starts at 0 and reaches 0.995 there."""

    def __init__(self, named_params: Iterable[tuple[str, nn.Parameter]], decay: float = 0.9999,
                 warmup_power: float | None = None):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1), got {decay}")
        if warmup_power is not None and warmup_power <= 0:
            raise ValueError(f"ema.warmup_power must be positive or null, got {warmup_power}")
        self.decay = float(decay)
        self.warmup_power = warmup_power
        self.names: list[str] = []
        self.shadow: list[torch.Tensor] = []
        for name, p in named_params:
            self.names.append(name)
            self.shadow.append(p.detach().to(torch.float32, copy=True))

    def restart(self, named_params: Iterable[tuple[str, nn.Parameter]]) -> None:
        """Start the average over from the current weights, keeping its settings (no saved average to resume, or a
        warm start from other weights)."""
        self.load_state_dict({name: p.detach() for name, p in named_params}, source="current weights")

    def decay_at(self, step: int) -> float:
        """The decay used by the update after `step` earlier updates."""
        if self.warmup_power is None:
            return self.decay
        return min(self.decay, 1.0 - (1.0 + step) ** -self.warmup_power)

    @torch.no_grad()
    def update(self, named_params: Iterable[tuple[str, nn.Parameter]], step: int = 0) -> None:
        """One average step; `step` (the number of earlier updates: the trainer's global step, so a resumed run
        continues the schedule) only matters with a warm-up."""
        params = [p.detach() for _, p in named_params]
        if len(params) != len(self.shadow):
            raise ValueError(f"EMA tracks {len(self.shadow)} tensors, got {len(params)}")
        params = [p if p.dtype == torch.float32 else p.float() for p in params]
        torch._foreach_lerp_(self.shadow, params, 1.0 - self.decay_at(step))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.shadow))

    def load_state_dict(self, state: dict[str, torch.Tensor], source: str = "EMA state") -> None:
        missing = [n for n in self.names if n not in state]
        unexpected = [n for n in state if n not in set(self.names)]
        if missing or unexpected:
            raise KeyError(f"{source}: missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} "
                           f"({len(unexpected)})")
        for i, n in enumerate(self.names):
            src = state[n]
            if src.shape != self.shadow[i].shape:
                raise ValueError(f"{source}: {n} has shape {tuple(src.shape)}, expected {tuple(self.shadow[i].shape)}")
            self.shadow[i].copy_(src.to(self.shadow[i].device, torch.float32))

    @contextlib.contextmanager
    def swapped_into(self, named_params: Iterable[tuple[str, nn.Parameter]]) -> Iterator[None]:
        """Temporarily load the averaged weights into the model (e.g. to validate them)."""
        params = [p for _, p in named_params]
        backup = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, s in zip(params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(params, backup):
                    p.copy_(b)
