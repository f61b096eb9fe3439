"""Full-size CALVIN policy on a CUDA device with a random full-size SVD (run with `pytest -m gpu tests/policy`).

Checks the partial U-Net pass against diffusers' full forward in fp16, the top-left causal cross-attention in
bf16/fp16 on the GPU kernels, and prints latency / memory of one chunk prediction and one training step.
"""

import json
import os
import time

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def full_policy():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from omegaconf import OmegaConf

    from policy_models.goal_encoder import GoalEncoder
    from policy_models.policy import VPPPolicy
    from policy_models.tvp_encoder import TVPEncoder
    from tests.policy.conftest import POLICY_CONF
    from video_models.builders import build_scheduler, build_video_model

    torch.manual_seed(0)
    with torch.device("cuda"):
        vm = build_video_model({"text_encoder": {"projection_dim": 512}})
    unet, vae = vm.unet.half().eval(), vm.vae.half().eval()
    cfg = OmegaConf.load(POLICY_CONF / "calvin.yaml")
    # the scheduler keeps its tables on the CPU (as when loaded from a folder), not under the cuda device context
    tvp = TVPEncoder(unet, vae, build_scheduler(), vm.text_encoder.eval(), vm.tokenizer)
    goal = GoalEncoder(vm.text_encoder, vm.tokenizer)
    with torch.device("cuda"):
        policy = VPPPolicy(cfg, tvp_encoder=tvp, goal_encoder=goal)
    return policy.cuda()


def _timed(fn, reps):
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        out = fn()
    torch.cuda.synchronize()
    return out, (time.perf_counter() - t) / reps


def test_partial_unet_equals_hooked_full_forward_fp16(full_policy):
    tvp = full_policy.tvp_encoder
    assert tvp.resolution == 256 and tvp.feature_dim == 2560
    g = torch.Generator(device="cuda").manual_seed(0)
    images = torch.rand(2, 3, 256, 256, device="cuda", generator=g) * 2 - 1
    noise = tvp.make_noise(2, generator=g)
    inputs = tvp.prepare_unet_inputs(images, ["open the drawer", "lift the red block"], noise=noise)
    feats = tvp.partial_unet(**inputs)
    cap = {}
    hooks = [tvp.unet.up_blocks[i].register_forward_hook(lambda m, a, o, i=i: cap.__setitem__(i, o)) for i in (0, 1)]
    with torch.no_grad():
        tvp.unet(**inputs)
    for h in hooks:
        h.remove()
    ref = torch.cat([torch.nn.functional.interpolate(cap[0], scale_factor=2), cap[1]], 1).reshape(2, 16, 2560, 16, 16)
    assert feats.dtype == torch.float16 and feats.shape == (2, 16, 2560, 16, 16)
    torch.testing.assert_close(feats, ref, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_causal_cross_attention_is_top_left_on_gpu(dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from policy_models.diffusion.dit import Attention

    torch.manual_seed(0)
    attn = Attention(384, 8, 0.3, 0.1, causal=True).cuda().to(dtype).eval()
    x, ctx = torch.randn(4, 10, 384, device="cuda", dtype=dtype), torch.randn(4, 225, 384, device="cuda", dtype=dtype)
    with torch.no_grad():
        out = attn(x, ctx)
        q = attn.query(x).view(4, 10, 8, 48).transpose(1, 2)
        k = attn.key(ctx).view(4, 225, 8, 48).transpose(1, 2)
        v = attn.value(ctx).view(4, 225, 8, 48).transpose(1, 2)
        mask = torch.ones(10, 225, dtype=torch.bool, device="cuda").tril()
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        ref = attn.c_proj(ref.transpose(1, 2).reshape(4, 10, 384))
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)


def test_latency_and_training_step(full_policy):
    policy = full_policy.eval()
    rng = np.random.default_rng(0)
    obs = {"rgb_obs": {"rgb_static": rng.integers(0, 256, (200, 200, 3), dtype=np.uint8),
                       "rgb_gripper": rng.integers(0, 256, (84, 84, 3), dtype=np.uint8)}}
    g = torch.Generator(device="cuda").manual_seed(0)
    chunk, _ = _timed(lambda: policy.predict_action_chunk(obs, "open the drawer", generator=g), 2)
    assert chunk.shape == (1, 10, 7) and torch.isfinite(chunk).all()
    _, t_chunk = _timed(lambda: policy.predict_action_chunk(obs, "open the drawer"), 10)

    batch_size = int(os.environ.get("VPP_GPU_BATCH", "8"))
    batch = {"rgb_obs": {c: torch.rand(batch_size, 1, 3, 256, 256, device="cuda") * 2 - 1
                         for c in ("rgb_static", "rgb_gripper")},
             "lang_text": ["open the drawer"] * batch_size,
             "actions": torch.rand(batch_size, 10, 7, device="cuda") * 2 - 1}
    opt = torch.optim.AdamW(policy.optimizer_param_groups(0.05), lr=1e-4, betas=(0.9, 0.9))
    policy.train()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = policy.compute_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    step()
    torch.cuda.reset_peak_memory_stats()
    loss, t_step = _timed(step, 5)
    policy.eval()
    result = {
        "device": torch.cuda.get_device_name(),
        "predict_action_chunk_ms": round(t_chunk * 1e3, 1),
        "train_step_ms": round(t_step * 1e3, 1),
        "train_batch": batch_size,
        "train_peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "loss": float(loss.detach()),
    }
    print("VPP_GPU_RESULT", json.dumps(result))
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "policy_gpu.json"), "w") as fh:
            json.dump(result, fh)
    assert torch.isfinite(loss)


def test_cuda_graph_sampler_is_bitwise_the_eager_sampler(full_policy):
    p = full_policy.eval()
    tok = torch.randn(2, 224, 384, device="cuda")
    goal = torch.randn(2, 1, 512, device="cuda")
    try:
        p.cuda_graph_sampler = False
        ref = p.sample_actions(tok, goal, generator=torch.Generator("cuda").manual_seed(0))
        p.cuda_graph_sampler = True
        for _ in range(3):  # capture, then replays
            out = p.sample_actions(tok, goal, generator=torch.Generator("cuda").manual_seed(0))
            assert torch.equal(out, ref)
        tok2 = torch.randn_like(tok)
        p.cuda_graph_sampler = False
        ref2 = p.sample_actions(tok2, goal, generator=torch.Generator("cuda").manual_seed(1))
        p.cuda_graph_sampler = True
        assert torch.equal(p.sample_actions(tok2, goal, generator=torch.Generator("cuda").manual_seed(1)), ref2)
    finally:
        p.cuda_graph_sampler = False
