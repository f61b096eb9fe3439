"""Annotation json and latent tensor readers for the original stage-1 layout (vpp_reference §2.2-2.3).

    {dataset_root}/{annotation_name}/{split}/{id}.json        texts, videos, latent_videos, state | video_length, ...
    {dataset_root}/videos/...                                   paths taken from the json ("videos")
    {dataset_root}/latent_videos/{split}/{id}/{cam}.pt          or latent_videos_svd/... (fallback, see below)

Every error names the file and says what was expected, so a broken file in a 100k-episode data set can be found.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# The shipped bridge jsons point at latent_videos/... while the files live in latent_videos_svd/... (§2.3).
DEFAULT_LATENT_FALLBACK = ("latent_videos", "latent_videos_svd")


class DatasetError(ValueError):
    """A data set folder, annotation or latent file is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class Annotation:
    """The fields of one annotation json that stage 1 uses (states/actions are not kept in memory)."""

    path: Path
    texts: tuple[str, ...]
    num_frames: int
    episode_id: Any
    latent_paths: tuple[str, ...]
    video_paths: tuple[str, ...]  # what step1_prepare_latent_data encodes

    @property
    def text(self) -> str:
        return self.texts[0]


def _natural_key(path: Path) -> tuple:
    stem = path.stem
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def list_annotation_files(folder: str | Path) -> list[Path]:
    """The *.json files of an annotation split folder, in numeric order of their ids (then by name)."""
    folder = Path(folder)
    if not folder.is_dir():
        parent = folder.parent
        siblings = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
        hint = f"; {parent} contains {siblings}" if siblings else f"; {parent} does not exist either"
        raise DatasetError(f"annotation folder not found: {folder}{hint}")
    files = sorted(folder.glob("*.json"), key=_natural_key)
    if not files:
        raise DatasetError(f"annotation folder {folder} contains no *.json files")
    return files


def frame_count(ann: dict, path: Path) -> int:
    """Number of frames of an episode as the original loader computes it: len(state) if present, else video_length."""
    if "state" in ann:
        n = len(ann["state"])
    elif "video_length" in ann:
        n = ann["video_length"]
    else:
        raise DatasetError(f"{path}: annotation has neither 'state' nor 'video_length'; add \"video_length\": <frames>")
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise DatasetError(f"{path}: frame count must be a positive integer, got {n!r}")
    return n


def _path_list(ann: dict, key: str, inner: str, path: Path) -> tuple[str, ...]:
    entries = ann.get(key, [])
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: '{key}' must be a list of {{\"{inner}\": ...}} entries")
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get(inner), str) or not entry[inner]:
            raise DatasetError(f"{path}: '{key}[{i}]' must be a dict with a non-empty string '{inner}', got {entry!r}")
        out.append(entry[inner])
    return tuple(out)


def parse_annotation(ann: Any, path: str | Path, require_latents: bool = True) -> Annotation:
    """Validate an already-parsed annotation dict."""
    path = Path(path)
    if not isinstance(ann, dict):
        raise DatasetError(f"{path}: annotation must be a json object, got {type(ann).__name__}")
    texts = ann.get("texts")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts) or not texts[0].strip():
        raise DatasetError(f"{path}: annotation needs 'texts', a non-empty list of instruction strings, got {texts!r}")
    latent_paths = _path_list(ann, "latent_videos", "latent_video_path", path)
    if require_latents and not latent_paths:
        raise DatasetError(
            f"{path}: annotation has no 'latent_videos'; run step1_prepare_latent_data.py on this data set first"
        )
    return Annotation(
        path=path,
        texts=tuple(texts),
        num_frames=frame_count(ann, path),
        episode_id=ann.get("episode_id"),
        latent_paths=latent_paths,
        video_paths=_path_list(ann, "videos", "video_path", path),
    )


def read_annotation_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"annotation file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid json ({exc})") from exc


def load_annotation(path: str | Path, require_latents: bool = True) -> Annotation:
    """Read and validate `{root}/{annotation_name}/{split}/{id}.json`."""
    return parse_annotation(read_annotation_json(path), path, require_latents)


def resolve_latent_path(
    root: str | Path, rel_path: str, fallback: Sequence[str] | None = DEFAULT_LATENT_FALLBACK
) -> Path:
    """The latent file for a json path, trying the `latent_videos` -> `latent_videos_svd` fallback of §2.3.

    Unlike the original (a blind substring replace after a failed load) only the first path component equal to
    fallback[0] is replaced, and a missing file is an error naming both candidates.
    """
    path = Path(rel_path)
    path = path if path.is_absolute() else Path(root) / path
    if path.is_file():
        return path
    candidates = [path]
    if fallback:
        src, dst = fallback
        parts = list(Path(rel_path).parts)
        if src in parts:
            parts[parts.index(src)] = dst
            alt = Path(*parts)
            alt = alt if alt.is_absolute() else Path(root) / alt
            if alt.is_file():
                return alt
            candidates.append(alt)
    raise DatasetError(f"latent file not found: tried {[str(c) for c in candidates]}")


def check_latent(latent: Any, path: str | Path, latent_shape: Sequence[int] | None = None) -> torch.Tensor:
    """A latent must be a float tensor (T, C, h, w); `latent_shape` = expected (C, h, w)."""
    if not isinstance(latent, torch.Tensor):
        raise DatasetError(f"{path}: expected a torch.Tensor of scaled VAE latents, got {type(latent).__name__}")
    if latent.dim() != 4 or not latent.is_floating_point():
        raise DatasetError(
            f"{path}: expected a float latent tensor (T, C, h, w), got {latent.dtype} {tuple(latent.shape)}"
        )
    if latent_shape is not None and tuple(latent.shape[1:]) != tuple(latent_shape):
        raise DatasetError(
            f"{path}: latent has shape {tuple(latent.shape)}, expected (T, {', '.join(map(str, latent_shape))}) for "
            "the configured resolution (latent size = resolution / 8: train_args.height/width in training, "
            "validation_args.height/width in evaluation). Set that resolution to the one the data was encoded at, "
            "or re-encode the data with step1_prepare_latent_data.py at the configured resolution"
        )
    return latent


def load_latent(path: str | Path, latent_shape: Sequence[int] | None = None) -> torch.Tensor:
    """Load a `.pt` latent file (T, C, h, w) float32 with `weights_only=True` and validate its shape."""
    path = Path(path)
    try:
        latent = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise DatasetError(f"latent file not found: {path}") from exc
    except Exception as exc:  # unpickling errors come in many types
        raise DatasetError(f"{path}: cannot load latent tensor ({type(exc).__name__}: {exc})") from exc
    return check_latent(latent, path, latent_shape).float()


_SPLIT_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def check_name(name: str, what: str) -> str:
    """Data set and split names become folder names; reject separators and empty strings early."""
    if not isinstance(name, str) or not _SPLIT_RE.match(name):
        raise DatasetError(f"invalid {what} name {name!r}: use letters, digits, '_', '-', '.' only")
    return name
