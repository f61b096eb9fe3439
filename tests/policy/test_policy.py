"""VPPPolicy end to end on the tiny video model: chunk prediction, stepping, loss, trainable set, encoder reuse."""

import numpy as np
import pytest
import torch

from policy_models.policy import VPPPolicy, weighted_action_loss


def _uint8_obs(cams, shapes, batch=None, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for cam, hw in zip(cams, shapes):
        shape = (*hw, 3) if batch is None else (batch, *hw, 3)
        out[cam] = rng.integers(0, 256, size=shape, dtype=np.uint8)
    return out


def test_predict_action_chunk_shape_from_raw_calvin_obs(tiny_policy):
    obs = {"rgb_obs": _uint8_obs(["rgb_static", "rgb_gripper"], [(200, 200), (84, 84)])}
    out = tiny_policy.predict_action_chunk(obs, "open the drawer", generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 10, 7) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    again = tiny_policy.predict_action_chunk(obs, "open the drawer", generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_float_and_uint8_inputs_agree(tiny_policy):
    raw = _uint8_obs(["rgb_static", "rgb_gripper"], [(64, 64), (64, 64)], batch=2)
    floats = {k: torch.from_numpy(v).permute(0, 3, 1, 2).float() / 127.5 - 1 for k, v in raw.items()}
    for cam in raw:
        torch.testing.assert_close(tiny_policy.prepare_images(raw[cam]), floats[cam], rtol=1e-6, atol=1e-6)
    assert tiny_policy.prepare_images(floats["rgb_static"].unsqueeze(1)).shape == (2, 3, 64, 64)
    with pytest.raises(KeyError, match="rgb_gripper"):
        tiny_policy.predict_action_chunk({"rgb_obs": {"rgb_static": raw["rgb_static"]}}, "x")


def test_step_replans_every_multistep_calls(tiny_policy, monkeypatch):
    calls = []
    chunk = torch.arange(70, dtype=torch.float32).reshape(1, 10, 7)

    def fake(obs, instruction, generator=None):
        calls.append(instruction)
        return chunk + len(calls)

    monkeypatch.setattr(tiny_policy, "predict_action_chunk", fake)
    tiny_policy.reset()
    actions = [tiny_policy.step({}, "go") for _ in range(25)]
    assert len(calls) == 3
    assert all(a.shape == (7,) and a.dtype == np.float32 for a in actions)
    np.testing.assert_array_equal(actions[3], (chunk[0, 3] + 1).numpy())
    np.testing.assert_array_equal(actions[10], (chunk[0, 0] + 2).numpy())
    tiny_policy.reset()
    tiny_policy.step({}, "again")
    assert len(calls) == 4


def test_sdpa_perceiver_switch_keeps_the_chunk(tiny_policy):
    obs = {"rgb_obs": _uint8_obs(["rgb_static", "rgb_gripper"], [(64, 64), (64, 64)])}
    assert not tiny_policy.sdpa_perceiver  # off by default until timed on the GPU
    explicit = tiny_policy.predict_action_chunk(obs, "open the drawer", generator=torch.Generator().manual_seed(0))
    tiny_policy.use_sdpa_perceiver()
    try:
        assert tiny_policy.sdpa_perceiver
        sdpa = tiny_policy.predict_action_chunk(obs, "open the drawer", generator=torch.Generator().manual_seed(0))
    finally:
        tiny_policy.use_sdpa_perceiver(False)
    assert not tiny_policy.sdpa_perceiver
    torch.testing.assert_close(sdpa, explicit, rtol=1e-5, atol=1e-5)


def test_encoder_reuse_equals_recomputing_the_encoder_each_step(tiny_policy):
    g = torch.Generator().manual_seed(0)
    m = tiny_policy.config.model
    tokens = torch.randn(2, m.former.num_latents, m.latent_dim, generator=g)
    goal = torch.randn(2, 1, m.dit.goal_dim, generator=g)
    a = tiny_policy.sample_actions(tokens, goal, generator=torch.Generator().manual_seed(1))
    b = tiny_policy.sample_actions(tokens, goal, generator=torch.Generator().manual_seed(1), reuse_encoder=False)
    assert a.shape == (2, 10, 7)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # planned steps: the same math, other row groupings


def test_compute_loss_backprops_only_into_trainable_weights(tiny_policy):
    policy = tiny_policy
    policy.train()
    try:
        batch = {
            "rgb_obs": {c: torch.rand(2, 1, 3, 64, 64) * 2 - 1 for c in ("rgb_static", "rgb_gripper")},
            "lang_text": ["open the drawer", "turn on the led"],
            "actions": torch.rand(2, 10, 7) * 2 - 1,
        }
        policy.zero_grad(set_to_none=True)
        loss, logs = policy(batch, generator=torch.Generator().manual_seed(0))
        assert loss.ndim == 0 and torch.isfinite(loss) and torch.equal(loss.detach(), logs["loss_mse"])
        loss.backward()
        trainable = {n for n, _ in policy.named_trainable_parameters()}
        for name, p in policy.named_parameters():
            if name in trainable:
                assert p.grad is not None, name
            else:
                assert p.grad is None, name
        assert not any(n.startswith(("tvp_encoder", "goal_encoder")) for n in trainable)
        assert "model.inner_model.proprio_emb.0.weight" not in trainable
        with pytest.raises(ValueError, match="actions must be"):
            policy.compute_loss({**batch, "actions": torch.rand(2, 9, 7)})
    finally:
        policy.zero_grad(set_to_none=True)
        policy.eval()


def test_training_text_is_encoded_in_one_side_stream_call(tiny_policy, monkeypatch):
    """compute_loss encodes the goal and the U-Net text tokens of every camera in one call on the policy's text side
    stream (on CUDA that call does not wait for the step queued before it: test_training_text_side_stream_gpu.py)."""
    from vpp_core.side_stream import SideStream

    texts = ["open the drawer", "turn on the led"]
    runs = []
    original = SideStream.run
    monkeypatch.setattr(SideStream, "run", lambda self, fn: runs.append(self) or original(self, fn))
    batch = {"rgb_obs": {c: torch.rand(2, 1, 3, 64, 64) * 2 - 1 for c in ("rgb_static", "rgb_gripper")},
             "lang_text": texts, "actions": torch.rand(2, 10, 7) * 2 - 1}
    tiny_policy.compute_loss(batch, generator=torch.Generator().manual_seed(0))
    assert len(runs) == 1 and runs[0].device == tiny_policy.device
    goal, tokens = tiny_policy._training_text(texts)
    assert len(runs) == 2 and runs[1] is runs[0]  # one stream per device, kept
    assert torch.equal(goal, tiny_policy.encode_goal(texts))
    assert torch.equal(tokens, tiny_policy.tvp_encoder.text_tokens(texts * 2))  # cameras stacked as the images
    tiny_policy.to("cpu")  # a stream made before a move would not wait for the moved weights: moving drops it
    tiny_policy._training_text(texts)
    assert len(runs) == 3 and runs[2] is not runs[0]


def test_frozen_models_are_not_in_the_state_dict_and_load_strictly(tiny_policy):
    sd = tiny_policy.state_dict()
    assert all(k.startswith(("Video_Former.", "model.inner_model.")) for k in sd)
    tiny_policy.load_state_dict(sd, strict=True)
    with pytest.raises(RuntimeError, match="Missing"):
        tiny_policy.load_state_dict({k: v for k, v in sd.items() if k != "Video_Former.latents"}, strict=True)
    assert tiny_policy.tvp_encoder.unet.training is False
    tiny_policy.train()
    assert tiny_policy.tvp_encoder.unet.training is False and tiny_policy.goal_encoder.text_encoder.training is False
    tiny_policy.eval()


def test_robot_embodiment_with_state_and_loss_groups(tiny_robot_policy):
    policy = tiny_robot_policy
    assert "model.inner_model.proprio_emb.0.weight" in {n for n, _ in policy.named_trainable_parameters()}
    obs = {"rgb_obs": _uint8_obs(["a", "b", "c"], [(48, 64)] * 3), "state_obs": np.zeros((1, 6), np.float32)}
    out = policy.predict_action_chunk(obs, "pick", generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 4, 5)
    with pytest.raises(KeyError, match="state_obs"):
        policy.predict_action_chunk({"rgb_obs": obs["rgb_obs"]}, "pick")
    batch = {"rgb_obs": {c: torch.rand(2, 1, 3, 64, 64) * 2 - 1 for c in "abc"}, "lang_text": ["x", "y"],
             "actions": torch.rand(2, 4, 5), "state_obs": torch.rand(2, 1, 6)}
    loss, logs = policy.compute_loss(batch, generator=torch.Generator().manual_seed(0))
    assert set(logs) == {"loss_mse", "loss_arm", "loss_hand"}
    torch.testing.assert_close(loss, 2 * logs["loss_arm"] + logs["loss_hand"])


def test_weighted_action_loss_matches_the_xbot_formula():
    from omegaconf import OmegaConf

    from policy_models.config import LossGroup

    cfg = OmegaConf.load("policy_conf/model/xbot.yaml")
    groups = [LossGroup(**g) for g in OmegaConf.to_container(cfg.embodiment.loss_groups)]
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 8, 38, generator=g), torch.randn(3, 8, 38, generator=g)

    def mse(a, b):
        return ((pred[..., a:b] - target[..., a:b]) ** 2).mean()

    xyz = mse(0, 3) * 3 / 38 + mse(19, 22) * 3 / 38
    rot = mse(3, 7) * 4 / 38 + mse(22, 26) * 4 / 38
    hand = mse(7, 19) * 12 / 38 + mse(26, 38) * 12 / 38
    loss, logs = weighted_action_loss(pred, target, groups, 38)
    torch.testing.assert_close(loss, 2 * xyz + 2 * rot + hand)
    torch.testing.assert_close(logs["loss_hand"], hand)
    # unit weights over all dims = plain MSE
    unit = [LossGroup(name=x.name, slices=x.slices, weight=1.0) for x in groups]
    torch.testing.assert_close(weighted_action_loss(pred, target, unit, 38)[0], ((pred - target) ** 2).mean())


def test_policy_without_frozen_models_explains_what_is_missing():
    policy = VPPPolicy({"model": {"latent_dim": 32, "feature": {"feature_dim": 16}, "dit": {"n_heads": 2},
                                  "former": {"depth": 1, "num_latents": 32, "heads": 2, "dim_head": 8}}})
    with pytest.raises(RuntimeError, match="build_policy"):
        policy.predict_action_chunk({"rgb_obs": {}}, "x")


def test_config_errors_name_the_key():
    from policy_models.config import PolicyConfigError, policy_config_from

    with pytest.raises(PolicyConfigError, match="not_a_key"):
        policy_config_from({"model": {"not_a_key": 1}})
    with pytest.raises(PolicyConfigError, match="multistep"):
        policy_config_from({"model": {"multistep": 11}})
    with pytest.raises(PolicyConfigError, match="loss_groups"):
        policy_config_from({"embodiment": {"loss_groups": [{"name": "x", "slices": [[0, 9]]}]}})


def test_feature_tokens_are_camera_major_then_row_major(tiny_policy):
    """tokens [static h*w (row-major) | gripper h*w] per frame, batch item b from images b and B + b."""
    tvp = tiny_policy.tvp_encoder
    g = torch.Generator().manual_seed(4)
    static, gripper = (torch.rand(2, 3, 64, 64, generator=g) * 2 - 1 for _ in range(2))
    noise = tvp.make_noise(4, generator=g)
    texts = ["open the drawer", "push the button"]
    feats = tiny_policy.extract_features({"rgb_static": static, "rgb_gripper": gripper}, texts, noise=noise)
    direct = tvp(torch.cat([static, gripper]), texts * 2, noise=noise).float()  # (4, F, C, h, w)
    hw = direct.shape[-1] * direct.shape[-2]
    assert feats.shape == (2, 16, 2 * hw, tvp.feature_dim)
    for b in range(2):
        torch.testing.assert_close(feats[b, :, :hw], direct[b].flatten(2).transpose(1, 2))
        torch.testing.assert_close(feats[b, :, hw:], direct[2 + b].flatten(2).transpose(1, 2))
    # row-major: token h * w_size + w is spatial position (h, w)
    torch.testing.assert_close(feats[0, 3, 1 * direct.shape[-1] + 2], direct[0, 3, :, 1, 2])
