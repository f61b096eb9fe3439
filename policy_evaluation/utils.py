"""Reset states for the CALVIN evaluation (port of calvin_agent.evaluation.utils.get_env_state_for_initial_condition).

The block placement and yaw are drawn with numpy's legacy RNG seeded by ``fnv1_32(str(initial_condition.values()))``,
e.g. ``"dict_values([1, 1, 'left', 'open', 'slider_left', 'table', 'slider_right', 0])"``. A local ``RandomState``
is used instead of the original's ``temp_seed`` on the global RNG; the stream is identical.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from policy_evaluation.fnv import fnv1_32

NEUTRAL_ROBOT_OBS = np.array(
    [
        0.02586889, -0.2313129, 0.5712808,  # tcp pos
        3.09045411, -0.02908596, 1.50013585,  # tcp euler
        0.07999963,  # gripper opening width
        -1.21779124, 1.03987629, 2.11978254, -2.34205014, -0.87015899, 1.64119093, 0.55344928,  # arm joints
        1.0,  # gripper action (open)
    ]
)  # fmt: skip
BLOCK_ROT_Z_RANGE = (np.pi / 2 - np.pi / 8, np.pi / 2 + np.pi / 8)
BLOCK_SLIDER_LEFT = np.array([-2.40851662e-01, 9.24044687e-02, 4.60990009e-01])
BLOCK_SLIDER_RIGHT = np.array([7.03416330e-02, 9.24044687e-02, 4.60990009e-01])
BLOCK_TABLE = (
    np.array([5.00000896e-02, -1.20000177e-01, 4.59990009e-01]),
    np.array([2.29995412e-01, -1.19995140e-01, 4.59990010e-01]),
)
CONDITION_KEYS = ("led", "lightbulb", "slider", "drawer", "red_block", "blue_block", "pink_block", "grasped")


def _plain(v: Any) -> Any:
    """numpy scalars -> python scalars, so str(dict.values()) is the same as in the original (python ints/strs)."""
    return v.item() if isinstance(v, np.generic) else v


def condition_seed(initial_condition: Mapping[str, Any]) -> int:
    """The numpy seed of a symbolic initial state: FNV-1 32 of ``str(dict.values())`` (order of the dict matters)."""
    values = {k: _plain(v) for k, v in initial_condition.items()}
    return fnv1_32(str(values.values()))


def get_env_state_for_initial_condition(initial_condition: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(robot_obs (15,), scene_obs (24,)) float64 for one symbolic initial state, as the official evaluation."""
    missing = [k for k in CONDITION_KEYS if k not in initial_condition]
    if missing:
        raise KeyError(f"initial condition lacks {missing}: {dict(initial_condition)}")
    rng = np.random.RandomState(condition_seed(initial_condition))
    block_table = [a.copy() for a in BLOCK_TABLE]
    rng.shuffle(block_table)

    cond = initial_condition
    scene_obs = np.zeros(24)
    if cond["slider"] == "left":
        scene_obs[0] = 0.28
    if cond["drawer"] == "open":
        scene_obs[1] = 0.22
    if cond["lightbulb"] == 1:
        scene_obs[3] = 0.088
    scene_obs[4] = cond["lightbulb"]
    scene_obs[5] = cond["led"]
    # red block
    if cond["red_block"] == "slider_right":
        scene_obs[6:9] = BLOCK_SLIDER_RIGHT
    elif cond["red_block"] == "slider_left":
        scene_obs[6:9] = BLOCK_SLIDER_LEFT
    else:
        scene_obs[6:9] = block_table[0]
    scene_obs[11] = rng.uniform(*BLOCK_ROT_Z_RANGE)
    # blue block
    if cond["blue_block"] == "slider_right":
        scene_obs[12:15] = BLOCK_SLIDER_RIGHT
    elif cond["blue_block"] == "slider_left":
        scene_obs[12:15] = BLOCK_SLIDER_LEFT
    elif cond["red_block"] == "table":
        scene_obs[12:15] = block_table[1]
    else:
        scene_obs[12:15] = block_table[0]
    scene_obs[17] = rng.uniform(*BLOCK_ROT_Z_RANGE)
    # pink block
    if cond["pink_block"] == "slider_right":
        scene_obs[18:21] = BLOCK_SLIDER_RIGHT
    elif cond["pink_block"] == "slider_left":
        scene_obs[18:21] = BLOCK_SLIDER_LEFT
    else:
        scene_obs[18:21] = block_table[1]
    scene_obs[23] = rng.uniform(*BLOCK_ROT_Z_RANGE)
    return NEUTRAL_ROBOT_OBS.copy(), scene_obs
