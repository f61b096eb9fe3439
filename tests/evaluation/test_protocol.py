"""run_sequence against a scripted env/oracle: ep_len, first-success stop, no reset between subtasks, gripper."""

import numpy as np
import pytest

from policy_evaluation.protocol import binarize_gripper, run_sequence
from policy_evaluation.testing import RandomPolicy, ScriptedEnv, ScriptedOracle

TASKS = ["open_drawer", "turn_on_led", "move_slider_left", "lift_red_block_table", "stack_block"]
INSTR = {t: f"do {t}" for t in TASKS}
ROBOT, SCENE = np.arange(15.0), np.arange(24.0)


class ConstPolicy:
    def __init__(self, gripper=0.5):
        self.gripper = gripper
        self.resets = 0
        self.calls = []
        self.returned = []

    def reset(self):
        self.resets += 1

    def step(self, obs, instruction):
        self.calls.append(instruction)
        a = np.array([0.1, 0, 0, 0, 0, 0, self.gripper], dtype=np.float32)
        self.returned.append(a)
        return a


def _run(succeed_after, ep_len=20, policy=None, record=False):
    env, oracle = ScriptedEnv(image_size=8), ScriptedOracle(succeed_after=succeed_after)
    policy = policy or ConstPolicy()
    out = run_sequence(env, oracle, policy, ROBOT, SCENE, TASKS, INSTR, ep_len=ep_len, record=record)
    return out, env, oracle, policy


def test_success_steps_failure_and_no_reset_between_subtasks():
    out, env, oracle, policy = _run({"open_drawer": 3, "turn_on_led": 5}, ep_len=20)
    assert out.result == 2
    assert out.steps == [3, 5, 20]  # the failed subtask used the whole episode
    assert out.successes == [True, True, False]
    assert len(env.resets) == 1  # one reset per sequence
    np.testing.assert_array_equal(env.resets[0][0], ROBOT)
    np.testing.assert_array_equal(env.resets[0][1], SCENE)
    assert len(env.actions) == 3 + 5 + 20
    assert policy.resets == 3  # policy.reset() before each attempted subtask
    assert policy.calls == ["do open_drawer"] * 3 + ["do turn_on_led"] * 5 + ["do move_slider_left"] * 20
    # the oracle is asked after every step, with a fresh start_info per subtask and only the current subtask
    assert len(oracle.calls) == 28
    assert [c[0]["t"] for c in oracle.calls] == [0] * 3 + [3] * 5 + [8] * 20
    assert all(c[2] == {TASKS[k]} for c, k in zip(oracle.calls, [0] * 3 + [1] * 5 + [2] * 20))


def test_first_success_stops_and_all_five():
    out, env, _, policy = _run(dict.fromkeys(TASKS, 1))
    assert out.result == 5 and out.steps == [1] * 5 and len(env.actions) == 5 and policy.resets == 5


def test_ep_len_is_respected():
    out, env, _, _ = _run({}, ep_len=7)
    assert out.result == 0 and out.steps == [7] and len(env.actions) == 7
    out, _, _, _ = _run({"open_drawer": 7}, ep_len=7)
    assert out.result == 1  # success on the last allowed step counts
    out, _, _, _ = _run({"open_drawer": 8}, ep_len=7)
    assert out.result == 0
    with pytest.raises(ValueError):
        _run({}, ep_len=0)


@pytest.mark.parametrize("g,expected", [(0.3, 1.0), (1e-6, 1.0), (0.0, -1.0), (-0.2, -1.0), (np.nan, -1.0)])
def test_gripper_binarised_on_a_copy(g, expected):
    policy = ConstPolicy(gripper=g)
    _, env, _, _ = _run({"open_drawer": 2}, policy=policy)
    assert all(a[-1] == expected for a in env.actions)
    assert all(a.dtype == np.float64 for a in env.actions)
    np.testing.assert_allclose(env.actions[0][:6], [0.1, 0, 0, 0, 0, 0], rtol=1e-6)
    # the policy's own array is untouched
    assert np.isnan(policy.returned[0][-1]) if np.isnan(g) else policy.returned[0][-1] == np.float32(g)


def test_binarize_accepts_tensors_and_lists():
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(binarize_gripper(torch.tensor([[0.5, 0, 0, 0, 0, 0, 0.2]])), [0.5, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(binarize_gripper([0, 0, 0, 0, 0, 0, -3]), [0, 0, 0, 0, 0, 0, -1])


def test_recording_frames():
    out, env, _, _ = _run({"open_drawer": 2, "turn_on_led": 1}, ep_len=4, record=True)
    assert len(out.frames) == 1 + len(env.actions)
    assert out.frame_subtask == [-1, 0, 0, 1, 2, 2, 2, 2]
    assert out.frames[0].shape == (8, 8, 3) and out.frames[0].dtype == np.uint8


def test_missing_instruction_is_an_error():
    env, oracle = ScriptedEnv(image_size=8), ScriptedOracle(succeed_after={})
    with pytest.raises(KeyError, match="instruction"):
        run_sequence(env, oracle, RandomPolicy(), ROBOT, SCENE, TASKS, {}, ep_len=3)
