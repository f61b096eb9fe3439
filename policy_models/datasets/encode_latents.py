"""Encode the CALVIN camera frames with the frozen SVD autoencoder once, for stage-2 training (one-time step).

Usage::

    python -m policy_models.datasets.encode_latents --root /data/task_ABC_D --video_model_path svd-robot-calvin \
        [--config policy_conf/VPP_Calvinabc_train.yaml | --video_dtype fp16] [--batch 64] [--workers 8] \
        [--splits training validation]

Writes ``<split>/vae_latents/`` (layout: ``policy_models/datasets/vae_latents.py``) for the frames inside annotated
language segments, the frames training reads. The stage-2 trainer then feeds the latents instead of the images
(``dataset.vae_latents: auto``), after checking that they were encoded by the policy's own video model in its dtype;
a mismatch is an error, never a silent fallback. The images are preprocessed exactly as in training (resize to the
video model's resolution, [-1, 1]); the latent is the autoencoder's mode, as the policy computes it.

Like ``pack_calvin``, the step is resumable and atomic: data goes to ``<split>/vae_latents.partial/`` with a
``progress.json`` updated as batches are written; re-running the command continues where it stopped; only a finished
encoding is renamed to ``vae_latents/``. Runs on the GPU (``--device cuda``, the default when there is one).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from policy_models.datasets.base import DatasetError, preprocess_rgb
from policy_models.datasets.calvin import CalvinDataset, annotated_frames
from policy_models.datasets.pack_calvin import PartialArrays
from policy_models.datasets.vae_latents import (
    LATENTS_DIR,
    LATENTS_INDEX,
    LATENTS_VERSION,
    identity_differences,
    storage_dtype,
    vae_identity,
)
from policy_models.tvp_encoder import vae_scale_factor
from vpp_core.config import ConfigError
from vpp_core.io import restore_replaced_folder

log = logging.getLogger("encode_latents")

PARTIAL_DIR = LATENTS_DIR + ".partial"


class _FrameImages(Dataset):
    """Batches of preprocessed camera images, read in DataLoader workers: item k = frames[k*batch:(k+1)*batch]."""

    def __init__(self, dataset: CalvinDataset, frames: np.ndarray, batch: int, image_size: int):
        self.source, self.cameras = dataset.frames, dataset.cameras
        self.action_key, self.action_dim = dataset.action_key, dataset.action_dim
        self.frames, self.batch, self.image_size = frames, batch, image_size

    def __len__(self) -> int:
        return -(-len(self.frames) // self.batch)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        frames = self.frames[k * self.batch : (k + 1) * self.batch]
        images, _ = self.source.read_window(frames, len(frames), self.cameras, self.action_key, self.action_dim)
        return {cam: preprocess_rgb(images[cam], self.image_size) for cam in self.cameras}


@torch.no_grad()
def encode_split(
    split_dir: str | Path,
    vae: torch.nn.Module,
    image_size: int,
    cameras: Sequence[str] = ("rgb_static", "rgb_gripper"),
    lang_folder: str | None = "lang_annotations",
    data_format: str = "auto",
    batch: int = 64,
    workers: int = 4,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Encode one split folder's annotated frames; returns the ``vae_latents/`` folder."""
    split_dir = Path(split_dir)
    final = split_dir / LATENTS_DIR
    restore_replaced_folder(final)  # what a run killed while replacing older latents left
    identity = vae_identity(vae, image_size)
    if (final / LATENTS_INDEX).is_file() and not overwrite:
        made_with = json.loads((final / LATENTS_INDEX).read_text()).get("vae") or {}
        differences = identity_differences(made_with, identity)
        if not differences:
            log.info("%s: latents of this autoencoder exist already (%s)", split_dir, final)
            return final
        raise DatasetError(f"{final}: latents made differently exist ({'; '.join(differences)}); pass --overwrite "
                           "to replace them")
    # the dataset's own checks: annotations readable, frames present, camera keys and image shapes as expected
    dataset = CalvinDataset(split_dir, cameras=cameras, lang_folder=lang_folder, image_size=image_size,
                            data_format=data_format, vae_latents="off")
    frame_ids = annotated_frames(dataset.segments)
    device = next(vae.parameters()).device
    vae_dtype = next(vae.parameters()).dtype
    stored = storage_dtype(vae_dtype)
    latent_hw = image_size // vae_scale_factor(vae)
    shape = [len(frame_ids), int(vae.config.latent_channels), latent_hw, latent_hw]
    plan = {"version": LATENTS_VERSION, "num_frames": len(frame_ids), "vae": identity.to_dict(),
            "cameras": {cam: {"file": f"{cam}.npy", "shape": shape, "dtype": stored.str} for cam in cameras},
            "frame_ids_sha1": hashlib.sha1(frame_ids.tobytes()).hexdigest(), "batch": batch}
    out = PartialArrays(final, split_dir / PARTIAL_DIR, plan["cameras"], plan, f"encoding {split_dir}")
    np.save(out.partial / "frame_ids.npy", frame_ids)

    first_batch = out.done // batch  # progress is recorded at whole batches
    images = _FrameImages(dataset, frame_ids, batch, image_size)
    loader = DataLoader(torch.utils.data.Subset(images, range(first_batch, len(images))), batch_size=None,
                        num_workers=workers, pin_memory=device.type == "cuda")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(frame_ids), initial=first_batch * batch, unit="frame", desc=f"encode {split_dir.name}")
    for k, cams in enumerate(loader, start=first_batch):
        start = k * batch
        for cam, pixels in cams.items():
            latents = vae.encode(pixels.to(device, vae_dtype)).latent_dist.mode().to(vae_dtype)
            out.arrays[cam][start : start + len(pixels)] = latents.float().cpu().numpy().astype(stored)
        end = start + len(next(iter(cams.values())))
        if (k + 1) % 16 == 0 or end == len(frame_ids):
            out.record(end)
        if bar:
            bar.update(end - start)
    if bar:
        bar.close()
    out.finish(LATENTS_INDEX, {**plan, "frame_ids_file": "frame_ids.npy", "complete": True,
                               "source": {"folder": str(split_dir), "frames": dataset.frames.kind}})
    log.info("%s: %d frames encoded -> %s", split_dir, len(frame_ids), final)
    return final


def video_dtype_name(video_dtype: str | None, config: str | None) -> str:
    """The dtype to encode in: the one given, else the training config's `model.video_dtype`, else fp16. Latents in
    another dtype than the policy's video model are refused by the trainer, so the config is the safer source."""
    from policy_models.training.config import compose_config

    from_config = None if config is None else compose_config(config).get("model", {}).get("video_dtype")
    if config is not None and from_config is None:
        raise ConfigError(f"{config} sets no model.video_dtype")
    if video_dtype is not None and from_config is not None and video_dtype != from_config:
        log.warning("--video_dtype %s differs from %s's model.video_dtype %s: the trainer of that config will "
                    "refuse these latents", video_dtype, config, from_config)
    return video_dtype or from_config or "fp16"


def main(argv: Sequence[str] | None = None) -> int:
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

    from policy_models.tvp_encoder import input_resolution
    from video_models.builders import ModelFolderError, check_video_model_folder, load_pretrained
    from vpp_core.precision import resolve_dtype

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="CALVIN dataset root (holding training/ and validation/)")
    p.add_argument("--video_model_path", required=True, help="the stage-1 SVD folder the policy will be trained on")
    p.add_argument("--config", default=None,
                   help="the stage-2 training config the latents are for (e.g. policy_conf/tiny_calvin.yaml): its "
                        "model.video_dtype is the dtype to encode in")
    p.add_argument("--video_dtype", default=None,
                   help="the policy's model.video_dtype, which training checks the latents against; default: "
                        "--config's, else fp16 (the CALVIN and xbot configs')")
    p.add_argument("--splits", nargs="+", default=["training", "validation"])
    p.add_argument("--cameras", nargs="+", default=["rgb_static", "rgb_gripper"])
    p.add_argument("--lang_folder", default="lang_annotations")
    p.add_argument("--data_format", default="auto", help="auto | packed | npz: where the frames are read from")
    p.add_argument("--batch", type=int, default=64, help="frames per autoencoder call")
    p.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)), help="data loader workers")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--overwrite", action="store_true", help="replace latents made with another autoencoder")
    p.add_argument("--no_progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        dtype = resolve_dtype(video_dtype_name(args.video_dtype, args.config), args.device)
        folder = check_video_model_folder(args.video_model_path)
        # only the autoencoder's weights are needed; the U-Net's config gives the image size
        vae = load_pretrained(AutoencoderKLTemporalDecoder, folder, "vae", torch_dtype=dtype).to(args.device)
    except (ConfigError, ModelFolderError) as exc:
        log.error("%s", exc)
        return 2
    image_size = input_resolution(UNetSpatioTemporalConditionModel.load_config(folder, subfolder="unet")["sample_size"],
                                  vae)
    try:
        for split in args.splits:
            encode_split(Path(args.root) / split, vae.eval(), image_size, cameras=args.cameras,
                         lang_folder=args.lang_folder, data_format=args.data_format, batch=args.batch,
                         workers=args.workers, overwrite=args.overwrite, progress=not args.no_progress)
    except DatasetError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
