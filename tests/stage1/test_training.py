"""Stage-1 trainer end to end on the tiny model: config forms, overfitting, checkpoints, exact resume, prediction."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from video_models.training import EpochSampler, Stage1Trainer, resolve_train_config, train
from vpp_core.config import ConfigError, load_config

from .helpers import tiny_overrides, write_latent_dataset, write_video_dataset

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "video_conf" / "tiny.yaml"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stage1_data")
    write_latent_dataset(root, "robo", {"train": 2, "val": 1}, frames=[8, 6])
    return root


@pytest.fixture(scope="module")
def run_a(tiny_model_dirs, data_root, tmp_path_factory):
    """Three steps from scratch with checkpoints at 2 and 3, validation and samples at 3."""
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(TINY, tiny_overrides(*tiny_model_dirs, data_root, out))
    result = train(cfg)
    final = result.checkpoints[-1]
    weights = load_file(final / "unet" / "diffusion_pytorch_model.safetensors")
    return cfg, result, weights


def test_config_forms_and_validation(caplog):
    paths = ["--pretrained_model_path", "svd", "train_args.clip_model_path=clip", "--train_args.dataset_dir", "d"]
    cfg = resolve_train_config(load_config(REPO / "video_conf/train_calvin_svd.yaml", paths))
    assert cfg.pretrained_model_path == "svd" and cfg.train_args.dataset_dir == "d"
    assert cfg.learning_rate == 5e-6 and cfg.adam_weight_decay == 0 and cfg.max_grad_norm == 1.0
    assert cfg.train_args.fps == 7 and cfg.train_args.text_drop_prob == 0.05 and cfg.train_args.position_encode is False
    xbot = resolve_train_config(load_config(REPO / "video_conf/train_svd.yaml", paths))
    assert xbot.train_args.position_encode is True and abs(sum(xbot.train_args.prob) - 1) < 1e-9
    assert len(xbot.train_args.prob) == len(xbot.train_args.dataset.split("+")) == 12
    with pytest.raises(ConfigError, match=r"missing required settings \['pretrained_model_path'"):
        resolve_train_config(load_config(REPO / "video_conf/train_calvin_svd.yaml"))
    with pytest.raises(ConfigError, match=r"unknown stage-1 config keys: \['learning_rat'\]"):
        resolve_train_config(load_config(None, [*paths, "learning_rat=1"]))
    with pytest.raises(ConfigError, match=r"train_args.datset"):
        resolve_train_config(load_config(None, [*paths, "train_args.datset=x"]))
    assert cfg.shard_optimizer_states is False
    with pytest.raises(ConfigError, match=r"train_args.num_frames \(8\) must equal train_args.sequence_length \(16\)"):
        resolve_train_config(load_config(None, [*paths, "train_args.num_frames=8"]))  # a silent no-op before
    assert resolve_train_config(load_config(None, [*paths, "train_args.num_frames=8",
                                                   "train_args.sequence_length=8"])).train_args.num_frames == 8
    with pytest.raises(ConfigError, match=r"shard_optimizer_states must be true or false, got 'zero1'"):
        resolve_train_config(load_config(None, [*paths, "shard_optimizer_states=zero1"]))
    with caplog.at_level(logging.WARNING):
        resolve_train_config(load_config(None, [*paths, "use_8bit_adam=false", "train_args.tie_weight=true"]))
    assert "use_8bit_adam" in caplog.text and "train_args.tie_weight" in caplog.text


def test_epoch_sampler_shards_and_resumes():
    shards = [list(EpochSampler(10, seed=1, rank=r, world=3)) for r in range(3)]
    assert {i for s in shards for i in s} == set(range(10)) and all(len(s) == 4 for s in shards)  # 2 padded repeats
    s = EpochSampler(10, seed=1)
    s.set_epoch(2)
    full = list(s)
    assert all(20 <= i < 30 for i in full)  # the epoch travels with the index (persistent workers)
    s.set_epoch(2, skip_items=4)
    assert list(s) == full[4:] and len(s) == 6


def test_loss_goes_down_on_one_batch(tiny_model_dirs, data_root, tmp_path, caplog):
    """(Also: shard_optimizer_states in a run of one process says so and trains with plain AdamW.)"""
    cfg = load_config(TINY, tiny_overrides(*tiny_model_dirs, data_root, tmp_path, learning_rate=1e-3,
                                           shard_optimizer_states="true"))
    with caplog.at_level(logging.WARNING):
        trainer = Stage1Trainer(cfg)
    assert "a run of one process has nothing to shard" in caplog.text
    assert type(trainer.optimizer.optimizer) is torch.optim.AdamW
    batch = next(iter(trainer.train_loader))
    losses = []
    for _ in range(8):
        loss = trainer.loss(batch, generator=torch.Generator().manual_seed(0))  # same sigma and noise every step
        trainer.accelerator.backward(loss)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0], losses


def test_training_writes_checkpoints_samples_and_logs(run_a):
    _, result, _ = run_a
    assert result.global_step == 3 and len(result.train_losses) == 3
    assert all(torch.isfinite(torch.tensor(result.train_losses)))
    assert [p.name for p in result.checkpoints] == ["checkpoint-2", "checkpoint-3"]
    run = result.run_dir
    for ckpt in result.checkpoints:
        for part in (
            "model_index.json",
            "unet/config.json",
            "vae/config.json",
            "scheduler/scheduler_config.json",
            "training_state/trainer_state.json",
            "training_state/optimizer.bin",
        ):
            assert (ckpt / part).is_file(), part
    assert (run / "config.yaml").is_file() and (run / "samples" / "train_steps_3_0.mp4").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"] for r in records if "train_loss" in r} == {1, 2, 3}
    assert all(0.0 <= r["input_wait_frac"] <= 1.0 for r in records if "train_loss" in r)
    assert not any("peak_memory_gib" in r for r in records)  # logged on CUDA devices only
    assert [r["step"] for r in records if "val_loss" in r] == [3]
    assert result.val_losses[3] == pytest.approx(next(r["val_loss"] for r in records if "val_loss" in r))

    from vpp_core.video_io import read_video

    grid = read_video(run / "samples" / "train_steps_3_0.mp4")
    assert grid.shape == (4, 128, 128, 3)  # 4 frames; GT over prediction; 2 samples side by side


def test_a_run_folder_given_as_the_video_model_names_its_newest_checkpoint(run_a):
    from video_models.builders import ModelFolderError, check_video_model_folder

    _, result, _ = run_a
    with pytest.raises(ModelFolderError) as info:
        check_video_model_folder(result.run_dir)
    assert str(info.value) == (
        f"video model folder {result.run_dir} lacks subfolders ['unet', 'vae', 'scheduler']; this looks like a "
        f"training run folder: pass one of its checkpoints, e.g. {result.run_dir / 'checkpoint-3'}"
    )


def test_an_incomplete_video_model_folder_names_only_what_it_lacks(tmp_path):
    """The newest checkpoint is the largest step, not the last name in sorted order, and never a half-written one."""
    from video_models.builders import ModelFolderError, check_video_model_folder

    for name in ("checkpoint-9", "checkpoint-10", "checkpoint-11.tmp", "run/unet"):
        (tmp_path / name).mkdir(parents=True)
    with pytest.raises(ModelFolderError) as info:
        check_video_model_folder(tmp_path)
    assert str(info.value).endswith(f"pass one of its checkpoints, e.g. {tmp_path / 'checkpoint-10'}")
    with pytest.raises(ModelFolderError) as info:
        check_video_model_folder(tmp_path / "run")
    assert str(info.value) == (f"video model folder {tmp_path / 'run'} lacks subfolders ['vae', 'scheduler'] "
                               "(expected a diffusers SVD folder such as svd-robot-calvin)")


def test_checkpoint_loads_in_diffusers(run_a):
    from diffusers import StableVideoDiffusionPipeline

    _, result, weights = run_a
    pipe = StableVideoDiffusionPipeline.from_pretrained(result.checkpoints[-1])
    loaded = pipe.unet.state_dict()
    assert set(loaded) == set(weights) and all(torch.equal(loaded[k], weights[k]) for k in weights)


def test_resume_is_exact(run_a, tiny_model_dirs, data_root):
    cfg, result, final_a = run_a
    ckpt2 = result.run_dir / "checkpoint-2"
    metrics = result.run_dir / "metrics.jsonl"
    logged_steps = [json.loads(line).get("step") for line in metrics.read_text().splitlines()]
    (result.run_dir / ".checkpoint-3.tmp" / "unet").mkdir(parents=True)  # a checkpoint a killed run was writing
    saved_opt = torch.load(ckpt2 / "training_state" / "optimizer.bin", weights_only=False)
    resumed = Stage1Trainer(
        load_config(TINY, tiny_overrides(*tiny_model_dirs, data_root, cfg.output_dir, resume=ckpt2))
    )
    assert resumed.global_step == 2 and resumed.run_dir == result.run_dir
    assert not (result.run_dir / ".checkpoint-3.tmp").exists()
    state = resumed.optimizer.state_dict()
    assert state["param_groups"][0]["lr"] == saved_opt["param_groups"][0]["lr"]
    for key, tensors in saved_opt["state"].items():
        for name, value in tensors.items():
            assert torch.equal(torch.as_tensor(state["state"][key][name]), torch.as_tensor(value)), (key, name)
    result_b = resumed.train()
    assert result_b.global_step == 3 and len(result_b.train_losses) == 1
    # step 3 ran again: the log holds it once, as before the resume
    assert [json.loads(line).get("step") for line in metrics.read_text().splitlines()] == logged_steps
    assert result_b.train_losses[0] == pytest.approx(result.train_losses[2], rel=1e-6, abs=1e-7)
    final_b = load_file(result.run_dir / "checkpoint-3" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)

    # resume=latest finds checkpoint-3 and, already at max_train_steps, stops without training
    latest = Stage1Trainer(
        load_config(TINY, tiny_overrides(*tiny_model_dirs, data_root, cfg.output_dir, resume="latest"))
    )
    assert latest.resume_from.name == "checkpoint-3" and latest.train().global_step == 3


def test_prediction_warns_when_asked_for_another_resolution_than_trained(run_a, tiny_model_dirs, caplog):
    """Each checkpoint's training_config.yaml gives the resolution it was trained at; prediction settings that differ
    are named in a warning, with the keys to set. Folders without it (the released ones) are not checked."""
    from video_models.prediction import PredictionSettings, trained_resolution, warn_on_resolution_mismatch

    cfg, result, _ = run_a
    model = result.checkpoints[-1]
    trained = (int(cfg.train_args.height), int(cfg.train_args.width))
    assert trained_resolution(model) == trained
    assert trained_resolution(tiny_model_dirs[0]) is None
    with caplog.at_level("WARNING", logger="video_models.prediction"):
        warn_on_resolution_mismatch(model, PredictionSettings(height=trained[0], width=trained[1]))
        warn_on_resolution_mismatch(tiny_model_dirs[0], PredictionSettings(height=8 * trained[0]))
        assert not caplog.records
        warn_on_resolution_mismatch(model, PredictionSettings(height=2 * trained[0], width=trained[1]))
    (record,) = caplog.records
    assert f"trained at {trained[0]} x {trained[1]}" in record.getMessage()
    assert f"validation_args.height={trained[0]} validation_args.width={trained[1]}" in record.getMessage()


def test_make_prediction_and_quality_check(run_a, tiny_model_dirs, data_root, tmp_path, capsys, monkeypatch):
    import eval_video_prediction
    import make_prediction

    _, result, _ = run_a
    model = result.checkpoints[-1]
    videos = write_video_dataset(tmp_path, "vids", {"val": [(12, 48, 64), (9, 64, 64)]})
    overrides = [
        "validation_args.num_frames=4",
        "validation_args.width=64",
        "validation_args.height=64",
        "validation_args.start_idx=1",
        "validation_args.decode_chunk_size=4",
    ]
    argv = [
        "--config",
        str(REPO / "video_conf/val_calvin_svd.yaml"),
        "--video_model_path",
        str(model),
        "--clip_model_path",
        str(tiny_model_dirs[1]),
        "--val_dataset_dir",
        str(videos),
        "--val_idx",
        "0+1",
        "--num_inference_steps",
        "2",
        "--guidance_scale",
        "2.0",
        "--seed",
        "3",
        "--output_dir",
        str(tmp_path / "pred"),
        "--device",
        "cpu",
        *overrides,
    ]
    assert make_prediction.main(argv) == 0
    (out,) = (tmp_path / "pred" / "vids").glob("*.mp4")
    assert out.name.endswith(f"_{model.parent.name}_{model.name}_1.mp4")
    from vpp_core.video_io import read_video

    assert read_video(out).shape == (4, 128, 128, 3)
    assert make_prediction.main([*argv[: -len(overrides)], "--val_idx", "7", *overrides]) == 2  # missing episode

    eval_argv = [
        "--config",
        str(REPO / "video_conf/val_calvin_svd.yaml"),
        "--video_model_path",
        str(model),
        "--clip_model_path",
        str(tiny_model_dirs[1]),
        "--dataset_dir",
        str(data_root),
        "--dataset",
        "robo",
        "--num_clips",
        "2",
        "--batch_size",
        "2",
        "--num_inference_steps",
        "2",
        "--output_dir",
        "eval",
        "--device",
        "cpu",
        *overrides,
    ]
    monkeypatch.chdir(tmp_path)  # the relative --output_dir is printed as the absolute folder it names
    capsys.readouterr()
    assert eval_video_prediction.main(eval_argv) == 0
    assert capsys.readouterr().out.endswith(f"prediction grids (DATASET_grid.mp4) are in {tmp_path / 'eval'}\n")
    report = json.loads((tmp_path / "eval" / "results.json").read_text())
    robo = report["datasets"]["robo"]
    assert robo["clips"] == 2 and {"psnr", "ssim", "copy_first_frame_psnr", "motion_ratio"} <= set(robo)
    assert isinstance(report["ready"], bool) and (tmp_path / "eval" / "robo_grid.mp4").is_file()


def test_training_freezes_the_heap_after_the_first_step(tiny_model_dirs, data_root, tmp_path, monkeypatch):
    """Python's full collections skip what is alive after the first step (compiled code, the model), and the
    collector is back to normal once train() returns (vpp_core.gc_freeze)."""
    import gc

    cfg = load_config(TINY, tiny_overrides(*tiny_model_dirs, data_root, tmp_path, max_train_steps=2,
                                           checkpointing_steps=100, validation_steps=100))
    trainer = Stage1Trainer(cfg)
    events = []
    monkeypatch.setattr(gc, "freeze", lambda: events.append(("freeze", trainer.global_step)))
    monkeypatch.setattr(gc, "unfreeze", lambda: events.append(("unfreeze", trainer.global_step)))
    trainer.train()
    assert events == [("freeze", 1), ("unfreeze", 2)]


def test_two_trainers_with_different_precision_in_one_process(tiny_model_dirs, data_root, tmp_path):
    """accelerate's process-wide state must not stop a second run with another precision (notebooks, test suites)."""
    first = Stage1Trainer(
        load_config(TINY, tiny_overrides(*tiny_model_dirs, data_root, tmp_path / "a", mixed_precision="bf16"))
    )
    assert first.accelerator.mixed_precision == "bf16"
    assert first.accelerator.ddp_handler.gradient_as_bucket_view  # multi-GPU runs: one copy of the gradients
    second = Stage1Trainer(load_config(TINY, tiny_overrides(*tiny_model_dirs, data_root, tmp_path / "b")))
    assert second.accelerator.mixed_precision == "no"


def test_compile_unet_compiles_each_layer_for_training_only(tiny_model_dirs, data_root, tmp_path, monkeypatch):
    """`compile_unet` compiles every ResNet and transformer of the U-Net, with the mode asked for, inside the layer
    checkpointing; the training loss runs through the compiled layers, the no-grad validation loss through the eager
    ones (no second compilation), and unknown modes are config errors."""
    from video_models.checkpointing import unet_layers

    compiled_modes, calls = [], []

    def recording_compile(fn, mode=None, **kwargs):  # stands in for torch.compile
        compiled_modes.append(mode)

        def compiled(*args, **kw):
            calls.append(torch.is_grad_enabled())
            return fn(*args, **kw)

        return compiled

    monkeypatch.setattr(torch, "compile", recording_compile)
    overrides = tiny_overrides(*tiny_model_dirs, data_root, tmp_path, compile_unet="default")
    trainer = Stage1Trainer(load_config(TINY, overrides))
    layers = unet_layers(trainer.accelerator.unwrap_model(trainer.unet))
    assert compiled_modes == ["default"] * len(layers)
    trainer.loss(next(iter(trainer.train_loader)))
    assert calls == [True] * len(layers)
    trainer.validate()
    assert calls == [True] * len(layers)  # validation ran the eager layers

    plain = Stage1Trainer(load_config(TINY, tiny_overrides(*tiny_model_dirs, data_root, tmp_path / "plain")))
    assert len(compiled_modes) == len(layers)
    assert not any(getattr(m.forward, "__vpp_layer_compiled__", False) for m in unet_layers(plain.unet))
    # the full-size configs' "auto": eager on the CPU, with the checkpointing that fits eager layers in 40 GiB
    auto = Stage1Trainer(load_config(TINY, tiny_overrides(*tiny_model_dirs, data_root, tmp_path / "auto",
                                                          compile_unet="auto", gradient_checkpointing="auto")))
    assert len(compiled_modes) == len(layers) and auto.compile_mode is None
    assert auto.gradient_checkpointing == "layers"
    bad = tiny_overrides(*tiny_model_dirs, data_root, tmp_path, compile_unet="fast")
    with pytest.raises(ConfigError, match="compile_unet must be null, auto or one of"):
        resolve_train_config(load_config(TINY, bad))
    bad = tiny_overrides(*tiny_model_dirs, data_root, tmp_path, gradient_checkpointing="some")
    with pytest.raises(ConfigError, match="gradient_checkpointing must be auto, one of"):
        resolve_train_config(load_config(TINY, bad))


def test_compile_cpp_wrapper_setting(tiny_model_dirs, data_root, tmp_path, monkeypatch):
    """`compile_cpp_wrapper: true` switches inductor's C++ kernel-launch wrapper on for the compiled layers; "auto"
    stays off on the CPU; asking for it without compile_unet, or with another value, is a config error."""
    from torch._inductor import config as inductor_config

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # nothing to compile here
    with inductor_config.patch(cpp_wrapper=False):  # restored afterwards
        auto = Stage1Trainer(load_config(TINY, tiny_overrides(*tiny_model_dirs, data_root, tmp_path / "auto",
                                                              compile_unet="default", compile_cpp_wrapper="auto")))
        assert not auto.compile_cpp_wrapper and inductor_config.cpp_wrapper is False
        on = Stage1Trainer(load_config(TINY, tiny_overrides(*tiny_model_dirs, data_root, tmp_path / "on",
                                                            compile_unet="default", compile_cpp_wrapper="true")))
        assert on.compile_cpp_wrapper and inductor_config.cpp_wrapper is True
    for value, message in (("true", "compile_cpp_wrapper=true needs compile_unet"),
                           ("often", "compile_cpp_wrapper must be true, false or auto")):
        bad = tiny_overrides(*tiny_model_dirs, data_root, tmp_path, compile_cpp_wrapper=value)
        with pytest.raises(ConfigError, match=message):
            resolve_train_config(load_config(TINY, bad))


def test_traced_training_forward_matches_eager(tiny_model_dirs, data_root, tmp_path, monkeypatch):
    """The training forward goes through real torch.compile wrappers: dynamo traces every diffusers layer inside
    the trainer. The backend is dynamo's "eager" (inductor's code generation is tested in tests/core/
    test_layer_compile.py, as a slow test), so loss and gradients must equal eager's exactly."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None, **kw: real_compile(fn, backend="eager", **kw))

    def loss_and_grads(name: str, **extra) -> tuple[float, dict[str, torch.Tensor]]:
        from video_models.checkpointing import unet_layers

        cfg = load_config(TINY, tiny_overrides(*tiny_model_dirs, data_root, tmp_path / name, **extra))
        trainer = Stage1Trainer(cfg)
        compiled = [getattr(m.forward, "__vpp_layer_compiled__", False) for m in unet_layers(trainer.unet)]
        assert all(compiled) == bool(extra) and any(compiled) == bool(extra)
        loss = trainer.loss(next(iter(trainer.train_loader)), generator=torch.Generator().manual_seed(0))
        trainer.accelerator.backward(loss)
        return float(loss.detach()), {n: p.grad.clone() for n, p in trainer.unet.named_parameters()}

    eager_loss, eager_grads = loss_and_grads("eager")
    traced_loss, traced_grads = loss_and_grads("traced", compile_unet="default")
    assert traced_loss == eager_loss
    for name, grad in eager_grads.items():
        torch.testing.assert_close(traced_grads[name], grad, rtol=0, atol=0, msg=name)


def test_short_query_attention_setting(tiny_model_dirs, data_root, tmp_path):
    """`short_query_attention: true` gives every attention layer of the U-Net the short-query kernel processor but
    the temporal cross-attention's shared-context one; "auto" (the full-size configs) leaves the CPU on diffusers'
    processor; other values are config errors."""
    from diffusers.models.attention_processor import Attention

    from video_models.attention_kernels import ShortQueryKernelProcessor
    from video_models.temporal_context import SharedContextAttnProcessor

    def processors(trainer: Stage1Trainer) -> set[str]:
        unet = trainer.accelerator.unwrap_model(trainer.unet)
        return {type(m.processor).__name__ for m in unet.modules() if isinstance(m, Attention)}

    on = Stage1Trainer(load_config(TINY, tiny_overrides(*tiny_model_dirs, data_root, tmp_path / "on",
                                                        short_query_attention="true")))
    shared = SharedContextAttnProcessor.__name__
    assert on.short_query_attention and processors(on) == {ShortQueryKernelProcessor.__name__, shared}
    loss = on.loss(next(iter(on.train_loader)))
    on.accelerator.backward(loss)
    assert torch.isfinite(loss)
    auto = Stage1Trainer(load_config(TINY, tiny_overrides(*tiny_model_dirs, data_root, tmp_path / "auto",
                                                          short_query_attention="auto")))
    assert not auto.short_query_attention and processors(auto) == {"AttnProcessor2_0", shared}
    bad = tiny_overrides(*tiny_model_dirs, data_root, tmp_path, short_query_attention="sometimes")
    with pytest.raises(ConfigError, match="short_query_attention must be true, false or auto"):
        resolve_train_config(load_config(TINY, bad))


@pytest.mark.gpu
def test_auto_settings_compile_the_layers_on_cuda(tiny_model_dirs, data_root, tmp_path):
    """The full-size configs' defaults on a GPU: every layer compiled (inductor), the transformers checkpointed, the
    short-query attention kernels, and a training step runs through them (run with `pytest -m gpu tests/stage1`)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from video_models.checkpointing import unet_layers

    overrides = tiny_overrides(*tiny_model_dirs, data_root, tmp_path, compile_unet="auto",
                               gradient_checkpointing="auto", short_query_attention="auto", mixed_precision="bf16")
    trainer = Stage1Trainer(load_config(TINY, overrides))
    assert trainer.compile_mode == "default" and trainer.gradient_checkpointing == "attentions"
    assert trainer.short_query_attention
    layers = unet_layers(trainer.accelerator.unwrap_model(trainer.unet))
    assert all(getattr(m.forward, "__vpp_layer_compiled__", False) for m in layers)
    loss = trainer.loss(next(iter(trainer.train_loader)))
    loss.backward()
    assert torch.isfinite(loss) and loss.device.type == "cuda"


@pytest.mark.gpu
def test_compile_cpp_wrapper_step_on_cuda(tiny_model_dirs, data_root, tmp_path):
    """The C++ kernel-launch wrapper, the full-size configs' default on CUDA: a training step (forward, recompute
    and backward of every compiled layer) runs through it and gives the loss of the Python-launched layers, up to the
    triton kernels' run-time tuning."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from torch._inductor import config as inductor_config

    batches = []

    def loss(name: str, **extra) -> torch.Tensor:
        overrides = tiny_overrides(*tiny_model_dirs, data_root, tmp_path / name, compile_unet="default",
                                   gradient_checkpointing="attentions", mixed_precision="bf16", **extra)
        trainer = Stage1Trainer(load_config(TINY, overrides))
        batches.append(batches[0] if batches else next(iter(trainer.train_loader)))  # one batch for both
        value = trainer.loss(batches[-1], generator=torch.Generator().manual_seed(0))
        value.backward()
        return value.detach()

    with inductor_config.patch(cpp_wrapper=False):
        python_launched = loss("python")
        cpp_launched = loss("cpp", compile_cpp_wrapper="true")
        assert inductor_config.cpp_wrapper is True
    assert torch.isfinite(cpp_launched)
    torch.testing.assert_close(cpp_launched, python_launched, rtol=1e-5, atol=1e-6)


def test_text_embeddings_run_through_the_side_stream(tiny_model_dirs, data_root, tmp_path):
    """The trainer encodes instructions through its SideStream (on CUDA, a stream of its own; see
    test_text_side_stream_gpu.py), and gets what encode_text gives directly."""
    from video_models.text_conditioning import encode_text

    cfg = load_config(TINY, tiny_overrides(*tiny_model_dirs, data_root, tmp_path, max_train_steps=1))
    trainer = Stage1Trainer(cfg)
    calls = []
    run = trainer.text_stream.run
    trainer.text_stream.run = lambda fn: calls.append(fn) or run(fn)
    texts = ["pick up the red block", "open the drawer"]
    emb = trainer.text_embeddings(texts)
    assert len(calls) == 1
    with torch.no_grad():
        direct = encode_text(texts, trainer.tokenizer, trainer.text_encoder,
                             cross_attention_dim=trainer.cross_attention_dim,
                             max_length=int(trainer.args.clip_token_length),
                             position_encode=bool(trainer.args.position_encode))
    assert torch.equal(emb, direct)


def test_the_run_folder_keeps_a_log(run_a):
    _, result, _ = run_a
    text = (result.run_dir / "log.txt").read_text()
    assert f"run folder {result.run_dir}, from step 0" in text and "saved " in text


def test_a_run_killed_before_its_first_checkpoint_restarts_with_a_clean_log(tiny_model_dirs, data_root, tmp_path):
    """resume=latest without a checkpoint starts a new run in run_dir: the killed attempt's records are dropped, not
    doubled. A new run never starts in a run_dir that holds another run's checkpoints."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 9.0}) + "\n" for s in (1, 2)))
    overrides = tiny_overrides(*tiny_model_dirs, data_root, tmp_path / "out", run_dir=run, max_train_steps=2,
                               validation_steps=100, resume="latest")
    train(load_config(TINY, overrides))
    steps = [json.loads(line).get("step") for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(steps)) == [1, 2] and len(steps) == len(set(steps))
    assert all(json.loads(line).get("loss") != 9.0 for line in (run / "metrics.jsonl").read_text().splitlines())
    fresh = [o for o in overrides if not o.startswith("resume=")]
    with pytest.raises(ConfigError, match=r"holds another run's checkpoints \(checkpoint-2\); continue it with "
                                          r"resume=latest"):
        train(load_config(TINY, fresh))
