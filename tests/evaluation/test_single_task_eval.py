"""--single_task_trials: K episodes per task from varied feasible starts, through single_task.py and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from policy_evaluation import calvin_evaluate, single_task
from policy_evaluation.baselines import BaselinePolicyFactory
from policy_evaluation.runner import EvalSettings, EvaluationError, read_records, run_evaluation
from policy_evaluation.single_task import build_episode_jobs, run_single_task_evaluation, single_task_suite
from policy_evaluation.suites import sim_suite

pytest.importorskip("pybullet")

SIX = ["open_drawer", "close_drawer", "move_slider_left", "move_slider_right", "turn_on_led", "turn_off_led"]
REPO_ROOT = Path(__file__).resolve().parents[2]


def _strip(records: dict[int, dict]) -> dict[int, dict]:
    return {i: {k: v for k, v in r.items() if k != "duration_s"} for i, r in records.items()}


def test_expert_solves_tasks_via_yaml_key(tmp_path, capsys):
    """The yaml key alone selects the mode; open_drawer + turn_on_led is a subset the chain mode refuses."""
    cfg = yaml.safe_load((REPO_ROOT / "policy_conf" / "calvin_evaluate.yaml").read_text())
    cfg["single_task_trials"] = 1
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "expert"
    argv = ["--baseline", "expert", "--env", "sim", "--sim_tasks", "open_drawer,turn_on_led", "--ep_len", "250",
            "--num_videos", "0", "--config", str(tmp_path / "eval.yaml"), "--output_dir", str(out), "--no_progress"]
    assert calvin_evaluate.main(argv) == 0
    printed = capsys.readouterr().out
    assert "open_drawer" in printed and "100.0%" in printed
    results = json.loads((out / "results.json").read_text())["baseline_expert"]
    assert results["mode"] == "single_task" and results["trials"] == 1 and results["avg_success_rate"] == 1.0
    assert list(results["task_info"]) == ["open_drawer", "turn_on_led"]
    for info in results["task_info"].values():
        assert info["success"] == info["total"] == 1 and 0 < info["mean_success_steps"] < 250
    recs = read_records(out / "results.jsonl")
    assert [(r["task"], r["trial"], r["tasks"]) for r in recs.values()] == [
        ("open_drawer", 0, ["open_drawer"]), ("turn_on_led", 0, ["turn_on_led"])]
    assert json.loads((out / "eval_config.json").read_text())["mode"] == "single_task"


def test_random_baseline_same_with_one_and_two_workers(tmp_path):
    suite = single_task_suite(SIX, cameras=())
    runs = {}
    for workers in (1, 2):
        settings = EvalSettings(ep_len=4, num_workers=workers, progress=False)
        factory = BaselinePolicyFactory("random")
        metrics = run_single_task_evaluation(suite, factory, 1, settings, tmp_path / str(workers))
        assert list(metrics["task_info"]) == suite.tasks and set(suite.tasks) == set(SIX)  # SIM_TASKS order
        assert all(v["total"] == 1 for v in metrics["task_info"].values())
        saved = json.loads((tmp_path / str(workers) / "results.json").read_text())["baseline_random"]
        assert saved["task_info"] == metrics["task_info"] and saved["tasks"] == suite.tasks
        runs[workers] = _strip(read_records(tmp_path / str(workers) / "results.jsonl"))
    assert sorted(runs[1]) == list(range(6))
    assert runs[1] == runs[2]
    # every episode starts from its own sampled scene
    assert len({tuple(r["scene_obs"]) for r in runs[1].values()}) == 6


def test_episodes_do_not_depend_on_subset_or_trial_count():
    from vpp_sim import make_sim_env

    env, _ = make_sim_env(cameras=())
    try:
        # trial-major numbering: index = trial * num_tasks + position
        six = build_episode_jobs(env, SIX, 0, [4, 6 + 4])  # turn_on_led, trials 0 and 1
        alone = build_episode_jobs(env, ["turn_on_led"], 0, [0, 1])
        other_seed = build_episode_jobs(env, ["turn_on_led"], 1, [0])
    finally:
        env.close()
    for a, b in zip(six, alone):
        assert a["tasks"] == b["tasks"] == ["turn_on_led"]
        assert (a["robot_obs"], a["scene_obs"], a["seed"]) == (b["robot_obs"], b["scene_obs"], b["seed"])
    assert six[0]["scene_obs"] != six[1]["scene_obs"] and six[0]["seed"] != six[1]["seed"]
    assert other_seed[0]["scene_obs"] != alone[0]["scene_obs"]
    assert (six[0]["video_name"], six[1]["video_name"]) == ("turn_on_led_000", "turn_on_led_001")
    for job in six + alone:  # turn_on_led needs the LED off at the start
        assert np.asarray(job["scene_obs"])[5] == 0.0


def test_resume_runs_only_missing_episodes_and_refuses_other_evaluations(tmp_path, monkeypatch):
    suite = single_task_suite(["open_drawer", "close_drawer"], cameras=())
    settings = EvalSettings(ep_len=3, progress=False)
    factory = BaselinePolicyFactory("random")
    out = tmp_path / "run"
    first = run_single_task_evaluation(suite, factory, 2, settings, out)
    full = _strip(read_records(out / "results.jsonl"))
    assert sorted(full) == [0, 1, 2, 3]
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text(lines[0] + lines[2] + lines[3][: len(lines[3]) // 2])  # crash mid-write
    (out / "results.json").unlink()
    ran = []
    real = single_task.dispatch_jobs
    monkeypatch.setattr(single_task, "dispatch_jobs",
                        lambda jobs, *a, **k: (ran.extend(j["index"] for j in jobs), real(jobs, *a, **k)))
    assert run_single_task_evaluation(suite, factory, 2, settings, out) == first
    assert sorted(ran) == [1, 3]
    assert _strip(read_records(out / "results.jsonl")) == full
    with pytest.raises(EvaluationError, match="different evaluation"):
        run_single_task_evaluation(suite, factory, 3, settings, out)
    with pytest.raises(EvaluationError, match="different evaluation"):  # chains into a single-task folder
        run_evaluation(sim_suite(tasks=SIX, cameras=()), factory, settings, out)


def test_cli_option_errors(tmp_path, capsys):
    base = ["--baseline", "random", "--env", "sim", "--output_dir", str(tmp_path / "o"), "--no_progress"]
    cases = [
        (["--single_task_trials", "0"], "integer >= 1"),
        (["--single_task_trials", "2", "--num_sequences", "5"], "mutually exclusive"),
        (["--single_task_trials", "2", "--shard", "0/2"], "does not shard"),
    ]
    for extra, message in cases:
        assert calvin_evaluate.main(base + extra) == 2, extra
        assert message in capsys.readouterr().err
    argv = ["--baseline", "random", "--env", "calvin", "--single_task_trials", "1", "--output_dir", str(tmp_path)]
    assert calvin_evaluate.main(argv) == 2 and "needs --env sim" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("single_task_trials: ten\n")
    assert calvin_evaluate.main(base + ["--config", str(tmp_path / "bad.yaml")]) == 2
    assert "'ten'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(EvaluationError, match="integer >= 1"):
        run_single_task_evaluation(single_task_suite(["open_drawer"]), BaselinePolicyFactory("random"), True,
                                   EvalSettings(progress=False), tmp_path / "p")
    folder = calvin_evaluate.default_output_dir(calvin_evaluate.BASELINE_OUTPUT_ROOT, "sim", "baseline_random",
                                                (0, 1), tuple(SIX), 10)
    assert folder.name.startswith("eval_sim_6tasks-") and folder.name.endswith("_single10_baseline_random")


def test_cli_with_tiny_checkpoint_and_video(save_tiny_checkpoint, tmp_path, capsys):
    ckpt, svd, clip = save_tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "eval"
    argv = ["--action_model_folder", str(ckpt), "--video_model_path", str(svd), "--clip_model_path", str(clip),
            "--env", "sim", "--sim_tasks", "turn_on_led", "--single_task_trials", "1", "--ep_len", "2",
            "--num_videos", "1", "--device", "cpu", "--output_dir", str(out), "--no_progress"]
    assert calvin_evaluate.main(argv) == 0
    assert "turn_on_led" in capsys.readouterr().out
    assert list(json.loads((out / "results.json").read_text())) == ["ckpt"]
    rec = read_records(out / "results.jsonl")[0]
    assert rec["video"] == "videos/turn_on_led_000.mp4" and (out / rec["video"]).is_file()
