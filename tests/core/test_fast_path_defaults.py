"""The full-size training and evaluation configs default to the fast GPU paths ("auto": compiled on CUDA, eager on
the CPU); the tiny configs stay eager; multi-GPU training keeps one copy of the gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from policy_models.training.config import compose_config
from video_models.training import checkpointing_mode, resolve_train_config
from vpp_core.config import (
    ConfigError,
    compile_setting,
    flag_setting,
    load_config,
    matmul_precision_setting,
    resolve_compile_setting,
    resolve_flag,
)
from vpp_core.ddp import ddp_kwargs_handlers

REPO = Path(__file__).resolve().parents[2]
STAGE2_KEYS = ("training.compile_video_model", "training.compile_action_head", "training.short_query_attention")


def test_compile_settings_resolve_by_device():
    assert compile_setting("auto", "k") == "auto"
    assert compile_setting(None, "k") is None and compile_setting("null", "k") is None
    assert compile_setting(False, "k") is None
    assert compile_setting("max-autotune-no-cudagraphs", "k") == "max-autotune-no-cudagraphs"
    with pytest.raises(ConfigError, match="training.compile_video_model must be null, auto or one of"):
        compile_setting("reduce-overhead", "training.compile_video_model")  # inductor's own CUDA graphs
    assert resolve_compile_setting("auto", "cuda") == "default"
    assert resolve_compile_setting("auto", "cpu") is None
    assert resolve_compile_setting("max-autotune-no-cudagraphs", "cpu") == "max-autotune-no-cudagraphs"
    assert resolve_compile_setting(None, "cuda") is None
    assert resolve_flag(flag_setting("auto", "k"), "cuda") is True
    assert resolve_flag(flag_setting("auto", "k"), "cpu") is False
    assert resolve_flag(flag_setting(True, "k"), "cpu") is True
    assert resolve_flag(flag_setting(False, "k"), "cuda") is False
    with pytest.raises(ConfigError, match="short_query_attention must be true, false or auto"):
        flag_setting("yes", "short_query_attention")
    # stage 1: the fastest checkpointing that keeps batch 6 within 40 GiB, compiled or not
    assert checkpointing_mode("auto", compiled=True) == "attentions"
    assert checkpointing_mode("auto", compiled=False) == "layers"
    assert checkpointing_mode(True, compiled=True) == "layers" and checkpointing_mode("none", compiled=True) == "none"


def _select(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("name", ["VPP_Calvinabc_train", "VPP_xbot_train"])
def test_stage2_full_size_configs_compile_on_cuda(name):
    cfg = compose_config(REPO / "policy_conf" / f"{name}.yaml")
    assert [_select(cfg, k) for k in STAGE2_KEYS] == ["auto"] * 3
    modes = [resolve_compile_setting(compile_setting(_select(cfg, k), k), "cuda") for k in STAGE2_KEYS[:2]]
    assert modes == ["default", "default"]


@pytest.mark.parametrize("name", ["tiny_calvin", "tiny_xbot", "small_sim_calvin"])
def test_tiny_and_experiment_configs_keep_their_settings(name):
    """Tiny models (tests, the demo) stay eager on any device; the simulator experiment keeps what its runs used."""
    cfg = compose_config(REPO / "policy_conf" / f"{name}.yaml")
    video = "default" if name == "small_sim_calvin" else None
    assert [_select(cfg, k) for k in STAGE2_KEYS] == [video, None, False]


@pytest.mark.parametrize("name", ["train_calvin_svd", "train_svd"])
def test_stage1_full_size_configs_compile_on_cuda(name):
    paths = ["pretrained_model_path=svd", "train_args.clip_model_path=clip", "train_args.dataset_dir=d"]
    cfg = resolve_train_config(load_config(REPO / "video_conf" / f"{name}.yaml", paths))
    assert cfg.compile_unet == "auto" and cfg.gradient_checkpointing == "auto" and cfg.train_batch_size == 6
    assert cfg.short_query_attention == "auto"
    assert resolve_flag(cfg.short_query_attention, "cuda") and not resolve_flag(cfg.short_query_attention, "cpu")
    assert cfg.compile_cpp_wrapper == "auto"
    assert resolve_flag(cfg.compile_cpp_wrapper, "cuda") and not resolve_flag(cfg.compile_cpp_wrapper, "cpu")
    mode = resolve_compile_setting(cfg.compile_unet, "cuda")
    assert mode == "default" and checkpointing_mode(cfg.gradient_checkpointing, mode is not None) == "attentions"
    assert resolve_compile_setting(cfg.compile_unet, "cpu") is None


def test_evaluation_config_compiles_on_cuda():
    cfg = yaml.safe_load((REPO / "policy_conf" / "calvin_evaluate.yaml").read_text())
    assert compile_setting(cfg["compile"], "compile") == "auto"
    assert resolve_flag(flag_setting(cfg["short_query_attention"], "short_query_attention"), "cuda") is True
    # the float32 action head on TF32 tensor cores, as the trainers and the benchmark harnesses run it
    assert matmul_precision_setting(cfg["float32_matmul_precision"], "float32_matmul_precision") == "high"


def test_matmul_precision_setting_is_checked():
    assert [matmul_precision_setting(v, "k") for v in ("highest", "high", "medium")] == ["highest", "high", "medium"]
    for bad in ("tf32", None, True):
        with pytest.raises(ConfigError, match="float32_matmul_precision must be one of"):
            matmul_precision_setting(bad, "float32_matmul_precision")


def test_ddp_gradients_are_views_into_the_allreduce_buckets(tmp_path):
    """With the trainers' DDP settings every gradient lives inside DDP's bucket storage: no second copy. DDP's default
    (the control) gives each parameter a gradient of its own."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        def gradient_storages(**ddp_kwargs) -> set[int]:
            torch.manual_seed(0)
            model = DistributedDataParallel(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)),
                                            **ddp_kwargs)
            model(torch.randn(3, 8)).sum().backward()
            return {p.grad.untyped_storage().data_ptr() for p in model.parameters()}

        (handler,) = ddp_kwargs_handlers()
        assert len(gradient_storages(**handler.to_kwargs())) == 1  # one bucket holds all four gradients
        assert len(gradient_storages()) == 4
    finally:
        dist.destroy_process_group()
