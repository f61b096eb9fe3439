"""--sim_tasks (the sim suite over a task subset) and --baseline random|expert, through the suite, runner and CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from policy_evaluation import calvin_evaluate
from policy_evaluation import multistep_sequences as ms
from policy_evaluation.baselines import BaselinePolicyFactory, ExpertPolicy, RandomActionPolicy
from policy_evaluation.runner import EvalSettings, read_records, run_evaluation
from policy_evaluation.suites import SuiteError, parse_sim_tasks, sim_suite

pytest.importorskip("pybullet")

SIX = ["open_drawer", "close_drawer", "move_slider_left", "move_slider_right", "turn_on_led", "turn_off_led"]
FOUR = ["open_drawer", "close_drawer", "turn_on_led", "turn_off_led"]


def test_subset_suite_sequences_are_valid_chains_over_the_subset():
    suite = sim_suite(tasks=",".join(reversed(SIX)))
    assert suite.name == sim_suite(tasks=SIX).name != "sim"  # the order given does not change the identity
    assert set(suite.instructions) == set(SIX)
    assert suite.task_table.seq_len == 3  # drawer, slider, lights: three categories
    seqs = suite.sequences(20)
    assert len(seqs) == 20
    for state, tasks in seqs:
        assert len(tasks) == 3 and set(tasks) <= set(SIX)
        assert ms.check_sequence(state, tasks, suite.task_table)
    # cached per task set: another subset with the same count gets its own sequences
    four = sim_suite(tasks=FOUR)
    assert four.task_table.seq_len == 2
    assert all(set(t) <= set(FOUR) and len(t) == 2 for _, t in four.sequences(20))
    assert sim_suite().task_table.seq_len == 5 and sim_suite().name == "sim"


def test_unknown_or_unchainable_tasks_are_refused(tmp_path, capsys):
    with pytest.raises(SuiteError, match="valid tasks: .*open_drawer"):
        parse_sim_tasks("open_drawer,fly_away")
    with pytest.raises(SuiteError, match=r"open_drawer.*turn_on_led"):  # no chain from a state with the drawer open
        sim_suite(tasks=["open_drawer", "turn_on_led"])
    rc = calvin_evaluate.main(["--baseline", "random", "--env", "sim", "--sim_tasks", "fly_away",
                               "--output_dir", str(tmp_path), "--no_progress"])
    assert rc == 2 and "fly_away" in capsys.readouterr().err


def test_random_baseline_is_seeded_and_in_range():
    def actions(seed: int) -> np.ndarray:
        np.random.seed(seed)  # what the runner does before every sequence
        policy = RandomActionPolicy()
        policy.reset()
        return np.stack([policy.step({}, "anything") for _ in range(50)])

    a = actions(3)
    np.testing.assert_array_equal(a, actions(3))
    assert not np.array_equal(a, actions(4))
    assert np.all(np.abs(a[:, :6]) <= 1.0) and set(np.unique(a[:, 6])) == {-1.0, 1.0}


def test_random_baseline_runs_and_repeats(tmp_path):
    suite = sim_suite(tasks=FOUR, cameras=())
    settings = EvalSettings(num_sequences=1, ep_len=5, progress=False)
    runs = []
    for name in ("a", "b"):
        run_evaluation(suite, BaselinePolicyFactory("random"), settings, tmp_path / name)
        rec = read_records(tmp_path / name / "results.jsonl")[0]
        runs.append({k: v for k, v in rec.items() if k != "duration_s"})
        assert json.loads((tmp_path / name / "eval_config.json").read_text())["checkpoint"] == "baseline_random"
    assert runs[0] == runs[1]


def test_expert_restarts_per_subtask_and_idles_when_done():
    from vpp_sim import make_sim_env
    from vpp_sim.tasks import get_env_state_for_initial_condition

    suite = sim_suite(tasks=FOUR, cameras=())
    env, _ = make_sim_env(cameras=())
    try:
        policy = BaselinePolicyFactory("expert", suite.instructions)("cpu", env=env)
        assert isinstance(policy, ExpertPolicy)
        cond = {"led": 0, "lightbulb": 0, "slider": "right", "drawer": "closed", "red_block": "slider_left",
                "blue_block": "table", "pink_block": "table", "grasped": 0}
        obs = env.reset(*get_env_state_for_initial_condition(cond))
        policy.reset()
        first = policy.step(obs, suite.instructions["turn_on_led"])
        assert np.any(first[:6] != 0)
        moving = []
        for _ in range(400):  # the button script (approach, press, retreat) takes ~200 steps
            action = policy.step(obs, suite.instructions["turn_on_led"])
            obs = env.step(action)[0]
            moving.append(bool(np.any(action[:6])))
            if not moving[-1]:
                np.testing.assert_array_equal(action[6], obs["robot_obs"][14])
        assert any(moving[:50]) and not any(moving[-100:]), "the script never ended in no-ops"
        assert obs["scene_obs"][5] == 1.0  # the LED is on: the script ran
        policy.reset()  # a new subtask restarts the script: it moves to the button again
        assert np.any(policy.step(obs, suite.instructions["turn_off_led"])[:6])
        with pytest.raises(KeyError, match="no task"):
            policy.step(obs, "dance")
        unscripted = ExpertPolicy(env, {"stack_block": "stack the blocks"})  # ExpertFailure: idle, do not crash
        unscripted.reset()
        idle = [0, 0, 0, 0, 0, 0, obs["robot_obs"][14]]
        np.testing.assert_array_equal(unscripted.step(obs, "stack the blocks"), idle)
    finally:
        env.close()


def test_cli_expert_solves_subset_with_two_workers_and_records_tasks(tmp_path, capsys):
    out = tmp_path / "expert"
    argv = ["--baseline", "expert", "--env", "sim", "--sim_tasks", ",".join(FOUR), "--num_sequences", "2",
            "--ep_len", "250", "--num_workers", "2", "--num_videos", "0", "--output_dir", str(out), "--no_progress"]
    assert calvin_evaluate.main(argv) == 0
    recs = read_records(out / "results.jsonl")
    assert sorted(recs) == [0, 1]
    assert all(r["result"] == 2 for r in recs.values()), recs  # both subtasks: the expert restarted in between
    results = json.loads((out / "results.json").read_text())["baseline_expert"]
    assert results["sim_tasks"] == FOUR and results["seq_len"] == 2 and results["avg_seq_len"] == 2.0
    config = json.loads((out / "eval_config.json").read_text())
    assert config["suite"] == "sim:" + ",".join(FOUR) and config["policy_settings"] == {"baseline": "expert"}
    # resuming into this folder with another task set is refused
    other = argv[:argv.index("--sim_tasks") + 1] + ["open_drawer,close_drawer"] + argv[argv.index("--sim_tasks") + 2:]
    capsys.readouterr()
    assert calvin_evaluate.main(other) == 2
    assert "different evaluation" in capsys.readouterr().err


def test_baseline_cli_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        calvin_evaluate.main(["--baseline", "random", "--action_model_folder", str(tmp_path), "--env", "sim"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        calvin_evaluate.main(["--env", "sim"])  # neither a checkpoint nor a baseline
    assert "one of the arguments --action_model_folder --baseline is required" in capsys.readouterr().err
    assert calvin_evaluate.main(["--baseline", "expert", "--env", "calvin", "--output_dir", str(tmp_path)]) == 2
    assert "--env sim" in capsys.readouterr().err
    assert calvin_evaluate.main(["--baseline", "random", "--env", "calvin", "--sim_tasks", "open_drawer",
                                 "--output_dir", str(tmp_path)]) == 2
    assert "--sim_tasks needs --env sim" in capsys.readouterr().err
    base = calvin_evaluate.BASELINE_OUTPUT_ROOT
    full = calvin_evaluate.default_output_dir(base, "sim", "baseline_expert", (0, 1))
    sub = calvin_evaluate.default_output_dir(base, "sim", "baseline_expert", (0, 1), tuple(FOUR))
    assert full.name == "eval_sim_baseline_expert" and sub.name.startswith("eval_sim_4tasks-")
    assert sub != calvin_evaluate.default_output_dir(base, "sim", "baseline_expert", (0, 1), tuple(SIX))
