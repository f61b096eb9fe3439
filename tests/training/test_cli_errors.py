"""The stage-2 command line: mistakes in overrides and data paths end in one line naming the key or folder, before
any model loads (policy_models.training.cli)."""

from pathlib import Path

import pytest

from policy_models.training.cli import run_training

CONF = Path(__file__).resolve().parents[2] / "policy_conf"


def test_a_misspelt_override_fails_before_training(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_training(["--config", str(CONF / "tiny_calvin.yaml"), "dataloader.batchsize=64"], CONF / "tiny_calvin.yaml")
    assert exit_info.value.code == 2
    assert "did you mean dataloader.batch_size" in capsys.readouterr().err


def test_a_missing_data_folder_is_one_line_before_the_models_load(tmp_path, capsys, monkeypatch):
    import policy_models.policy

    def no_models(*args, **kwargs):
        raise AssertionError("the models were loaded before the data folders were checked")

    monkeypatch.setattr(policy_models.policy, "build_policy", no_models)
    rc = run_training(["--config", str(CONF / "tiny_calvin.yaml"), "--root_data_dir", str(tmp_path / "calvn"),
                       "--video_model_path", str(tmp_path), "--text_encoder_path", str(tmp_path),
                       f"run.run_dir={tmp_path / 'run'}", "training.device=cpu"], CONF / "tiny_calvin.yaml")
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"data folder not found: {tmp_path / 'calvn' / 'training'}" in err
    assert not (tmp_path / "run").exists()  # no run folder left behind
