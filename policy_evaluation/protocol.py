"""One CALVIN long-horizon sequence (calvin_agent.evaluation.evaluate_policy.evaluate_sequence / rollout).

Protocol (calvin_reference.md §4 "Running a sequence"):
* `env.reset(robot_obs, scene_obs)` once per sequence; the env is never reset between subtasks.
* Per subtask: `obs = env.get_obs()`, `policy.reset()`, fresh `start_info = env.get_info()`, then up to `ep_len`
  steps of `action = policy.step(obs, instruction)`; the gripper dimension is binarised (> 0 -> +1, else -1) on a
  copy before `env.step`; after *every* step the oracle is asked whether the subtask was achieved between
  `start_info` and the current info; the first success ends the subtask.
* A subtask that is not achieved within `ep_len` steps ends the sequence. The result is the number of consecutive
  successes (0..5). Tasks achieved by accident do not matter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policy_evaluation.env_interface import EvalEnv, EvalPolicy, TaskOracle

EP_LEN = 360


def binarize_gripper(action: Any) -> np.ndarray:
    """A float64 copy of the 7-D action with the last (gripper) entry mapped to +1 if > 0 else -1 (NaN -> -1)."""
    if hasattr(action, "detach"):  # torch tensor
        action = action.detach().float().cpu().numpy()
    a = np.array(action, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError("policy returned an empty action")
    a[-1] = 1.0 if a[-1] > 0 else -1.0
    return a


@dataclass
class SequenceOutcome:
    """What happened in one sequence. `steps[k]` is the number of env steps used by subtask k (ep_len for the
    failed one); `len(steps) == min(result + 1, len(tasks))`."""

    result: int
    steps: list[int]
    frames: list[np.ndarray] = field(default_factory=list)  # rgb_static after reset and after every step
    frame_subtask: list[int] = field(default_factory=list)  # subtask index shown by each frame (-1: reset frame)

    @property
    def successes(self) -> list[bool]:
        return [k < self.result for k in range(len(self.steps))]


def run_sequence(
    env: EvalEnv,
    oracle: TaskOracle,
    policy: EvalPolicy,
    robot_obs: np.ndarray,
    scene_obs: np.ndarray,
    tasks: Sequence[str],
    instructions: Mapping[str, str],
    ep_len: int = EP_LEN,
    record: bool = False,
    record_camera: str = "rgb_static",
) -> SequenceOutcome:
    """Roll out one sequence of subtasks from the given reset state (see module docstring)."""
    if ep_len < 1:
        raise ValueError(f"ep_len must be >= 1, got {ep_len}")
    missing = [t for t in tasks if t not in instructions]
    if missing:
        raise KeyError(f"no instruction for tasks {missing}")
    obs = env.reset(robot_obs=np.asarray(robot_obs), scene_obs=np.asarray(scene_obs))
    out = SequenceOutcome(result=0, steps=[])
    if record:
        out.frames.append(_frame(obs, record_camera))
        out.frame_subtask.append(-1)
    for k, subtask in enumerate(tasks):
        obs = env.get_obs()
        instruction = instructions[subtask]
        policy.reset()
        start_info = env.get_info()
        success = False
        used = ep_len
        for step in range(ep_len):
            action = binarize_gripper(policy.step(obs, instruction))
            obs, _, _, info = env.step(action)
            if record:
                out.frames.append(_frame(obs, record_camera))
                out.frame_subtask.append(k)
            if oracle.get_task_info_for_set(start_info, info, {subtask}):
                success = True
                used = step + 1
                break
        out.steps.append(used)
        if not success:
            break
        out.result += 1
    return out


def _frame(obs: Mapping[str, Any], camera: str) -> np.ndarray:
    return np.array(obs["rgb_obs"][camera], dtype=np.uint8, copy=True)
