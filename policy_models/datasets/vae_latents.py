"""Precomputed VAE latents of the CALVIN camera frames: the on-disk layout, its reader, and the check that they were
made by the policy's own video model.

Stage 2 encodes every camera image with the frozen SVD autoencoder before the U-Net pass. The images are not
augmented (vpp_reference §6.2), so each frame's latent never changes across epochs; encoding the frames once
(``python -m policy_models.datasets.encode_latents``) takes the autoencoder out of every training step (a tenth of
the step at batch 32 on an H100, docs/PERFORMANCE.md) and the image resize out of the data loader. The policy already
takes scaled latents (B, 1, 4, h, w) as camera input and divides them by the scaling factor, as the original does.

Layout, per split folder::

    vae_latents/index.json     version, frame count, cameras, storage dtype, the autoencoder's fingerprint
    vae_latents/frame_ids.npy  (N,) sorted frame ids; row r of every array holds frame frame_ids[r]
    vae_latents/<camera>.npy   (N, 4, h, w) unscaled mode latents, in the autoencoder's dtype (fp16) or float32

Unscaled values in the autoencoder's own dtype are what the policy computes on the fly, so serving
``latent * scaling_factor`` in float32 gives back exactly those values after the policy's division and cast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policy_models.datasets.base import DatasetError
from policy_models.datasets.frame_arrays import FRAME_ARRAYS_INDEX, FrameArrays
from vpp_core.fingerprint import weights_fingerprint

LATENTS_DIR = "vae_latents"
LATENTS_INDEX = FRAME_ARRAYS_INDEX
LATENTS_VERSION = 1
LATENT_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class VaeIdentity:
    """What the latents depend on: the autoencoder's weights and dtype, its scaling factor and the image size."""

    fingerprint: str
    dtype: str
    scaling_factor: float
    image_size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def vae_identity(vae: torch.nn.Module, image_size: int) -> VaeIdentity:
    dtype = next(vae.parameters()).dtype
    return VaeIdentity(weights_fingerprint(vae), str(dtype).removeprefix("torch."),
                       float(vae.config.scaling_factor), int(image_size))


def identity_differences(made_with: Mapping[str, Any], expected: VaeIdentity) -> list[str]:
    """What differs between the identity recorded with the latents and `expected`, in words, so that the remedy is
    clear: a dtype difference needs another ``--video_dtype``, not another model. The fingerprint hashes the weights as
    stored, so it always differs with the dtype; it names other weights only when the dtypes agree."""
    want = expected.to_dict()
    out = []
    if made_with.get("dtype") != want["dtype"]:
        out.append(f"dtype: encoded in {made_with.get('dtype')}, the video model runs in {want['dtype']} "
                   "(encode_latents --video_dtype must match the policy's model.video_dtype)")
    elif made_with.get("fingerprint") != want["fingerprint"]:
        out.append(f"weights: encoded by another autoencoder (fingerprint {str(made_with.get('fingerprint'))[:12]}..., "
                   f"the video model's {want['fingerprint'][:12]}...)")
    if made_with.get("image_size") != want["image_size"]:
        out.append(f"image size: encoded from {made_with.get('image_size')}x{made_with.get('image_size')} images, the "
                   f"video model takes {want['image_size']}x{want['image_size']}")
    if made_with.get("scaling_factor") != want["scaling_factor"]:
        out.append(f"scaling factor: {made_with.get('scaling_factor')} recorded, the video model's "
                   f"{want['scaling_factor']}")
    return out


def latents_folder(split_dir: Path) -> Path:
    return Path(split_dir) / LATENTS_DIR


def storage_dtype(vae_dtype: torch.dtype) -> np.dtype:
    """fp16 latents are stored as they are; bf16 has no numpy type and is stored exactly as float32."""
    return np.dtype(np.float16) if vae_dtype == torch.float16 else np.dtype(np.float32)


class LatentFrames(FrameArrays):
    """Reads the latents written by ``encode_latents`` for one split, after checking they match `expected`."""

    def __init__(self, folder: Path, expected: VaeIdentity, cameras: Sequence[str]):
        super().__init__(folder, LATENTS_VERSION, "encode_latents")
        index_path = self.folder / LATENTS_INDEX
        made_with = self.index.get("vae") or {}
        differences = identity_differences(made_with, expected)
        if differences:
            raise DatasetError(
                f"{index_path}: the latents do not match the policy's video model: {'; '.join(differences)}. Re-run "
                "python -m policy_models.datasets.encode_latents --overwrite with this video model, dtype and image "
                "size, or set dataset.vae_latents=off to encode the images during training")
        missing = [c for c in cameras if c not in self.index["cameras"]]
        if missing:
            raise DatasetError(f"{index_path}: no latents for cameras {missing} (encoded: "
                               f"{sorted(self.index['cameras'])}); re-run encode_latents with --cameras")
        self.scaling_factor = float(made_with["scaling_factor"])

    def describe(self) -> str:
        return f"VAE latents in {self.folder} ({len(self.frame_ids)} frames)"

    def read(self, frames: np.ndarray, cameras: Sequence[str]) -> dict[str, torch.Tensor]:
        """{camera: (len(frames), 4, h, w) float32 scaled latents}, the policy's latent camera input."""
        rows, have = self.lookup(frames)
        if not have.all():
            raise DatasetError(f"{self.folder}: frames {np.asarray(frames)[~have][:5].tolist()} have no latents; "
                               "re-run encode_latents (the annotations changed?) or set dataset.vae_latents=off")
        return {cam: torch.from_numpy(np.array(self._open(cam, self.index["cameras"][cam])[rows], dtype=np.float32))
                * self.scaling_factor for cam in cameras}
