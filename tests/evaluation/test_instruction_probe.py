"""The instruction probe: paired instructions from the same start, against sampling noise, on a tiny checkpoint."""

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from policy_evaluation import instruction_probe
from policy_evaluation.suites import DEFAULT_ANNOTATIONS

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_parse_pairs_and_sentences(tmp_path):
    assert instruction_probe.parse_pairs("a:b, c:d") == [("a", "b"), ("c", "d")]
    with pytest.raises(ValueError, match="task_a:task_b"):
        instruction_probe.parse_pairs("a:b,c")
    sentences = instruction_probe.evaluation_sentences(DEFAULT_ANNOTATIONS,
                                                       ["move_slider_left", "move_slider_right"])
    assert sentences["move_slider_left"] == "push the sliding door to the left side"
    with pytest.raises(KeyError, match="no_such_task"):
        instruction_probe.evaluation_sentences(DEFAULT_ANNOTATIONS, ["no_such_task"])
    assert instruction_probe.main(["--action_model_folder", str(tmp_path), "--pairs", "open_drawer"]) == 2
    assert instruction_probe.main(["--action_model_folder", str(tmp_path / "missing")]) == 2  # no checkpoint there


def test_probe_on_a_tiny_checkpoint(tiny_model_dirs, tmp_path, capsys):
    pytest.importorskip("pybullet")
    from policy_models.checkpoints import save_policy_checkpoint
    from policy_models.policy import build_policy

    svd, clip = tiny_model_dirs
    torch.manual_seed(0)
    cfg = OmegaConf.load(REPO_ROOT / "policy_conf" / "model" / "tiny.yaml")
    policy = build_policy(cfg, video_model_path=str(svd), clip_model_path=str(clip)).eval()
    save_policy_checkpoint(tmp_path / "ckpt", policy)
    out = tmp_path / "probe.json"
    rc = instruction_probe.main(["--action_model_folder", str(tmp_path / "ckpt"), "--video_model_path", str(svd),
                                 "--clip_model_path", str(clip), "--pairs", "move_slider_left:move_slider_right",
                                 "--starts", "1", "--output", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    (pair,) = result["pairs"]
    assert pair["sentences"] == ["push the sliding door to the left side", "push the sliding door to the right side"]
    # the word-level stand-in tokenizer lets the video model see where the sentences differ
    assert pair["unet_text_token_cosine"] < 0.9999
    assert pair["noise_effect"] > 0 and pair["instruction_effect"] > 0
    assert pair["instruction_to_noise"] == pytest.approx(pair["instruction_effect"] / pair["noise_effect"])
