"""The README's demo, at minimum size: every stage runs through the real command-line tools and the summary points
at real files. The rerun rules (skip what was finished with the same settings, stop on changed ones) and the
evaluator's task subset are checked with the stages stubbed out."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import demo
from vpp_core.config import load_config
from vpp_core.video_io import read_video

SMOKE = [
    "simulator.tasks=[turn_on_led,turn_off_led]",
    "simulator.episodes_per_task=2",
    "simulator.val_fraction=0.5",
    "simulator.workers=1",
    "video_model.autoencoder_steps=1",
    "video_model.train_steps=2",
    "video_model.prediction_steps=2",
    "action_model.max_steps=4",
    "action_model.batch_size=2",
    "evaluation.num_sequences=1",
    "evaluation.ep_len=12",
    "evaluation.num_videos=1",
]


def smoke_config(tmp_path, *overrides):
    return load_config(demo.REPO / "demo.yaml", [f"output_dir={tmp_path / 'demo'}", *SMOKE, *overrides])


def test_demo_runs_every_stage(tmp_path):
    cfg = smoke_config(tmp_path)
    summary = demo.run_demo(cfg)

    assert (tmp_path / "demo" / "summary.json").is_file()
    assert (tmp_path / "demo" / "data" / "tabletop" / "training" / "ep_start_end_ids.npy").is_file()
    assert summary["video_model"].endswith("checkpoint-2")
    fit = json.loads((tmp_path / "demo" / "models" / "tiny-svd" / "vae_fit.json").read_text())
    assert fit["steps"] == 1 and abs(fit["scaled_latent_std_after"] - 1.0) < 1e-2
    prediction = read_video(summary["prediction_videos"][0])
    assert prediction.shape[1] == 2 * 64  # ground truth row over prediction row, 64 px tiny model
    rollout = read_video(summary["rollout_videos"][0])
    assert len(rollout) > 1 and rollout.dtype == np.uint8
    (metrics,) = json.loads(open(summary["results_json"]).read()).values()
    assert set(metrics["chain_sr"]) == {"1", "2", "3", "4", "5"}
    assert 0.0 <= metrics["avg_seq_len"] <= 5.0
    assert sorted(metrics["sim_tasks"]) == ["turn_off_led", "turn_on_led"]  # the recorded tasks, not all 23
    # a rerun with the same settings skips every finished stage and reports the same results
    again = demo.run_demo(cfg)
    assert len(again["seconds_per_stage"]) == 8 and set(again["seconds_per_stage"].values()) == {0.0}
    assert again["results"] == summary["results"]


def test_demo_help_and_misspelt_settings_stop_before_any_stage(capsys, monkeypatch):
    monkeypatch.setattr(demo, "run_demo", lambda cfg: (_ for _ in ()).throw(AssertionError("the demo started")))
    assert demo.main(["--help"]) == 0
    assert "python demo.py" in capsys.readouterr().out
    assert demo.main(["action_model.max_step=3"]) == 2
    assert "did you mean action_model.max_steps" in capsys.readouterr().err


@pytest.fixture
def stub_stages(monkeypatch):
    """run_stage replaced by a stub that records (title, args) and leaves what run_demo reads after stage 4 (a video
    checkpoint) and stage 7 (results.json); a stage whose title starts with a prefix in `interrupt` raises instead."""
    ran: list[tuple[str, list[str]]] = []
    interrupt: set[str] = set()

    def fake(title, args, timings):
        if any(title.startswith(prefix) for prefix in interrupt):
            raise InterruptedError(title)
        ran.append((title, args))
        timings[title] = 1.0
        if title.startswith("4."):
            run_dir = next(a.split("=", 1)[1] for a in args if a.startswith("run_dir="))
            (Path(run_dir) / "checkpoint-2").mkdir(parents=True, exist_ok=True)
        if title.startswith("7."):
            metrics = {"avg_seq_len": 0.0, "chain_sr": {str(k): 0.0 for k in range(1, 6)}, "seq_len": 1}
            (Path(args[args.index("--output_dir") + 1]) / "results.json").write_text(json.dumps({"policy": metrics}))

    monkeypatch.setattr(demo, "run_stage", fake)
    return ran, interrupt


def titles(ran):
    return [title.split(".")[0] for title, _ in ran]


def test_the_evaluation_covers_exactly_the_recorded_tasks(tmp_path, stub_stages):
    ran, _ = stub_stages
    tasks = "open_drawer,close_drawer,turn_on_led,turn_off_led"
    demo.run_demo(smoke_config(tmp_path, f"simulator.tasks=[{tasks}]"))
    args = dict(ran)
    record = args["1. record demonstrations in the simulator"]
    evaluate = args["7. evaluate the policy on the simulator (CALVIN protocol)"]
    assert evaluate[:3] == ["policy_evaluation/calvin_evaluate.py", "--env", "sim"]
    recorded = record[record.index("--tasks") + 1]
    assert evaluate[evaluate.index("--sim_tasks") + 1] == recorded == tasks


def test_a_task_subset_the_evaluator_refuses_stops_before_any_stage(tmp_path, stub_stages):
    ran, _ = stub_stages
    with pytest.raises(SystemExit, match=r"simulator.tasks cannot be evaluated: .*no valid chain"):
        demo.run_demo(smoke_config(tmp_path, "simulator.tasks=[turn_on_led,open_drawer]"))
    assert ran == []


def test_an_unchanged_rerun_skips_every_stage(tmp_path, stub_stages):
    ran, _ = stub_stages
    first = demo.run_demo(smoke_config(tmp_path))
    assert titles(ran) == ["1", "2", "2b", "3", "4", "5", "6", "7"]
    ran.clear()
    again = demo.run_demo(smoke_config(tmp_path, "simulator.workers=2"))  # the recording does not depend on workers
    assert ran == [] and set(again["seconds_per_stage"].values()) == {0.0}
    assert again["results"] == first["results"]


def test_a_changed_setting_stops_the_demo_and_names_the_stages_made_with_it(tmp_path, stub_stages):
    ran, _ = stub_stages
    out = tmp_path / "demo"
    demo.run_demo(smoke_config(tmp_path))
    ran.clear()
    with pytest.raises(SystemExit) as stop:
        demo.run_demo(smoke_config(tmp_path, "action_model.max_steps=8"))
    message = str(stop.value)
    assert ran == [] and "\n" not in message
    assert "'6. train the action model' (action_model.max_steps: 4 → 8)" in message
    assert "stage 7 was made from earlier results of stage 6" in message
    assert "4. train the video model" not in message and "output_dir=" in message
    assert f"delete {out / 'action_model'} {out / 'evaluation'} to redo those stages" in message
    # the way out: delete the named folders, and only those stages run again
    shutil.rmtree(out / "action_model")
    shutil.rmtree(out / "evaluation")
    demo.run_demo(smoke_config(tmp_path, "action_model.max_steps=8"))
    assert titles(ran) == ["6", "7"]


def test_a_redone_stage_is_not_followed_by_results_made_from_the_old_one(tmp_path, stub_stages):
    ran, _ = stub_stages
    out = tmp_path / "demo"
    demo.run_demo(smoke_config(tmp_path))
    ran.clear()
    shutil.rmtree(out / "video_model")  # same settings, but stage 4 will be redone: 5, 6 and 7 are stale
    with pytest.raises(SystemExit) as stop:
        demo.run_demo(smoke_config(tmp_path))
    message = str(stop.value)
    assert ": stages 5, 6, 7 were made from earlier results of stage 4. " in message and ran == []
    for folder in ("prediction", "action_model", "evaluation"):
        assert str(out / folder) in message
        shutil.rmtree(out / folder)
    demo.run_demo(smoke_config(tmp_path))
    assert titles(ran) == ["4", "5", "6", "7"]


@pytest.mark.parametrize("stage, change, named", [
    ("1.", "simulator.episodes_per_task=3", "'1. record demonstrations in the simulator' (simulator.episodes_per_task"),
    ("4.", "video_model.batch_size=4", "'4. train the video model' (video_model.batch_size: 2 → 4)"),
])
def test_an_interrupted_stage_resumes_with_the_same_settings_only(tmp_path, stub_stages, stage, change, named):
    """The tools resume their own interrupted work (vpp_sim.generate's .work/, the trainers' checkpoints); the demo
    reruns an unfinished stage only with the settings it was started with."""
    ran, interrupt = stub_stages
    interrupt.add(stage)
    with pytest.raises(InterruptedError):
        demo.run_demo(smoke_config(tmp_path))
    with pytest.raises(SystemExit) as stop:
        demo.run_demo(smoke_config(tmp_path, change))
    assert named in str(stop.value)
    interrupt.clear()
    ran.clear()
    demo.run_demo(smoke_config(tmp_path))
    assert titles(ran)[0] == stage[:-1] and titles(ran)[-1] == "7"


def test_results_without_recorded_settings_are_not_reused(tmp_path, stub_stages):
    """An output folder of a demo.py that wrote no records: its settings are unknown."""
    ran, _ = stub_stages
    dataset = tmp_path / "demo" / "data" / demo.DATASET_NAME
    (dataset / "training").mkdir(parents=True)
    (dataset / "training" / "ep_start_end_ids.npy").write_bytes(b"")
    with pytest.raises(SystemExit, match=r"'1. record demonstrations in the simulator' \(settings not recorded"):
        demo.run_demo(smoke_config(tmp_path))
    assert ran == []
