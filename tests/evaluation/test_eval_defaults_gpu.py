"""The evaluator's default policy on CUDA (run with `pytest -m gpu tests/evaluation`): compiled passes and action head
with the short-query attention kernels, TF32 matrix products and the fused decoder's Triton kernels give the eager
full-float32 policy's chunks within float rounding, and run in the whole-chunk CUDA graph."""

import numpy as np
import pytest
import torch

from policy_evaluation.policy_factory import CheckpointPolicyFactory
from video_models.attention_kernels import ShortQueryKernelProcessor
from video_models.temporal_context import SharedContextAttnProcessor

pytestmark = pytest.mark.gpu


def _observation() -> dict:
    rng = np.random.default_rng(0)
    return {"rgb_obs": {"rgb_static": rng.integers(0, 256, (1, 200, 200, 3), dtype=np.uint8),
                        "rgb_gripper": rng.integers(0, 256, (1, 84, 84, 3), dtype=np.uint8)}}


def _chunks(policy, seeds=(0, 1)) -> list[torch.Tensor]:
    """Chunks for the same noise in both policies: drawn from explicit generators (compiled code draws random numbers
    of its own from the default generator, so a shared seed would not give shared noise)."""
    return [policy.predict_action_chunk(_observation(), "open the drawer",
                                        generator=torch.Generator("cuda").manual_seed(seed)).float().cpu()
            for seed in seeds]


def test_default_evaluation_policy_matches_eager_on_cuda(save_tiny_checkpoint, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    folder, svd, clip = save_tiny_checkpoint(tmp_path / "ckpt")
    common = {"checkpoint_dir": str(folder), "video_model_path": str(svd), "clip_model_path": str(clip)}
    # the precision is process-wide: the eager reference's chunks are drawn before the fast policy sets TF32
    eager = CheckpointPolicyFactory(**common, float32_matmul_precision="highest")("cuda")
    eager_chunks = _chunks(eager)
    fast = CheckpointPolicyFactory(**common, compile_mode="auto", short_query_attention="auto",
                                   float32_matmul_precision="high", fused_decoder="auto")("cuda")
    assert torch.get_float32_matmul_precision() == "high"
    assert fast.fused_decoder and not eager.fused_decoder
    assert fast.video_compile_mode == "default" and fast.action_head_compile_mode == "default"
    processors = {type(m.processor) for m in fast.tvp_encoder.unet.modules() if hasattr(m, "processor")}
    assert processors == {ShortQueryKernelProcessor, SharedContextAttnProcessor}
    assert eager.video_compile_mode is None and ShortQueryKernelProcessor not in {
        type(m.processor) for m in eager.tvp_encoder.unet.modules() if hasattr(m, "processor")}
    _chunks(fast)  # the first calls compile
    fast_chunks = _chunks(fast)
    for got, want in zip(fast_chunks, eager_chunks):
        assert torch.allclose(got, want, atol=2e-3), (got - want).abs().max()
    assert not torch.allclose(*fast_chunks)  # other noise, other chunk: the comparison is not of constants
    # what the evaluator calls: the default generator, the chunk captured as one CUDA graph and replayed
    captured = len(fast._graphs)
    replays = [fast.predict_action_chunk(_observation(), "open the drawer") for _ in range(3)]
    assert len(fast._graphs) == captured + 1  # one capture for this call signature, then replays
    assert all(torch.isfinite(r).all() for r in replays) and not torch.allclose(replays[1], replays[2])
