"""Give a randomly initialised SVD autoencoder what the released one brings: informative latents at SVD's scale.

Only for video models built from random weights (the tiny/small configs of the tests, the demo and the simulator
experiment); the released SVD autoencoder needs neither step.

Why: the released autoencoder was trained on natural images, and its scaling factor 0.18215 makes the scaled latents
about unit-variance. Stage 1's EDM noise schedule (σ_data = 1) and the policy's feature extraction (which conditions
the U-Net on the *unscaled* latent, std ≈ 5.5 for SVD) both assume that. A random autoencoder has neither property:
its latents are a random projection with a std of about 0.2 before scaling (0.04 after), so stage 1 learns to denoise
near-zero targets, never needs the conditioning image, and the policy's features end up independent of the camera
(measured in the simulator experiment, docs/PERFORMANCE.md).

Two steps:
  fit        train encoder and decoder as an autoencoder (L2 reconstruction + a small KL term) on frames of the
             stage-1 data set, so the latents keep what the cameras see and the prediction videos decode to images;
  calibrate  rescale the encoder's mean output (and the decoder's input by the inverse, so the autoencoder computes
             the same function) until the scaled latents have unit standard deviation on those frames, as SVD's do.

    python -m video_models.vae_fit --pretrained_model_path models/small-svd --dataset_dir data/tabletop \
        --resolution 128 --steps 1500

The folder's vae/ is replaced in place; rerun step1_prepare_latent_data.py afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from diffusers import AutoencoderKLTemporalDecoder

FIT_RECORD = "vae_fit.json"


def list_train_videos(dataset_dir: str | Path, annotation_name: str = "annotation", split: str = "train") -> list[Path]:
    """Every video the stage-1 annotation jsons of `split` list (the files step1_prepare_latent_data.py encodes)."""
    from video_dataset.annotations import DatasetError, list_annotation_files, read_annotation_json

    root = Path(dataset_dir)
    folder = root / annotation_name / split
    if not folder.is_dir():
        raise DatasetError(f"annotation folder not found: {folder} "
                           f"(expected {{dataset_dir}}/{annotation_name}/{split})")
    videos = []
    for path in list_annotation_files(folder):
        for entry in read_annotation_json(path).get("videos") or []:
            rel = Path(entry["video_path"])
            videos.append(rel if rel.is_absolute() else root / rel)
    if not videos:
        raise DatasetError(f"{folder}: no annotation json lists any 'videos'")
    return videos


def load_clips(videos: list[Path], resolution: int, clip_length: int, clips_per_video: int,
               seed: int = 0, progress: bool = True) -> torch.Tensor:
    """`clips_per_video` runs of `clip_length` consecutive frames from each video, resized like the stage-1 latents:
    uint8 (N, clip_length, R, R, 3), the layout video files are read in."""
    from video_dataset.transforms import preprocess_frames, to_uint8_frames
    from vpp_core.video_io import read_video

    rng = np.random.default_rng(seed)
    clips = []
    for path in tqdm(videos, desc="reading frames", disable=not progress):
        frames = read_video(path)
        if len(frames) < clip_length:
            raise ValueError(f"{path}: {len(frames)} frames, fewer than one clip of {clip_length}")
        starts = rng.integers(0, len(frames) - clip_length + 1, size=clips_per_video)
        picked = np.concatenate([frames[s : s + clip_length] for s in starts])
        resized = preprocess_frames(picked, resolution)
        clips.append(torch.from_numpy(to_uint8_frames(resized, (-1.0, 1.0)))
                     .reshape(clips_per_video, clip_length, resolution, resolution, 3))
    return torch.cat(clips)


@torch.no_grad()
def scaled_latent_std(vae: AutoencoderKLTemporalDecoder, frames: torch.Tensor, batch_size: int = 64) -> float:
    """Standard deviation of the scaled posterior means (what stage 1 denoises) over uint8 frames (N, R, R, 3)."""
    from video_dataset.transforms import to_model_range

    means = []
    for i in range(0, len(frames), batch_size):
        x = to_model_range(frames[i : i + batch_size]).to(vae.device, vae.dtype)
        means.append(vae.encode(x).latent_dist.mean.float().cpu())
    return float(torch.cat(means).std()) * float(vae.config.scaling_factor)


@torch.no_grad()
def calibrate_latent_scale(vae: AutoencoderKLTemporalDecoder, frames: torch.Tensor, target_std: float = 1.0) -> float:
    """Rescale the encoder's posterior mean by k so the scaled latents have `target_std` on `frames`; the decoder's
    input convolution takes 1/k, so decode(mean) is unchanged. The scaling factor in the config stays SVD's.

    The posterior's standard deviation is left as it is: a random (or briefly fitted) autoencoder has a posterior as
    wide as its means, and the latents that stage 1 trains on are posterior samples; keeping the width while the means
    grow k-fold makes those samples as nearly deterministic as SVD's. Returns k."""
    c = vae.config.latent_channels
    k = target_std / scaled_latent_std(vae, frames)
    q = vae.quant_conv
    q.weight[:c] *= k
    q.bias[:c] *= k
    vae.decoder.conv_in.weight /= k
    return k


def fit_autoencoder(vae: AutoencoderKLTemporalDecoder, clips: torch.Tensor, steps: int, batch_size: int = 16,
                    lr: float = 5e-4, kl_weight: float = 1e-6, seed: int = 0, progress: bool = True) -> list[float]:
    """Train encoder and decoder on uint8 clips (N, T, R, R, 3): reconstruct each clip through a posterior sample,
    decoding its T frames together (the temporal decoder mixes neighbouring frames). Returns the loss every step."""
    from video_dataset.transforms import to_model_range

    device = vae.device
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)
    length = clips.shape[1]
    losses = []
    vae.train()
    bar = tqdm(range(steps), desc="fitting the autoencoder", disable=not progress)
    for _ in bar:
        idx = torch.randint(0, len(clips), (batch_size,), generator=generator)
        x = to_model_range(clips[idx].flatten(0, 1)).to(device)
        with autocast:
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn_like(posterior.mean)
            recon = vae.decode(z, num_frames=length).sample
        loss = torch.nn.functional.mse_loss(recon.float(), x) + kl_weight * posterior.kl().float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    vae.eval()
    return losses


def save_vae_in_place(vae: AutoencoderKLTemporalDecoder, model_dir: Path) -> None:
    """Replace `model_dir/vae` with `vae`. The new one is written beside it first and the old one is moved to
    `vae.replaced` until the swap is done, so a crash at any point leaves a complete autoencoder on disk."""
    target, previous = model_dir / "vae", model_dir / "vae.replaced"
    with tempfile.TemporaryDirectory(dir=model_dir) as tmp:
        staging = Path(tmp) / "vae"
        vae.save_pretrained(staging, safe_serialization=True)
        if previous.exists():
            shutil.rmtree(previous)
        target.rename(previous)
        staging.rename(target)
    shutil.rmtree(previous)


def fit_and_calibrate(model_dir: str | Path, dataset_dir: str | Path, resolution: int, steps: int,
                      batch_size: int = 16, clip_length: int = 4, clips_per_video: int = 8, lr: float = 5e-4,
                      device: str = "cpu", seed: int = 0, progress: bool = True) -> dict:
    """The command's work: read clips, fit (when `steps` > 0), calibrate, save; returns what it measured."""
    from diffusers import AutoencoderKLTemporalDecoder

    from video_models.builders import load_pretrained

    model_dir = Path(model_dir)
    if not (model_dir / "vae").is_dir():
        raise FileNotFoundError(f"no vae/ subfolder in {model_dir}; --pretrained_model_path must be an SVD folder")
    torch.manual_seed(seed)
    vae = load_pretrained(AutoencoderKLTemporalDecoder, model_dir, "vae", torch_dtype=torch.float32)
    vae = vae.to(device)
    start = time.perf_counter()
    clips = load_clips(list_train_videos(dataset_dir), resolution, clip_length, clips_per_video, seed, progress)
    frames = clips.flatten(0, 1)
    probe = frames[torch.randperm(len(frames), generator=torch.Generator().manual_seed(seed))[:512]]
    record = {"frames": len(frames), "resolution": resolution, "steps": steps, "batch_size": batch_size,
              "clip_length": clip_length, "scaled_latent_std_before": scaled_latent_std(vae, probe)}
    losses = fit_autoencoder(vae, clips, steps, batch_size, lr, seed=seed, progress=progress) if steps > 0 else []
    if losses:
        tail = losses[-max(1, len(losses) // 10):]
        record.update(loss_first=losses[0], loss_last_tenth=float(np.mean(tail)))
    record["encoder_scale"] = calibrate_latent_scale(vae, probe)
    record["scaled_latent_std_after"] = scaled_latent_std(vae, probe)
    record["seconds"] = round(time.perf_counter() - start, 1)
    save_vae_in_place(vae.to("cpu"), model_dir)
    (model_dir / FIT_RECORD).write_text(json.dumps(record, indent=1))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained_model_path", required=True, help="SVD folder whose vae/ is fitted in place")
    parser.add_argument("--dataset_dir", required=True, help="stage-1 data set (annotation/train/*.json + videos)")
    parser.add_argument("--resolution", type=int, required=True, help="frame size, as for the latents")
    parser.add_argument("--steps", type=int, default=1000, help="autoencoder training steps (0: calibrate only)")
    parser.add_argument("--batch_size", type=int, default=16, help="clips per step")
    parser.add_argument("--clip_length", type=int, default=4, help="consecutive frames decoded together")
    parser.add_argument("--clips_per_video", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    from vpp_core.video_io import VideoReadError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        record = fit_and_calibrate(args.pretrained_model_path, args.dataset_dir, args.resolution, args.steps,
                                   args.batch_size, args.clip_length, args.clips_per_video, args.lr, args.device,
                                   args.seed, progress=not args.no_progress)
    except (FileNotFoundError, ValueError, VideoReadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
