"""The agent prepares camera frames on the policy's device (run with `pytest -m gpu tests/deploy`)."""

import numpy as np
import pytest
import torch

import step3_deploy_real_xbot
from deploy.fake_policy import FakePolicy
from policy_models.normalization import Stats

pytestmark = pytest.mark.gpu


def _agent(device: str) -> step3_deploy_real_xbot.XbotAgent:
    policy = FakePolicy(cameras=("cam_high", "cam_left", "cam_right"), action_dim=38, chunk_length=8, state_dim=38)
    policy.device = torch.device(device)
    stats = Stats(state_01=np.zeros(38), state_99=np.ones(38), action_01=np.full(38, -1.0),
                  action_99=np.full(38, 1.0))
    return step3_deploy_real_xbot.XbotAgent(policy=policy, stats=stats, device=device)


def test_frames_are_prepared_on_the_gpu_as_on_the_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    on_gpu = _agent("cuda").preprocess_image(frame)
    on_cpu = _agent("cpu").preprocess_image(frame)
    assert on_gpu.device.type == "cuda" and on_gpu.shape == on_cpu.shape == (1, 3, 256, 256)
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=0, atol=1e-6)  # same ops, other rounding at most
    floats = torch.rand(1, 1, 3, 300, 400) * 2 - 1
    torch.testing.assert_close(_agent("cuda").preprocess_image(floats).cpu(), _agent("cpu").preprocess_image(floats),
                               rtol=0, atol=1e-6)
