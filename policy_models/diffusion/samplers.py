"""Sigma schedules and the DDIM (DPM-Solver-1) sampler of the action head (vpp_reference §6.9).

The sampler takes a `denoise(x, sigma, step) -> D(x; sigma)` callable, so the policy can run the transformer encoder
once per chunk and close over its output (the original recomputed it at every step; the math is the same). `step`, the
index into the schedule, lets a denoiser use work done once for the whole schedule (`GCDenoiser.plan`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


def get_sigmas_exponential(
    n: int, sigma_min: float, sigma_max: float, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """exp(linspace(ln sigma_max, ln sigma_min, n)) followed by a final 0 (n + 1 values, float32)."""
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, device=device).exp()
    return append_zero(sigmas)


def get_sigmas_karras(
    n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Karras et al. (2022) schedule with a final 0 (n + 1 values)."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return append_zero(sigmas).to(device)


def get_sigmas_linear(n: int, sigma_min: float, sigma_max: float, device: str | torch.device = "cpu") -> torch.Tensor:
    return append_zero(torch.linspace(sigma_max, sigma_min, n, device=device))


SCHEDULES = {
    "exponential": get_sigmas_exponential,
    "karras": get_sigmas_karras,
    "linear": get_sigmas_linear,
}


def get_sigmas(
    schedule: str, n: int, sigma_min: float, sigma_max: float, device: str | torch.device = "cpu"
) -> torch.Tensor:
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown noise_scheduler {schedule!r}; expected one of {sorted(SCHEDULES)}")
    return SCHEDULES[schedule](n, sigma_min, sigma_max, device=device)


def initial_noise(
    shape: tuple[int, ...],
    sigma_max: float,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """x_T = N(0, I) * sigma_max. With a generator the draw happens on the generator's device."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device) * sigma_max


@torch.no_grad()
def sample_ddim(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """DPM-Solver-1 in t = -ln(sigma) (k-diffusion's `sample_ddim` as used by VPP): for each step
    x <- (sigma_{i+1}/sigma_i) * x - expm1(-h) * D(x; sigma_i); the last step to sigma = 0 returns D."""
    s_in = x.new_ones([x.shape[0]])

    def sigma_fn(t: torch.Tensor) -> torch.Tensor:
        return t.neg().exp()

    def t_fn(sigma: torch.Tensor) -> torch.Tensor:
        return sigma.log().neg()

    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i] * s_in, i)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "denoised": denoised})
        t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        h = t_next - t
        x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised
    return x


@torch.no_grad()
def sample_euler(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Deterministic Euler (Karras et al. 2022, Algorithm 2 without churn)."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i] * s_in, i)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "denoised": denoised})
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


SAMPLERS = {"ddim": sample_ddim, "euler": sample_euler}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler_type {name!r}; expected one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]
