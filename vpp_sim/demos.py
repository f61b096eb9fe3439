"""Demonstration episodes: a varied start state for a task, the scripted expert's rollout, the oracle's verdict."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vpp_sim import assets as A
from vpp_sim.env import NEUTRAL_TCP_POS, TabletopEnv
from vpp_sim.expert import ExpertFailure, ScriptedExpert
from vpp_sim.oracle import TaskOracle
from vpp_sim.perturb import Perturber
from vpp_sim.tasks import COLORS, NEUTRAL_ROBOT_OBS, sample_initial_condition, scene_from_condition

MAX_EPISODE_STEPS = 360  # calvin's per-subtask budget
MIN_EPISODE_FRAMES = 64  # short demonstrations are padded with "hold" steps (calvin's annotation windows are 64)


@dataclass
class Episode:
    task: str
    success: bool
    first_success_step: int | None
    robot_obs0: np.ndarray
    scene_obs0: np.ndarray
    # per frame t: the observation before action t (frames), the relative action, the absolute target pose
    frames: list[dict] = field(default_factory=list)
    rel_actions: list[np.ndarray] = field(default_factory=list)
    abs_actions: list[np.ndarray] = field(default_factory=list)
    perturbed_steps: int = 0  # steps whose executed action differed from the recorded expert action


def _push_is_clear(scene: np.ndarray, color: str, direction: str) -> bool:
    """The block can travel 0.15 m along x without leaving the free table or hitting another table block."""
    s = 1.0 if direction == "right" else -1.0
    i = COLORS.index(color)
    x, y = scene[6 + 6 * i], scene[7 + 6 * i]
    x_end = x + s * 0.16
    if not (-0.3 <= x_end <= 0.32):
        return False
    for j, other in enumerate(COLORS):
        if other == color or scene[8 + 6 * j] > 0.05 or scene[7 + 6 * j] > 0.05:
            continue
        ox, oy = scene[6 + 6 * j], scene[7 + 6 * j]
        if abs(oy - y) < 0.085 and min(x, x_end) - 0.13 <= ox <= max(x, x_end) + 0.09:
            return False
    return True


def sample_start(env: TabletopEnv, task: str, rng: np.random.Generator, tries: int = 200):
    """(robot_obs, scene_obs) for a demonstration of ``task``: a random symbolic condition where the task applies,
    blocks anywhere on the free table with random yaw, and the arm at a random pose above the scene."""
    for _ in range(tries):
        cond = sample_initial_condition(rng, task)
        scene = scene_from_condition(rng, cond)
        if task.startswith("push_") and not _push_is_clear(scene, task.split("_")[1], task.split("_")[-1]):
            continue
        break
    else:
        raise RuntimeError(f"sample_start: no feasible scene for {task!r} in {tries} tries")
    # door and drawer states jittered inside their symbolic class
    scene[0] = np.clip(scene[0] + rng.uniform(-0.02, 0.02), *A.SLIDE_RANGE)
    scene[1] = np.clip(scene[1] + rng.uniform(-0.02, 0.02), *A.DRAWER_RANGE)
    pos = NEUTRAL_TCP_POS + rng.uniform([-0.12, -0.06, -0.08], [0.12, 0.08, 0.04])
    yaw = np.pi / 2 + rng.uniform(-0.4, 0.4)
    robot = NEUTRAL_ROBOT_OBS.copy()
    robot[7:14] = env.solve_ik(pos, (np.pi, 0.0, yaw))
    return robot, scene


def run_expert_episode(
    env: TabletopEnv,
    task: str,
    rng: np.random.Generator,
    robot_obs: np.ndarray | None = None,
    scene_obs: np.ndarray | None = None,
    record: bool = True,
    oracle: TaskOracle | None = None,
    min_frames: int = MIN_EPISODE_FRAMES,
    perturber: Perturber | None = None,
) -> Episode:
    """Reset to a (sampled) start, run the expert, judge the final state with the oracle.

    With ``record`` the episode holds one frame per step (the observation the action was taken in), plus the final
    observation as the last frame, whose action is a hold (the arm stays); success is judged on the final state.
    With a ``perturber`` the env executes perturbed actions while the expert's own actions (and the target poses they
    would have set) are recorded (see vpp_sim.perturb).
    """
    oracle = oracle or TaskOracle()
    if robot_obs is None or scene_obs is None:
        robot_obs, scene_obs = sample_start(env, task, rng)
    obs = env.reset(robot_obs=robot_obs, scene_obs=scene_obs)
    start_info = env.get_info()
    ep = Episode(task, False, None, np.asarray(robot_obs).copy(), np.asarray(scene_obs).copy())
    expert = ScriptedExpert(env, rng)
    info = start_info
    steps = 0

    def do(action):
        nonlocal obs, info, steps
        action = np.asarray(action, dtype=np.float64)
        if record:
            ep.frames.append(obs)
            ep.rel_actions.append(action.copy())
            ep.abs_actions.append(np.concatenate([*env.target_after(action), [action[6]]]))
        obs, _, _, info = env.step(action if perturber is None else perturber(action))
        steps += 1
        if ep.first_success_step is None and oracle.check(task, start_info, info):
            ep.first_success_step = steps

    try:
        for action in expert.actions(task):
            do(action)
            if steps >= MAX_EPISODE_STEPS - 1:
                break
    except ExpertFailure:
        return ep
    hold = np.array([0, 0, 0, 0, 0, 0, env.gripper_action])
    while record and steps < min_frames - 1:
        do(hold)
    ep.success = oracle.check(task, start_info, info)
    ep.perturbed_steps = 0 if perturber is None else perturber.perturbed_steps
    if record:  # the final observation closes the episode, with a hold action
        ep.frames.append(obs)
        ep.rel_actions.append(hold.copy())
        ep.abs_actions.append(np.concatenate([env.target_pos, env.target_orn, [env.gripper_action]]))
    return ep
