"""Reference policies for the evaluator, selected with `--baseline` instead of a checkpoint.

* "random": uniform relative actions in [-1, 1]^6 and a gripper drawn from {-1, +1}: the floor a learned policy
  must beat.
* "expert": vpp_sim's ScriptedExpert for the current subtask: the ceiling on the built-in simulator. It reads
  privileged simulator state, so its factory sets `needs_env` and the runner hands it the process's env
  (`runner.make_policy`). The subtask is found from the instruction through the suite's {task: instruction} map.

Both draw their randomness from a generator seeded at every `reset()` from numpy's global stream, which the runner
seeds with `seed + sequence index`: sequence i gets the same actions whichever worker runs it, in whatever order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

BASELINES = ("random", "expert")


def _child_rng() -> np.random.Generator:
    """A generator seeded from numpy's global stream (seeded per sequence by the runner)."""
    return np.random.default_rng(np.random.randint(0, 2**31 - 1))


def noop_action(obs: Mapping[str, Any]) -> np.ndarray:
    """Zero motion, the gripper kept as it was last commanded (robot_obs[14] is the last gripper action)."""
    grip = 1.0 if float(np.asarray(obs["robot_obs"])[14]) > 0 else -1.0
    return np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, grip])


class RandomActionPolicy:
    """Uniform random relative actions; ignores the observation and the instruction."""

    def __init__(self) -> None:
        self._rng = _child_rng()

    def reset(self) -> None:
        self._rng = _child_rng()

    def step(self, obs: Mapping[str, Any], instruction: str) -> np.ndarray:
        action = np.empty(7)
        action[:6] = self._rng.uniform(-1.0, 1.0, size=6)
        action[6] = self._rng.choice((-1.0, 1.0))
        return action


class ExpertPolicy:
    """ScriptedExpert(env).actions(task) for the subtask named by the instruction.

    The action generator restarts at every `reset()` (the protocol calls it once per subtask) and whenever the
    instruction changes; once it is exhausted, or if the expert cannot plan the task from the current state
    (ExpertFailure, e.g. the block to lift is not on the table), the policy emits `noop_action` until the next
    subtask, so the protocol scores the subtask as it would any policy's.
    """

    def __init__(self, env: Any, instructions: Mapping[str, str]):
        from vpp_sim.env import TabletopEnv
        from vpp_sim.expert import ScriptedExpert

        if not isinstance(env, TabletopEnv):
            raise TypeError(f"the expert baseline needs the built-in simulator (--env sim), got {type(env).__name__}")
        self._task_of = _invert(instructions)
        self._expert = ScriptedExpert(env, rng=_child_rng())
        self._actions: Iterator[np.ndarray] | None = None
        self._instruction: str | None = None

    def reset(self) -> None:
        self._actions = None
        self._expert.rng = _child_rng()

    def step(self, obs: Mapping[str, Any], instruction: str) -> np.ndarray:
        from vpp_sim.expert import ExpertFailure

        try:
            if self._actions is None or instruction != self._instruction:
                self._instruction = instruction
                self._actions = self._expert.actions(self.task_for(instruction))
            return np.asarray(next(self._actions), dtype=np.float64)
        except StopIteration:
            return noop_action(obs)
        except ExpertFailure as exc:
            logger.warning("expert baseline: %s; idling for the rest of this subtask", exc)
            self._actions = iter(())
            return noop_action(obs)

    def task_for(self, instruction: str) -> str:
        try:
            return self._task_of[instruction]
        except KeyError:
            raise KeyError(f"expert baseline: instruction {instruction!r} belongs to no task of the suite") from None


def _invert(instructions: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for task, text in instructions.items():
        if text in out:
            raise ValueError(f"tasks {out[text]!r} and {task!r} share the instruction {text!r}; the expert cannot "
                             "tell them apart")
        out[text] = task
    return out


@dataclass(frozen=True)
class BaselinePolicyFactory:
    """Picklable factory for `--baseline`; `instructions` ({task: instruction}) are the suite's (expert only)."""

    kind: str
    instructions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in BASELINES:
            raise ValueError(f"unknown baseline {self.kind!r}; choose from {', '.join(BASELINES)}")

    @property
    def name(self) -> str:
        return f"baseline_{self.kind}"

    @property
    def needs_env(self) -> bool:
        return self.kind == "expert"

    @property
    def settings(self) -> dict[str, Any]:
        """Recorded in eval_config.json (a resume must match)."""
        return {"baseline": self.kind}

    def __call__(self, device: str, env: Any = None) -> RandomActionPolicy | ExpertPolicy:
        if self.kind == "random":
            return RandomActionPolicy()
        if env is None:
            raise ValueError("the expert baseline needs the env: build it through runner.make_policy")
        return ExpertPolicy(env, self.instructions)
