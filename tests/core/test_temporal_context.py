"""The temporal cross-attention's context projected once per clip (video_models.temporal_context): the U-Net's
outputs and gradients are diffusers' own, while the projections see one context per clip instead of one per
position."""

import copy
from pathlib import Path

import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel

from video_models.builders import _plain, _tuples, build_unet
from video_models.checkpointing import enable_layer_checkpointing
from video_models.temporal_context import SharedContextAttnProcessor, share_temporal_context
from vpp_core.config import load_config

TINY = Path(__file__).resolve().parents[2] / "video_conf" / "tiny.yaml"


def _diffusers_unet() -> UNetSpatioTemporalConditionModel:
    torch.manual_seed(0)
    return UNetSpatioTemporalConditionModel(**{"sample_size": 96, **_tuples(_plain(load_config(TINY).model.unet))})


def _inputs(unet, clips=2, frames=4, size=8):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(clips, frames, 8, size, size, generator=g), torch.ones(clips),
            torch.randn(clips, 20, unet.config.cross_attention_dim, generator=g)), {
        "added_time_ids": torch.tensor([[7.0, 127.0, 0.0]] * clips)}


def test_outputs_and_gradients_equal_diffusers_forward():
    reference = _diffusers_unet().train()
    shared = copy.deepcopy(reference)
    assert share_temporal_context(shared) == 10 and share_temporal_context(shared) == 0  # idempotent
    args, kwargs = _inputs(reference)
    results = []
    for unet in (reference, shared):
        unet.zero_grad(set_to_none=True)
        context = args[2].clone().requires_grad_(True)
        out = unet(args[0], args[1], context, **kwargs).sample
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads = {n: p.grad for n, p in unet.named_parameters() if p.grad is not None}
        results.append((out.detach(), context.grad, grads))
    (out_a, ctx_a, grads_a), (out_b, ctx_b, grads_b) = results
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ctx_b, ctx_a, rtol=1e-4, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    temporal_kv = [n for n in grads_a if "temporal_transformer_blocks" in n and "attn2.to_k" in n]
    assert temporal_kv  # the summed per-position gradients are there, and equal
    for name in grads_a:
        # sums over positions in another order: rounding of about 1e-7 of the largest gradient
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-5, msg=name)


def test_built_unets_project_each_clips_context_once():
    unet = build_unet(load_config(TINY).model.unet).eval()
    temporal_attn2 = [b.attn2 for m in unet.modules() for b in getattr(m, "temporal_transformer_blocks", [])]
    assert temporal_attn2 and all(isinstance(a.processor, SharedContextAttnProcessor) for a in temporal_attn2)
    rows = []
    handle = temporal_attn2[0].to_k.register_forward_hook(lambda mod, inp, out: rows.append(inp[0].shape[0]))
    args, kwargs = _inputs(unet, clips=3)
    with torch.no_grad():
        unet(*args, **kwargs)
    handle.remove()
    assert rows == [3]  # one context per clip; diffusers' forward gives one per position (3 x 8 x 8)


def test_wrapped_layers_are_refused_and_mismatched_batches_raise():
    unet = _diffusers_unet()
    enable_layer_checkpointing(unet)
    with pytest.raises(ValueError, match="before wrapping"):
        share_temporal_context(unet)
    attn = build_unet(load_config(TINY).model.unet).down_blocks[0].attentions[0].temporal_transformer_blocks[0].attn2
    queries = torch.randn(6, 4, attn.to_q.in_features)
    with pytest.raises(ValueError, match="divides the query batch"):
        attn(queries, encoder_hidden_states=torch.randn(4, 20, attn.to_k.in_features))
    # equal batches are plain cross-attention
    assert attn(queries, encoder_hidden_states=torch.randn(6, 20, attn.to_k.in_features)).shape == queries.shape


def test_the_benchmarks_control_restores_the_per_position_context():
    """`--per-position-temporal-context` (benchmarks.common.per_position_temporal_context) measures diffusers' own
    forward: the projections see every position's copy again, with the same outputs up to rounding."""
    from benchmarks.common import per_position_temporal_context

    unet = build_unet(load_config(TINY).model.unet).eval()
    control = copy.deepcopy(unet)
    assert per_position_temporal_context(control) == 10 and per_position_temporal_context(control) == 0
    attn2 = control.down_blocks[0].attentions[0].temporal_transformer_blocks[0].attn2
    rows = []
    attn2.to_k.register_forward_hook(lambda mod, inp, out: rows.append(inp[0].shape[0]))
    args, kwargs = _inputs(unet, clips=2)
    with torch.no_grad():
        torch.testing.assert_close(control(*args, **kwargs).sample, unet(*args, **kwargs).sample,
                                   rtol=1e-5, atol=1e-6)
    assert rows == [2 * 8 * 8]
