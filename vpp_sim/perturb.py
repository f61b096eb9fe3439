"""Perturbed demonstrations (DART-style): the arm is pushed off course and the expert's corrections are recorded.

A policy trained only on clean expert trajectories never sees the states its own small errors lead to, so its errors
compound (it hovers near a handle, or leaves in the wrong direction). Here, during random short bursts, the action
the env *executes* is the expert's action plus a constant push; the action *recorded* as the label is the expert's
own. The expert tracks the env's internal target pose in closed loop, so its next actions steer back from wherever the
push left the arm, and the data set gains labelled recoveries (Laskey et al., "DART", 2017, inject noise the same way).
A perturbed episode's recorded actions therefore do not replay it exactly; its frames show what was executed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PerturbationSpec:
    """When and how hard to push: a burst starts with `start_prob` per step, lasts `min_steps`..`max_steps` steps and
    adds one constant push: a random direction in x/y/z of `magnitude` (a fraction of the largest relative
    translation, 2 cm a step) and a yaw of up to `yaw` (a fraction of the largest relative rotation)."""

    start_prob: float = 0.03
    min_steps: int = 4
    max_steps: int = 10
    magnitude: tuple[float, float] = (0.2, 0.5)
    yaw: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 <= self.start_prob <= 1.0:
            raise ValueError(f"start_prob must be in [0, 1], got {self.start_prob}")
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")
        low, high = self.magnitude
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"magnitude must be a range inside [0, 1], got {self.magnitude}")


class Perturber:
    """Turns each expert action into the executed one; one instance per episode (it keeps the current burst)."""

    def __init__(self, spec: PerturbationSpec, rng: np.random.Generator):
        self.spec = spec
        self.rng = rng
        self.remaining = 0
        self.push = np.zeros(6)
        self.perturbed_steps = 0

    def __call__(self, action: np.ndarray) -> np.ndarray:
        spec = self.spec
        if self.remaining == 0 and self.rng.random() < spec.start_prob:
            self.remaining = int(self.rng.integers(spec.min_steps, spec.max_steps + 1))
            direction = self.rng.normal(size=3)
            direction /= np.linalg.norm(direction) + 1e-12
            self.push = np.zeros(6)
            self.push[:3] = direction * self.rng.uniform(*spec.magnitude)
            self.push[5] = self.rng.uniform(-spec.yaw, spec.yaw)
        if self.remaining == 0:
            return action
        self.remaining -= 1
        self.perturbed_steps += 1
        executed = np.asarray(action, dtype=np.float64).copy()
        executed[:6] = np.clip(executed[:6] + self.push, -1.0, 1.0)  # the gripper command is never changed
        return executed
