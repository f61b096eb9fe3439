"""Evaluation suites: which sequences, which reset states, which instructions and which simulator.

* "calvin": the official 1000 CALVIN sequences (all 34 tasks), calvin's reset states, the validation instructions of
  policy_conf/annotations/new_playtable_validation.yaml (entry [0]), and calvin_env.
* "sim": the built-in simulator (vpp_sim) with the task subset its scripted expert solves; sequences come from the
  same generator and rules (`multistep_sequences.generate_sequences` with the sim's task table), reset states from
  vpp_sim's own scene geometry with calvin's seeding rules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from policy_evaluation import multistep_sequences as ms
from policy_evaluation.env_interface import EnvFactory
from policy_evaluation.utils import get_env_state_for_initial_condition

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ANNOTATIONS = REPO_ROOT / "policy_conf" / "annotations" / "new_playtable_validation.yaml"


def load_instructions(path: str | Path = DEFAULT_ANNOTATIONS) -> dict[str, str]:
    """{task: instruction}: entry [0] of each task's list, as the official evaluation uses."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"instruction file not found: {path}")
    data = yaml.safe_load(path.read_text())
    out = {}
    for task, value in data.items():
        out[task] = value[0] if isinstance(value, list) else str(value)
    return out


@dataclass
class EvalSuite:
    name: str
    task_table: ms.TaskTable
    reset_state: Callable[[Mapping[str, Any]], tuple[np.ndarray, np.ndarray]]
    instructions: dict[str, str]
    env_factory: EnvFactory | None = None
    sequence_fn: Callable[[int], list] | None = field(default=None, repr=False)

    def sequences(self, num_sequences: int) -> list[tuple[dict, tuple[str, ...]]]:
        if self.sequence_fn is not None:
            return self.sequence_fn(num_sequences)
        return ms.generate_sequences(num_sequences, self.task_table)


def calvin_suite(
    calvin_abc_dir: str | Path | None = None,
    annotations: str | Path = DEFAULT_ANNOTATIONS,
    tasks_yaml: str | Path | None = None,
    use_egl: bool | None = None,
) -> EvalSuite:
    from policy_evaluation.calvin_env_adapter import DEFAULT_TASKS_YAML, CalvinEnvFactory

    factory = None
    if calvin_abc_dir is not None:
        factory = CalvinEnvFactory(str(calvin_abc_dir), str(tasks_yaml or DEFAULT_TASKS_YAML), use_egl)
    return EvalSuite(
        name="calvin",
        task_table=ms.CALVIN_TASK_TABLE,
        reset_state=get_env_state_for_initial_condition,
        instructions=load_instructions(annotations),
        env_factory=factory,
        sequence_fn=ms.get_sequences,
    )


def sim_task_table() -> ms.TaskTable:
    """The built-in simulator's task subset: calvin's TaskTable restricted to vpp_sim.tasks.SIM_TASKS."""
    from vpp_sim import tasks as st

    return st.sim_task_table()


@dataclass(frozen=True)
class SimEnvFactory:
    """Picklable factory for the built-in simulator (vpp_sim.make_sim_env)."""

    seed: int = 0

    def __call__(self):
        from vpp_sim import make_sim_env

        return make_sim_env(seed=self.seed)


def sim_suite(seed: int = 0, annotations: str | Path = DEFAULT_ANNOTATIONS) -> EvalSuite:
    from vpp_sim import tasks as st

    instructions = load_instructions(annotations)
    return EvalSuite(
        name="sim",
        task_table=sim_task_table(),
        reset_state=st.get_env_state_for_initial_condition,
        instructions={t: instructions[t] for t in st.SIM_TASKS},
        env_factory=SimEnvFactory(seed),
        sequence_fn=_cached_sim_sequences,
    )


_SIM_CACHE: dict[int, list] = {}


def _cached_sim_sequences(num_sequences: int) -> list:
    if num_sequences not in _SIM_CACHE:
        _SIM_CACHE[num_sequences] = ms.generate_sequences(num_sequences, sim_task_table())
    return [(dict(s), t) for s, t in _SIM_CACHE[num_sequences]]
