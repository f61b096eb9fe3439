"""DiT and Video Former: released state_dict layout, parameter counts and the quirks of vpp_reference §12.1."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from policy_models.diffusion.dit import Attention, ConditionedBlock, DiffusionTransformer, SinusoidalPosEmb, modulate
from policy_models.policy import VPPPolicy
from policy_models.video_former import PerceiverAttentionLayer, Video_Former_3D, use_sdpa_perceiver

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference"
CALVIN_CFG = {"model": {"feature": {"feature_dim": 2560}}}
XBOT_CFG = {
    "model": {"multistep": 8, "feature": {"feature_dim": 1280, "use_all_layer": False}, "dit": {"proprio_dim": 38}},
    "embodiment": {"name": "xbot", "cameras": ["cam_high", "cam_left", "cam_right"], "action_dim": 38,
                   "chunk_length": 8, "state_dim": 38},
}


def read_param_dump(name: str) -> list[tuple[str, tuple[int, ...]]]:
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"parameter dump not found: {path}")
    out = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            out.append((parts[0], tuple(int(s) for s in parts[1].strip("()").split(",") if s.strip())))
    return out


@pytest.fixture(scope="module")
def calvin_policy():
    torch.manual_seed(0)
    return VPPPolicy(CALVIN_CFG)


@pytest.mark.parametrize("dump,cfg", [("calvin_params.txt", CALVIN_CFG), ("xbot_params.txt", XBOT_CFG)])
def test_state_dict_names_shapes_and_order_equal_the_released_dumps(dump, cfg):
    expected = read_param_dump(dump)
    policy = VPPPolicy(cfg)
    got = [(k, tuple(v.shape)) for k, v in policy.state_dict().items()]
    assert got == expected


def test_calvin_trainable_parameter_count(calvin_policy):
    assert calvin_policy.num_trainable_parameters() == 39_234_439
    assert sum(p.numel() for p in calvin_policy.Video_Former.parameters()) == 17_713_536
    frozen = {n for n, p in calvin_policy.named_parameters() if not p.requires_grad}
    assert all(n.startswith(("model.inner_model.pos_emb", "model.inner_model.goal_emb.",
                             "model.inner_model.proprio_emb.")) for n in frozen)
    assert sum(p.numel() for n, p in calvin_policy.named_parameters() if n in frozen) == 1_081_728
    assert sum(p.numel() for p in calvin_policy.state_dict().values()) == 40_316_167


def test_xbot_proprio_token_is_trainable():
    policy = VPPPolicy(XBOT_CFG)
    names = {n for n, _ in policy.named_trainable_parameters()}
    assert "model.inner_model.proprio_emb.0.weight" in names
    assert "model.inner_model.pos_emb" not in names


def test_top_left_causal_cross_attention_equals_explicit_tril_mask():
    torch.manual_seed(0)
    attn = Attention(384, 8, attn_pdrop=0.3, resid_pdrop=0.1, causal=True).eval()
    x, ctx = torch.randn(2, 10, 384), torch.randn(2, 225, 384)
    out = attn(x, ctx)
    q = attn.query(x).view(2, 10, 8, 48).transpose(1, 2)
    k = attn.key(ctx).view(2, 225, 8, 48).transpose(1, 2)
    v = attn.value(ctx).view(2, 225, 8, 48).transpose(1, 2)
    mask = torch.ones(10, 225, dtype=torch.bool).tril()  # query i sees keys 0..i
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(48)
    ref = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v
    ref = attn.c_proj(ref.transpose(1, 2).reshape(2, 10, 384))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # and it is really restrictive: changing context token 11.. does not change any action token
    ctx2 = ctx.clone()
    ctx2[:, 11:] = torch.randn_like(ctx2[:, 11:])
    torch.testing.assert_close(attn(x, ctx2), out)


def test_conditioned_block_modulation_is_shift_plus_x_times_scale():
    torch.manual_seed(0)
    blk = ConditionedBlock(32, 4, 0.0, 0.0, 0.0).eval()
    x, c, ctx = torch.randn(2, 5, 32), torch.randn(2, 1, 32), torch.randn(2, 9, 32)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = blk.adaLN_zero.modulation(c).chunk(6, -1)
    h = x + gate_msa * blk.attn(shift_msa + blk.ln_1(x) * scale_msa)
    h = h + blk.cross_att(F.layer_norm(h, (32,), blk.ln3.weight, blk.ln3.bias, 1e-5), ctx)
    h = h + gate_mlp * blk.mlp(shift_mlp + F.layer_norm(h, (32,), blk.ln_2.weight, None, 1e-5) * scale_mlp)
    torch.testing.assert_close(blk(x, c, ctx), h)
    torch.testing.assert_close(modulate(x, shift_msa, scale_msa), shift_msa + x * scale_msa)
    assert blk.ln_1.bias is None and blk.ln3.bias is not None
    assert blk.attn.c_proj.bias is None and blk.attn.key.bias is not None


def test_sinusoidal_embedding_formula():
    x = torch.tensor([[0.3], [-1.2]])
    emb = SinusoidalPosEmb(384)(x)
    assert emb.shape == (2, 1, 384)
    k = torch.arange(192, dtype=torch.float32)
    f = torch.exp(-k * math.log(10000) / 191)
    torch.testing.assert_close(emb[0, 0], torch.cat([torch.sin(0.3 * f), torch.cos(0.3 * f)]))


def test_dit_init_and_dropouts():
    torch.manual_seed(0)
    dit = DiffusionTransformer()
    mod = dit.decoder.blocks[0].adaLN_zero.modulation[1]
    assert mod.weight.abs().sum() > 0  # not zero-initialised
    assert abs(mod.weight.std().item() - 0.02) < 0.002 and mod.bias.abs().sum() == 0
    assert abs(dit.pos_emb.std().item() - 0.02) < 0.002
    a = dit.encoder.blocks[0].attn
    assert (a.attn_dropout.p, a.resid_dropout.p, dit.encoder.blocks[0].mlp.dropout.p) == (0.3, 0.1, 0.05)


def test_pos_emb_and_sigma_do_not_reach_the_encoder():
    torch.manual_seed(0)
    dit = DiffusionTransformer(embed_dim=32, n_heads=4, n_enc_layers=1, n_dec_layers=1, num_tokens=6,
                               action_seq_len=3, obs_dim=32, goal_dim=8).eval()
    tokens, goal, acts = torch.randn(2, 6, 32), torch.randn(2, 8), torch.randn(2, 3, 7)
    ctx = dit.encode(tokens, goal)
    assert ctx.shape == (2, 7, 32)
    out = dit(tokens, acts, goal, torch.tensor([0.5, 3.0]))
    with torch.no_grad():
        dit.pos_emb.add_(1.0)
    torch.testing.assert_close(dit(tokens, acts, goal, torch.tensor([0.5, 3.0])), out)
    torch.testing.assert_close(dit.decode(ctx, acts, torch.tensor([0.5, 3.0])), out)


def test_video_former_shapes_and_attention_layout():
    torch.manual_seed(0)
    vf = Video_Former_3D(dim=384, depth=1, condition_dim=64, num_latents=224, num_frame=16, num_time_embeds=16)
    assert vf.layers[0][1].head_dim == 48 and vf.layers[0][0].to_q.out_features == 512
    out = vf(torch.randn(2, 16, 20, 64))
    assert out.shape == (2, 224, 384)
    with pytest.raises(ValueError, match="16 frames"):
        vf(torch.randn(2, 8, 20, 64))


def test_sdpa_perceiver_is_the_explicit_softmax_forward_and_backward():
    """use_sdpa_perceiver: F.scaled_dot_product_attention in place of the original's stabilised explicit softmax. In
    float64 both agree to rounding, outputs and every parameter's gradient; the switch changes no parameter or key."""
    torch.manual_seed(0)
    vf = Video_Former_3D(dim=24, depth=2, condition_dim=12, dim_head=8, heads=3, num_latents=12, num_frame=4,
                         num_time_embeds=4).double()
    keys = list(vf.state_dict())
    x = torch.randn(2, 4, 7, 12, dtype=torch.float64) * 3  # large enough that the row maxima matter

    def forward_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        vf.zero_grad()
        out = vf(x)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in vf.named_parameters()}

    explicit, explicit_grads = forward_and_grads()
    use_sdpa_perceiver(vf)
    assert all(m.use_sdpa for m in vf.modules() if isinstance(m, PerceiverAttentionLayer))
    sdpa, sdpa_grads = forward_and_grads()
    torch.testing.assert_close(sdpa, explicit, rtol=1e-12, atol=1e-12)
    for name, grad in explicit_grads.items():
        torch.testing.assert_close(sdpa_grads[name], grad, rtol=1e-10, atol=1e-12, msg=name)
    assert list(vf.state_dict()) == keys
    use_sdpa_perceiver(vf, False)
    assert not any(m.use_sdpa for m in vf.modules() if isinstance(m, PerceiverAttentionLayer))
    torch.testing.assert_close(vf(x), explicit, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no Perceiver attention"):
        use_sdpa_perceiver(torch.nn.Linear(2, 2))


def test_video_former_token_order_is_frame_major():
    """Without temporal mixing (2D) token f*Q + q only depends on frame f's features."""
    from policy_models.video_former import Video_Former_2D

    torch.manual_seed(0)
    vf = Video_Former_2D(dim=32, depth=1, condition_dim=8, dim_head=8, heads=2, num_latents=12, num_frame=4,
                         num_time_embeds=4).eval()
    x = torch.randn(1, 4, 5, 8)
    out = vf(x)
    x2 = x.clone()
    x2[:, 2] += 1.0
    changed = (vf(x2) - out).abs().amax(-1)[0] > 1e-6
    assert changed.tolist() == [False] * 6 + [True] * 3 + [False] * 3


def test_planned_decoding_equals_decode_at_every_step():
    """plan_decoding (each step's AdaLN modulation, fused q/k/v weights, the context's cross-attention keys and
    values) + decode_planned is decode's math at every step of a schedule, with the plan's tensors where decode
    would compute them: sigma embeddings broadcast over the batch, keys and values in head layout."""
    torch.manual_seed(0)
    dit = DiffusionTransformer(embed_dim=32, n_heads=4, n_enc_layers=1, n_dec_layers=2, num_tokens=6,
                               action_seq_len=3, obs_dim=32, goal_dim=8).eval()
    ctx = dit.encode(torch.randn(2, 6, 32), torch.randn(2, 8))
    sigmas = torch.tensor([80.0, 7.5, 0.9, 1.0e-3])
    with torch.no_grad():
        plan = dit.plan_decoding(ctx, sigmas)
        assert len(plan.modulations) == 4 and len(plan.modulations[0]) == 2 and len(plan.cross_kv) == 2
        assert all(m.shape == (1, 1, 32) for m in plan.modulations[3][1])
        assert plan.cross_kv[0][0].shape == (2, 4, 7, 8) and plan.qkv[1][0].shape == (96, 32)
        for step, sigma in enumerate(sigmas):
            acts = torch.randn(2, 3, 7)
            ref = dit.decode(ctx, acts, sigma.expand(2))
            torch.testing.assert_close(dit.decode_planned(plan, step, acts), ref, rtol=1e-5, atol=1e-6)
        # the plan follows its inputs: another context changes the cross-attention's keys and values only
        other = dit.plan_decoding(ctx + 1.0, sigmas)
        assert not torch.allclose(other.cross_kv[0][0], plan.cross_kv[0][0])
        assert torch.equal(other.qkv[0][0], plan.qkv[0][0]) and torch.equal(other.modulations[2][0][0],
                                                                         plan.modulations[2][0][0])


def test_fused_qkv_self_attention_equals_separate_projections():
    torch.manual_seed(0)
    attn = Attention(32, 4, attn_pdrop=0.3, resid_pdrop=0.1, causal=True).eval()
    x = torch.randn(3, 10, 32)
    torch.testing.assert_close(attn.self_attend_fused(x, *attn.fused_qkv()), attn(x), rtol=1e-5, atol=1e-6)
