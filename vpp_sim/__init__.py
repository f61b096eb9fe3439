"""Built-in tabletop simulator with calvin_env's interface, its task oracle, scripted expert and dataset writer.

Entry points:
- ``make_sim_env(seed, ...) -> (env, oracle)``: the env (``reset/step/get_obs/get_info``) and the task oracle
  (``get_task_info_for_set``), as the evaluator expects.
- ``vpp_sim.tasks``: ``SIM_TASKS``, ``sim_task_table()`` (for the chain-of-5 generator) and
  ``get_env_state_for_initial_condition(cond) -> (robot_obs, scene_obs)``.
- ``python -m vpp_sim.generate``: CALVIN-format demonstrations + the stage-1 video layout.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vpp_sim.env import TabletopEnv
    from vpp_sim.oracle import TaskOracle


def make_sim_env(
    seed: int = 0,
    cameras: tuple[str, ...] = ("static", "gripper"),
    static_size: int = 200,
    gripper_size: int = 84,
    tasks: Iterable[str] | None = None,
) -> tuple[TabletopEnv, TaskOracle]:
    """(TabletopEnv, TaskOracle). ``tasks`` limits the oracle (default: all 34 CALVIN task names)."""
    from vpp_sim.env import TabletopEnv
    from vpp_sim.oracle import TaskOracle

    env = TabletopEnv(seed=seed, cameras=tuple(cameras), static_size=static_size, gripper_size=gripper_size)
    return env, TaskOracle(tasks)


__all__ = ["make_sim_env"]
