"""On CUDA a stage-2 training step encodes its text without waiting for the work queued on the main stream (run with
`pytest -m gpu tests/policy`): the CLIP text tower reads its padding mask on the host, which on the main stream would
wait for the training step queued before (vpp_core.side_stream)."""

import copy

import pytest
import torch

pytestmark = pytest.mark.gpu

TEXTS = ["open the drawer", "push the block to the left"]


@pytest.fixture()
def cuda_policy(tiny_robot_policy):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return copy.deepcopy(tiny_robot_policy).cuda().train()


def _busy_main_stream():
    """Queue about half a second of GPU sleep on the current stream (10^9 cycles at about 2 GHz)."""
    torch.cuda._sleep(1_000_000_000)


def test_policy_text_on_the_main_stream_waits_for_queued_work(cuda_policy):
    """The premise: encoded on the main stream, the goal makes the host wait for everything queued before it."""
    cuda_policy.encode_goal(TEXTS)
    torch.cuda.synchronize()
    _busy_main_stream()
    cuda_policy.encode_goal(TEXTS)
    assert torch.cuda.current_stream().query(), "encode_goal returned before the queued work had finished"


def test_training_text_returns_before_queued_work_with_the_same_tensors(cuda_policy):
    goal = cuda_policy.encode_goal(TEXTS)
    tokens = cuda_policy.tvp_encoder.text_tokens(TEXTS * 3)  # three cameras
    cuda_policy._training_text(TEXTS)  # the first call waits for the main stream once
    torch.cuda.synchronize()
    _busy_main_stream()
    side_goal, side_tokens = cuda_policy._training_text(TEXTS)
    assert not torch.cuda.current_stream().query(), "the side stream waited for the main stream's queued work"
    later = side_tokens + 1  # queued on the main stream: must see the side stream's result
    torch.cuda.synchronize()
    assert torch.equal(side_goal, goal) and torch.equal(side_tokens, tokens)
    assert torch.equal(later, tokens + 1)


def test_training_step_on_the_side_stream_gives_the_main_stream_loss(cuda_policy, monkeypatch):
    """A whole loss with the text on the side stream equals the loss with the text encoded on the main stream (in
    eval mode, so that dropout draws nothing from the global generator)."""
    from vpp_core.side_stream import SideStream

    cuda_policy.eval()
    res = cuda_policy.resolution
    gen = torch.Generator().manual_seed(0)
    batch = {"rgb_obs": {c: torch.rand(2, 1, 3, res, res, generator=gen).cuda() * 2 - 1 for c in "abc"},
             "lang_text": TEXTS, "actions": torch.rand(2, 4, 5, generator=gen).cuda(),
             "state_obs": torch.rand(2, 1, 6, generator=gen).cuda()}
    side, _ = cuda_policy.compute_loss(batch, generator=torch.Generator("cuda").manual_seed(1))
    monkeypatch.setattr(SideStream, "run", lambda self, fn: fn())
    main, _ = cuda_policy.compute_loss(batch, generator=torch.Generator("cuda").manual_seed(1))
    assert torch.equal(side, main)
