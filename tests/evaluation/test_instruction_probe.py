"""The instruction probe: paired instructions from the same start, against sampling noise, on a tiny checkpoint."""

import json

import pytest

from policy_evaluation import instruction_probe
from policy_evaluation.suites import DEFAULT_ANNOTATIONS


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


def test_probe_on_a_tiny_checkpoint(save_tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("pybullet")
    ckpt, svd, clip = save_tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "probe.json"
    rc = instruction_probe.main(["--action_model_folder", str(ckpt), "--video_model_path", str(svd),
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
