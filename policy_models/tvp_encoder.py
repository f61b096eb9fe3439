"""The predictive-representation ("TVP") encoder: one partial pass of the frozen text-guided SVD U-Net
(vpp_reference §6.3).

For each image: VAE `mode()` latent (unscaled; 4-channel inputs are treated as *scaled* latents and divided by the
scaling factor), repeated over `num_frames`; pure-noise video latents at the first (largest) sigma of the
`num_inference_steps` Karras schedule (700 for SVD), scaled by the scheduler's `scale_model_input`; micro-conditioning
[fps 4, motion bucket 127, noise aug 0]; CLIP token features of the instruction (max 20 tokens, duplicated to the
cross-attention width). The U-Net runs down blocks, mid block and up blocks 0..k only, and the features are the
outputs of up_blocks[0..k] (earlier ones nearest-upsampled to the last one's size) concatenated on channels in that
order — or only up_blocks[k] when `use_all_layer` is False. Fresh Gaussian noise is drawn on every call unless a
generator or a noise tensor is given. Everything runs in the video model's dtype, without autocast and without grad.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from policy_models.text_cache import TextFeatureCache
from video_models.conv_layout import set_conv_weight_layout
from video_models.text_conditioning import encode_text

if TYPE_CHECKING:
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel


def vae_scale_factor(vae: AutoencoderKLTemporalDecoder) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def input_resolution(unet_sample_size: int, vae: AutoencoderKLTemporalDecoder) -> int:
    """Input image size: unet.sample_size * vae_scale_factor // 3 (96 * 8 // 3 = 256 for the real model)."""
    return unet_sample_size * vae_scale_factor(vae) // 3


def up_block_channels(unet: UNetSpatioTemporalConditionModel) -> list[int]:
    """Output channels of each up block: reversed(block_out_channels)."""
    return list(reversed(list(unet.config.block_out_channels)))


def tapped_feature_dim(unet: UNetSpatioTemporalConditionModel, extract_layer_idx: int, use_all_layer: bool) -> int:
    chans = up_block_channels(unet)
    if not 0 <= extract_layer_idx < len(chans):
        raise ValueError(f"extract_layer_idx {extract_layer_idx} out of range for {len(chans)} up blocks")
    return sum(chans[: extract_layer_idx + 1]) if use_all_layer else chans[extract_layer_idx]


class TVPEncoder(nn.Module):
    """Frozen video U-Net + VAE (+ the shared CLIP text tower) producing (B, F, C, h, w) predictive features."""

    def __init__(
        self,
        unet,
        vae,
        scheduler,
        text_encoder,
        tokenizer,
        *,
        num_frames: int = 16,
        num_inference_steps: int = 20,
        extract_layer_idx: int = 1,
        use_all_layer: bool = True,
        fps: int = 4,
        motion_bucket_id: int = 127,
        noise_aug_strength: float = 0.0,
        position_encode: bool = False,
        text_max_length: int = 20,
    ):
        super().__init__()
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        # not sub-modules: stateless math / tokenizer
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self.num_frames = num_frames
        self.num_inference_steps = num_inference_steps
        self.extract_layer_idx = extract_layer_idx
        self.use_all_layer = use_all_layer
        self.fps = fps
        self.motion_bucket_id = motion_bucket_id
        self.noise_aug_strength = noise_aug_strength
        self.position_encode = position_encode
        self.text_max_length = text_max_length
        self.feature_dim = tapped_feature_dim(unet, extract_layer_idx, use_all_layer)
        # inference caches (never used with cache_text=False, i.e. in training); see _scheduler_constants/encode_text
        self._sched_cache: dict = {}
        self._time_ids_cache: dict = {}
        self.text_cache = TextFeatureCache()
        for module in (self.unet, self.vae, self.text_encoder):
            module.requires_grad_(False)
            module.eval()

    def train(self, mode: bool = True) -> TVPEncoder:
        # the frozen models always stay in eval mode
        super().train(mode)
        for module in (self.unet, self.vae, self.text_encoder):
            module.eval()
        return self

    # read from one U-Net weight: diffusers' `ModelMixin.device`/`.dtype` scan every submodule for offloading hooks
    # (several ms of host time per read at full size, and a chunk prediction reads them a few times)
    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def vae_scale_factor(self) -> int:
        return vae_scale_factor(self.vae)

    @property
    def resolution(self) -> int:
        return input_resolution(self.unet.config.sample_size, self.vae)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae_scale_factor

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    def _encode_text_uncached(self, texts: Sequence[str]) -> torch.Tensor:
        hidden = encode_text(
            list(texts),
            self.tokenizer,
            self.text_encoder,
            cross_attention_dim=self.unet.config.cross_attention_dim,
            max_length=self.text_max_length,
            position_encode=self.position_encode,
        )
        return hidden.to(self.device, self.dtype)

    def clear_text_cache(self) -> None:
        self.text_cache.clear()

    def encode_text(self, texts: Sequence[str], cache: bool = False) -> torch.Tensor:
        """(B, text_max_length, cross_attention_dim) U-Net text tokens. With `cache` (inference only: the frozen text
        tower makes them a function of the string) each distinct instruction is encoded once and kept in a small LRU
        cache, invalidated when the text tower / U-Net change device or dtype."""
        texts = list(texts)
        if not cache or torch.is_grad_enabled():
            return self._encode_text_uncached(texts)
        te = self.text_encoder
        key = (te.device, te.dtype, self.device, self.dtype, id(self.tokenizer), self.text_max_length,
               self.position_encode, self.unet.config.cross_attention_dim)
        return self.text_cache.lookup(texts, key, self._encode_text_uncached)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> unscaled VAE mode latents; (B, 4, h, w) scaled latents -> / scaling_factor."""
        images = images.to(self.device)
        if images.shape[1] == self.latent_channels and images.shape[1] != 3:
            return (images / self.vae.config.scaling_factor).to(self.dtype)
        if images.shape[1] != 3:
            raise ValueError(f"expected RGB images (B, 3, H, W) or latents (B, 4, h, w), got {tuple(images.shape)}")
        return self.vae.encode(images.to(self.dtype)).latent_dist.mode().to(self.dtype)

    def added_time_ids(self, batch_size: int) -> torch.Tensor:
        key = (self.device, self.dtype, self.fps, self.motion_bucket_id, self.noise_aug_strength)
        ids = self._time_ids_cache.get(key)
        if ids is None:
            ids = torch.tensor([[self.fps, self.motion_bucket_id, self.noise_aug_strength]], dtype=self.dtype)
            ids = ids.to(self.device)
            self._time_ids_cache = {key: ids}
        return ids.repeat(batch_size, 1)

    def _scheduler_constants(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(first timestep, init_noise_sigma, scale_model_input divisor) of the `num_inference_steps` schedule,
        computed once per device with the scheduler's own tensor ops (so the results are bit-identical to calling
        set_timesteps / scale_model_input every time, without their host-device syncs)."""
        sched = self.scheduler
        key = (self.device, self.num_inference_steps, id(sched))
        consts = self._sched_cache.get(key)
        if consts is None:
            sched.set_timesteps(self.num_inference_steps, device=self.device)
            timestep = sched.timesteps[0]
            init_sigma = sched.init_noise_sigma
            sched._init_step_index(timestep)
            sigma = sched.sigmas[sched.step_index]
            divisor = (sigma**2 + 1) ** 0.5
            consts = (timestep, init_sigma, divisor)
            self._sched_cache = {key: consts}
        return consts

    def make_noise(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        shape = (batch_size, self.num_frames, self.latent_channels, self.latent_size, self.latent_size)
        gen_device = generator.device if generator is not None else self.device
        return torch.randn(shape, generator=generator, device=gen_device, dtype=self.dtype).to(self.device)

    def prepare_unet_inputs(
        self,
        images: torch.Tensor,
        texts: Sequence[str],
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        cache_text: bool = False,
    ) -> dict[str, torch.Tensor]:
        """The inputs of the single U-Net call: sample (B, F, 2*4, h, w), timestep, text tokens, added time ids."""
        if len(texts) != images.shape[0]:
            raise ValueError(f"got {images.shape[0]} images but {len(texts)} instructions")
        return self.unet_inputs(images, self.encode_text(texts, cache=cache_text), generator=generator, noise=noise)

    def unet_inputs(
        self,
        images: torch.Tensor,
        text_tokens: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """`prepare_unet_inputs` with the text tokens given: only shape-static device work once the scheduler
        constants are cached, so it can run inside a CUDA graph (then with `generator` None: the noise comes from
        the default CUDA generator)."""
        batch = images.shape[0]
        if text_tokens.shape[0] != batch:
            raise ValueError(f"got {batch} images but {text_tokens.shape[0]} rows of text tokens")
        image_latents = self.vae_pass(images)
        if image_latents.shape[-1] != self.latent_size or image_latents.shape[-2] != self.latent_size:
            raise ValueError(
                f"image latents are {tuple(image_latents.shape[-2:])}, the video model expects "
                f"{self.latent_size}x{self.latent_size} (images of {self.resolution}x{self.resolution})"
            )
        return {
            "sample": self.unet_sample(image_latents, generator=generator, noise=noise),
            "timestep": self._scheduler_constants()[0],
            "encoder_hidden_states": text_tokens,
            "added_time_ids": self.added_time_ids(batch),
        }

    def unet_sample(
        self, image_latents: torch.Tensor, generator: torch.Generator | None = None, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Image latents (B, 4, h, w) -> the U-Net's input sample (B, F, 2*4, h, w): the scaled initial noise of the
        first (noisiest) step beside the latents repeated over the frames."""
        # expand, not repeat: torch.cat below materialises it (same values, one copy less)
        image_latents = image_latents.unsqueeze(1).expand(-1, self.num_frames, -1, -1, -1)
        _, init_sigma, divisor = self._scheduler_constants()
        if noise is None:
            noise = self.make_noise(image_latents.shape[0], generator)
        # = scheduler.init_noise_sigma / scheduler.scale_model_input (same ops on the same tensors)
        latents = noise.to(self.device, self.dtype) * init_sigma
        latents = latents / divisor
        return torch.cat([latents, image_latents], dim=2)

    def partial_unet(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
    ) -> torch.Tensor:
        """UNetSpatioTemporalConditionModel.forward up to up_blocks[extract_layer_idx] -> (B, F, C, h, w)."""
        unet = self.unet
        batch_size, num_frames = sample.shape[:2]
        upsample_factor = 2**unet.num_upsamplers
        forward_upsample_size = any(s % upsample_factor != 0 for s in sample.shape[-2:])

        timesteps = timestep
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor([timesteps], dtype=torch.float32, device=sample.device)
        elif timesteps.dim() == 0:
            timesteps = timesteps[None].to(sample.device)
        timesteps = timesteps.expand(batch_size)
        emb = unet.time_embedding(unet.time_proj(timesteps).to(dtype=sample.dtype))
        time_embeds = unet.add_time_proj(added_time_ids.flatten()).reshape((batch_size, -1)).to(emb.dtype)
        emb = emb + unet.add_embedding(time_embeds)

        sample = sample.flatten(0, 1)
        emb = emb.repeat_interleave(num_frames, dim=0)
        encoder_hidden_states = encoder_hidden_states.repeat_interleave(num_frames, dim=0)
        sample = unet.conv_in(sample)
        image_only_indicator = torch.zeros(batch_size, num_frames, dtype=sample.dtype, device=sample.device)

        down_block_res_samples = (sample,)
        for block in unet.down_blocks:
            kwargs = {"hidden_states": sample, "temb": emb, "image_only_indicator": image_only_indicator}
            if getattr(block, "has_cross_attention", False):
                kwargs["encoder_hidden_states"] = encoder_hidden_states
            sample, res_samples = block(**kwargs)
            down_block_res_samples += res_samples

        sample = unet.mid_block(
            hidden_states=sample,
            temb=emb,
            encoder_hidden_states=encoder_hidden_states,
            image_only_indicator=image_only_indicator,
        )

        taps: list[torch.Tensor] = []
        for i, block in enumerate(unet.up_blocks[: self.extract_layer_idx + 1]):
            is_final_block = i == len(unet.up_blocks) - 1
            res_samples = down_block_res_samples[-len(block.resnets) :]
            down_block_res_samples = down_block_res_samples[: -len(block.resnets)]
            upsample_size = None
            if not is_final_block and forward_upsample_size:
                upsample_size = down_block_res_samples[-1].shape[2:]
            kwargs = {
                "hidden_states": sample,
                "temb": emb,
                "res_hidden_states_tuple": res_samples,
                "upsample_size": upsample_size,
                "image_only_indicator": image_only_indicator,
            }
            if getattr(block, "has_cross_attention", False):
                kwargs["encoder_hidden_states"] = encoder_hidden_states
            sample = block(**kwargs)
            if self.use_all_layer or i == self.extract_layer_idx:
                taps.append(sample)

        size = taps[-1].shape[-2:]
        taps = [t if t.shape[-2:] == size else F.interpolate(t, size=size, mode="nearest") for t in taps]
        features = torch.cat(taps, dim=1)
        return features.reshape(batch_size, num_frames, *features.shape[1:])

    def set_conv_weight_layout(self, channels_last: bool) -> None:
        """The VAE's and U-Net's convolution weights channels-last, or back in the default layout
        (`video_models.conv_layout`). `compile_passes` sets this; a compiled pass traces the layout of its first
        call."""
        for frozen in (self.vae, self.unet):
            set_conv_weight_layout(frozen, channels_last)

    def compile_passes(self, mode: str | None = "default", backend: str = "inductor") -> None:
        """Run the VAE encode and the U-Net pass of this encoder through `torch.compile(..., mode=mode,
        backend=backend)` (`mode=None`: back to eager). Opt-in: inductor's kernels fuse and reorder floating-point
        work, so features are numerically close to the eager ones but not bit-identical. `encode_images` and
        `partial_unet` themselves stay eager (the reference). Shapes are static: each new batch size / camera count
        compiles once more. While compiled, the VAE's and U-Net's convolution weights are stored channels-last
        (`video_models.conv_layout`); `mode=None` puts them back."""
        def compiled(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor] | None:
            return None if mode is None else torch.compile(fn, mode=mode, backend=backend, dynamic=False)

        # compiled, the frozen convolution weights are kept in channels-last: no per-call layout conversions
        self.set_conv_weight_layout(channels_last=mode is not None)
        self.__dict__["_compiled_encode_images"] = compiled(self.encode_images)
        self.__dict__["_compiled_partial_unet"] = compiled(self.partial_unet)
        self.__dict__["_compile_mode"] = mode

    @property
    def vae_pass(self) -> Callable[..., torch.Tensor]:
        """The image encoding `unet_inputs` runs: the compiled one when `compile_passes` set one, else
        `encode_images`."""
        return self.__dict__.get("_compiled_encode_images") or self.encode_images

    @property
    def unet_pass(self) -> Callable[..., torch.Tensor]:
        """The U-Net pass `features` runs: the compiled one when `compile_passes` set one, else `partial_unet`."""
        return self.__dict__.get("_compiled_partial_unet") or self.partial_unet

    @property
    def compile_mode(self) -> str | None:
        """The `torch.compile` mode of the VAE encode and the U-Net pass, None when they run eagerly."""
        return self.__dict__.get("_compile_mode")

    def _autocast_off(self) -> torch.autocast:
        device_type = self.device.type if self.device.type in ("cuda", "cpu", "xpu", "mps") else "cpu"
        return torch.autocast(device_type=device_type, enabled=False)

    @torch.no_grad()
    def text_tokens(self, texts: Sequence[str], cache: bool = False) -> torch.Tensor:
        """`encode_text` as `forward` runs it: without grad, without autocast."""
        with self._autocast_off():
            return self.encode_text(texts, cache=cache)

    @torch.no_grad()
    def features(
        self,
        images: torch.Tensor,
        text_tokens: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`forward` with the text tokens given (the part a whole-chunk CUDA graph captures)."""
        with self._autocast_off():
            inputs = self.unet_inputs(images, text_tokens, generator=generator, noise=noise)
            return self.unet_pass(**inputs)

    @torch.no_grad()
    def forward(
        self,
        images: torch.Tensor,
        texts: Sequence[str],
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        cache_text: bool = False,
    ) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] at `resolution` (or (B, 4, h, w) scaled latents), one instruction per
        image -> features (B, num_frames, feature_dim, h', w') in the video dtype. `cache_text` (inference only)
        reuses the text tokens of instructions seen before."""
        if len(texts) != images.shape[0]:
            raise ValueError(f"got {images.shape[0]} images but {len(texts)} instructions")
        return self.features(images, self.text_tokens(texts, cache=cache_text), generator=generator, noise=noise)
