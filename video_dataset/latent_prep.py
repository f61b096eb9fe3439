"""Encode a video data set in the original layout into SVD-VAE latents (vpp_reference §2.2-2.3).

Input:   {root}/{annotation_name}/{split}/{id}.json  with  "videos": [{"video_path": <relative to root>}, ...]
Output:  {out}/latent_videos/{split}/{id}/{cam}.pt    float32 (T, 4, R/8, R/8), scaled by the VAE scaling factor
         {out}/{annotation_name}/{split}/{id}.json    the input json plus "latent_videos" (and "video_length" when it
                                                      had neither "state" nor "video_length")

Frames of any size and fps are resized to R x R (bilinear, antialiased; optional black letterbox to 4:3 first),
encoded `chunk_size` frames at a time with `latent_dist.sample()` (the released latents' convention; `sample=False`
takes the mode) and multiplied by the scaling factor. Latents are written atomically and the json last, so an
episode whose json lists latent files that exist is finished: a rerun skips it. Unreadable videos and broken jsons
are reported by path and skipped; the run carries on and prints a summary.

Each written json also records how its latents were made ("latent_encoding": resolution, resize, posterior sample or
mode, the autoencoder's scaling factor and weights). A rerun with other settings refuses to start rather than skip
the finished episodes and leave latents of two kinds in one data set; latents written without the record (the
released data sets) are checked for their size.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from video_dataset.annotations import (
    DatasetError,
    list_annotation_files,
    load_latent,
    parse_annotation,
    read_annotation_json,
    resolve_latent_path,
)
from video_dataset.transforms import preprocess_frames
from vpp_core.fingerprint import weights_fingerprint
from vpp_core.io import atomic_json_dump, atomic_torch_save
from vpp_core.video_io import VideoReadError, read_video

if TYPE_CHECKING:
    from diffusers import AutoencoderKLTemporalDecoder

log = logging.getLogger(__name__)


@dataclass
class EncodeOptions:
    resolution: int = 256
    letterbox: bool = False
    antialias: bool = True
    sample: bool = True  # latent_dist.sample() (released latents) or .mode()
    chunk_size: int = 64
    seed: int = 0
    latent_folder: str = "latent_videos"


@dataclass
class PrepareReport:
    encoded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"encoded {len(self.encoded)} episode(s), skipped {len(self.skipped)} already finished, "
            f"failed {len(self.failed)}"
        ]
        for path, reason in self.failed:
            lines.append(f"  FAILED {path}: {reason}")
        for w in self.warnings:
            lines.append(f"  warning: {w}")
        return "\n".join(lines)


def episode_generator(seed: int, key: str) -> torch.Generator:
    """A generator per (seed, episode, camera): posterior samples do not depend on processing order or resumption."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(key.encode())) % (2**63))


def encode_video_frames(
    vae: AutoencoderKLTemporalDecoder, frames: np.ndarray, options: EncodeOptions, key: str
) -> torch.Tensor:
    """uint8 RGB frames (T, H, W, 3) -> scaled latents (T, 4, R/8, R/8) float32 (CPU)."""
    from video_models.pipeline import encode_frames

    pixels = preprocess_frames(frames, options.resolution, letterbox=options.letterbox, antialias=options.antialias)
    return encode_frames(
        vae,
        pixels,
        sample=options.sample,
        chunk_size=options.chunk_size,
        generator=episode_generator(options.seed, key),
    )


LATENT_STD_RANGE = (0.3, 3.0)


def check_latent_scale(latent: torch.Tensor, vae: AutoencoderKLTemporalDecoder, report: PrepareReport) -> None:
    """Warn when the scaled latents are far from unit variance (SVD's released autoencoder gives about 1): a randomly
    initialised autoencoder gives about 0.04, and stage 1 then learns nothing about the conditioning image."""
    std = float(latent.float().std())
    lo, hi = LATENT_STD_RANGE
    if not lo <= std <= hi:
        message = (f"scaled latents have std {std:.3f} (expected about 1 with scaling_factor "
                   f"{vae.config.scaling_factor}); a random or untrained autoencoder? Fit and calibrate it first: "
                   "python -m video_models.vae_fit --pretrained_model_path <svd folder> --dataset_dir <data> "
                   "--resolution <R>, then re-encode with --overwrite")
        report.warnings.append(message)
        log.warning(message)


def discover_splits(root: Path, annotation_name: str) -> list[str]:
    folder = root / annotation_name
    if not folder.is_dir():
        raise DatasetError(
            f"annotation folder not found: {folder} (expected {{root}}/{annotation_name}/{{split}}/*.json)"
        )
    splits = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not splits:
        raise DatasetError(f"{folder} has no split folders (expected e.g. train/ and val/)")
    return splits


ENCODING_KEY = "latent_encoding"


def encoding_record(vae: AutoencoderKLTemporalDecoder | None, options: EncodeOptions) -> dict:
    """What decides an episode's latents, written into its json. The weights are fingerprinted with their dtype;
    `encoding_differences` compares them only between equal dtypes, since encoding in another precision is fine."""
    record = {"resolution": options.resolution, "letterbox": options.letterbox, "antialias": options.antialias,
              "latent": "sample" if options.sample else "mode"}
    if vae is not None:
        record["vae"] = {"scaling_factor": float(vae.config.scaling_factor),
                         "dtype": str(next(vae.parameters()).dtype).removeprefix("torch."),
                         "fingerprint": weights_fingerprint(vae)}
    return record


def encoding_differences(recorded: dict, wanted: dict) -> list[str]:
    """The settings in which a recorded encoding differs from the wanted one, as "key: recorded -> wanted"."""
    out = [f"{key}: {recorded.get(key)} -> {wanted[key]}" for key in ("resolution", "letterbox", "antialias", "latent")
           if recorded.get(key) != wanted[key]]
    old, new = recorded.get("vae") or {}, wanted.get("vae")
    if new is not None and old:
        if old.get("scaling_factor") != new["scaling_factor"]:
            out.append(f"scaling factor: {old.get('scaling_factor')} -> {new['scaling_factor']}")
        if old.get("dtype") == new["dtype"] and old.get("fingerprint") != new["fingerprint"]:
            out.append("autoencoder: other weights")
    return out


def check_finished_encodings(
    jobs: Sequence[tuple[Path, str]], out_root: Path, annotation_name: str, wanted: dict, latent_size: int
) -> None:
    """Refuse, before anything is encoded, to add latents made with `wanted` settings to a data set whose finished
    episodes were made otherwise: the rerun would skip those and leave two kinds of latents in one data set."""
    conflicts: dict[str, int] = {}
    finished, size_checked = 0, False
    for json_path, split in jobs:
        out_json = out_root / annotation_name / split / json_path.name
        try:
            ann = read_annotation_json(out_json) if out_json.is_file() else None
        except DatasetError:
            continue  # redone by prepare_episode
        if ann is None or not isinstance(ann.get("latent_videos"), list) or not ann["latent_videos"]:
            continue
        finished += 1
        recorded = ann.get(ENCODING_KEY)
        if isinstance(recorded, dict):
            for difference in encoding_differences(recorded, wanted):
                conflicts[difference] = conflicts.get(difference, 0) + 1
        elif not size_checked:  # written without the record (e.g. released latents): their size tells the resolution
            size_checked = True
            _check_unrecorded_latent_size(ann, out_root, out_json, latent_size, wanted["resolution"])
    if conflicts:
        listed = "; ".join(f"{d} ({n} episode(s))" for d, n in conflicts.items())
        raise DatasetError(
            f"{out_root}: of its {finished} finished episodes, some were encoded with other settings than this "
            f"run's ({listed}); re-encode them with --overwrite, or write these latents elsewhere with --output_dir"
        )


def _check_unrecorded_latent_size(ann: dict, out_root: Path, out_json: Path, latent_size: int,
                                  resolution: int) -> None:
    try:
        path = resolve_latent_path(out_root, ann["latent_videos"][0]["latent_video_path"])
    except (TypeError, KeyError, DatasetError):
        return  # not finished: prepare_episode encodes it
    size = tuple(load_latent(path).shape[-2:])
    if size != (latent_size, latent_size):
        raise DatasetError(
            f"{out_json}: its finished latents ({path}) are {size[0]} x {size[1]}, but --resolution {resolution} makes "
            f"{latent_size} x {latent_size}; re-encode the data set with --overwrite, or write these latents "
            "elsewhere with --output_dir"
        )


def _is_finished(ann: dict, out_root: Path, n_videos: int) -> bool:
    """Every listed latent exists (with the loader's latent_videos -> latent_videos_svd fallback)."""
    entries = ann.get("latent_videos")
    if not isinstance(entries, list) or len(entries) != n_videos:
        return False
    try:
        for e in entries:
            resolve_latent_path(out_root, e["latent_video_path"])
    except (TypeError, KeyError, DatasetError):
        return False
    return True


def prepare_episode(
    json_path: Path,
    root: Path,
    out_root: Path,
    split: str,
    annotation_name: str,
    vae,
    options: EncodeOptions,
    report: PrepareReport,
    overwrite: bool = False,
    record: dict | None = None,
) -> None:
    """Encode one episode's videos and write its json (with `record`, the encoding_record, when given)."""
    episode = json_path.stem
    out_json = out_root / annotation_name / split / json_path.name
    try:
        ann = read_annotation_json(json_path)
        videos = list(parse_annotation(ann, json_path, require_latents=False).video_paths)  # and texts, frame count
    except DatasetError as exc:
        report.failed.append((str(json_path), str(exc)))
        return
    if not videos:
        report.failed.append((str(json_path), "annotation lists no 'videos'"))
        return
    if not overwrite and out_json.is_file():
        try:
            if _is_finished(read_annotation_json(out_json), out_root, len(videos)):
                report.skipped.append(str(json_path))
                return
        except DatasetError:
            pass  # a broken output json is simply redone

    latent_entries, lengths = [], []
    for cam, rel in enumerate(videos):
        video_path = Path(rel) if Path(rel).is_absolute() else root / rel
        rel_latent = f"{options.latent_folder}/{split}/{episode}/{cam}.pt"
        try:
            frames = read_video(video_path)
        except VideoReadError as exc:
            report.failed.append((str(exc.path), exc.reason))
            return
        latent = encode_video_frames(vae, frames, options, f"{split}/{episode}/{cam}")
        if not report.encoded and cam == 0:
            check_latent_scale(latent, vae, report)
        atomic_torch_save(latent.contiguous(), out_root / rel_latent)
        latent_entries.append({"latent_video_path": rel_latent})
        lengths.append(int(latent.shape[0]))

    if len(set(lengths)) > 1:
        report.warnings.append(f"{json_path}: cameras have different frame counts {lengths}")
    declared = len(ann["state"]) if "state" in ann else ann.get("video_length")
    if declared is None:
        ann["video_length"] = min(lengths)
    elif declared > min(lengths):
        report.warnings.append(
            f"{json_path}: annotation declares {declared} frames but the video has {min(lengths)}; "
            "the training loader will reject clips past the end"
        )
    ann["latent_videos"] = latent_entries
    if record is not None:
        ann[ENCODING_KEY] = record
    if out_root.resolve() != root.resolve():  # keep video paths valid relative to the output folder
        ann["videos"] = [
            {**v, "video_path": os.path.relpath(root / v["video_path"], out_root)}
            if not Path(v["video_path"]).is_absolute()
            else v
            for v in ann["videos"]
        ]
    atomic_json_dump(ann, out_json)
    report.encoded.append(str(json_path))


def prepare_dataset(
    root: str | Path,
    vae,
    *,
    out_root: str | Path | None = None,
    splits: Sequence[str] | None = None,
    annotation_name: str = "annotation",
    options: EncodeOptions | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> PrepareReport:
    """Encode every episode of every split of one data set folder. Never raises for a bad episode."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data set folder not found: {root}")
    out_root = Path(out_root) if out_root is not None else root
    options = options or EncodeOptions()
    if options.resolution % 8:
        raise ValueError(f"resolution must be a multiple of 8, got {options.resolution}")
    splits = list(splits) if splits else discover_splits(root, annotation_name)
    jobs: list[tuple[Path, str]] = []
    for split in splits:
        jobs.extend((p, split) for p in list_annotation_files(root / annotation_name / split))
    record = encoding_record(vae, options)
    if not overwrite:
        from video_models.pipeline import vae_scale_factor

        factor = 8 if vae is None else vae_scale_factor(vae)
        check_finished_encodings(jobs, out_root, annotation_name, record, options.resolution // factor)
    report = PrepareReport()
    bar = tqdm(jobs, desc=f"encoding {root.name}", unit="episode", disable=not progress)
    for json_path, split in bar:
        prepare_episode(json_path, root, out_root, split, annotation_name, vae, options, report, overwrite, record)
        bar.set_postfix(done=len(report.encoded), skipped=len(report.skipped), failed=len(report.failed))
    return report
