"""The CLI end to end with a real (tiny, random) VPP policy checkpoint on the built-in simulator."""

import json

import pytest

from policy_evaluation import calvin_evaluate


def test_cli_with_tiny_checkpoint_on_sim(save_tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("pybullet")
    run = tmp_path / "run"
    _, svd, clip = save_tiny_checkpoint(run / "checkpoints" / "step_0000010")
    (run / "checkpoints" / "last").write_text("step_0000010")

    out = tmp_path / "eval"
    argv = ["--action_model_folder", str(run), "--video_model_path", str(svd), "--clip_model_path", str(clip),
            "--env", "sim", "--num_sequences", "1", "--ep_len", "3", "--num_videos", "1", "--device", "cpu",
            "--output_dir", str(out), "--no_progress"]
    assert calvin_evaluate.main(argv) == 0
    printed = capsys.readouterr().out
    assert "Average successful sequence length:" in printed
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["step_0000010"]
    cfg = json.loads((out / "eval_config.json").read_text())
    assert cfg["policy_settings"]["overrides"]["model.diffusion.sigma_min"] == 1.0
    assert (out / "videos" / "sequence_0000.mp4").is_file()
    # rerun: everything is finished, nothing runs again, same numbers
    before = (out / "results.json").read_bytes()
    assert calvin_evaluate.main(argv) == 0
    assert (out / "results.json").read_bytes() == before
