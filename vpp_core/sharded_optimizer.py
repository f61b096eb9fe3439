"""AdamW with its states sharded over the processes of a distributed run (ZeRO stage 1), for the stage-1 trainer.

Under DDP every process holds the whole AdamW state: two float32 tensors per parameter, 12.2 GB for the 1.5 B
parameters of the SVD U-Net. `ShardedAdamW` (torch's `ZeroRedundancyOptimizer` around `torch.optim.AdamW`) keeps on
each process only the states of its share of the parameters (1/N of them by size), updates that share and then
broadcasts it to the other processes. Every parameter still gets AdamW's update from the same all-reduced gradient,
so the math of a step is unchanged; the price is one broadcast of the weights per step.

Checkpoints go through accelerate's `save_state` / `load_state`, which ask every process for `state_dict()`, write
the main process's answer, and hand the whole dict to every process on resume. So `state_dict()` here gathers the
shards on rank 0 (a collective call: every process must make it, as `save_state` does) and returns what a plain
AdamW would: states under global parameter indices.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.distributed.optim import ZeroRedundancyOptimizer


def state_numel(state: Mapping[Any, Mapping[str, Any]]) -> int:
    """Elements of the tensors in an optimizer's per-parameter state (`optimizer.state`, or a state dict's "state"),
    AdamW's step counts included."""
    return sum(t.numel() for per_param in state.values() for t in per_param.values() if torch.is_tensor(t))


class ShardedAdamW(ZeroRedundancyOptimizer):
    """`torch.optim.AdamW(params, **adamw_kwargs)` with its states sharded over the default process group."""

    def __init__(self, params: Iterable[torch.nn.Parameter], **adamw_kwargs: Any):
        super().__init__(params, optimizer_class=torch.optim.AdamW, **adamw_kwargs)

    def state_dict(self) -> dict[str, Any]:
        """The whole optimizer state on rank 0, an empty dict elsewhere. Every process must call it."""
        self.consolidate_state_dict(to=0)
        if self.rank != 0:
            return {}
        state = super().state_dict()
        self._all_state_dicts = []  # the gathered shards: do not keep a second copy of every state between saves
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep this process's share of a whole optimizer state (saved sharded or not)."""
        super().load_state_dict(state_dict)
        # ZeroRedundancyOptimizer moves every 0-d state (AdamW's step count) to the CPU; the fused and capturable
        # AdamW kernels want it on the parameter's device
        if self.optim.defaults.get("fused") or self.optim.defaults.get("capturable"):
            for param, state in self.optim.state.items():
                if torch.is_tensor(state.get("step")):
                    state["step"] = state["step"].to(param.device)

    def local_state_numel(self) -> int:
        """Elements of the optimizer state tensors this process holds (AdamW's step counts included)."""
        return state_numel(self.optim.state)
