"""EDM preconditioning and training loss of the stage-1 video model (vpp_reference §3.3-3.4).

SVD is a v-prediction model in the EDM parameterisation with sigma_data = 1. Training draws one sigma per clip from
ln(sigma) ~ N(0.7, 1.6), the U-Net sees c_in * (x0 + sigma * eps) concatenated with the *unscaled* first-frame latent,
and the loss is the EDM-weighted MSE of the denoised clip over all frames and channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vpp_core.transfer import to_device_nonblocking

P_MEAN = 0.7
P_STD = 1.6


@dataclass(frozen=True)
class Preconditioning:
    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


def v_preconditioning(sigma: torch.Tensor) -> Preconditioning:
    """c_skip = 1/(s^2+1), c_out = -s/sqrt(s^2+1), c_in = 1/sqrt(s^2+1), c_noise = ln(s)/4 (sigma_data = 1)."""
    sigma = sigma.double()
    root = torch.sqrt(sigma**2 + 1)
    return Preconditioning(
        c_skip=1 / (sigma**2 + 1), c_out=-sigma / root, c_in=1 / root, c_noise=0.25 * torch.log(sigma)
    )


def sample_training_sigmas(
    batch_size: int, generator: torch.Generator | None = None, p_mean: float = P_MEAN, p_std: float = P_STD
) -> torch.Tensor:
    """One sigma per clip (shared by its frames): ln(sigma) ~ N(p_mean, p_std)."""
    return torch.exp(p_mean + p_std * torch.randn(batch_size, generator=generator, dtype=torch.float64)).float()


def micro_conditioning(
    batch_size: int,
    fps: float,
    motion_bucket_id: float,
    noise_aug_strength: float,
    device: torch.device | str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """SVD's added_time_ids [fps, motion_bucket_id, noise_aug_strength] per sample. fps is used as given (no -1):
    that is what VPP trained with (fps 7 in stage 1, 4 in the stage-2 feature extractor)."""
    ids = torch.tensor([[fps, motion_bucket_id, noise_aug_strength]], dtype=dtype)
    return to_device_nonblocking(ids, device).repeat(batch_size, 1)


def _expand(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.view(-1, *([1] * (like.dim() - 1))).to(like)


def video_diffusion_loss(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    text_embeddings: torch.Tensor,
    added_time_ids: torch.Tensor,
    scaling_factor: float,
    sigmas: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """EDM v-prediction loss for a batch of scaled latent clips (B, F, C, h, w).

    The condition is frame 0 of the clean clip divided by the VAE scaling factor (SVD's convention), repeated over
    all frames; frame 0 is still part of the denoising target, exactly as the original trained it.
    """
    if latents.dim() != 5:
        raise ValueError(f"expected latents (B, F, C, h, w), got {tuple(latents.shape)}")
    b, f = latents.shape[:2]
    if sigmas is None:
        sigmas = sample_training_sigmas(b, generator=generator)
    if noise is None:
        noise = to_device_nonblocking(torch.randn(latents.shape, generator=generator, dtype=latents.dtype),
                                      latents.device)
    sigmas = to_device_nonblocking(sigmas, latents.device)
    pre = v_preconditioning(sigmas)
    noisy = latents + _expand(sigmas, latents) * noise
    condition = (latents[:, :1] / scaling_factor).expand(-1, f, -1, -1, -1)
    unet_input = torch.cat([_expand(pre.c_in, latents) * noisy, condition], dim=2)
    model_out = unet(
        unet_input,
        pre.c_noise.to(latents.device, torch.float32),
        encoder_hidden_states=text_embeddings,
        added_time_ids=added_time_ids,
    ).sample
    denoised = _expand(pre.c_out, latents) * model_out.float() + _expand(pre.c_skip, latents) * noisy
    weight = _expand((sigmas.double() ** 2 + 1) / sigmas.double() ** 2, latents)
    return (weight * (denoised - latents) ** 2).mean()
