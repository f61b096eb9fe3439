"""Sigma schedules, sampler and EDM preconditioning against the numbers of vpp_reference §3.7, §6.8, §6.9."""

import math

import pytest
import torch

from policy_models.diffusion.edm import (
    GCDenoiser,
    c_noise,
    get_scalings,
    log_logistic_cdf,
    make_sample_density,
    rand_log_logistic,
)
from policy_models.diffusion.samplers import get_sigmas, get_sigmas_exponential, get_sigmas_karras, sample_ddim

TRAIN_SIGMAS = [80, 22.81929, 6.509, 1.85664, 0.52959, 0.15106, 0.04309, 0.01229, 0.00351, 0.001, 0]
EVAL_SIGMAS = [80, 49.1627, 30.2121, 18.5664, 11.4096, 7.0116, 4.3089, 2.6479, 1.6273, 1.0, 0]
SVD_KARRAS_20 = [700.0, 510.3563, 366.5733, 259.0096, 179.7188, 122.2153, 81.2628, 52.6844, 33.193, 20.2408, 11.8869,
                 6.6815, 3.5664, 1.7894, 0.8325, 0.3526, 0.1324, 0.0424, 0.0109, 0.002, 0.0]


def _close_to_printed(values, printed):
    """Each printed number must equal the value rounded to the printed precision (or to 5 significant digits)."""
    assert len(values) == len(printed)
    for v, p in zip(values, printed):
        decimals = len(str(p).split(".")[1]) if "." in str(p) else 0
        assert round(v, decimals) == pytest.approx(p, abs=1.01 * 10**-decimals / 2 + 1e-12), (v, p)


def test_exponential_schedule_training_values():
    sigmas = get_sigmas_exponential(10, 0.001, 80)
    assert sigmas.shape == (11,) and sigmas.dtype == torch.float32
    _close_to_printed(sigmas.tolist(), TRAIN_SIGMAS)
    assert sigmas[-1] == 0


def test_exponential_schedule_calvin_eval_values():
    _close_to_printed(get_sigmas_exponential(10, 1.0, 80).tolist(), EVAL_SIGMAS)
    assert torch.equal(get_sigmas("exponential", 10, 1.0, 80), get_sigmas_exponential(10, 1.0, 80))


def test_karras_schedule_matches_svd_scheduler_values():
    # diffusers computes this schedule in float64, ours (k-diffusion) in float32: equal to ~1e-6 relative
    sigmas = get_sigmas_karras(20, 0.002, 700.0, rho=7.0).tolist()
    assert sigmas[:-1] == pytest.approx(SVD_KARRAS_20[:-1], rel=2e-6, abs=6e-5)
    assert sigmas[-1] == 0


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="noise_scheduler"):
        get_sigmas("cosine", 10, 0.1, 1.0)


def test_ddim_step_formula_and_final_step_returns_denoised():
    sigmas = get_sigmas_exponential(4, 0.01, 10)
    x0 = torch.randn(3, 5, 2)
    seen = []

    def denoise(x, sigma, step):
        seen.append((x.clone(), sigma.clone(), step))
        return torch.tanh(x) * 0.5 + sigma[:, None, None] * 0.01

    out = sample_ddim(denoise, x0, sigmas)
    # re-derive with r = sigma_{i+1} / sigma_i: x <- r x + (1 - r) D
    x = x0
    for i in range(len(sigmas) - 1):
        d = denoise(x, sigmas[i] * torch.ones(3), i)
        r = sigmas[i + 1] / sigmas[i]
        x = r * x + (1 - r) * d
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-6)
    last_x, last_sigma, _ = seen[len(sigmas) - 2]
    torch.testing.assert_close(out, torch.tanh(last_x) * 0.5 + last_sigma[:, None, None] * 0.01)
    assert [step for _, _, step in seen[: len(sigmas) - 1]] == list(range(len(sigmas) - 1))


def test_scalings_and_c_noise():
    sigma = torch.tensor([0.001, 0.5, 80.0])
    c_skip, c_out, c_in = get_scalings(sigma, 0.5)
    sd = 0.5
    torch.testing.assert_close(c_skip, sd**2 / (sigma**2 + sd**2))
    torch.testing.assert_close(c_out, sigma * sd / (sigma**2 + sd**2).sqrt())
    torch.testing.assert_close(c_in, 1 / (sigma**2 + sd**2).sqrt())
    torch.testing.assert_close(c_noise(sigma), sigma.log() / 4)


def test_log_logistic_samples_within_bounds_and_cdf_endpoints():
    loc, scale, lo, hi = math.log(0.5), 0.5, 0.001, 80.0
    g = torch.Generator().manual_seed(0)
    s = rand_log_logistic((20000,), loc, scale, lo, hi, generator=g)
    assert s.dtype == torch.float32
    assert s.min() >= lo * (1 - 1e-6) and s.max() <= hi * (1 + 1e-6)
    # the median of the untruncated density is exp(loc) = sigma_data; truncation here is nearly symmetric
    assert abs(s.median().log().item() - loc) < 0.05
    # cdf endpoints: u = cdf(min) maps to min, u = cdf(max) maps to max (float64 path)
    for bound in (lo, hi):
        u = log_logistic_cdf(bound, loc, scale)
        back = (u.logit() * scale + loc).exp().item()
        assert back == pytest.approx(bound, rel=1e-9)
    density = make_sample_density("loglogistic", 0.5, lo, hi)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(density((7,), generator=g1), rand_log_logistic((7,), loc, scale, lo, hi, generator=g2))


def test_log_logistic_samples_equal_the_tensor_bounds_formula():
    """The cdf bounds enter as Python floats (no host-to-device copies); the samples are bit-identical to the
    original k-diffusion formula with float64 tensor bounds."""
    loc, scale, lo, hi = math.log(0.5), 0.5, 0.001, 80.0
    u = torch.rand(4096, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    min_cdf = log_logistic_cdf(lo, loc, scale)
    max_cdf = log_logistic_cdf(hi, loc, scale)
    expected = (u * (max_cdf - min_cdf) + min_cdf).logit().mul(scale).add(loc).exp().float()
    got = rand_log_logistic((4096,), loc, scale, lo, hi, generator=torch.Generator().manual_seed(5))
    assert torch.equal(got, expected)


def test_log_logistic_tight_bounds_stay_inside():
    s = rand_log_logistic((5000,), math.log(0.5), 0.5, 0.2, 0.3, generator=torch.Generator().manual_seed(1))
    assert s.min() >= 0.2 * (1 - 1e-6) and s.max() <= 0.3 * (1 + 1e-6)


class _Toy(torch.nn.Module):
    """Inner model stub with the DiT's encode/decode/forward signature."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)

    def encode(self, tokens, goal, proprio=None):
        return tokens.mean(1, keepdim=True) + goal

    def decode(self, context, actions, sigma):
        return self.lin(actions) + context.mean() + sigma.log()[:, None, None]

    def forward(self, tokens, actions, goal, sigma, proprio=None):
        return self.decode(self.encode(tokens, goal, proprio), actions, sigma)


def test_denoiser_loss_is_the_edm_objective_and_returns_target():
    torch.manual_seed(0)
    den = GCDenoiser(_Toy(), sigma_data=0.5)
    tokens, goal = torch.randn(4, 6, 3), torch.randn(4, 1, 3)
    a, n = torch.randn(4, 5, 3), torch.randn(4, 5, 3)
    sigma = torch.tensor([0.01, 0.3, 2.0, 50.0])
    loss, out, target = den.loss(tokens, a, goal, n, sigma)
    c_skip, c_out, c_in = (c[:, None, None] for c in get_scalings(sigma))
    noised = a + n * sigma[:, None, None]
    torch.testing.assert_close(out, den.inner_model(tokens, noised * c_in, goal, sigma))
    torch.testing.assert_close(target, (a - c_skip * noised) / c_out)
    torch.testing.assert_close(loss, ((out - target) ** 2).mean())
    # the denoiser D = c_skip x + c_out F(c_in x) and its encode/denoise split agree
    d_full = den(tokens, noised, goal, sigma)
    torch.testing.assert_close(d_full, c_skip * noised + c_out * out)
    torch.testing.assert_close(den.denoise(den.encode(tokens, goal), noised, sigma), d_full)
