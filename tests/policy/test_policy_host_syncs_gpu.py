"""A stage-2 training step queues its GPU work without waiting for the GPU (run with `pytest -m gpu tests/policy`).

A host-device sync in the middle of the step (a blocking upload of token ids, a CPU scalar moved to the GPU) stalls
the host until the frozen U-Net pass has finished; the action head's kernels are then launched one by one behind an
idle GPU. The text tower is the one place that still synchronizes (transformers reads the padding mask to choose its
attention mask), so it has to run before the U-Net pass is queued."""

import copy

import pytest
import torch

pytestmark = pytest.mark.gpu


def _syncs_allowed(fn, name, order):
    def wrapped(*args, **kwargs):
        order.append(name)
        torch.cuda.set_sync_debug_mode("default")
        try:
            return fn(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("error")
    return wrapped


def _recorded(fn, name, order):
    def wrapped(*args, **kwargs):
        order.append(name)
        return fn(*args, **kwargs)
    return wrapped


def test_training_step_syncs_only_in_the_text_tower_before_the_video_pass(tiny_robot_policy, forbid_host_syncs):
    """Three cameras, robot state and loss groups: every input path of `compute_loss`."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    policy = copy.deepcopy(tiny_robot_policy).cuda().train()
    res = policy.resolution
    batch = {"rgb_obs": {c: torch.rand(2, 1, 3, res, res, device="cuda") * 2 - 1 for c in "abc"},
             "lang_text": ["open the drawer", "push the block"],
             "actions": torch.rand(2, 4, 5, device="cuda"), "state_obs": torch.rand(2, 1, 6, device="cuda")}
    optimizer = torch.optim.AdamW(policy.optimizer_param_groups(0.05), lr=1e-4, fused=True)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = policy.compute_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # first call: lazy initialisation (cuBLAS handles, caches) may synchronize once
    order = []
    policy.goal_encoder.forward = _syncs_allowed(policy.goal_encoder.forward, "goal", order)
    tvp = policy.tvp_encoder
    tvp.text_tokens = _syncs_allowed(tvp.text_tokens, "text tokens", order)
    tvp.features = _recorded(tvp.features, "video pass", order)
    with forbid_host_syncs():
        step()
    assert order == ["goal", "text tokens", "video pass"]
