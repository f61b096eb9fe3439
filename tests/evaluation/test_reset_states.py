"""Reset states vs the golden file (robot_obs / scene_obs of all 1000 official sequences)."""

import numpy as np
import pytest

from policy_evaluation.utils import NEUTRAL_ROBOT_OBS, condition_seed, get_env_state_for_initial_condition


def test_reset_states_match_golden(golden_sequences):
    for entry in golden_sequences:
        robot_obs, scene_obs = get_env_state_for_initial_condition(entry["initial_condition"])
        assert robot_obs.shape == (15,) and scene_obs.shape == (24,)
        assert robot_obs.dtype == np.float64 and scene_obs.dtype == np.float64
        np.testing.assert_array_equal(robot_obs, entry["robot_obs"])
        np.testing.assert_array_equal(scene_obs, entry["scene_obs"])


def test_example_condition_from_the_reference(golden_sequences):
    cond = {"led": 1, "lightbulb": 1, "slider": "left", "drawer": "open", "red_block": "slider_left",
            "blue_block": "table", "pink_block": "slider_right", "grasped": 0}
    assert golden_sequences[0]["initial_condition"] == cond
    robot_obs, scene_obs = get_env_state_for_initial_condition(cond)
    np.testing.assert_array_equal(scene_obs, golden_sequences[0]["scene_obs"])
    assert scene_obs[0] == 0.28 and scene_obs[1] == 0.22 and scene_obs[3] == 0.088
    assert scene_obs[4] == 1 and scene_obs[5] == 1


def test_seed_ignores_numpy_scalar_types_and_does_not_touch_global_rng():
    cond = {"led": np.int64(1), "lightbulb": 1, "slider": np.str_("left"), "drawer": "open",
            "red_block": "slider_left", "blue_block": "table", "pink_block": "slider_right", "grasped": 0}
    plain = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in cond.items()}
    assert condition_seed(cond) == condition_seed(plain)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    get_env_state_for_initial_condition(plain)
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_neutral_pose_and_yaw_range():
    cond = {"led": 0, "lightbulb": 0, "slider": "right", "drawer": "closed", "red_block": "table",
            "blue_block": "table", "pink_block": "slider_left", "grasped": 0}
    robot_obs, scene_obs = get_env_state_for_initial_condition(cond)
    np.testing.assert_array_equal(robot_obs, NEUTRAL_ROBOT_OBS)
    for k in (11, 17, 23):
        assert np.pi / 2 - np.pi / 8 <= scene_obs[k] <= np.pi / 2 + np.pi / 8
    # red and blue on the two (distinct) table spots
    assert not np.allclose(scene_obs[6:9], scene_obs[12:15])


def test_missing_key_is_a_clear_error():
    with pytest.raises(KeyError, match="grasped"):
        get_env_state_for_initial_condition({"led": 0})
