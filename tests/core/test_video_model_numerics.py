"""Golden numbers that the released video model depends on (vpp_reference §3.2, §3.4, §3.7)."""

import math

import pytest
import torch

from video_models.builders import build_scheduler
from video_models.edm import sample_training_sigmas, v_preconditioning, video_diffusion_loss
from video_models.text_conditioning import drop_text_embeddings, encode_text, sincos_position_table

KARRAS_20 = [
    700.0,
    510.3563,
    366.5733,
    259.0096,
    179.7188,
    122.2153,
    81.2628,
    52.6844,
    33.193,
    20.2408,
    11.8869,
    6.6815,
    3.5664,
    1.7894,
    0.8325,
    0.3526,
    0.1324,
    0.0424,
    0.0109,
    0.002,
    0.0,
]


def test_svd_scheduler_karras_sigmas_20_steps():
    scheduler = build_scheduler()
    scheduler.set_timesteps(20)
    assert scheduler.sigmas.tolist() == pytest.approx(KARRAS_20, abs=1e-4, rel=1e-5)
    assert float(scheduler.timesteps[0]) == pytest.approx(0.25 * math.log(700.0), abs=1e-5)  # 1.63777
    assert float(scheduler.init_noise_sigma) == pytest.approx(math.sqrt(700.0**2 + 1), rel=1e-6)
    x = torch.ones(1, 4)
    scaled = scheduler.scale_model_input(x, scheduler.timesteps[0])
    assert float(scaled[0, 0]) == pytest.approx(1 / math.sqrt(700.0**2 + 1), rel=1e-5)


@pytest.mark.parametrize("sigma", [0.002, 0.5, 1.0, 7.3, 700.0])
def test_v_preconditioning(sigma):
    pre = v_preconditioning(torch.tensor([sigma]))
    assert float(pre.c_skip) == pytest.approx(1 / (sigma**2 + 1))
    assert float(pre.c_out) == pytest.approx(-sigma / math.sqrt(sigma**2 + 1))
    assert float(pre.c_in) == pytest.approx(1 / math.sqrt(sigma**2 + 1))
    assert float(pre.c_noise) == pytest.approx(0.25 * math.log(sigma))


def test_training_sigma_distribution():
    g = torch.Generator().manual_seed(0)
    log_sigma = torch.log(sample_training_sigmas(20000, generator=g).double())
    assert float(log_sigma.mean()) == pytest.approx(0.7, abs=0.05)
    assert float(log_sigma.std()) == pytest.approx(1.6, abs=0.05)


def test_position_table_values():
    table = sincos_position_table(20, 512)
    assert table.shape == (20, 512)
    assert torch.all(table[0, :256] == 0) and torch.all(table[0, 256:] == 1)
    pos, k = 7, 13
    omega = 1 / 10000 ** (k / 256)
    assert float(table[pos, k]) == pytest.approx(math.sin(pos * omega), abs=1e-6)
    assert float(table[pos, 256 + k]) == pytest.approx(math.cos(pos * omega), abs=1e-6)


def test_encode_text_shapes_and_duplication(tiny_model_dirs):
    from video_models.builders import load_text_encoder

    tokenizer, text_encoder = load_text_encoder(tiny_model_dirs[1])
    width = text_encoder.config.hidden_size
    with torch.no_grad():
        emb = encode_text(
            ["pick up the red block", "open the drawer"], tokenizer, text_encoder, cross_attention_dim=2 * width
        )
        plain = text_encoder(
            **tokenizer(
                ["pick up the red block"], padding="max_length", max_length=20, truncation=True, return_tensors="pt"
            )
        ).last_hidden_state
        with_pe = encode_text(
            ["pick up the red block"], tokenizer, text_encoder, cross_attention_dim=2 * width, position_encode=True
        )
    assert emb.shape == (2, 20, 2 * width)
    assert torch.equal(emb[..., :width], emb[..., width:])
    assert torch.allclose(emb[0, :, :width], plain[0], atol=1e-6)
    assert torch.allclose(with_pe[0, :, :width] - plain[0], sincos_position_table(20, width), atol=1e-5)


def test_text_dropout_zeroes_whole_samples():
    emb = torch.ones(1000, 3, 4)
    dropped = drop_text_embeddings(emb, 0.05, generator=torch.Generator().manual_seed(1))
    per_sample = dropped.flatten(1)
    assert set(per_sample.sum(1).tolist()) <= {0.0, 12.0}
    assert 20 < int((per_sample.sum(1) == 0).sum()) < 80


def test_video_loss_matches_hand_computation():
    """With a U-Net stand-in F(x) = 0, D = c_skip * noisy, so the loss has a closed form."""

    class Zero(torch.nn.Module):
        def forward(self, x, t, encoder_hidden_states, added_time_ids):
            self.seen = x
            return type("Out", (), {"sample": torch.zeros_like(x[:, :, :4])})()

    unet = Zero()
    latents = torch.randn(2, 3, 4, 2, 2)
    noise = torch.randn_like(latents)
    sigmas = torch.tensor([0.5, 3.0])
    loss = video_diffusion_loss(
        unet, latents, torch.zeros(2, 5, 8), torch.zeros(2, 3), 0.18215, sigmas=sigmas, noise=noise
    )
    s = sigmas.view(-1, 1, 1, 1, 1)
    noisy = latents + s * noise
    expected = ((s**2 + 1) / s**2 * (noisy / (s**2 + 1) - latents) ** 2).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    # U-Net input: c_in * noisy on channels 0-3, unscaled frame-0 latent repeated on channels 4-7
    assert torch.allclose(unet.seen[:, :, :4], noisy / torch.sqrt(s**2 + 1), atol=1e-6)
    assert torch.allclose(unet.seen[:, 2, 4:], latents[:, 0] / 0.18215, atol=1e-5)
