import numpy as np
import pytest
import torch

import step3_deploy_real_xbot
from deploy.fake_policy import FakePolicy
from policy_models.normalization import Stats, normalize_bound

CAMS = ("cam_high", "cam_left", "cam_right")


def make_stats(mode="componentwise", order="xyzw", lo=-2.0, hi=2.0, seed=0):
    rng = np.random.default_rng(seed)
    s01 = rng.uniform(-1, 0, 38)
    return Stats(state_01=s01, state_99=s01 + rng.uniform(0.5, 2, 38), action_01=np.full(38, lo),
                 action_99=np.full(38, hi), relative_mode=mode, quat_order=order)


def make_agent(stats, **kw):
    policy = FakePolicy(cameras=CAMS, action_dim=38, chunk_length=8, state_dim=38)
    return step3_deploy_real_xbot.XbotAgent(policy=policy, stats=stats, device="cpu", **kw), policy


def test_run_3image_shape_and_inputs():
    stats = make_stats()
    agent, policy = make_agent(stats)
    img = torch.rand(1, 1, 3, 256, 256) * 2 - 1
    state = np.random.default_rng(1).normal(size=(1, 1, 38))
    out = agent.run_3image(img, img.numpy(), img, "place the bag", state)
    assert isinstance(out, np.ndarray) and out.shape == (1, 8, 38) and out.dtype == np.float32
    obs = policy.last_obs
    assert list(obs["rgb_obs"]) == list(CAMS)
    for x in obs["rgb_obs"].values():
        assert x.shape == (1, 3, 256, 256) and x.dtype == torch.float32
        torch.testing.assert_close(x, img[0])
    np.testing.assert_allclose(obs["state_obs"].numpy()[0],
                               normalize_bound(state.reshape(38), stats.state_01, stats.state_99), atol=1e-6)
    assert policy.last_instruction == "place the bag"


def test_run_3image_uint8_letterbox_and_errors():
    agent, policy = make_agent(make_stats())
    frame = np.full((120, 320, 3), 255, np.uint8)  # wider than 4:3: padded top/bottom, then resized to 256
    out = agent.run_3image(frame, frame, frame, "x", np.zeros((1, 1, 38)))
    assert out.shape == (1, 8, 38)
    x = policy.last_obs["rgb_obs"]["cam_high"]
    assert x.shape == (1, 3, 256, 256)
    assert x[0, :, 0].max() == -1.0 and x[0, :, 128].min() == 1.0  # black band on top, white in the middle
    lb = step3_deploy_real_xbot.letterbox_4x3(np.ones((100, 200, 3), np.uint8))
    assert lb.shape == (150, 200, 3) and lb[:25].max() == 0 and lb[25:125].min() == 1 and lb[125:].max() == 0
    with pytest.raises(ValueError, match=r"image2.*\[-1, 1\]"):
        agent.run_3image(torch.zeros(1, 1, 3, 256, 256), torch.full((1, 1, 3, 256, 256), 255.0),
                         torch.zeros(1, 1, 3, 256, 256), "x", np.zeros(38))
    with pytest.raises(ValueError, match="state: expected 38"):
        agent.run_3image(frame, frame, frame, "x", np.zeros((1, 1, 37)))


def test_absolute_action_componentwise_is_plain_sum():
    stats = make_stats()
    agent, _ = make_agent(stats)
    rng = np.random.default_rng(2)
    delta = rng.uniform(-1, 1, (1, 8, 38))
    state = rng.normal(size=(1, 1, 38))
    got = agent.caculate_absolute_action(delta, state)  # the original name still works
    expected = (delta[0] + 1) / 2 * (stats.action_99 - stats.action_01) + stats.action_01 + state[0]
    assert got.shape == (8, 38)
    np.testing.assert_allclose(got, expected, atol=1e-9)
    np.testing.assert_allclose(agent.calculate_absolute_action(delta[0], state.reshape(38),
                                                               quaternion_mode="componentwise"), expected, atol=1e-9)
    with pytest.raises(ValueError, match="relative_mode='componentwise'"):
        agent.calculate_absolute_action(delta, state, quaternion_mode="compose")


def _rotmat_wxyz(q):
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


@pytest.mark.parametrize("order", ["xyzw", "wxyz"])
def test_absolute_action_compose_hand_computed(order):
    stats = make_stats(mode="compose", order=order)
    agent, _ = make_agent(stats)
    c = np.sqrt(0.5)
    q_state, q_delta = np.array([c, 0, 0, c]), np.array([c, c, 0, 0])  # (w,x,y,z): 90 deg about z / about x
    expected_q = np.array([0.5, 0.5, -0.5, 0.5])  # q_delta * q_state, multiplied out by hand

    def lay(q):
        return q if order == "wxyz" else q[[1, 2, 3, 0]]

    state = np.random.default_rng(3).normal(size=38)
    raw = np.zeros((8, 38))
    for a, q_s in ((0, q_state), (19, np.array([1.0, 0, 0, 0]))):
        state[a + 3:a + 7] = lay(q_s)
        raw[:, a:a + 3] = [0.1, -0.2, 0.3]
        raw[:, a + 3:a + 7] = lay(q_delta)
    raw[:, 7:19] = 0.05
    delta = normalize_bound(raw, stats.action_01, stats.action_99)[None]
    got = agent.calculate_absolute_action(delta, state[None, None], quaternion_mode="compose", quat_order=order)
    np.testing.assert_allclose(got[:, 3:7], np.tile(lay(expected_q), (8, 1)), atol=1e-6)
    np.testing.assert_allclose(got[:, 22:26], np.tile(lay(q_delta), (8, 1)), atol=1e-6)  # identity state
    np.testing.assert_allclose(got[:, 0:3], np.tile(state[0:3] + [0.1, -0.2, 0.3], (8, 1)), atol=1e-6)
    np.testing.assert_allclose(got[:, 7:19], np.tile(state[7:19] + 0.05, (8, 1)), atol=1e-6)
    # the same rotation via matrices: R(target) = R(delta) @ R(state)
    np.testing.assert_allclose(_rotmat_wxyz(expected_q), _rotmat_wxyz(q_delta) @ _rotmat_wxyz(q_state), atol=1e-12)


def test_agent_requires_stats_and_three_cameras(tmp_path):
    policy = FakePolicy(cameras=CAMS, action_dim=38, chunk_length=8, state_dim=38)
    with pytest.raises(FileNotFoundError, match="stats.json"):
        step3_deploy_real_xbot.XbotAgent(tmp_path, policy=policy, device="cpu")
    make_stats().save(tmp_path / "stats.json")
    agent = step3_deploy_real_xbot.XbotAgent(tmp_path, policy=policy, device="cpu")
    assert agent.stats.state_dim == 38
    with pytest.raises(ValueError, match="3-camera"):
        step3_deploy_real_xbot.XbotAgent(policy=FakePolicy(action_dim=38, chunk_length=8, state_dim=38),
                                         stats=make_stats(), device="cpu")
    # a two-camera (CALVIN-style) checkpoint has no stats.json either; the camera count is what to report
    (tmp_path / "calvin").mkdir()
    with pytest.raises(ValueError, match=r"3-camera policy; this one is for embodiment .* with cameras"):
        step3_deploy_real_xbot.XbotAgent(tmp_path / "calvin", policy=FakePolicy(), device="cpu")


def test_frames_are_converted_and_resized_on_the_policys_device(monkeypatch):
    """The uint8 frame goes to the policy's device before its conversion and resize (the meta device stands in for
    a GPU here; tests/deploy/test_xbot_agent_preprocess_gpu.py compares a CUDA device with the CPU)."""
    from deploy import xbot_agent

    agent, policy = make_agent(make_stats())
    policy.device = torch.device("meta")
    seen = []
    interpolate = xbot_agent.F.interpolate
    monkeypatch.setattr(xbot_agent.F, "interpolate", lambda x, **kw: seen.append(x.device) or interpolate(x, **kw))
    out = agent.preprocess_image(np.zeros((480, 640, 3), np.uint8))
    assert seen == [torch.device("meta")] and out.device.type == "meta" and out.shape == (1, 3, 256, 256)


def test_warm_up_runs_one_blank_chunk():
    stats = make_stats()
    agent, policy = make_agent(stats)
    assert policy.calls == 0  # an injected policy is not warmed up unless asked
    assert agent.warm_up() >= 0 and policy.calls == 1
    for x in policy.last_obs["rgb_obs"].values():
        torch.testing.assert_close(x, torch.full((1, 3, 256, 256), -1.0))  # black frames
    np.testing.assert_allclose(policy.last_obs["state_obs"].numpy()[0],
                               normalize_bound(np.zeros(38), stats.state_01, stats.state_99), atol=1e-6)
    _, warmed = make_agent(stats, warm_up=True)
    assert warmed.calls == 1
