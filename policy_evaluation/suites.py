"""Evaluation suites: which sequences, which reset states, which instructions and which simulator.

* "calvin": the official 1000 CALVIN sequences (all 34 tasks), calvin's reset states, the validation instructions of
  policy_conf/annotations/new_playtable_validation.yaml (entry [0]), and calvin_env.
* "sim": the built-in simulator (vpp_sim) with the task subset its scripted expert solves; sequences come from the
  same generator and rules (`multistep_sequences.generate_sequences` with the sim's task table), reset states from
  vpp_sim's own scene geometry with calvin's seeding rules.
* "sim:<task,task,...>": the sim suite restricted to a subset of those tasks (`sim_suite(tasks=...)`), for
  experiments trained on that subset. Same generator and rules over `vpp_sim.tasks.sim_task_table(tasks)`; since
  the tasks of a chain must come from distinct categories, the chains are as long as the subset allows
  (min(5, number of categories)), e.g. 3 for drawer + slider + LED. The name carries the task list, so it is part of
  the run identity that a resume or a merge must match.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
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


class SuiteError(ValueError):
    """A suite cannot be built as asked (unknown tasks, no valid chains); the message names the tasks."""


def sim_task_table() -> ms.TaskTable:
    """The built-in simulator's task subset: calvin's TaskTable restricted to vpp_sim.tasks.SIM_TASKS."""
    from vpp_sim import tasks as st

    return st.sim_task_table()


def parse_sim_tasks(tasks: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """'a,b,c' or a list -> the tasks in SIM_TASKS order (so the order given does not change the run identity);
    None when no subset (or all of SIM_TASKS) is asked for. Unknown names -> SuiteError listing the valid ones."""
    from vpp_sim.tasks import SIM_TASKS

    if tasks is None:
        return None
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks)]
    names = [t for t in names if t]
    if not names:
        raise SuiteError("--sim_tasks is empty; give a comma-separated list of tasks")
    unknown = sorted(set(names) - set(SIM_TASKS))
    if unknown:
        raise SuiteError(f"unknown sim tasks {unknown}; valid tasks: {', '.join(SIM_TASKS)}")
    chosen = tuple(t for t in SIM_TASKS if t in set(names))
    return None if len(chosen) == len(SIM_TASKS) else chosen


def sim_subset_table(tasks: Iterable[str]) -> ms.TaskTable:
    """`vpp_sim.tasks.sim_task_table(tasks)` with chains of min(5, number of distinct categories) tasks.

    Raises SuiteError naming the tasks when some initial state has no valid chain: the official generator assigns
    sequences to every initial state and would otherwise reject-sample forever."""
    from vpp_sim import tasks as st

    tasks = list(tasks)
    seq_len = min(ms.SEQ_LEN, len({ms.CALVIN_TASK_CATEGORIES[t] for t in tasks}))
    if seq_len == ms.SEQ_LEN:
        table = st.sim_task_table(tasks)
    else:  # TaskTable asks for >= seq_len tasks: shorten the chains before restricting the table
        table = replace(st.sim_task_table(), seq_len=seq_len).subset(tasks)
    stuck = [s for s in ms.get_initial_states(table) if not _has_chain(s, table, frozenset(), seq_len)]
    if stuck:
        raise SuiteError(
            f"the sequence generator cannot build chains of {seq_len} tasks from distinct categories over {tasks}: "
            f"no valid chain starts from {len(stuck)} of {len(ms.get_initial_states(table))} initial states "
            f"(e.g. {stuck[0]}); add tasks that apply there (e.g. both directions of a drawer, slider or light)"
        )
    return table


def _has_chain(state: Mapping[str, Any], table: ms.TaskTable, used: frozenset[int], depth: int) -> bool:
    """Whether some feasible chain of `depth` more tasks of unused categories starts from `state` (depth-first)."""
    if depth == 0:
        return True
    for task in table.task_names:
        category = table.categories[task]
        if category in used:
            continue
        nxt = ms.valid_task(state, table.tasks[task])
        if len(nxt) == 1 and _has_chain(nxt[0], table, used | {category}, depth - 1):
            return True
    return False


@dataclass(frozen=True)
class SimEnvFactory:
    """Picklable factory for the built-in simulator (vpp_sim.make_sim_env). Policies that ignore images (the
    baselines) can switch the cameras off, which makes pybullet steps several times faster."""

    seed: int = 0
    cameras: tuple[str, ...] = ("static", "gripper")

    def __call__(self):
        from vpp_sim import make_sim_env

        return make_sim_env(seed=self.seed, cameras=self.cameras)


def sim_suite(
    seed: int = 0,
    annotations: str | Path = DEFAULT_ANNOTATIONS,
    tasks: str | Iterable[str] | None = None,
    cameras: tuple[str, ...] = ("static", "gripper"),
) -> EvalSuite:
    """The built-in simulator's suite, over `tasks` (see `parse_sim_tasks`; default: all of SIM_TASKS)."""
    from vpp_sim import tasks as st

    subset = parse_sim_tasks(tasks)
    chosen = subset or st.SIM_TASKS
    table = sim_task_table() if subset is None else sim_subset_table(subset)
    instructions = load_instructions(annotations)
    return EvalSuite(
        name="sim" if subset is None else "sim:" + ",".join(subset),
        task_table=table,
        reset_state=st.get_env_state_for_initial_condition,
        instructions={t: instructions[t] for t in chosen},
        env_factory=SimEnvFactory(seed, tuple(cameras)),
        sequence_fn=partial(_cached_sim_sequences, table=table, subset=subset),
    )


_SIM_CACHE: dict[tuple[tuple[str, ...] | None, int], list] = {}


def _cached_sim_sequences(num_sequences: int, table: ms.TaskTable, subset: tuple[str, ...] | None) -> list:
    """Sequences per (task subset, count), `table` being that subset's: generating them takes seconds, and the
    runner asks more than once."""
    key = (subset, num_sequences)
    if key not in _SIM_CACHE:
        _SIM_CACHE[key] = ms.generate_sequences(num_sequences, table)
    return [(dict(s), t) for s, t in _SIM_CACHE[key]]
