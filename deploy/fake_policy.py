"""A tiny stand-in with the VPPPolicy deploy interface (``predict_action_chunk`` + ``embodiment``), for tests,
benchmarks and trying robot loops without a model.

Its chunk is a deterministic goal-reaching plan: with a state, action k is ``(k + 1) / chunk_length * (goal - state)``
(relative to the current state, like xbot actions); without one, a fixed ramp. It records the last observation and
instruction it got, counts calls, and can sleep ``delay_s`` to mimic model latency.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np


class FakePolicy:
    def __init__(self, cameras=("rgb_static", "rgb_gripper"), action_dim: int = 7, chunk_length: int = 10,
                 state_dim: int = 0, delay_s: float = 0.0, image_shapes: dict | None = None,
                 goal: np.ndarray | None = None, return_torch: bool = True):
        self.embodiment = SimpleNamespace(cameras=list(cameras), action_dim=action_dim, chunk_length=chunk_length,
                                          state_dim=state_dim, image_shapes=image_shapes)
        self.delay_s = delay_s
        self.goal = np.zeros(action_dim, np.float32) if goal is None else np.asarray(goal, np.float32)
        self.return_torch = return_torch
        if return_torch:
            import torch  # noqa: F401  (imported up front so the first call is not slowed down by it)
        self.calls = 0
        self.last_obs: dict[str, Any] | None = None
        self.last_instruction: Any = None
        self._busy = threading.Lock()
        self.overlapping_calls = 0  # > 0 would mean two threads ran the "model" at once

    def reset(self) -> None:
        pass

    def predict_action_chunk(self, obs: dict[str, Any], instruction: str | list[str]) -> Any:
        if not self._busy.acquire(blocking=False):
            self.overlapping_calls += 1
            self._busy.acquire()
        try:
            emb = self.embodiment
            missing = [c for c in emb.cameras if c not in obs["rgb_obs"]]
            if missing:
                raise KeyError(f"missing cameras {missing}")
            first = np.asarray(obs["rgb_obs"][emb.cameras[0]])
            batch = first.shape[0] if first.ndim == 4 else 1
            if self.delay_s:
                time.sleep(self.delay_s)
            frac = (np.arange(1, emb.chunk_length + 1, dtype=np.float32) / emb.chunk_length)[None, :, None]
            state = obs.get("state_obs")
            if state is not None and emb.state_dim == emb.action_dim:
                state = np.asarray(state.cpu() if hasattr(state, "cpu") else state, np.float32).reshape(batch, -1)
                out = frac * (self.goal[None, None, :] - state[:, None, :])
            else:
                out = np.broadcast_to(0.1 * frac, (batch, emb.chunk_length, emb.action_dim)).copy()
            self.calls += 1
            self.last_obs, self.last_instruction = obs, instruction
        finally:
            self._busy.release()
        if self.return_torch:
            import torch

            return torch.from_numpy(out.astype(np.float32))
        return out.astype(np.float32)
