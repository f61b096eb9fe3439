"""The simulator's task table and the CALVIN evaluation bookkeeping that depends on the scene.

- ``SIM_TASKS``: the subset the scripted expert solves (the tasks the built-in sim is evaluated on).
- ``sim_task_table()``: calvin's symbolic TaskTable (policy_evaluation.multistep_sequences) restricted to SIM_TASKS,
  for the chain-of-5 sequence generator.
- ``get_env_state_for_initial_condition(cond)``: symbolic initial condition -> (robot_obs, scene_obs) for this
  sim, with calvin's rules (shuffled table spots, yaw in pi/2 +- pi/8, FNV-1 seeded RNG).
- ``sample_initial_condition`` / ``scene_from_condition``: varied start scenes for the demonstrations.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable

import numpy as np

from policy_evaluation.multistep_sequences import CALVIN_TASK_TABLE, TaskTable, get_initial_states, valid_task
from policy_evaluation.utils import condition_seed
from vpp_sim import assets as A

COLORS = ("red", "blue", "pink")

# The tasks the scripted expert solves reliably (measured in docs/SIMULATOR.md). Five categories (rotate/push,
# slider, drawer, lift from table, lights), so chains of 5 with 5 distinct categories exist.
SIM_TASKS: tuple[str, ...] = (
    *(f"{k}_{c}_block_{d}" for k in ("rotate", "push") for c in COLORS for d in ("right", "left")),
    "move_slider_left",
    "move_slider_right",
    "open_drawer",
    "close_drawer",
    *(f"lift_{c}_block_table" for c in COLORS),
    "turn_on_lightbulb",
    "turn_off_lightbulb",
    "turn_on_led",
    "turn_off_led",
)


def sim_task_table(tasks: Iterable[str] = SIM_TASKS) -> TaskTable:
    """calvin's symbolic table (rules, categories, initial-state space and filter) restricted to ``tasks``."""
    return CALVIN_TASK_TABLE.subset(list(tasks))


def task_applies(task: str, state: dict) -> bool:
    """calvin's feasibility rule for one step: exactly one condition -> effect rule of ``task`` holds."""
    return len(valid_task(state, CALVIN_TASK_TABLE.tasks[task])) == 1


# ---------------------------------------------------------------------------------------------------------------
# Symbolic condition -> simulator state
# ---------------------------------------------------------------------------------------------------------------
TABLE_SPOTS = ((-0.06, -0.15), (0.12, -0.15))  # calvin's two table spots, 0.18 m apart
SLIDER_SPOTS = {"slider_left": (-0.18, 0.21), "slider_right": (0.18, 0.21)}
SLIDER_OPEN = A.SLIDE_RANGE[1]  # "left"
DRAWER_OPEN = A.DRAWER_RANGE[1]
SWITCH_ON = A.SWITCH_RANGE[1]

# robot_obs of the neutral pose (TCP above the table centre, pointing down, gripper open); reset() only reads
# the joints [7:14], the width [6] and the gripper action [14].
NEUTRAL_ROBOT_OBS = np.array(
    [0.0, -0.25, 0.3, np.pi, 0.0, np.pi / 2, 0.08, 0.0, -0.592405, 0.0, -2.710236, 0.0, 2.117688, 0.785359, 1.0]
)


def block_z(name: str, place: str) -> float:
    base = A.PLANK_TOP_Z if place.startswith("slider") else 0.0
    return base + A.BLOCK_HALF[name][2]


def get_env_state_for_initial_condition(initial_condition: dict) -> tuple[np.ndarray, np.ndarray]:
    """(robot_obs, scene_obs) for a symbolic initial condition, with calvin's rules and seeding."""
    missing = [k for k in CALVIN_TASK_TABLE.possible_conditions if k not in initial_condition]
    if missing:
        raise KeyError(f"get_env_state_for_initial_condition: condition lacks {missing}")
    rng = np.random.RandomState(condition_seed(initial_condition))
    cond = initial_condition
    scene = np.zeros(24)
    scene[0] = SLIDER_OPEN if cond["slider"] == "left" else 0.0
    scene[1] = DRAWER_OPEN if cond["drawer"] == "open" else 0.0
    scene[3] = SWITCH_ON if cond["lightbulb"] else 0.0
    scene[4] = float(cond["lightbulb"])
    scene[5] = float(cond["led"])
    spots = list(TABLE_SPOTS)
    rng.shuffle(spots)
    red_on_table = cond["red_block"] == "table"
    spot_index = {"red": 0, "blue": 1 if red_on_table else 0, "pink": 1}
    for i, c in enumerate(COLORS):
        name = f"block_{c}"
        place = cond[f"{c}_block"]
        xy = spots[spot_index[c]] if place == "table" else SLIDER_SPOTS[place]
        scene[6 + 6 * i : 9 + 6 * i] = (xy[0], xy[1], block_z(name, place))
        scene[11 + 6 * i] = rng.uniform(np.pi / 2 - np.pi / 8, np.pi / 2 + np.pi / 8)
    return NEUTRAL_ROBOT_OBS.copy(), scene


# ---------------------------------------------------------------------------------------------------------------
# Varied scenes for demonstrations
# ---------------------------------------------------------------------------------------------------------------
TABLE_SAMPLE_X = (-0.2, 0.24)
TABLE_SAMPLE_Y = (-0.25, -0.05)
MIN_BLOCK_DISTANCE = 0.11


def sample_table_positions(rng: np.random.Generator, n: int, tries: int = 1000) -> list[tuple[float, float]]:
    """n block positions on the free part of the table, pairwise at least MIN_BLOCK_DISTANCE apart."""
    for _ in range(tries):
        xy = [(rng.uniform(*TABLE_SAMPLE_X), rng.uniform(*TABLE_SAMPLE_Y)) for _ in range(n)]
        if all(np.hypot(a[0] - b[0], a[1] - b[1]) >= MIN_BLOCK_DISTANCE for a, b in itertools.combinations(xy, 2)):
            return xy
    raise RuntimeError("sample_table_positions: no collision-free placement found")


@functools.cache
def _conditions_for(task: str) -> list[dict]:
    return [c for c in get_initial_states() if task_applies(task, c)]


def sample_initial_condition(rng: np.random.Generator, task: str) -> dict:
    """A random valid symbolic initial condition in which ``task`` applies."""
    conds = _conditions_for(task)
    if not conds:
        raise ValueError(f"sample_initial_condition: {task!r} applies in no initial condition")
    return conds[rng.integers(len(conds))]


def scene_from_condition(rng: np.random.Generator, cond: dict, yaw_spread: float = np.pi / 3) -> np.ndarray:
    """A varied scene_obs for a symbolic condition: table blocks anywhere on the free table, random yaw."""
    _, scene = get_env_state_for_initial_condition(cond)
    table = [c for c in COLORS if cond[f"{c}_block"] == "table"]
    xy = sample_table_positions(rng, len(table))
    for c in COLORS:
        i = COLORS.index(c)
        if c in table:
            scene[6 + 6 * i : 8 + 6 * i] = xy[table.index(c)]
        else:
            scene[6 + 6 * i : 8 + 6 * i] += rng.uniform(-0.02, 0.02, size=2)
        scene[11 + 6 * i] = rng.uniform(np.pi / 2 - yaw_spread, np.pi / 2 + yaw_spread)
    return scene
