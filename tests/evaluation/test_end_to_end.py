"""The CLI end to end with a real (tiny, random) VPP policy checkpoint on the built-in simulator."""

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from policy_evaluation import calvin_evaluate

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_cli_with_tiny_checkpoint_on_sim(tiny_model_dirs, tmp_path, capsys):
    pytest.importorskip("pybullet")
    from policy_models.checkpoints import save_policy_checkpoint
    from policy_models.policy import build_policy

    svd, clip = tiny_model_dirs
    torch.manual_seed(0)
    cfg = OmegaConf.load(REPO_ROOT / "policy_conf" / "model" / "tiny.yaml")
    policy = build_policy(cfg, video_model_path=str(svd), clip_model_path=str(clip)).eval()
    run = tmp_path / "run"
    save_policy_checkpoint(run / "checkpoints" / "step_0000010", policy)
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
