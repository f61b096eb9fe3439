"""Stage-2 checkpoint folders and the converter for the released .pt files (vpp_reference §11)."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from policy_models.checkpoints import (
    CheckpointError,
    convert_released_checkpoint,
    load_policy,
    load_policy_config,
    resolve_checkpoint_dir,
    save_policy_checkpoint,
)
from tests.policy.test_architecture import read_param_dump

# The frozen CLIP groups are dropped by the converter, so tiny stand-ins with the real names are enough.
CLIP_GROUPS = [
    "language_goal.clip_rn50.positional_embedding",
    "language_goal.clip_rn50.transformer.resblocks.0.attn.in_proj_weight",
    "language_goal.clip_rn50.visual.conv1.weight",
    "TVP_encoder.text_encoder.text_model.embeddings.token_embedding.weight",
    "TVP_encoder.text_encoder.text_model.embeddings.position_ids",
    "TVP_encoder.text_encoder.text_projection.weight",
]


def _released_state(dump: str, extra=()):
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in read_param_dump(dump):
        state[name] = torch.randn(shape, generator=g)
        if name == "Video_Former.norm.bias":  # released order: Video_Former, CLIP groups, model.inner_model
            for key in (*CLIP_GROUPS, *extra):
                state[key] = torch.zeros(2, dtype=torch.int64 if key.endswith("position_ids") else torch.float32)
    return state


def _check_converted(out_dir, state):
    policy = load_policy(out_dir, load_frozen_models=False)
    got = policy.state_dict()
    kept = {k: v for k, v in state.items() if k.startswith(("Video_Former.", "model.inner_model."))}
    assert list(got) == list(kept)
    for key, value in kept.items():
        assert torch.equal(got[key], value), key
    return policy


def test_convert_calvin_release_with_pickled_config(tmp_path):
    state = _released_state("calvin_params.txt")
    args = OmegaConf.create({"model": {"sigma_min": 0.001}, "act_seq_len": 10})
    pt = tmp_path / "dp-calvin.pt"
    torch.save({"model": state, "args": args}, pt)
    with pytest.raises(CheckpointError, match="--trust-pickled-config"):
        convert_released_checkpoint(pt, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    out = convert_released_checkpoint(pt, tmp_path / "converted", allow_pickle_config=True,
                                      video_model_path="svd-robot-calvin", clip_model_path="clip")
    policy = _check_converted(out, state)
    assert policy.num_trainable_parameters() == 39_234_439
    cfg = OmegaConf.load(out / "config.yaml")
    assert cfg.embodiment.cameras == ["rgb_static", "rgb_gripper"] and cfg.model.feature.feature_dim == 2560
    assert cfg.model.video_model_path == "svd-robot-calvin"
    assert cfg.converted_from.dropped_tensors["position_ids"] == 1
    assert not (out / "stats.json").exists()


def test_convert_xbot_release_from_weights_only_file(tmp_path):
    from tools.convert_vpp_checkpoint import main

    extra = ["text_encoder.text_model.final_layer_norm.weight"]  # xbot registered the HF tower twice
    state = _released_state("xbot_params.txt", extra=extra)
    pt = tmp_path / "xbot.pt"
    torch.save({"model": state}, pt)
    assert main(["--input", str(pt), "--output", str(tmp_path / "xbot")]) == 0
    policy = _check_converted(tmp_path / "xbot", state)
    e = policy.embodiment
    assert (e.action_dim, e.chunk_length, e.state_dim, len(e.cameras)) == (38, 8, 38, 3)
    assert policy.config.model.feature.use_all_layer is False


def test_converter_rejects_unknown_and_missing_keys(tmp_path, capsys):
    from tools.convert_vpp_checkpoint import main

    state = _released_state("calvin_params.txt")
    torch.save({"model": {**state, "Video_Former.extra": torch.zeros(1)}}, tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match="Video_Former.extra"):
        convert_released_checkpoint(tmp_path / "a.pt", tmp_path / "a")
    del state["model.inner_model.decoder.blocks.2.ln3.bias"]
    torch.save({"model": state}, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="decoder.blocks.2.ln3.bias"):
        convert_released_checkpoint(tmp_path / "b.pt", tmp_path / "b")
    assert main(["--input", str(tmp_path / "b.pt"), "--output", str(tmp_path / "b")]) == 2
    assert "missing keys" in capsys.readouterr().err


def test_save_and_load_round_trip_with_frozen_models(tiny_policy, tiny_model_dirs, tmp_path):
    svd, clip = tiny_model_dirs
    ema = {k: v + 1 for k, v in tiny_policy.state_dict().items()}
    stats = {"action_01": [0.0] * 7, "action_99": [1.0] * 7}
    train_cfg = OmegaConf.create({"batch_size": 4, "model": {"diffusion": {"sigma_min": 0.5}}})
    ckpt = save_policy_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000010", tiny_policy, train_cfg,
                                  ema_state=ema, stats=stats)
    (tmp_path / "run" / "checkpoints" / "last").write_text("step_0000010")
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.yaml", "ema.safetensors", "model.safetensors",
                                                      "stats.json"]
    cfg = OmegaConf.load(ckpt / "config.yaml")
    assert cfg.batch_size == 4 and cfg.model.diffusion.sigma_min == 0.001  # the policy's own blocks win
    assert resolve_checkpoint_dir(tmp_path / "run") == ckpt

    overridden = load_policy_config(ckpt, overrides={"model.diffusion.sigma_min": 1.0})
    assert overridden.model.diffusion.sigma_min == 1.0
    loaded = load_policy(tmp_path / "run")
    assert not loaded.training
    assert loaded.stats == json.loads((ckpt / "stats.json").read_text())
    for k, v in tiny_policy.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    obs = {"rgb_obs": {c: torch.zeros(1, 3, 64, 64) for c in ("rgb_static", "rgb_gripper")}}
    gen = [torch.Generator().manual_seed(0) for _ in range(2)]
    torch.testing.assert_close(loaded.predict_action_chunk(obs, "x", generator=gen[0]),
                               tiny_policy.predict_action_chunk(obs, "x", generator=gen[1]))

    ema_loaded = load_policy(ckpt, video_model_path=svd, clip_model_path=clip, use_ema=True)
    key = "Video_Former.latents"
    assert torch.equal(ema_loaded.state_dict()[key], ema[key])

    with pytest.raises(CheckpointError, match="ema_state keys"):
        save_policy_checkpoint(tmp_path / "bad", tiny_policy, ema_state={"x": torch.zeros(1)})
    (tmp_path / "nothing").mkdir()
    with pytest.raises(CheckpointError, match="not a stage-2 checkpoint"):
        load_policy(tmp_path / "nothing")


def test_a_missing_checkpoint_folder_is_reported_as_missing(tmp_path):
    """A mistyped path says that it does not exist, not what a folder that is not there lacks."""
    with pytest.raises(CheckpointError, match=r"nope does not exist$"):
        resolve_checkpoint_dir(tmp_path / "runs" / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty is not a stage-2 checkpoint folder \(no config.yaml\)"):
        resolve_checkpoint_dir(tmp_path / "empty")
