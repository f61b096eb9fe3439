"""The README's demo, at minimum size: every stage runs through the real command-line tools and the summary points
at real files."""

import json

import numpy as np
import pytest

import demo
from vpp_core.config import load_config
from vpp_core.video_io import read_video

SMOKE = [
    "simulator.tasks=[turn_on_led,open_drawer]",
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


def test_demo_runs_every_stage(tmp_path):
    cfg = load_config(demo.REPO / "demo.yaml", [f"output_dir={tmp_path / 'demo'}", *SMOKE])
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
    # a rerun skips the finished stages instead of redoing them
    again = demo.run_demo(cfg)
    assert again["seconds_per_stage"]["1. record demonstrations in the simulator"] == 0.0
    assert again["seconds_per_stage"]["4. train the video model"] == 0.0
    assert again["seconds_per_stage"]["2b. fit the tiny autoencoder to the recorded frames and calibrate its latent "
                                      "scale"] == 0.0


def test_demo_help_and_misspelt_settings_stop_before_any_stage(capsys, monkeypatch):
    monkeypatch.setattr(demo, "run_demo", lambda cfg: (_ for _ in ()).throw(AssertionError("the demo started")))
    assert demo.main(["--help"]) == 0
    assert "python demo.py" in capsys.readouterr().out
    assert demo.main(["action_model.max_step=3"]) == 2
    assert "did you mean action_model.max_steps" in capsys.readouterr().err


def test_a_half_recorded_dataset_is_recorded_again(tmp_path, monkeypatch):
    """vpp_sim.generate removes its .work/ folder last; while it exists, the demo reruns the (resuming) recording."""
    dataset = tmp_path / "demo" / "data" / demo.DATASET_NAME
    (dataset / "training").mkdir(parents=True)
    (dataset / "training" / "ep_start_end_ids.npy").write_bytes(b"")
    (dataset / ".work").mkdir()
    ran = []

    def stop(title, args, timings):
        ran.append(title)
        raise InterruptedError

    monkeypatch.setattr(demo, "run_stage", stop)
    cfg = load_config(demo.REPO / "demo.yaml", [f"output_dir={tmp_path / 'demo'}", *SMOKE])
    for work_left, first in ((True, "1. record demonstrations in the simulator"), (False, None)):
        if not work_left:
            (dataset / ".work").rmdir()
        ran.clear()
        with pytest.raises(InterruptedError):
            demo.run_demo(cfg)
        assert (ran[0] == first) if first else not ran[0].startswith("1.")
