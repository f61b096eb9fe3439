"""The fused decoder (policy_models.diffusion.fused_decoder) on the CPU: its Triton kernels run in Triton's
interpreter (TRITON_INTERPRET=1, set before triton is imported, hence a subprocess) against the eager decoder, and the
switches refuse what the kernels cannot run. The CUDA runs are in test_fused_decoder_gpu.py."""

import textwrap

import pytest
import torch

from policy_models.diffusion.dit import DiffusionTransformer
from policy_models.diffusion.fused_decoder import unsupported_layout

from .helpers import run_in_triton_interpreter

# odd sizes on purpose: width 48 in 3 heads of 16, 5 action tokens (padded to 16), contexts shorter and longer than
# the action sequence (the top-left causal cross-attention reads min(t, S - 1) + 1 keys), two batch elements with the
# plan's broadcast modulations and with per-element ones as the unplanned decoder makes them (chunks of one tensor)
INTERPRETED = textwrap.dedent("""
    import torch
    from policy_models.diffusion.dit import DiffusionTransformer
    from policy_models.diffusion.fused_decoder import planned_decoder, planned_decoder_inputs

    torch.set_float32_matmul_precision("highest")
    torch.manual_seed(0)
    dit = DiffusionTransformer(obs_dim=48, goal_dim=16, embed_dim=48, n_enc_layers=1, n_dec_layers=2, n_heads=3,
                               num_tokens=2, action_seq_len=5).eval()
    for p in dit.parameters():
        p.data.normal_(0, 0.1)
    worst = 0.0
    with torch.no_grad():
        for context_len in (3, 40):
            plan = dit.plan_decoding(torch.randn(2, context_len, 48), torch.tensor([3.0, 0.5]))
            actions = torch.randn(2, 5, 7)
            for step in range(2):
                ref = dit.decode_planned(plan, step, actions)
                out = planned_decoder(dit.action_emb(actions), *planned_decoder_inputs(dit, plan, step), 3)
                worst = max(worst, float((out - ref).abs().max() / ref.abs().max()))
            per_element = [[tuple(m) for m in (block.adaLN_zero(dit.sigma_embedding(torch.tensor([2.0, 0.7])))
                                               for block in dit.decoder.blocks)]]
            plan = plan._replace(modulations=per_element)
            ref = dit.decode_planned(plan, 0, actions)
            out = planned_decoder(dit.action_emb(actions), *planned_decoder_inputs(dit, plan, 0), 3)
            worst = max(worst, float((out - ref).abs().max() / ref.abs().max()))
    print("worst relative difference", worst)
    assert worst < 1e-5, worst
""")


def test_fused_decoder_kernels_equal_the_eager_decoder_in_the_interpreter():
    run_in_triton_interpreter(INTERPRETED)


def test_the_fused_decoder_refuses_a_decoder_with_biases():
    assert unsupported_layout(DiffusionTransformer(embed_dim=32, n_heads=2, n_enc_layers=1, n_dec_layers=1,
                                                   bias=False)) is None
    problem = unsupported_layout(DiffusionTransformer(embed_dim=32, n_heads=2, n_enc_layers=1, n_dec_layers=1,
                                                      bias=True))
    assert "bias=False" in problem and "c_proj" in problem


def test_fused_decoding_refuses_to_run_on_the_cpu():
    dit = DiffusionTransformer(embed_dim=32, goal_dim=16, n_heads=2, n_enc_layers=1, n_dec_layers=1).eval()
    plan = dit.plan_decoding(torch.randn(1, 12, 32), torch.tensor([1.0]))
    dit.fused_decoding = True
    with pytest.raises(RuntimeError, match="CUDA only"):
        dit.decode_planned(plan, 0, torch.randn(1, 10, 7))


def test_the_policy_switch_needs_cuda(tiny_policy):
    with pytest.raises(ValueError, match="CUDA device"):
        tiny_policy.use_fused_decoder()
    assert not tiny_policy.fused_decoder
    tiny_policy.use_fused_decoder(False)
    assert not tiny_policy.fused_decoder


def test_the_auto_setting_tests_the_device_the_head_dtype_and_the_layout(tiny_policy):
    """`VPPPolicy.fused_decoder_problem`, behind "auto": None for a float32 head of the released layout on a CUDA
    device, else the reason. Only the device, the head and its decoder are read, so a stand-in policy pretends the
    CUDA device and nothing runs."""
    from types import SimpleNamespace

    from policy_models.policy import VPPPolicy

    pytest.importorskip("triton")
    assert "CUDA device" in tiny_policy.fused_decoder_problem()

    def problem(dit):
        return VPPPolicy.fused_decoder_problem(SimpleNamespace(device=torch.device("cuda"),
                                                               model=SimpleNamespace(inner_model=dit)))

    released = DiffusionTransformer(embed_dim=32, goal_dim=16, n_heads=2, n_enc_layers=1, n_dec_layers=1, bias=False)
    assert problem(released) is None
    assert "float32 action head; this one is torch.bfloat16" in problem(released.to(torch.bfloat16))
    biased = DiffusionTransformer(embed_dim=32, goal_dim=16, n_heads=2, n_enc_layers=1, n_dec_layers=1, bias=True)
    assert "bias=False" in problem(biased)
