"""Tiny end-to-end runs with the real VPPPolicy on the tiny video model: train -> checkpoint -> resume exactly ->
load_policy -> predict_action_chunk, for CALVIN-format data and for xbot-style data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_helpers import CONF

from policy_models.datasets.base import RobotDataset
from policy_models.training.config import compose_config
from policy_models.training.trainer import default_dataset_factory, train


class _First(RobotDataset):
    """The first n samples of the real dataset (keeps epochs to two steps so validation runs in the test)."""

    def __init__(self, ds, n):
        self.ds, self.n = ds, n
        for k in ("cameras", "action_seq_len", "action_dim", "state_dim", "source"):
            setattr(self, k, getattr(ds, k))
        self.stats = getattr(ds, "stats", None)

    def __len__(self):
        return self.n

    def load_sample(self, i):
        return {k: v for k, v in self.ds[i].items() if k != "idx"}


# the full-size configs' fast-path defaults
AUTO_KEYS = [f"training.{k}=auto" for k in ("compile_video_model", "compile_action_head", "short_query_attention",
                                            "sdpa_perceiver")]


def _data(n):
    def make(cfg, split, policy):
        return _First(default_dataset_factory(cfg, split, policy), n)

    return make


def _cfg(name, run_dir, *overrides):
    return compose_config(CONF / name, [f"run.run_dir={run_dir}", "training.disable_progress_bar=true",
                                        "dataloader.batch_size=1", "dataloader.val_batch_size=1",
                                        "training.val_max_batches=1", "training.max_steps=3",
                                        "training.checkpoint_every_steps=0", "training.keep_last_checkpoints=null",
                                        *overrides])


def _same_weights(a, b):
    for f in ("model.safetensors", "ema.safetensors"):
        x, y = load_file(str(a / f)), load_file(str(b / f))
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), (f, k)


def test_tiny_calvin_train_resume_load_predict(calvin_root_session, tiny_model_dirs, tmp_path):
    from policy_models.checkpoints import load_policy

    svd, clip = tiny_model_dirs
    paths = [f"root_data_dir={calvin_root_session}", f"video_model_path={svd}", f"text_encoder_path={clip}"]
    full = train(_cfg("tiny_calvin.yaml", tmp_path / "full", *paths), dataset_factory=_data(2))
    assert full.step == 3 and full.epoch == 1
    assert len(full.val_history) == 1 and np.isfinite(full.val_history[0]["val_mse"])
    assert full.val_history[0]["val_mse_elements"] == 1 * 10 * 7  # val_max_batches=1 of batch 1
    ck2 = tmp_path / "full" / "checkpoints" / "step_0000002"  # epoch end (validation) checkpoint
    assert (tmp_path / "full" / "best").read_text().strip() == "checkpoints/step_0000002"
    resumed = train(_cfg("tiny_calvin.yaml", tmp_path / "resumed", *paths, f"run.resume={ck2}"),
                    dataset_factory=_data(2))
    assert resumed.step == 3
    _same_weights(full.last_checkpoint, resumed.last_checkpoint)

    policy = load_policy(tmp_path / "resumed")  # run folder: follows `last`
    rng = np.random.default_rng(0)
    obs = {"rgb_obs": {"rgb_static": rng.integers(0, 256, (200, 200, 3), dtype=np.uint8),
                       "rgb_gripper": rng.integers(0, 256, (84, 84, 3), dtype=np.uint8)}}
    chunk = policy.predict_action_chunk(obs, "push the sliding door to the left side")
    assert chunk.shape == (1, 10, 7) and torch.isfinite(chunk).all()
    ema_policy = load_policy(resumed.last_checkpoint, use_ema=True)
    assert not torch.equal(ema_policy.model.inner_model.action_pred.weight, policy.model.inner_model.action_pred.weight)


def test_training_freezes_the_heap_after_the_first_step(calvin_root_session, tiny_model_dirs, tmp_path, monkeypatch):
    """Python's full collections skip what is alive after the first step (compiled code, the models), and the
    collector is back to normal once training returns (vpp_core.gc_freeze)."""
    import gc

    from policy_models.training.trainer import Trainer

    svd, clip = tiny_model_dirs
    cfg = _cfg("tiny_calvin.yaml", tmp_path / "run", f"root_data_dir={calvin_root_session}",
               f"video_model_path={svd}", f"text_encoder_path={clip}", "training.max_steps=2",
               "training.validate_every_epochs=0", "training.checkpoint_every_epoch=false")
    trainer = Trainer(cfg, dataset_factory=_data(4))
    events = []
    monkeypatch.setattr(gc, "freeze", lambda: events.append(("freeze", trainer.state.step)))
    monkeypatch.setattr(gc, "unfreeze", lambda: events.append(("unfreeze", trainer.state.step)))
    assert trainer.fit().step == 2
    assert events == [("freeze", 1), ("unfreeze", 2)]


def test_tiny_xbot_train_and_predict(tiny_model_dirs, tmp_path):
    from policy_models.checkpoints import load_policy
    from policy_models.datasets.synthetic import write_synthetic_xbot
    from policy_models.datasets.xbot_index import IndexConfig, prepare_index

    write_synthetic_xbot(tmp_path / "data", episodes={"train": 1, "val": 1}, length=12, latent_size=8)
    prepare_index(IndexConfig(root=str(tmp_path / "data"), dataset_names=["xbot_synth"]), tmp_path / "index")
    svd, clip = tiny_model_dirs
    cfg = _cfg("tiny_xbot.yaml", tmp_path / "run", f"data_json_path={tmp_path / 'index'}",
               f"data_root_path={tmp_path / 'data'}", f"video_model_path={svd}", f"text_encoder_path={clip}",
               "training.max_steps=2")
    res = train(cfg, dataset_factory=_data(2))
    assert res.step == 2 and np.isfinite(res.val_history[0]["val_mse"])
    rec = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"loss_xyz", "loss_rot", "loss_hand"} <= set(rec)  # the weighted 2*xyz + 2*rot + 1*hand parts
    stats = json.loads((res.last_checkpoint / "stats.json").read_text())
    assert len(stats["action_01"]) == 38
    policy = load_policy(res.last_checkpoint)
    assert policy.stats is not None
    obs = {"rgb_obs": {c: torch.randn(1, 4, 8, 8) for c in ("cam_high", "cam_left", "cam_right")},
           "state_obs": np.zeros((1, 38), dtype=np.float32)}
    chunk = policy.predict_action_chunk(obs, "put the bag into the box")
    assert chunk.shape == (1, 8, 38)


def test_compile_keys_compile_the_video_passes_and_the_action_head(calvin_root_session, tiny_model_dirs, tmp_path,
                                                                     monkeypatch):
    """training.compile_video_model and training.compile_action_head reach the policy's compile methods, and
    training.short_query_attention the U-Net's attention layers and training.sdpa_perceiver the Video Former's before
    them; unknown modes and inductor's CUDA-graph modes are config errors before anything is built or written."""
    from policy_models.policy import VPPPolicy
    from policy_models.training import trainer
    from vpp_core.config import ConfigError

    calls = []
    for method in ("compile_video_model", "compile_action_head"):
        monkeypatch.setattr(VPPPolicy, method, lambda self, mode="default", backend="inductor", _m=method:
                            calls.append((_m, mode)))
    monkeypatch.setattr(trainer, "use_short_query_kernels",
                        lambda unet: calls.append(("short_query_attention", type(unet).__name__)))
    switch_perceiver = VPPPolicy.use_sdpa_perceiver

    def record_perceiver_switch(self, enabled=True):
        switch_perceiver(self, enabled)
        calls.append(("sdpa_perceiver", self.sdpa_perceiver))

    monkeypatch.setattr(VPPPolicy, "use_sdpa_perceiver", record_perceiver_switch)
    svd, clip = tiny_model_dirs
    paths = [f"root_data_dir={calvin_root_session}", f"video_model_path={svd}", f"text_encoder_path={clip}"]
    train(_cfg("tiny_calvin.yaml", tmp_path / "plain", *paths, "training.max_steps=1", "training.validate=false"),
          dataset_factory=_data(2))
    assert calls == []
    # the full-size configs' "auto" compiles on CUDA only: eager here, on the CPU
    train(_cfg("tiny_calvin.yaml", tmp_path / "auto", *paths, "training.max_steps=1", "training.validate=false",
               *AUTO_KEYS),
          dataset_factory=_data(2))
    assert calls == []
    train(_cfg("tiny_calvin.yaml", tmp_path / "compiled", *paths, "training.max_steps=1", "training.validate=false",
               "training.compile_video_model=max-autotune-no-cudagraphs", "training.compile_action_head=default",
               "training.short_query_attention=true", "training.sdpa_perceiver=true"),
          dataset_factory=_data(2))
    assert calls == [("short_query_attention", "UNetSpatioTemporalConditionModel"), ("sdpa_perceiver", True),
                     ("compile_video_model", "max-autotune-no-cudagraphs"), ("compile_action_head", "default")]

    def no_policy(cfg, device):
        raise AssertionError("the policy was built before the config was checked")

    for key, value, error in (("compile_video_model", "fast", "null, auto or one of"),
                              ("compile_action_head", "reduce-overhead", "null, auto or one of"),
                              ("short_query_attention", "sometimes", "true, false or auto"),
                              ("sdpa_perceiver", "often", "true, false or auto")):
        with pytest.raises(ConfigError, match=f"training.{key} must be {error}"):  # "+": past the override check
            train(_cfg("tiny_calvin.yaml", tmp_path / key, *paths, f"+training.{key}={value}"),
                  policy_factory=no_policy, dataset_factory=_data(2))
        assert not (tmp_path / key).exists()  # no run folder left behind
    with pytest.raises(ConfigError, match="training.short_query_attention holds bool"):  # tiny_calvin's false
        _cfg("tiny_calvin.yaml", tmp_path / "x", *paths, "training.short_query_attention=sometimes")
    multi_gpu = trainer.Trainer(_cfg("tiny_calvin.yaml", tmp_path / "ddp", *paths))
    multi_gpu._setup_accelerator()
    assert multi_gpu.acc.ddp_handler.gradient_as_bucket_view  # DDP keeps one copy of the gradients


@pytest.mark.gpu
def test_auto_compile_keys_compile_on_cuda(calvin_root_session, tiny_model_dirs, tmp_path, monkeypatch):
    """The full-size configs' "auto" on a GPU: the short-query kernels, the SDPA Perceiver, then both compiled parts
    (run with `pytest -m gpu tests/training`; the compile calls are recorded, not run)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from policy_models.policy import VPPPolicy
    from policy_models.training import trainer

    calls = []
    for method in ("compile_video_model", "compile_action_head"):
        monkeypatch.setattr(VPPPolicy, method, lambda self, mode="default", backend="inductor", _m=method:
                            calls.append((_m, mode)))
    monkeypatch.setattr(trainer, "use_short_query_kernels",
                        lambda unet: calls.append(("short_query_attention", unet.device.type)))
    monkeypatch.setattr(VPPPolicy, "use_sdpa_perceiver",
                        lambda self, enabled=True: calls.append(("sdpa_perceiver", enabled)))
    svd, clip = tiny_model_dirs
    paths = [f"root_data_dir={calvin_root_session}", f"video_model_path={svd}", f"text_encoder_path={clip}"]
    train(_cfg("tiny_calvin.yaml", tmp_path / "auto", *paths, "training.max_steps=1", "training.validate=false",
               *AUTO_KEYS),
          dataset_factory=_data(2))
    assert calls == [("short_query_attention", "cuda"), ("sdpa_perceiver", True), ("compile_video_model", "default"),
                     ("compile_action_head", "default")]
    record = json.loads((tmp_path / "auto" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 < record["peak_memory_gib"] <= record["peak_reserved_gib"]  # logged on CUDA
