"""Scripted env / oracle / policy for testing the evaluator without a simulator or a model.

They live in the package (not under tests/) so that spawned evaluation workers can import them.

* `ScriptedEnv`: a counter env. `step` asserts the calvin_env gripper contract (last entry exactly +-1), advances
  the step counter `t` and a `progress` value driven by the action (progress += (a[0] + 1) / 2), and records every
  reset / step. `fail_on_reset=k` raises on the (k+1)-th reset (an interrupted run after k sequences).
* `ScriptedOracle`: either `succeed_after={task: n}` (task achieved once n steps have passed since start_info;
  absent tasks never succeed) or `difficulty={task: x}` (achieved once progress grew by x since start_info).
* `RandomPolicy`: uniform actions in [-1, 1] from numpy's global RNG (seeded per sequence by the runner), so
  outcomes depend on the per-sequence seed the way a diffusion policy's do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class ScriptedEnv:
    def __init__(self, image_size: int = 200, gripper_size: int = 84, fail_on_reset: int | None = None):
        self.image_size = image_size
        self.gripper_size = gripper_size
        self.fail_on_reset = fail_on_reset
        self.t = 0
        self.progress = 0.0
        self.resets: list[tuple[np.ndarray | None, np.ndarray | None]] = []
        self.actions: list[np.ndarray] = []
        self.robot_obs = np.zeros(15)
        self.scene_obs = np.zeros(24)

    def reset(self, robot_obs: np.ndarray | None = None, scene_obs: np.ndarray | None = None) -> dict:
        if self.fail_on_reset is not None and len(self.resets) >= self.fail_on_reset:
            raise RuntimeError(f"ScriptedEnv: simulated crash on reset #{len(self.resets) + 1}")
        self.resets.append((None if robot_obs is None else np.array(robot_obs),
                            None if scene_obs is None else np.array(scene_obs)))
        self.robot_obs = np.zeros(15) if robot_obs is None else np.array(robot_obs, dtype=np.float64)
        self.scene_obs = np.zeros(24) if scene_obs is None else np.array(scene_obs, dtype=np.float64)
        self.t = 0
        self.progress = 0.0
        return self.get_obs()

    def step(self, action: np.ndarray) -> tuple[dict, int, bool, dict]:
        action = np.asarray(action)
        assert action.shape == (7,), f"expected a 7-D action, got {action.shape}"
        assert action[-1] in (-1.0, 1.0), f"gripper action must be +-1, got {action[-1]}"
        self.actions.append(action.copy())
        self.t += 1
        self.progress += (float(action[0]) + 1.0) / 2.0
        self.robot_obs = self.robot_obs.copy()
        self.robot_obs[14] = action[-1]
        return self.get_obs(), 0, False, self.get_info()

    def get_obs(self) -> dict:
        v = self.t % 256
        return {
            "rgb_obs": {
                "rgb_static": np.full((self.image_size, self.image_size, 3), v, dtype=np.uint8),
                "rgb_gripper": np.full((self.gripper_size, self.gripper_size, 3), v, dtype=np.uint8),
            },
            "robot_obs": self.robot_obs.copy(),
            "scene_obs": self.scene_obs.copy(),
        }

    def get_info(self) -> dict:
        return {"t": self.t, "progress": self.progress, "num_resets": len(self.resets)}

    def close(self) -> None:
        pass


class ScriptedOracle:
    def __init__(self, succeed_after: dict[str, int] | None = None, difficulty: dict[str, float] | None = None):
        self.succeed_after = succeed_after
        self.difficulty = difficulty
        self.calls: list[tuple[dict, dict, set[str]]] = []

    def get_task_info_for_set(self, start_info: dict, end_info: dict, task_filter: set[str]) -> set[str]:
        self.calls.append((dict(start_info), dict(end_info), set(task_filter)))
        out = set()
        for task in task_filter:
            if self.succeed_after is not None:
                n = self.succeed_after.get(task)
                if n is not None and end_info["t"] - start_info["t"] >= n:
                    out.add(task)
            elif self.difficulty is not None:
                x = self.difficulty.get(task, default_difficulty(task))
                if end_info["progress"] - start_info["progress"] >= x:
                    out.add(task)
        return out


def default_difficulty(task: str) -> float:
    """A task-dependent amount of progress (4..19) so that short episodes fail some tasks."""
    return 4.0 + sum(task.encode()) % 16


class RandomPolicy:
    def __init__(self, action_dim: int = 7):
        self.action_dim = action_dim
        self.resets = 0
        self.instructions: list[str] = []

    def reset(self) -> None:
        self.resets += 1

    def step(self, obs: dict, instruction: str) -> np.ndarray:
        assert "rgb_obs" in obs and "rgb_static" in obs["rgb_obs"]
        self.instructions.append(instruction)
        return np.random.uniform(-1.0, 1.0, size=self.action_dim).astype(np.float32)


@dataclass(frozen=True)
class ScriptedEnvFactory:
    """Picklable (env, oracle) factory."""

    difficulty: dict[str, float] | None = None
    succeed_after: dict[str, int] | None = None
    fail_on_reset: int | None = None
    image_size: int = 200

    def __call__(self) -> tuple[ScriptedEnv, ScriptedOracle]:
        env = ScriptedEnv(image_size=self.image_size, fail_on_reset=self.fail_on_reset)
        oracle = ScriptedOracle(
            succeed_after=self.succeed_after,
            difficulty=self.difficulty if self.difficulty is not None or self.succeed_after is not None else {},
        )
        return env, oracle


@dataclass
class RandomPolicyFactory:
    """Picklable policy factory; `settings` goes into eval_config.json like a real checkpoint's."""

    name: str = "fake_checkpoint"
    settings: dict[str, Any] = field(default_factory=dict)

    def __call__(self, device: str) -> RandomPolicy:
        return RandomPolicy()
