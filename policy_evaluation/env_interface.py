"""Interfaces between the evaluator, the simulators and the policy.

The evaluator only talks to these protocols; it never imports calvin_env or pybullet itself. A factory returns an
(env, oracle) pair (see `calvin_env_adapter.CalvinEnvFactory` and `suites.SimEnvFactory`).

Observation dict: {"rgb_obs": {"rgb_static": uint8 (200, 200, 3), "rgb_gripper": uint8 (84, 84, 3)},
                   "robot_obs": float64 (15,), "scene_obs": float64 (24,)}
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class EvalEnv(Protocol):
    """calvin_env's PlayTableSimEnv semantics."""

    def reset(self, robot_obs: np.ndarray | None = None, scene_obs: np.ndarray | None = None) -> dict: ...

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, dict]:
        """7-D relative action [dx, dy, dz, droll, dpitch, dyaw, gripper]; the gripper is already +-1."""
        ...

    def get_obs(self) -> dict: ...

    def get_info(self) -> dict: ...


@runtime_checkable
class TaskOracle(Protocol):
    """calvin_env.envs.tasks.Tasks: which of `task_filter` were achieved between two `get_info()` dicts."""

    def get_task_info_for_set(self, start_info: dict, end_info: dict, task_filter: set[str]) -> set[str]: ...


@runtime_checkable
class EvalPolicy(Protocol):
    """The closed-loop part of policy_models.policy.VPPPolicy used by the evaluator."""

    def reset(self) -> None: ...

    def step(self, obs: dict, instruction: str) -> np.ndarray:
        """Raw env obs dict -> (action_dim,) action of the current chunk (replans every `multistep` calls)."""
        ...


class EnvFactory(Protocol):
    """Picklable callable building one (env, oracle) pair; called once per evaluation process."""

    def __call__(self) -> tuple[EvalEnv, TaskOracle]: ...


class PolicyFactory(Protocol):
    """Picklable callable building the policy on a device; `name` keys results.json."""

    name: str

    def __call__(self, device: str) -> EvalPolicy: ...


def close_env(env: Any) -> None:
    """Best-effort close of an env that may or may not have `close()`."""
    close = getattr(env, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # pragma: no cover - closing must never mask the real error
            pass

