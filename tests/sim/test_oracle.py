"""The oracle on teleported states: each task is detected, and not detected once undone."""

import numpy as np
import pytest

pytest.importorskip("pybullet")  # the simulator; a declared dependency, but minimal images may lack it

import pybullet as pb

from vpp_sim import make_sim_env
from vpp_sim.oracle import CALVIN_TASK_SPECS, TaskOracle
from vpp_sim.tasks import SIM_TASKS, get_env_state_for_initial_condition, sim_task_table

HOLD = np.array([0, 0, 0, 0, 0, 0, 1.0])
COND = {"led": 0, "lightbulb": 0, "slider": "right", "drawer": "closed", "red_block": "table",
        "blue_block": "table", "pink_block": "slider_left", "grasped": 0}


@pytest.fixture(scope="module")
def env_oracle():
    env, oracle = make_sim_env(seed=0, cameras=())
    yield env, oracle
    env.close()


def _start(env, **changes):
    robot_obs, scene_obs = get_env_state_for_initial_condition(COND)
    for idx, value in changes.items():
        scene_obs[int(idx[1:])] = value
    env.reset(robot_obs=robot_obs, scene_obs=scene_obs)
    return env.get_info()


def _settle(env, steps=3):
    for _ in range(steps):
        env.step(HOLD)
    return env.get_info()


def _move_block(env, color, dx=0.0, dyaw=0.0):
    uid = env.block_uids[f"block_{color}"]
    pos, orn = env.p.getBasePositionAndOrientation(uid)
    yaw = pb.getEulerFromQuaternion(orn)[2] + dyaw
    env.p.resetBasePositionAndOrientation(uid, (pos[0] + dx, pos[1], pos[2]), pb.getQuaternionFromEuler((0, 0, yaw)))


def _set_joint(env, name, value):
    env.p.resetJointState(env.table_uid, env.joint_ids[name], value)


@pytest.mark.parametrize("direction,sign", [("right", 1.0), ("left", -1.0)])
def test_push(env_oracle, direction, sign):
    env, oracle = env_oracle
    start = _start(env)
    _move_block(env, "red", dx=sign * 0.12)
    end = _settle(env)
    names = {"push_red_block_right", "push_red_block_left", "push_blue_block_right"}
    assert oracle.get_task_info_for_set(start, end, names) == {f"push_red_block_{direction}"}
    every_task = oracle.get_task_info(start, end)  # calvin_env's unfiltered form
    other = "left" if direction == "right" else "right"
    assert f"push_red_block_{direction}" in every_task and f"push_red_block_{other}" not in every_task
    _move_block(env, "red", dx=-sign * 0.12)
    assert oracle.get_task_info_for_set(start, _settle(env), names) == set()


@pytest.mark.parametrize("direction,sign", [("left", 1.0), ("right", -1.0)])
def test_rotate(env_oracle, direction, sign):
    env, oracle = env_oracle
    start = _start(env)
    _move_block(env, "blue", dyaw=sign * np.radians(80))
    end = _settle(env)
    names = {"rotate_blue_block_right", "rotate_blue_block_left", "rotate_red_block_left"}
    assert oracle.get_task_info_for_set(start, end, names) == {f"rotate_blue_block_{direction}"}
    _move_block(env, "blue", dyaw=-sign * np.radians(80))
    assert oracle.get_task_info_for_set(start, _settle(env), names) == set()


@pytest.mark.parametrize(
    "joint,value,task,other",
    [
        ("base__slide", 0.2, "move_slider_left", "move_slider_right"),
        ("base__drawer", 0.18, "open_drawer", "close_drawer"),
    ],
)
def test_doors(env_oracle, joint, value, task, other):
    env, oracle = env_oracle
    start = _start(env)
    _set_joint(env, joint, value)
    end = _settle(env, 1)
    assert oracle.get_task_info_for_set(start, end, {task, other}) == {task}
    # the reverse motion from there is the other task; going back is "undone"
    assert oracle.get_task_info_for_set(end, start, {task, other}) == {other}
    _set_joint(env, joint, 0.0)
    assert oracle.get_task_info_for_set(start, _settle(env, 1), {task, other}) == set()


def test_button_toggles_led(env_oracle):
    env, oracle = env_oracle
    names = {"turn_on_led", "turn_off_led"}
    start = _start(env)
    _set_joint(env, "base__button", 0.018)  # a press past mid-travel
    pressed = _settle(env, 12)  # the spring pushes the button back up
    assert pressed["scene_info"]["buttons"]["base__button"]["joint_state"] < 0.01
    assert oracle.get_task_info_for_set(start, pressed, names) == {"turn_on_led"}
    _set_joint(env, "base__button", 0.018)  # pressed again: off, i.e. undone
    again = _settle(env, 12)
    assert oracle.get_task_info_for_set(start, again, names) == set()
    assert oracle.get_task_info_for_set(pressed, again, names) == {"turn_off_led"}


def test_switch_drives_lightbulb(env_oracle):
    env, oracle = env_oracle
    names = {"turn_on_lightbulb", "turn_off_lightbulb"}
    start = _start(env)
    _set_joint(env, "base__switch", 0.08)
    on = _settle(env, 1)
    assert oracle.get_task_info_for_set(start, on, names) == {"turn_on_lightbulb"}
    _set_joint(env, "base__switch", 0.01)
    off = _settle(env, 1)
    assert oracle.get_task_info_for_set(start, off, names) == set()
    assert oracle.get_task_info_for_set(on, off, names) == {"turn_off_lightbulb"}


def test_lift_needs_robot_only_contact(env_oracle):
    """A teleported block in mid-air touches nothing: not a lift (the expert test covers a real grasp)."""
    env, oracle = env_oracle
    start = _start(env)
    uid = env.block_uids["block_red"]
    pos, orn = env.p.getBasePositionAndOrientation(uid)
    env.p.resetBasePositionAndOrientation(uid, (pos[0], pos[1], pos[2] + 0.1), orn)
    env.p.stepSimulation()
    assert oracle.get_task_info_for_set(start, env.get_info(), {"lift_red_block_table"}) == set()


def test_task_table_and_oracle_names():
    table = sim_task_table()
    assert list(table.tasks) == [t for t in table.tasks if t in SIM_TASKS]
    assert set(table.tasks) == set(SIM_TASKS)
    assert len({table.categories[t] for t in SIM_TASKS}) >= 5  # chains of 5 distinct categories exist
    assert set(SIM_TASKS) <= set(CALVIN_TASK_SPECS) and len(CALVIN_TASK_SPECS) == 34
    with pytest.raises(KeyError):
        TaskOracle(["fly_away"])
