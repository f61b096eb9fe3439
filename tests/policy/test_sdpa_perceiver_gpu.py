"""The Video Former's Perceiver attention as one SDPA kernel on CUDA (run with `pytest -m gpu tests/policy`), as the
stage-2 trainer's full-size configs run it: at the CALVIN size under bf16 autocast, forward and backward."""

import pytest
import torch

from policy_models.policy import VPPPolicy
from policy_models.video_former import use_sdpa_perceiver

pytestmark = pytest.mark.gpu


def _error(got: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """The largest difference over all tensors, relative to the reference's largest value."""
    worst = max(float((g.float() - r).abs().max()) for g, r in zip(got, reference, strict=True))
    return worst / max(float(r.abs().max()) for r in reference)


def test_full_size_sdpa_perceiver_is_as_close_to_float32_as_the_explicit_softmax():
    """In bf16 autocast the SDPA kernel rounds differently from the explicit softmax; its output and every gradient
    must be no further from the full-float32 result than the explicit path's are (at most twice as far)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    torch.manual_seed(0)
    former = VPPPolicy({"model": {"feature": {"feature_dim": 2560}}}).Video_Former.cuda().train()
    features = torch.randn(4, 16, 512, 2560, device="cuda")  # (batch, frames, 2 cameras x 256 tokens, features)
    weights = torch.randn(4, 224, 384, device="cuda")  # a fixed linear loss over the 224 output tokens

    def forward_and_grads(autocast: bool) -> list[torch.Tensor]:
        former.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            out = former(features)
        (out.float() * weights).sum().backward()
        return [out.detach().float()] + [p.grad.clone() for p in former.parameters()]

    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        reference = forward_and_grads(autocast=False)
    finally:
        torch.set_float32_matmul_precision(before)
    explicit = forward_and_grads(autocast=True)
    use_sdpa_perceiver(former)
    sdpa = forward_and_grads(autocast=True)

    assert 0 < _error(explicit[:1], reference[:1]) < 0.05  # bf16 rounding, not a broken path
    assert _error(sdpa[:1], reference[:1]) <= 2 * _error(explicit[:1], reference[:1])
    assert _error(sdpa[1:], reference[1:]) <= 2 * _error(explicit[1:], reference[1:])
