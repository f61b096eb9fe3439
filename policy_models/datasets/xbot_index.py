"""Sample index and normalisation statistics for xbot-style custom-robot data (vpp_reference §9.1).

Layout read (one folder per dataset under ``root``)::

    {root}/{dataset_name}/annotation/{split}/{id}.json
        {"texts": [str, ...], "episode_id": int | str, "video_length": T,
         "states": T x D, "actions": T x D,                       (xbot: D = 38)
         "latent_videos": [{"latent_video_path": "latent_videos/{split}/{id}/{cam}.pt"}, ...], ...}

Written::

    {output}/{split}_all.json    shuffled list of {"dataset_name", "ann_file", "episode_id", "frame_ids"}
    {output}/{split}_stats.json  Stats (policy_models.normalization): 1st/99th percentiles of the current states and
                                 of the relative actions; the training config points at train_stats.json.

Sampling (the original's rule, with its constants as arguments): T = len(ann["action"]) if the json has an
``action`` key, else ``video_length`` (else len(actions)); one sample per start frame ``s`` in
``range(0, T, start_interval)`` with frame ids ``min(s + stride * k, T - 1)`` for ``k = 0 .. sequence_length - 1``.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from policy_models.normalization import XBOT_ARM_POSE_SLICES, Stats, compute_stats, relative_actions

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("texts", "episode_id", "states", "actions", "latent_videos")


class AnnotationError(ValueError):
    """A malformed annotation json; the message names the file and the field."""


@dataclass
class IndexConfig:
    root: str
    dataset_names: list[str]
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    sequence_length: int = 8
    stride: int = 1
    start_interval: int = 1
    seed: int = 0
    relative_mode: str = "componentwise"
    quat_order: str = "xyzw"
    pose_slices: Sequence[tuple[int, int]] = XBOT_ARM_POSE_SLICES
    check_latents: bool = True

    def __post_init__(self) -> None:
        if not self.dataset_names:
            raise ValueError("dataset_names is empty (use --dataset_names a+b+c)")
        for name, v in (("sequence_length", self.sequence_length), ("stride", self.stride),
                        ("start_interval", self.start_interval)):
            if int(v) < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.stem)]


def frame_ids(start: int, length: int, stride: int, num_frames: int) -> list[int]:
    return [min(start + stride * k, num_frames - 1) for k in range(length)]


def _matrix(ann: dict, key: str, path: Path) -> np.ndarray:
    try:
        m = np.asarray(ann[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise AnnotationError(f"{path}: field '{key}' must be a T x D list of numbers (ragged or non-numeric)") \
            from None
    if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0:
        raise AnnotationError(f"{path}: field '{key}' must be a non-empty T x D list, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise AnnotationError(f"{path}: field '{key}' contains NaN/inf")
    return m


def read_annotation(path: Path, dataset_dir: Path, check_latents: bool = True) -> tuple[dict, int, np.ndarray,
                                                                                         np.ndarray]:
    """Load and validate one annotation json -> (json, T, states (T', D), actions (T', D))."""
    try:
        ann = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(ann, dict):
        raise AnnotationError(f"{path}: expected a JSON object, got {type(ann).__name__}")
    missing = [k for k in REQUIRED_FIELDS if k not in ann]
    if missing:
        raise AnnotationError(f"{path}: missing field(s) {missing} (an xbot annotation needs {list(REQUIRED_FIELDS)} "
                              "and 'video_length')")
    texts = ann["texts"]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise AnnotationError(f"{path}: field 'texts' must be a non-empty list of strings")
    states = _matrix(ann, "states", path)
    actions = _matrix(ann, "actions", path)
    if states.shape[1] != actions.shape[1]:
        raise AnnotationError(f"{path}: 'states' has {states.shape[1]} columns but 'actions' has {actions.shape[1]}")
    if "action" in ann:
        if not isinstance(ann["action"], list):
            raise AnnotationError(f"{path}: field 'action' must be a list")
        num = len(ann["action"])
        src = "len(action)"
    elif "video_length" in ann:
        num = ann["video_length"]
        src = "video_length"
        if isinstance(num, bool) or not isinstance(num, int):
            raise AnnotationError(f"{path}: field 'video_length' must be an integer, got {num!r}")
    else:
        num, src = actions.shape[0], "len(actions)"
    if num < 1:
        raise AnnotationError(f"{path}: {src} = {num}, need at least one frame")
    for key, m in (("states", states), ("actions", actions)):
        if m.shape[0] < num:
            raise AnnotationError(f"{path}: {src} = {num} but '{key}' has only {m.shape[0]} rows")
    lv = ann["latent_videos"]
    if not isinstance(lv, list) or not lv:
        raise AnnotationError(f"{path}: field 'latent_videos' must be a non-empty list of "
                              "{'latent_video_path': ...} objects")
    for i, entry in enumerate(lv):
        if not isinstance(entry, dict) or not isinstance(entry.get("latent_video_path"), str):
            raise AnnotationError(f"{path}: field 'latent_videos[{i}]' must be an object with a string "
                                  "'latent_video_path'")
        if check_latents:
            rel = entry["latent_video_path"]
            cands = [dataset_dir / rel, dataset_dir / rel.replace("latent_videos", "latent_videos_svd", 1)]
            if not any(c.is_file() for c in cands):
                raise AnnotationError(f"{path}: latent_videos[{i}] file not found: {cands[0]} (nor the "
                                      "latent_videos_svd fallback); pass --no_check_latents to skip this check")
    return ann, int(num), states[:num], actions[:num]


def index_split(cfg: IndexConfig, split: str) -> tuple[list[dict[str, Any]], Stats]:
    """All samples of one split (unshuffled, in file order) and their statistics."""
    root = Path(cfg.root)
    samples: list[dict[str, Any]] = []
    cur_states: list[np.ndarray] = []
    rel_actions: list[np.ndarray] = []
    dim = None
    dim_src = None
    n_files = 0
    for name in cfg.dataset_names:
        dataset_dir = root / name
        ann_dir = dataset_dir / "annotation" / split
        if not ann_dir.is_dir():
            raise FileNotFoundError(f"annotation folder not found: {ann_dir} (dataset '{name}', split '{split}'); "
                                    "check --root/--dataset_names or choose other --splits")
        files = sorted(ann_dir.glob("*.json"), key=_natural_key)
        for path in files:
            ann, num, states, actions = read_annotation(path, dataset_dir, cfg.check_latents)
            if dim is None:
                dim, dim_src = states.shape[1], path
            elif states.shape[1] != dim:
                raise AnnotationError(f"{path}: states/actions have {states.shape[1]} columns but {dim_src} has {dim}")
            n_files += 1
            starts = range(0, num, cfg.start_interval)
            ids = np.array([frame_ids(s, cfg.sequence_length, cfg.stride, num) for s in starts], dtype=np.int64)
            cur = states[ids[:, 0]]                                    # (S, D)
            cur_states.append(cur)
            rel_actions.append(relative_actions(actions[ids], cur, cfg.relative_mode, cfg.quat_order,
                                                cfg.pose_slices))  # (S, L, D)
            ann_file = f"annotation/{split}/{path.name}"
            for row in ids:
                samples.append({"dataset_name": name, "ann_file": ann_file, "episode_id": ann["episode_id"],
                                "frame_ids": row.tolist()})
    if not samples:
        raise FileNotFoundError(f"no annotation json found for split '{split}' under "
                                f"{[str(root / n / 'annotation' / split) for n in cfg.dataset_names]}")
    stats = compute_stats(
        np.concatenate(cur_states), np.concatenate(rel_actions),
        relative_mode=cfg.relative_mode, quat_order=cfg.quat_order, pose_slices=tuple(cfg.pose_slices),
        meta={"split": split, "dataset_names": list(cfg.dataset_names), "num_files": n_files,
              "num_samples": len(samples), "sequence_length": cfg.sequence_length, "stride": cfg.stride,
              "start_interval": cfg.start_interval, "percentiles": [1, 99]},
    )
    return samples, stats


def prepare_index(cfg: IndexConfig, output: str | Path, overwrite: bool = False) -> dict[str, dict[str, Any]]:
    """Write ``{split}_all.json`` (shuffled with ``cfg.seed``) and ``{split}_stats.json`` for every split."""
    from vpp_core.io import atomic_json_dump

    output = Path(output)
    targets = [output / f"{s}_{kind}.json" for s in cfg.splits for kind in ("all", "stats")]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"refusing to overwrite {existing}; pass --overwrite or choose another --output")
    # Build everything first so a bad json in a later split leaves no partial output behind.
    results = {split: index_split(cfg, split) for split in cfg.splits}
    summary: dict[str, dict[str, Any]] = {}
    for split, (samples, stats) in results.items():
        random.Random(f"{cfg.seed}:{split}").shuffle(samples)  # str seeds are hashed with sha512: stable everywhere
        all_path, stats_path = output / f"{split}_all.json", output / f"{split}_stats.json"
        atomic_json_dump(samples, all_path, indent=None)
        stats.save(stats_path)
        summary[split] = {"samples": len(samples), "files": stats.meta["num_files"], "index": str(all_path),
                          "stats": str(stats_path)}
        log.info("%s: %d samples from %d files -> %s, %s", split, len(samples), stats.meta["num_files"], all_path,
                 stats_path)
    return summary
