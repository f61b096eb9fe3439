import json

import numpy as np
import pytest

from vpp_core.config import ConfigError, apply_overrides, load_config, normalize_overrides, save_config
from vpp_core.io import append_jsonl, atomic_json_dump, atomic_write, drop_jsonl_records_after
from vpp_core.precision import resolve_dtype
from vpp_core.video_io import VideoReadError, read_video, video_info, write_mp4


def test_override_spellings_are_equivalent():
    assert normalize_overrides(["a.b=1", "--c", "x", "--d=2", "--flag"]) == ["a.b=1", "c=x", "d=2", "flag=true"]


def test_load_config_applies_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train_args:\n  lr: 1.0\nname: x\n")
    cfg = load_config(path, ["--pretrained_model_path", "/m", "train_args.lr=2.5"])
    assert cfg.pretrained_model_path == "/m" and cfg.train_args.lr == 2.5 and cfg.name == "x"
    save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(tmp_path / "out" / "config.yaml").train_args.lr == 2.5


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="cannot parse override"):
        normalize_overrides(["positional"])


def test_strict_overrides_refuse_unknown_keys_and_other_kinds():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"optimizer": {"lr": 1e-4, "betas": [0.9, 0.9]}, "dataloader": {"batch_size": 28},
                            "ema": {"enabled": True}, "training": {"max_steps": None, "compile": "auto",
                                                                     "validate": False}})
    with pytest.raises(ConfigError, match=r"no key 'dataloader.batchsize'; did you mean dataloader.batch_size"):
        apply_overrides(cfg, ["dataloader.batchsize=64"], strict=True)
    with pytest.raises(ConfigError, match=r"no key 'optimizer.learning_rate'.*optimizer.lr"):
        apply_overrides(cfg, ["--optimizer.learning_rate", "1"], strict=True)
    with pytest.raises(ConfigError, match="dataloader.batch_size holds int 28 in the config, got str 'two'"):
        apply_overrides(cfg, ["dataloader.batch_size=two"], strict=True)
    with pytest.raises(ConfigError, match="ema.enabled holds bool"):
        apply_overrides(cfg, ["ema.enabled=maybe"], strict=True)
    with pytest.raises(ConfigError, match="optimizer holds DictConfig"):
        apply_overrides(cfg, ["optimizer=3"], strict=True)
    out = apply_overrides(cfg, ["optimizer.lr=1", "dataloader.batch_size=3", "training.max_steps=5",
                                "training.validate=auto", "training.compile=default", "optimizer.betas=[0.9,0.95]",
                                "+extra.key=2"], strict=True)
    assert out.optimizer.lr == 1 and out.dataloader.batch_size == 3 and out.training.max_steps == 5
    assert out.training.validate == "auto" and list(out.optimizer.betas) == [0.9, 0.95] and out.extra.key == 2
    # not strict (stage 1 and the prediction script check their keys themselves): anything merges
    assert apply_overrides(cfg, ["dataloader.batchsize=64"]).dataloader.batchsize == 64


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "result.json"
    atomic_json_dump({"a": 1}, target)
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("crash")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_append_jsonl(tmp_path):
    append_jsonl({"i": 0}, tmp_path / "r.jsonl")
    append_jsonl({"i": 1}, tmp_path / "r.jsonl")
    assert [json.loads(line)["i"] for line in (tmp_path / "r.jsonl").read_text().splitlines()] == [0, 1]


def test_drop_jsonl_records_after_a_resumed_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for step in (1, 2, 3, 4):
        append_jsonl({"step": step, "loss": 1.0 / step}, path)
    append_jsonl({"note": "no step"}, path)
    with open(path, "a") as fh:
        fh.write('{"step": 5, "lo')  # cut short by a kill
    assert drop_jsonl_records_after(path, 2) == 3
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}, {"note": "no step"}]
    assert drop_jsonl_records_after(path, 2) == 0 and drop_jsonl_records_after(tmp_path / "none.jsonl", 0) == 0


def test_video_round_trip(tmp_path):
    # smooth gradients survive h264 well; random noise would not
    t, h, w = 6, 40, 34
    frames = np.zeros((t, h, w, 3), np.uint8)
    frames[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, None, :]
    frames[..., 1] = np.arange(t, dtype=np.uint8)[:, None, None] * 40
    write_mp4(tmp_path / "v.mp4", frames, fps=5)
    info = video_info(tmp_path / "v.mp4")
    assert (info.num_frames, info.height, info.width, info.fps) == (t, h, w, 5.0)
    decoded = read_video(tmp_path / "v.mp4", indices=[0, 5, 5])
    assert decoded.shape == (3, h, w, 3)
    assert np.abs(decoded[1].astype(int) - frames[5]).mean() < 6


def test_corrupt_video_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(VideoReadError, match="bad.mp4"):
        read_video(bad)
    with pytest.raises(VideoReadError, match="does not exist"):
        read_video(tmp_path / "missing.mp4")


def test_resolve_dtype():
    import torch

    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("no") is torch.float32
    assert resolve_dtype("auto", device="cpu") is torch.float32
    with pytest.raises(ValueError):
        resolve_dtype("fp8")


def test_atomic_write_uses_normal_file_permissions(tmp_path):
    import os

    atomic_json_dump({"a": 1}, tmp_path / "p.json")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "p.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path):
    from vpp_core.io import remove_stale_temporaries

    (tmp_path / ".step_0000014.tmp" / "training_state").mkdir(parents=True)
    (tmp_path / ".sequence_0001.mp4.pu6kko9g.tmp").write_bytes(b"half")
    (tmp_path / "step_0000007").mkdir()
    (tmp_path / "results.jsonl").write_text("{}\n")
    (tmp_path / "notes.tmp").write_text("not ours: no leading dot")
    removed = remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [".sequence_0001.mp4.pu6kko9g.tmp", ".step_0000014.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp", "results.jsonl", "step_0000007"]
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_a_folder_replacement_killed_halfway_is_put_back(tmp_path):
    from vpp_core.io import replace_folder, restore_replaced_folders

    def folder(name: str, text: str):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_text(text)

    folder("step_8", "first")
    folder(".step_8.tmp", "second")
    replace_folder(tmp_path / ".step_8.tmp", tmp_path / "step_8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_8"]
    assert (tmp_path / "step_8" / "model.safetensors").read_text() == "second"
    # killed after the old copy was moved aside: the pointer's folder is missing, its complete copy is put back
    (tmp_path / "step_8").rename(tmp_path / "step_8.old")
    folder("step_9", "third")
    folder("step_9.old", "stale")
    assert restore_replaced_folders(tmp_path) == [tmp_path / "step_8"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_8", "step_9"]
    assert (tmp_path / "step_8" / "model.safetensors").read_text() == "second"
    assert (tmp_path / "step_9" / "model.safetensors").read_text() == "third"
