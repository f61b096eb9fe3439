"""The trainer with a small stand-in policy: learning, exact resume, EMA, validation, checkpoints, pointers."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from train_helpers import FakePolicy, fake_policy_factory, tiny_calvin_cfg

from policy_models.datasets.base import RobotDataset
from policy_models.training.trainer import default_dataset_factory, train, unpack_loss
from vpp_core.config import ConfigError


class _Sub(RobotDataset):
    """The first n samples of a dataset (to overfit)."""

    def __init__(self, ds, n):
        self.samples = [ds[i] for i in range(n)]
        self.n = n
        self.cameras, self.action_seq_len, self.action_dim = ds.cameras, ds.action_seq_len, ds.action_dim
        self.source = ds.source

    def __len__(self):
        return self.n

    def load_sample(self, i):
        return {k: v for k, v in self.samples[i].items() if k != "idx"}


def test_loss_falls_on_overfit_batch(calvin_root, tmp_path):
    cfg = tiny_calvin_cfg(calvin_root, tmp_path / "run", "dataloader.batch_size=4", "training.max_steps=60",
                          "training.max_epochs=null", "optimizer.lr=3e-3", "optimizer.weight_decay=0",
                          "training.validate=false", "training.checkpoint_every_steps=0",
                          "training.checkpoint_every_epoch=false", "ema.enabled=false")

    def data(cfg, split, policy):
        return _Sub(default_dataset_factory(cfg, split, policy), 4)

    res = train(cfg, fake_policy_factory(), data)
    first, last = sum(res.train_losses[:5]) / 5, sum(res.train_losses[-5:]) / 5
    assert res.step == 60
    assert last < 0.3 * first, (first, last)


def _final_state(ckpt):
    return (load_file(str(ckpt / "model.safetensors")), load_file(str(ckpt / "ema.safetensors")),
            torch.load(ckpt / "training_state" / "optimizer.pt", weights_only=True))


def _assert_same(a, b):
    for x, y in zip(a[:2], b[:2]):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k
    sa, sb = a[2]["state"], b[2]["state"]
    for k in sa:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[k][name], sb[k][name])


@pytest.mark.parametrize("resume_at", [3, 6])
def test_resume_is_exact(calvin_root, tmp_path, resume_at):
    # 66 windows / batch 16 -> 5 batches per epoch: the run crosses an epoch end (validation + checkpoint) at step 5
    common = ["dataloader.batch_size=16", "training.max_steps=8", "training.checkpoint_every_steps=3",
              "training.val_max_batches=1", "optimizer.lr=1e-3", "ema.decay=0.9",
              "ema.warmup_power=0.6667"]  # the warm-up schedule must continue from the resumed step
    full = train(tiny_calvin_cfg(calvin_root, tmp_path / "full", *common), fake_policy_factory())
    assert full.step == 8 and full.epoch == 1
    names = sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir())
    assert names == ["step_0000003", "step_0000005", "step_0000006", "step_0000008"]
    resumed = train(tiny_calvin_cfg(calvin_root, tmp_path / "resumed", *common,
                                    f"run.resume={tmp_path / 'full' / 'checkpoints' / f'step_{resume_at:07d}'}"),
                    fake_policy_factory())
    assert resumed.step == 8
    # resumed in its own folder, as after a crash: the log holds each step once, as the uninterrupted run's
    steps = [json.loads(line)["step"] for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    (tmp_path / "full" / "checkpoints" / ".step_0000007.tmp").mkdir()  # a checkpoint a killed run was writing
    train(tiny_calvin_cfg(calvin_root, tmp_path / "full", *common,
                          f"run.resume={tmp_path / 'full' / 'checkpoints' / f'step_{resume_at:07d}'}"),
          fake_policy_factory())
    again = [json.loads(line)["step"] for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert again == steps and max(steps) == 8
    assert not (tmp_path / "full" / "checkpoints" / ".step_0000007.tmp").exists()
    model, ema, _ = _final_state(full.last_checkpoint)
    assert not torch.equal(model["net.0.weight"], ema["net.0.weight"])  # warm-up decay at step 7 is 0.75: EMA lags
    _assert_same(_final_state(full.last_checkpoint), _final_state(resumed.last_checkpoint))
    state = json.loads((resumed.last_checkpoint / "training_state" / "trainer_state.json").read_text())
    assert state["step"] == 8 and state["epoch"] == 1 and state["batch_in_epoch"] == 3


def test_checkpoints_ema_validation_and_pointers(calvin_root, tmp_path, monkeypatch):
    from policy_models.training import trainer

    pointers = []
    write_pointer = trainer.write_pointer
    monkeypatch.setattr(trainer, "write_pointer", lambda run_dir, name, target: pointers.append((name, target.name))
                        or write_pointer(run_dir, name, target))
    run = tmp_path / "run"
    cfg = tiny_calvin_cfg(calvin_root, run, "dataloader.batch_size=16", "training.max_epochs=2",
                          "training.checkpoint_every_steps=4", "training.keep_last_checkpoints=2", "ema.validate=true")
    res = train(cfg, fake_policy_factory())
    # a new best checkpoint gets `best` before `last`: killed in between, the resumed run (whose state already holds
    # that best) would never point `best` at it, and pruning could delete it
    assert ("best", "step_0000005") in pointers
    for i, (name, target) in enumerate(pointers):
        if name == "best":
            assert pointers[i + 1] == ("last", target)
    assert res.step == 10 and res.epoch == 2
    # validation ran on the single process over the whole validation split: 33 windows x 10 x 7 elements
    assert [v["epoch"] for v in res.val_history] == [1, 2]
    for v in res.val_history:
        assert math.isfinite(v["val_mse"]) and v["val_mse_elements"] == 33 * 10 * 7
        assert math.isfinite(v["val_mse_ema"])
    # folders, pointers, pruning (keep 2 newest + best)
    last = (run / "last").read_text().strip()
    assert last == "checkpoints/step_0000010"
    best = (run / "best").read_text().strip()
    best_epoch = min(res.val_history, key=lambda v: v["val_mse"])
    assert best == f"checkpoints/step_{best_epoch['step']:07d}"
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept[-1] == "step_0000010" and len(kept) <= 3 and best.split("/")[1] in kept
    ck = run / last
    for f in ("config.yaml", "model.safetensors", "ema.safetensors", "training_state/optimizer.pt",
              "training_state/scheduler.pt", "training_state/rng_state_0.pt", "training_state/trainer_state.json"):
        assert (ck / f).is_file(), f
    for f in ("optimizer.pt", "scheduler.pt", "rng_state_0.pt"):
        torch.load(ck / "training_state" / f, weights_only=True)  # loadable without pickle
    model, ema = load_file(str(ck / "model.safetensors")), load_file(str(ck / "ema.safetensors"))
    assert model.keys() == ema.keys()
    assert torch.equal(model["frozen"], ema["frozen"])  # untrained tensors: EMA == weights
    assert not torch.equal(model["net.0.weight"], ema["net.0.weight"])  # trained: EMA lags
    # resolved config in the run folder and in the checkpoint
    saved = OmegaConf.load(run / "run_config.yaml")
    assert saved.dataset.root_data_dir == str(calvin_root) and saved.optimizer.lr == 1e-4
    assert OmegaConf.load(ck / "config.yaml").embodiment.chunk_length == 10
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "lr", "steps_per_s", "input_wait_frac"} <= set(lines[0]) and any("val_mse" in x for x in lines)


def test_unpack_loss_variants():
    t = torch.tensor(1.0)
    assert unpack_loss((t, {"a": t}))[1] == {"a": t}
    assert unpack_loss({"loss": t, "b": t})[1] == {"b": t}
    assert unpack_loss(t)[0] is t
    with pytest.raises(KeyError):
        unpack_loss({"x": t})


def test_init_from_warm_start(calvin_root, tmp_path):
    from policy_models.checkpoints import CheckpointError
    from vpp_core.config import ConfigError

    a = train(tiny_calvin_cfg(calvin_root, tmp_path / "a", "dataloader.batch_size=16", "training.max_steps=2",
                              "training.validate=false"), fake_policy_factory())
    b = train(tiny_calvin_cfg(calvin_root, tmp_path / "b", "training.max_steps=0", "training.validate=false",
                              f"init_from={tmp_path / 'a'}"), fake_policy_factory())
    assert b.step == 0
    wa = load_file(str(a.last_checkpoint / "model.safetensors"))
    wb = load_file(str(b.last_checkpoint / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ema_b = load_file(str(b.last_checkpoint / "ema.safetensors"))  # the average restarts from the loaded weights
    assert all(torch.equal(ema_b[k], wa[k].float()) for k in ema_b)
    xbot_run = tmp_path / "xbot"
    (xbot_run / "checkpoints" / "step_1").mkdir(parents=True)
    (xbot_run / "checkpoints" / "step_1" / "config.yaml").write_text(
        "embodiment: {name: xbot, cameras: [cam_high, cam_left, cam_right], action_dim: 38, chunk_length: 8, "
        "state_dim: 38}\n")
    for key in ("init_from", "run.resume"):  # named as another robot's policy, before any weights are read
        with pytest.raises(CheckpointError, match=r"embodiment 'xbot'.*calvin.*action_dim 38 vs 7"):
            train(tiny_calvin_cfg(calvin_root, tmp_path / f"d_{key}", "training.max_steps=0",
                                  f"{key}={xbot_run / 'checkpoints' / 'step_1'}"), fake_policy_factory())
    with pytest.raises(ConfigError, match="run.resume=auto continues the run in run.run_dir, which is not set"):
        train(tiny_calvin_cfg(calvin_root, tmp_path / "e", "run.run_dir=null", "run.resume=auto"),
              fake_policy_factory())
    (tmp_path / "released.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="convert_vpp_checkpoint"):
        train(tiny_calvin_cfg(calvin_root, tmp_path / "c", "training.max_steps=0",
                              f"init_from={tmp_path / 'released.pt'}"), fake_policy_factory())


def test_bad_inputs_leave_no_run_folder(calvin_root, tmp_path):
    """Data and models are read before the run folder is made: failed attempts do not pile up empty runs."""
    from policy_models.datasets.base import DatasetError
    from video_models.builders import ModelFolderError

    runs = tmp_path / "runs"
    for split in ("training", "validation"):  # folders that exist, without the annotations inside
        (tmp_path / "bare" / split).mkdir(parents=True)
    with pytest.raises(DatasetError, match="language annotations not found"):
        train(tiny_calvin_cfg(tmp_path / "bare", runs, "run.run_dir=null", f"run.output_dir={runs}"),
              fake_policy_factory())
    with pytest.raises(ModelFolderError, match="video model folder not found"):
        train(tiny_calvin_cfg(calvin_root, runs, "run.run_dir=null", f"run.output_dir={runs}",
                              f"video_model_path={tmp_path / 'svd'}"))
    assert not runs.exists()


def test_the_setup_is_logged_into_the_run_folder_once(calvin_root, tmp_path):
    """What the setup logs before the run folder exists still reaches its log.txt, and only once."""
    result = train(tiny_calvin_cfg(calvin_root, tmp_path / "run", "training.max_steps=0", "training.validate=false"),
                   fake_policy_factory())
    log_text = (result.run_dir / "log.txt").read_text()
    assert log_text.count("vpp.train: train: ") == 1 and log_text.count("trainable parameters: ") == 1
    assert sorted(p.name for p in result.run_dir.iterdir()) == ["checkpoints", "last", "log.txt", "run_config.yaml"]


def test_resume_auto_after_a_kill_inside_a_checkpoint_replacement(calvin_root, tmp_path):
    """A kill between the two renames of `replace_folder` leaves the checkpoint that `last` names as NAME.old:
    run.resume=auto puts it back before it reads the pointer, and continues from it."""
    common = ["training.max_steps=2", "training.checkpoint_every_steps=2", "training.validate=false"]
    first = train(tiny_calvin_cfg(calvin_root, tmp_path / "run", *common), fake_policy_factory())
    last = first.last_checkpoint
    last.rename(last.with_name(last.name + ".old"))
    resumed = train(tiny_calvin_cfg(calvin_root, tmp_path / "run", "training.max_steps=3", *common[1:],
                                    "run.resume=auto"), fake_policy_factory())
    assert resumed.step == 3 and last.is_dir() and not last.with_name(last.name + ".old").exists()


def test_an_error_during_training_goes_into_log_txt_and_the_file_is_released(calvin_root, tmp_path, monkeypatch):
    """A run that fails after its folder exists records the error in its log.txt (nothing lost on a crash) and
    detaches the file, so that a later run in the same process does not log into it."""
    def failing_forward(self, batch):
        raise RuntimeError("the loss exploded")

    monkeypatch.setattr(FakePolicy, "forward", failing_forward)
    with pytest.raises(RuntimeError, match="the loss exploded"):
        train(tiny_calvin_cfg(calvin_root, tmp_path / "run", "training.max_steps=2", "training.validate=false"),
              fake_policy_factory())
    log_text = (tmp_path / "run" / "log.txt").read_text()
    assert "training stopped by an error" in log_text and "RuntimeError: the loss exploded" in log_text
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    assert not any(Path(h.baseFilename).parent == tmp_path / "run" for h in files)


def _logged(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_fresh_start_drops_the_log_of_a_run_killed_before_its_first_checkpoint(calvin_root, tmp_path):
    """run.resume=auto with no checkpoint starts at step 0: what a killed attempt logged is dropped, not doubled."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 9.0}) + "\n" for s in (1, 2, 3)))
    train(tiny_calvin_cfg(calvin_root, run, "training.max_steps=2", "training.validate=false", "run.resume=auto"),
          fake_policy_factory())
    assert [r["step"] for r in _logged(run)] == [1, 2] and all(r["loss"] != 9.0 for r in _logged(run))


def test_a_new_run_refuses_a_run_dir_with_checkpoints(calvin_root, tmp_path):
    common = ["training.max_steps=1", "training.validate=false"]
    train(tiny_calvin_cfg(calvin_root, tmp_path / "run", *common), fake_policy_factory())
    with pytest.raises(ConfigError, match="holds another run's checkpoints; continue it with run.resume=auto"):
        train(tiny_calvin_cfg(calvin_root, tmp_path / "run", *common), fake_policy_factory())


def test_a_step_checkpoint_at_an_epoch_end_is_taken_after_the_validation(calvin_root, tmp_path):
    """checkpoint_every_steps landing on an epoch's last step (5 batches an epoch): the checkpoint comes after the
    epoch's validation, so resuming from it (here: the same command once the run is done) validates nothing twice."""
    common = ["dataloader.batch_size=16", "training.max_epochs=2", "training.checkpoint_every_epoch=false",
              "training.checkpoint_every_steps=5", "training.val_max_batches=1", "run.resume=auto"]
    done = train(tiny_calvin_cfg(calvin_root, tmp_path / "run", *common), fake_policy_factory())
    assert done.step == 10
    state = json.loads((done.last_checkpoint / "training_state" / "trainer_state.json").read_text())
    assert state["epoch"] == 2 and state["batch_in_epoch"] == 0
    logged = _logged(tmp_path / "run")
    assert [r["step"] for r in logged if "val_mse" in r] == [5, 10]
    train(tiny_calvin_cfg(calvin_root, tmp_path / "run", *common), fake_policy_factory())
    assert _logged(tmp_path / "run") == logged
