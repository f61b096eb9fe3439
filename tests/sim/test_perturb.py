"""DART-style perturbed demonstrations: pushes change what is executed, never what is recorded or the gripper."""

import numpy as np
import pytest

pytest.importorskip("pybullet")  # the simulator; a declared dependency, but minimal images may lack it

from vpp_sim.demos import run_expert_episode
from vpp_sim.env import TabletopEnv
from vpp_sim.generate import plan_jobs
from vpp_sim.perturb import PerturbationSpec, Perturber


def test_perturber_pushes_in_bursts_and_keeps_the_gripper():
    spec = PerturbationSpec(start_prob=0.2, min_steps=3, max_steps=5, magnitude=(0.4, 0.4), yaw=0.1)
    perturber = Perturber(spec, np.random.default_rng(0))
    action = np.array([0.9, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])
    executed = np.stack([perturber(action) for _ in range(400)])
    pushed = np.any(executed[:, :6] != action[:6], axis=1)
    assert pushed.sum() == perturber.perturbed_steps and 0.2 < pushed.mean() < 0.8
    assert np.all(executed[:, 6] == -1.0) and np.all(np.abs(executed[:, :6]) <= 1.0)
    # one push per burst: inside a burst consecutive executed actions are equal
    starts = np.flatnonzero(pushed & ~np.r_[False, pushed[:-1]])
    assert np.all(executed[starts[0]] == executed[starts[0] + 1])
    pushes = executed[pushed, :3] - action[:3]
    unclipped = np.abs(executed[pushed, 0]) < 1.0
    assert np.allclose(np.linalg.norm(pushes[unclipped], axis=1), 0.4)


def test_perturbation_spec_rejects_bad_ranges():
    with pytest.raises(ValueError, match="min_steps"):
        PerturbationSpec(min_steps=5, max_steps=2)
    with pytest.raises(ValueError, match="magnitude"):
        PerturbationSpec(magnitude=(0.5, 0.2))


def test_plan_spreads_perturbed_episodes_evenly_per_task():
    jobs = plan_jobs(["open_drawer", "turn_on_led"], episodes_per_task=10, seed=0, val_fraction=0.1,
                     perturb_fraction=0.5)
    for task in ("open_drawer", "turn_on_led"):
        flags = [j.perturbed for j in jobs if j.task == task]
        assert sum(flags) == 5 and flags != sorted(flags)  # interleaved, not the last half
    assert not any(j.perturbed for j in plan_jobs(["open_drawer"], 4, 0, 0.0))
    with pytest.raises(ValueError, match="perturb-fraction"):
        plan_jobs(["open_drawer"], 4, 0, 0.0, perturb_fraction=1.5)


def test_perturbed_expert_still_solves_and_records_its_own_actions():
    env = TabletopEnv(seed=0, cameras=())
    try:
        spec = PerturbationSpec(start_prob=0.08)
        ep = run_expert_episode(env, "turn_on_led", np.random.default_rng(3),
                                perturber=Perturber(spec, np.random.default_rng(4)))
        assert ep.success and ep.perturbed_steps > 0
        acts = np.stack(ep.rel_actions)
        assert np.all(np.abs(acts[:, :6]) <= 0.9)  # the expert's own speed limit; pushes would exceed it
        replay_env_diverges = False
        obs = env.reset(robot_obs=ep.robot_obs0, scene_obs=ep.scene_obs0)
        for frame, action in zip(ep.frames, ep.rel_actions):
            if not np.allclose(obs["robot_obs"], frame["robot_obs"]):
                replay_env_diverges = True
                break
            obs, *_ = env.step(action)
        assert replay_env_diverges  # the recorded labels are not what was executed
    finally:
        env.close()
