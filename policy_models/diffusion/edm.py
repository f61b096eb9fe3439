"""EDM preconditioning, training-noise density and loss of the action head (vpp_reference §6.8).

`GCDenoiser` wraps the `DiffusionTransformer` as `inner_model` (state_dict prefix `model.inner_model.` inside the
policy, exactly as in the original). With sigma_data = 0.5:

    c_skip = sd^2 / (s^2 + sd^2),  c_out = s * sd / sqrt(s^2 + sd^2),  c_in = 1 / sqrt(s^2 + sd^2)
    D(x; s) = c_skip * x + c_out * F(c_in * x, s)      (F receives s; it embeds c_noise = ln(s) / 4 itself)

Training: noised = a + n * s, target = (a - c_skip * noised) / c_out, loss = mean((F - target)^2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from policy_models.diffusion.dit import DecoderPlan

SIGMA_DATA = 0.5


def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """Append trailing singleton dims so `x` broadcasts against a tensor with `target_dims` dims."""
    missing = target_dims - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * missing]


def get_scalings(
    sigma: torch.Tensor, sigma_data: float = SIGMA_DATA
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in) of the EDM preconditioning."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
    c_in = 1 / (sigma**2 + sigma_data**2) ** 0.5
    return c_skip, c_out, c_in


def c_noise(sigma: torch.Tensor) -> torch.Tensor:
    """The noise-level conditioning fed to `sigma_emb`: ln(sigma) / 4."""
    return sigma.log() / 4


def rand_log_logistic(
    shape: Sequence[int] | int,
    loc: float = 0.0,
    scale: float = 1.0,
    min_value: float = 0.0,
    max_value: float = float("inf"),
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Truncated log-logistic samples: u ~ U(cdf(min), cdf(max)), sigma = exp(loc + scale * logit(u)).

    Computed in float64 and cast to `dtype` (k-diffusion / original behaviour). With a generator the uniform draw is
    made on the generator's device and moved to `device`. The cdf bounds enter as Python floats (the same float64
    values), so sampling on a GPU copies nothing from the host and never stalls a training step.
    """
    if isinstance(shape, int):
        shape = (shape,)
    min_t = torch.as_tensor(min_value, dtype=torch.float64)
    max_t = torch.as_tensor(max_value, dtype=torch.float64)
    min_cdf = min_t.log().sub(loc).div(scale).sigmoid().item()
    cdf_range = (max_t.log().sub(loc).div(scale).sigmoid() - min_cdf).item()
    gen_device = generator.device if generator is not None else device
    u = torch.rand(tuple(shape), device=gen_device, dtype=torch.float64, generator=generator).to(device)
    u = u * cdf_range + min_cdf
    return u.logit().mul(scale).add(loc).exp().to(dtype)


def log_logistic_cdf(sigma: torch.Tensor | float, loc: float, scale: float) -> torch.Tensor:
    """Untruncated cdf of the log-logistic density (for tests and plots)."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    return s.log().sub(loc).div(scale).sigmoid()


def make_sample_density(
    density_type: str, sigma_data: float, sigma_min: float, sigma_max: float
) -> Callable[..., torch.Tensor]:
    """Return `f(shape, device, generator=None) -> sigmas`. Only 'loglogistic' is used by VPP; 'loguniform' is
    provided for experiments."""
    if density_type == "loglogistic":
        loc, scale = math.log(sigma_data), 0.5

        def density(shape, device="cpu", generator=None):
            return rand_log_logistic(shape, loc, scale, sigma_min, sigma_max, device=device, generator=generator)

        return density
    if density_type == "loguniform":

        def density(shape, device="cpu", generator=None):
            gen_device = generator.device if generator is not None else device
            u = torch.rand(tuple(shape) if not isinstance(shape, int) else (shape,), generator=generator,
                           device=gen_device).to(device)
            return (u * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)).exp()

        return density
    raise ValueError(
        f"unknown sigma_sample_density_type {density_type!r}; expected 'loglogistic' (VPP) or 'loguniform'"
    )


class GCDenoiser(nn.Module):
    """Goal-conditioned EDM denoiser around the diffusion transformer (`inner_model`).

    The transformer's encoder does not depend on sigma, so `encode` can run once per action chunk and `denoise` be
    called at every sampler step with the cached context (identical math to calling `forward` each step).
    """

    def __init__(self, inner_model: nn.Module, sigma_data: float = SIGMA_DATA):
        super().__init__()
        self.inner_model = inner_model
        self.sigma_data = sigma_data

    def get_scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return get_scalings(sigma, self.sigma_data)

    def encode(self, tokens: torch.Tensor, goal: torch.Tensor, proprio: torch.Tensor | None = None) -> torch.Tensor:
        return self.inner_model.encode(tokens, goal, proprio)

    def denoise(self, context: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(x; sigma) given the encoder context; sigma has shape (B,)."""
        c_skip, c_out, c_in = (append_dims(c, x.ndim) for c in self.get_scalings(sigma))
        return self.inner_model.decode(context, x * c_in, sigma) * c_out + x * c_skip

    def plan(self, context: torch.Tensor, sigmas: torch.Tensor) -> DecoderPlan:
        """The sigma-only and context-only work of the sampler's steps (`DiffusionTransformer.plan_decoding`); sigmas
        (n,) holds one value per step."""
        return self.inner_model.plan_decoding(context, sigmas)

    def denoise_planned(self, plan: DecoderPlan, step: int, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """`denoise(context, x, sigma)` at the planned step whose sigma is `sigma` (B,)."""
        c_skip, c_out, c_in = (append_dims(c, x.ndim) for c in self.get_scalings(sigma))
        return self.inner_model.decode_planned(plan, step, x * c_in) * c_out + x * c_skip

    def forward(
        self,
        tokens: torch.Tensor,
        x: torch.Tensor,
        goal: torch.Tensor,
        sigma: torch.Tensor,
        proprio: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.denoise(self.encode(tokens, goal, proprio), x, sigma)

    def loss(
        self,
        tokens: torch.Tensor,
        actions: torch.Tensor,
        goal: torch.Tensor,
        noise: torch.Tensor,
        sigma: torch.Tensor,
        proprio: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (mean squared error, model output F, target). The target is returned so that per-dimension
        weightings (xbot) can be computed from the same forward pass."""
        c_skip, c_out, c_in = (append_dims(c, actions.ndim) for c in self.get_scalings(sigma))
        noised_input = actions + noise * append_dims(sigma, actions.ndim)
        model_output = self.inner_model(tokens, noised_input * c_in, goal, sigma, proprio)
        target = (actions - c_skip * noised_input) / c_out
        return (model_output - target).pow(2).mean(), model_output, target
