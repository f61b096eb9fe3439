"""The fused decoder's Triton kernels on CUDA (run with `pytest -m gpu tests/policy`): at the CALVIN decoder's full
size against the eager decoder, and inside the policy's chunk, eager, graphed and compiled."""

import copy

import pytest
import torch

from policy_models.diffusion.dit import DiffusionTransformer
from policy_models.diffusion.fused_decoder import planned_decoder, planned_decoder_inputs

from .helpers import repeatable_cuda_chunk

pytestmark = pytest.mark.gpu


@pytest.fixture
def matmul_precision():
    before = torch.get_float32_matmul_precision()
    yield torch.set_float32_matmul_precision
    torch.set_float32_matmul_precision(before)


def _cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda")


@pytest.mark.parametrize("batch", [1, 8])
def test_full_size_fused_decoder_equals_the_eager_one(batch, matmul_precision):
    device = _cuda()
    torch.manual_seed(0)
    dit = DiffusionTransformer().to(device).eval()  # CALVIN sizes: width 384, 8 heads, 4 + 4 blocks
    for p in dit.parameters():
        p.data.normal_(0, 0.05)
    context = torch.randn(batch, 225, 384, device=device)
    actions = torch.randn(batch, 10, 7, device=device)

    def both(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        plan = dit.plan_decoding(context, torch.tensor([80.0, 2.0, 0.05], device=device))
        fused = planned_decoder(dit.action_emb(actions), *planned_decoder_inputs(dit, plan, step), 8)
        return fused, dit.decode_planned(plan, step, actions)

    with torch.no_grad():
        matmul_precision("highest")
        for step in range(3):
            fused, reference = both(step)
            assert (fused - reference).abs().max() <= 1e-5 * reference.abs().max()
        # TF32 projections: no further from the float32 result than cuBLAS's TF32 products are
        matmul_precision("high")
        fused_tf32, eager_tf32 = both(1)
        assert (fused_tf32 - reference).abs().max() <= 2 * (eager_tf32 - reference).abs().max() + 1e-6


def test_policy_chunks_with_the_fused_decoder(tiny_policy, matmul_precision):
    _cuda()
    matmul_precision("highest")
    policy = copy.deepcopy(tiny_policy).cuda().eval()
    chunk = repeatable_cuda_chunk(policy)

    policy.cuda_graph = "off"
    reference = chunk()
    policy.use_fused_decoder()
    assert policy.fused_decoder
    eager = chunk()
    assert (eager - reference).abs().max() <= 1e-5
    policy.cuda_graph = "chunk"
    chunk()  # captures
    assert torch.equal(chunk(), eager)  # the graph replays the fused kernels exactly
    policy.compile_action_head("default")
    compiled = chunk()
    assert (compiled - reference).abs().max() <= 1e-4
