"""The text-guided SVD sampler (the original `MaskStableVideoDiffusionPipeline.__call__`, vpp_reference §5.1).

Our own sampling loop on top of diffusers' `UNetSpatioTemporalConditionModel`, `AutoencoderKLTemporalDecoder` and
`EulerDiscreteScheduler` (the scheduler saved in the model folder, normally SVD's Karras/v-prediction Euler).

Conditioning
  * text: pre-computed token features (B, 20, cross_attention_dim) from `video_models.text_conditioning.encode_text`;
    the negative (unconditional) embedding for classifier-free guidance is all zeros, the same zeros that replace 5 %
    of the embeddings during training.
  * first frame: either pixels (B, 3, H, W) in [-1, 1], encoded with the VAE's `latent_dist.mode()`, or *scaled*
    latents (B, 4, h, w) as stored in the latent .pt files (divided by the scaling factor here). Both give the unscaled
    first-frame latent that the U-Net sees on input channels 4-7 for every frame, exactly as in training.
  * micro-conditioning added_time_ids = [fps, motion_bucket_id, noise_aug_strength].

Conventions (decided here; the original differed between its two input branches, §12.2):
  * CFG unconditional image latent = a copy of the conditional first-frame latent, for pixel and latent input alike
    (`uncond_image="same"`). Stage-1 training only ever dropped the *text* (5 %) and always showed the first frame, so
    "same first frame, zero text" is the unconditional model the network was trained to be; guidance then amplifies
    the instruction alone. A zero image latent (diffusers' SVD convention, used by the original pixel branch) is a
    condition the fine-tuned model never saw. `uncond_image="zeros"` reproduces the original pixel-branch behaviour.
  * fps goes into the micro-conditioning as given, without SVD's "fps - 1": stage 1 trained with the raw id 7 (and the
    stage-2 feature extractor uses 4). The default here is 7, the training value.
  * noise_aug_strength defaults to 0.0, the value training used. When > 0 and the first frame is given as pixels,
    that much Gaussian noise is added to the pixels before encoding (SVD's semantics; the original passed 0.02 in the
    micro-conditioning but added no noise). With latent input only the micro-conditioning carries it.
  * per-frame guidance scale = linspace(min_guidance_scale, max_guidance_scale, num_frames); CFG is skipped when
    max_guidance_scale <= 1. The scale comes from the caller's config (the original hard-coded 3.0 in make_prediction).
  * decoding is chunked per video (diffusers chunks the flattened batch, so a chunk could span two videos and the
    temporal decoder would mix them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel

from video_models.edm import micro_conditioning


def vae_scale_factor(vae: AutoencoderKLTemporalDecoder) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _randn(shape, generator: torch.Generator | None, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    """Noise drawn on the generator's device (CPU by default), so a seed gives the same noise on CPU and GPU."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32).to(device, dtype)


@torch.no_grad()
def encode_frames(
    vae: AutoencoderKLTemporalDecoder,
    frames: torch.Tensor,
    *,
    sample: bool = True,
    chunk_size: int = 64,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Frames (T, 3, H, W) in [-1, 1] -> *scaled* latents (T, 4, H/8, W/8) float32 on the CPU.

    `sample=True` draws from the posterior (`latent_dist.sample()`, what the released latents used), `False` takes the
    mode. Frames are encoded `chunk_size` at a time (64 in the original).
    """
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected frames (T, 3, H, W), got {tuple(frames.shape)}")
    device, dtype = vae.device, vae.dtype
    out = []
    for i in range(0, frames.shape[0], chunk_size):
        dist = vae.encode(frames[i : i + chunk_size].to(device, dtype)).latent_dist
        z = (
            dist.mode()
            if not sample
            else dist.mean + dist.std * _randn(dist.mean.shape, generator, device, dist.mean.dtype)
        )
        out.append((z * vae.config.scaling_factor).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def decode_latents(
    vae: AutoencoderKLTemporalDecoder, latents: torch.Tensor, decode_chunk_size: int = 7
) -> torch.Tensor:
    """Scaled latents (B, F, 4, h, w) -> frames (B, F, 3, H, W) float32 in [0, 1], chunked per video."""
    if latents.dim() != 5:
        raise ValueError(f"expected latents (B, F, C, h, w), got {tuple(latents.shape)}")
    videos = []
    for video in latents:
        z = video.to(vae.device, vae.dtype) / vae.config.scaling_factor
        parts = [
            vae.decode(z[i : i + decode_chunk_size], num_frames=z[i : i + decode_chunk_size].shape[0]).sample
            for i in range(0, z.shape[0], decode_chunk_size)
        ]
        videos.append(torch.cat(parts).float())
    return torch.stack(videos).add(1).div(2).clamp(0, 1).cpu()


@dataclass
class VideoOutput:
    frames: torch.Tensor | np.ndarray | None  # (B, F, 3, H, W) float [0,1] ("pt"), (B, F, H, W, 3) uint8 ("np")
    latents: torch.Tensor  # (B, F, 4, h, w) scaled latents, float32


class TextVideoPipeline:
    """Text + first-frame conditioned video sampler. Holds references to the models; never copies or casts them."""

    def __init__(
        self,
        unet: UNetSpatioTemporalConditionModel,
        vae: AutoencoderKLTemporalDecoder,
        scheduler: EulerDiscreteScheduler,
    ):
        self.unet, self.vae, self.scheduler = unet, vae, scheduler
        self.vae_scale_factor = vae_scale_factor(vae)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> TextVideoPipeline:
        from video_models.builders import load_video_model

        unet, vae, scheduler = load_video_model(path, dtype=dtype, device=device)
        return cls(unet.eval(), vae.eval(), scheduler)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W) in [-1, 1] -> unscaled first-frame latents (B, 4, h, w) (VAE mode, as SVD)."""
        return self.vae.encode(image.to(self.vae.device, self.vae.dtype)).latent_dist.mode()

    def decode(self, latents: torch.Tensor, decode_chunk_size: int = 7) -> torch.Tensor:
        return decode_latents(self.vae, latents, decode_chunk_size)

    def _image_latents(
        self,
        image: torch.Tensor | None,
        image_latents: torch.Tensor | None,
        noise_aug_strength: float,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        if (image is None) == (image_latents is None):
            raise ValueError("give exactly one of `image` (pixels in [-1, 1]) or `image_latents` (scaled latents)")
        if image is not None:
            if image.dim() != 4 or image.shape[1] != 3:
                raise ValueError(f"`image` must be pixels (B, 3, H, W) in [-1, 1], got {tuple(image.shape)}")
            if image.shape[-1] % self.vae_scale_factor or image.shape[-2] % self.vae_scale_factor:
                raise ValueError(f"image size {tuple(image.shape[-2:])} must be divisible by {self.vae_scale_factor}")
            image = image.float()
            if noise_aug_strength > 0:
                image = image + noise_aug_strength * _randn(image.shape, generator, image.device)
            return self.encode_image(image).float()
        channels = self.unet.config.in_channels // 2
        if image_latents.dim() != 4 or image_latents.shape[1] != channels:
            raise ValueError(
                f"`image_latents` must be scaled latents (B, {channels}, h, w), got {tuple(image_latents.shape)}"
            )
        return image_latents.float().to(self.device) / self.vae.config.scaling_factor

    @torch.no_grad()
    def __call__(
        self,
        text_embeddings: torch.Tensor,
        image: torch.Tensor | None = None,
        image_latents: torch.Tensor | None = None,
        *,
        num_frames: int = 16,
        num_inference_steps: int = 30,
        min_guidance_scale: float = 1.0,
        max_guidance_scale: float = 7.5,
        fps: float = 7,
        motion_bucket_id: float = 127,
        noise_aug_strength: float = 0.0,
        decode_chunk_size: int = 7,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        uncond_image: str = "same",
        output_type: str = "pt",
    ) -> VideoOutput:
        """Sample videos. `text_embeddings` (B, L, C); first frame as `image` (pixels) or `image_latents` (scaled).

        output_type: "pt" -> float (B, F, 3, H, W) in [0, 1]; "np" -> uint8 (B, F, H, W, 3); "latent" -> no decoding.
        """
        if uncond_image not in ("same", "zeros"):
            raise ValueError(f"uncond_image must be 'same' or 'zeros', got {uncond_image!r}")
        if output_type not in ("pt", "np", "latent"):
            raise ValueError(f"output_type must be 'pt', 'np' or 'latent', got {output_type!r}")
        if text_embeddings.dim() != 3 or text_embeddings.shape[-1] != self.unet.config.cross_attention_dim:
            raise ValueError(
                f"text_embeddings must be (B, tokens, {self.unet.config.cross_attention_dim}), "
                f"got {tuple(text_embeddings.shape)}"
            )
        device, dtype = self.device, self.unet.dtype
        cond = self._image_latents(image, image_latents, noise_aug_strength, generator)
        batch = cond.shape[0]
        if text_embeddings.shape[0] != batch:
            raise ValueError(f"{text_embeddings.shape[0]} text embeddings for {batch} first frames")
        cond = cond.unsqueeze(1).expand(-1, num_frames, -1, -1, -1)
        text = text_embeddings.to(device, dtype)
        time_ids = micro_conditioning(batch, fps, motion_bucket_id, noise_aug_strength, device, dtype)

        do_cfg = max_guidance_scale > 1.0
        if do_cfg:
            uncond = cond if uncond_image == "same" else torch.zeros_like(cond)
            cond = torch.cat([uncond, cond])
            text = torch.cat([torch.zeros_like(text), text])
            time_ids = torch.cat([time_ids, time_ids])
        cond = cond.to(dtype)

        scheduler = EulerDiscreteScheduler.from_config(self.scheduler.config)
        scheduler.set_timesteps(num_inference_steps, device=device)
        shape = (batch, num_frames, self.unet.config.out_channels, *cond.shape[-2:])
        if latents is None:
            latents = _randn(shape, generator, device) * scheduler.init_noise_sigma
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}")
            latents = latents.to(device, torch.float32) * scheduler.init_noise_sigma
        guidance = torch.linspace(min_guidance_scale, max_guidance_scale, num_frames, device=device)
        guidance = guidance.view(1, num_frames, 1, 1, 1)

        for t in scheduler.timesteps:
            model_in = torch.cat([latents] * 2) if do_cfg else latents
            model_in = scheduler.scale_model_input(model_in, t)
            model_in = torch.cat([model_in.to(dtype), cond], dim=2)
            pred = self.unet(model_in, t, encoder_hidden_states=text, added_time_ids=time_ids, return_dict=False)[0]
            pred = pred.float()
            if do_cfg:
                pred_uncond, pred_cond = pred.chunk(2)
                pred = pred_uncond + guidance * (pred_cond - pred_uncond)
            latents = scheduler.step(pred, t, latents, generator=generator).prev_sample.float()

        latents = latents.cpu()
        if output_type == "latent":
            return VideoOutput(frames=None, latents=latents)
        frames = self.decode(latents, decode_chunk_size)
        if output_type == "np":
            frames = frames.mul(255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
        return VideoOutput(frames=frames, latents=latents)
