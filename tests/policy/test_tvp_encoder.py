"""The partial U-Net pass equals diffusers' full forward tapped with hooks (vpp_reference §6.3, §13.4)."""

import pytest
import torch
import torch.nn.functional as F


@pytest.fixture(scope="module")
def tvp(tiny_policy):
    return tiny_policy.tvp_encoder


def _reference_features(tvp, inputs, use_all_layer=True, k=1):
    captured = {}
    hooks = [tvp.unet.up_blocks[i].register_forward_hook(lambda m, a, o, i=i: captured.__setitem__(i, o))
             for i in range(k + 1)]
    try:
        with torch.no_grad():
            tvp.unet(**inputs)
    finally:
        for h in hooks:
            h.remove()
    size = captured[k].shape[-2:]
    taps = [F.interpolate(captured[i], scale_factor=2 ** (k - i)) for i in range(k)] if use_all_layer else []
    taps.append(captured[k])
    assert all(t.shape[-2:] == size for t in taps)
    feats = torch.cat(taps, dim=1)
    b, f = inputs["sample"].shape[:2]
    return feats.reshape(b, f, *feats.shape[1:]), captured


def test_features_equal_full_unet_with_hooks_and_channel_order(tvp):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, tvp.resolution, tvp.resolution, generator=g) * 2 - 1
    texts = ["open the drawer", "push the red block left", "lift the pink block"]
    noise = tvp.make_noise(3, generator=g)
    feats = tvp(images, texts, noise=noise)
    ref, captured = _reference_features(tvp, tvp.prepare_unet_inputs(images, texts, noise=noise))
    c0 = captured[0].shape[1]
    assert feats.shape == (3, 16, tvp.feature_dim, *captured[1].shape[-2:])
    torch.testing.assert_close(feats, ref, rtol=0, atol=0)
    # channels [0, c0) are up_blocks[0] upsampled (nearest: 2x2 blocks equal), [c0, ...) are up_blocks[1]
    up0 = captured[0].reshape(3, 16, c0, *captured[0].shape[-2:])
    torch.testing.assert_close(feats[:, :, :c0, ::2, ::2], up0, rtol=0, atol=0)
    torch.testing.assert_close(feats[:, :, :c0, 1::2, 1::2], up0, rtol=0, atol=0)
    torch.testing.assert_close(feats[:, :, c0:].flatten(0, 1), captured[1], rtol=0, atol=0)


def test_unet_inputs_follow_the_scheduler(tvp):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, tvp.resolution, tvp.resolution, generator=g) * 2 - 1
    noise = tvp.make_noise(2, generator=g)
    inputs = tvp.prepare_unet_inputs(images, ["a", "b"], noise=noise)
    assert float(inputs["timestep"]) == pytest.approx(0.25 * torch.log(torch.tensor(700.0)).item(), rel=1e-5)
    # sigma 700 noise scaled by 1 / sqrt(700^2 + 1) after multiplying by init_noise_sigma = sqrt(700^2 + 1)
    torch.testing.assert_close(inputs["sample"][:, :, :4], noise, rtol=1e-5, atol=1e-5)
    cond = inputs["sample"][:, :, 4:]
    assert torch.equal(cond[:, 0], cond[:, -1])
    mode = tvp.vae.encode(images).latent_dist.mode()
    torch.testing.assert_close(cond[:, 0], mode)
    assert inputs["added_time_ids"].tolist() == [[4.0, 127.0, 0.0]] * 2
    assert inputs["encoder_hidden_states"].shape == (2, 20, tvp.unet.config.cross_attention_dim)


def test_scaled_latent_input_equals_pixel_input(tvp):
    g = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, tvp.resolution, tvp.resolution, generator=g) * 2 - 1
    noise = tvp.make_noise(2, generator=g)
    scaled = tvp.vae.encode(images).latent_dist.mode() * tvp.vae.config.scaling_factor
    a = tvp.prepare_unet_inputs(images, ["x", "y"], noise=noise)
    b = tvp.prepare_unet_inputs(scaled, ["x", "y"], noise=noise)
    torch.testing.assert_close(a["sample"], b["sample"], rtol=1e-5, atol=1e-6)


def test_generator_makes_noise_deterministic_and_fresh_by_default(tvp):
    images = torch.zeros(1, 3, tvp.resolution, tvp.resolution)
    a = tvp.prepare_unet_inputs(images, ["x"], generator=torch.Generator().manual_seed(5))["sample"]
    b = tvp.prepare_unet_inputs(images, ["x"], generator=torch.Generator().manual_seed(5))["sample"]
    c = tvp.prepare_unet_inputs(images, ["x"])["sample"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_only_last_tap_when_not_use_all_layer(tvp):
    from policy_models.tvp_encoder import TVPEncoder

    single = TVPEncoder(tvp.unet, tvp.vae, tvp.scheduler, tvp.text_encoder, tvp.tokenizer, use_all_layer=False)
    assert single.feature_dim == tvp.unet.config.block_out_channels[-2]
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, tvp.resolution, tvp.resolution, generator=g) * 2 - 1
    noise = single.make_noise(2, generator=g)
    feats = single(images, ["x", "y"], noise=noise)
    ref, _ = _reference_features(single, single.prepare_unet_inputs(images, ["x", "y"], noise=noise),
                                 use_all_layer=False)
    torch.testing.assert_close(feats, ref, rtol=0, atol=0)


def test_resolution_rule(tvp):
    assert tvp.resolution == tvp.unet.config.sample_size * tvp.vae_scale_factor // 3
