"""Multi-data-set latent clip sampler for stage 1 (the original `Dataset_mix`, vpp_reference §4).

Behaviour kept from the original:
  * data sets are named in one string joined with '+', each drawn with the matching probability in `prob`;
  * "internet" data sets (bridge, sthv2, rt1) give one clip per episode of at most 100 frames: 16 frame ids
    floor(linspace(0, n-1, 16)); longer episodes are skipped;
  * "robot" data sets (everything else) give one clip per start frame s = 0, 2, 4, ... with ids
    min(s + 2k, n-1), k = 0..15 (stride and start interval 5 for names containing 'cloth');
  * one camera is drawn per clip: cam 0/1 with p 0.75/0.25 for calvin and xhand, cam 0/1/2 with p 0.5/0.25/0.25 for
    xbot_04*, else cam 0;
  * CALVIN trains on `annotation_abc_13/train` and validates on `annotation_abc_13/val_d`;
  * `latent_videos` -> `latent_videos_svd` fallback; xbot data sets build the latent path from the episode id;
  * `len()` is the largest data set's clip count; the index selects a clip *within* the drawn data set (modulo).

Changes (documented in the README):
  * The classifications above are configuration (`MixRules`, yaml `train_args.mix_rules`) with the original values as
    defaults, and they match the *data set name*, not any substring of the full path (the original would treat
    `/data/calvin_runs/bridge` as CALVIN and rewrote every `val` substring of a CALVIN path to `val_d`).
  * The data set and camera drawn for item `i` come from a generator seeded with (seed, epoch, i) instead of the global
    numpy RNG: validation sets are reproducible, results do not depend on the number of DataLoader workers, and an
    interrupted run resumes with the same data. The trainer calls `set_epoch` so training still sees fresh draws.
  * Broken annotations are an error listing the files (the original silently skipped unreadable json);
    `skip_bad_annotations=True` restores skipping with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from video_dataset.annotations import (
    Annotation,
    DatasetError,
    check_name,
    list_annotation_files,
    load_annotation,
    load_latent,
    resolve_latent_path,
)

log = logging.getLogger(__name__)

DEBUG_MAX_ANNOTATIONS = 50


def _default_camera_probs() -> dict[str, list[float]]:
    return {"calvin": [0.75, 0.25], "xhand": [0.75, 0.25], "xbot_04": [0.5, 0.25, 0.25]}


@dataclass
class MixRules:
    """How each data set is sampled, keyed by substrings of the data set *name* (first matching key wins)."""

    internet_keywords: tuple[str, ...] = ("bridge", "sthv2", "rt1")
    internet_max_frames: int = 100
    robot_stride: int = 2
    robot_start_interval: int = 2
    # keyword -> stride (int, also used as start interval) or {"stride": s, "start_interval": t}
    stride_overrides: dict[str, Any] = field(default_factory=lambda: {"cloth": 5})
    # keyword -> probabilities of camera 0, 1, ...; data sets matching no keyword use camera 0
    camera_probs: dict[str, list[float]] = field(default_factory=_default_camera_probs)
    # data sets whose latent path is latent_videos/{split}/{episode_id}/{cam}.pt instead of the json's path
    episode_latent_keywords: tuple[str, ...] = ("xbot",)
    # keyword -> {"annotation_name": ..., "splits": {mode: folder}}: CALVIN ABC -> D
    annotation_overrides: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"calvin": {"annotation_name": "annotation_abc_13", "splits": {"val": "val_d"}}}
    )
    latent_fallback: tuple[str, str] | None = ("latent_videos", "latent_videos_svd")

    @classmethod
    def from_config(cls, cfg: Mapping | DictConfig | None) -> MixRules:
        if cfg is None:
            return cls()
        data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DatasetError(f"unknown mix_rules keys {unknown}; known keys are {sorted(known)}")
        for key in ("internet_keywords", "episode_latent_keywords"):
            if key in data:
                data[key] = tuple(data[key] or ())
        if data.get("latent_fallback") is not None:
            data["latent_fallback"] = tuple(data["latent_fallback"])
        rules = cls(**data)
        rules.validate()
        return rules

    def validate(self) -> None:
        for key, probs in self.camera_probs.items():
            p = np.asarray(probs, dtype=np.float64)
            if p.ndim != 1 or not len(p) or (p < 0).any() or abs(p.sum() - 1) > 1e-6:
                raise DatasetError(f"mix_rules.camera_probs[{key!r}] must be non-negative and sum to 1, got {probs}")
        for key, val in self.stride_overrides.items():
            stride, start = self._stride_pair(val)
            if stride < 1 or start < 1:
                raise DatasetError(f"mix_rules.stride_overrides[{key!r}] must be positive, got {val}")
        if self.robot_stride < 1 or self.robot_start_interval < 1 or self.internet_max_frames < 1:
            raise DatasetError("mix_rules: robot_stride, robot_start_interval and internet_max_frames must be >= 1")
        if self.latent_fallback is not None and len(self.latent_fallback) != 2:
            raise DatasetError(f"mix_rules.latent_fallback must be [from, to] or null, got {self.latent_fallback}")

    @staticmethod
    def _match(keys, name: str) -> str | None:
        return next((k for k in keys if k in name), None)

    @staticmethod
    def _stride_pair(val: Any) -> tuple[int, int]:
        if isinstance(val, Mapping):
            return int(val["stride"]), int(val.get("start_interval", val["stride"]))
        return int(val), int(val)

    def is_internet(self, name: str) -> bool:
        return self._match(self.internet_keywords, name) is not None

    def stride(self, name: str) -> tuple[int, int]:
        """(stride between frames, interval between clip start frames) for a robot data set."""
        key = self._match(self.stride_overrides, name)
        if key is None:
            return self.robot_stride, self.robot_start_interval
        return self._stride_pair(self.stride_overrides[key])

    def cameras(self, name: str) -> np.ndarray:
        key = self._match(self.camera_probs, name)
        return np.asarray(self.camera_probs[key] if key else [1.0], dtype=np.float64)

    def episode_latents(self, name: str) -> bool:
        return self._match(self.episode_latent_keywords, name) is not None

    def annotation_folder(self, name: str, annotation_name: str, mode: str) -> tuple[str, str]:
        """(annotation folder name, split folder name) for a data set and mode ('train' / 'val')."""
        key = self._match(self.annotation_overrides, name)
        if key is None:
            return annotation_name, mode
        over = self.annotation_overrides[key]
        return over.get("annotation_name", annotation_name), (over.get("splits") or {}).get(mode, mode)


def internet_frame_ids(num_frames: int, sequence_length: int) -> np.ndarray:
    """The whole clip squeezed into `sequence_length` frames: floor(linspace(0, n-1, L))."""
    return np.floor(np.linspace(0, num_frames - 1, sequence_length)).astype(np.int64)


def robot_frame_ids(start: int, num_frames: int, sequence_length: int, stride: int) -> np.ndarray:
    """ids = min(start + stride*k, n-1): the tail of an episode repeats its last frame."""
    return np.minimum(start + stride * np.arange(sequence_length, dtype=np.int64), num_frames - 1)


@dataclass
class _SubDataset:
    name: str
    root: Path
    split: str
    annotations: list[Annotation]
    ann_index: np.ndarray  # clip -> annotation
    starts: np.ndarray  # clip -> start frame (-1: internet-style linspace clip)
    stride: int
    camera_probs: np.ndarray
    episode_latents: bool

    def __len__(self) -> int:
        return len(self.ann_index)


def parse_dataset_names(datasets: str | Sequence[str]) -> list[str]:
    names = datasets.split("+") if isinstance(datasets, str) else list(datasets)
    names = [n.strip() for n in names]
    if not names or any(not n for n in names):
        raise DatasetError(f"data set list {datasets!r} is empty or has an empty name (names are joined with '+')")
    if len(set(names)) != len(names):
        raise DatasetError(f"data set list {datasets!r} names a data set twice")
    return [check_name(n, "data set") for n in names]


def parse_probabilities(prob: Sequence[float] | None, n: int, datasets: Any) -> np.ndarray:
    if prob is None:
        if n == 1:
            return np.ones(1)
        raise DatasetError(f"'prob' is required when mixing {n} data sets ({datasets})")
    p = np.asarray(list(prob), dtype=np.float64)
    if p.ndim != 1 or len(p) != n:
        raise DatasetError(
            f"'prob' has {p.size} entries but {n} data sets are named ({datasets}); give one per data set"
        )
    if (p < 0).any() or abs(p.sum() - 1.0) > 1e-6:
        raise DatasetError(f"'prob' must be non-negative and sum to 1, got {list(prob)} (sum {p.sum():.6g})")
    return p / p.sum()


class DatasetMix(torch.utils.data.Dataset):
    """Latent clips (L, C, h, w) drawn from several data sets with given probabilities.

    Items: {"text": str, "latent": float32 (L, C, h, w), "video": same tensor (original key), "dataset": name,
    "camera": int, "frame_ids": int64 (L,), "annotation": json path}.
    """

    def __init__(
        self,
        dataset_dir: str | Path,
        datasets: str | Sequence[str],
        prob: Sequence[float] | None = None,
        mode: str = "train",
        *,
        sequence_length: int = 16,
        annotation_name: str = "annotation",
        rules: MixRules | Mapping | None = None,
        latent_shape: Sequence[int] | None = None,
        seed: int = 0,
        debug: bool = False,
        skip_bad_annotations: bool = False,
        num_threads: int = 32,
    ):
        if dataset_dir is None:
            raise DatasetError("dataset_dir is not set; pass train_args.dataset_dir=/path/to/datasets")
        self.dataset_dir = Path(dataset_dir)
        if not self.dataset_dir.is_dir():
            raise DatasetError(f"dataset_dir not found: {self.dataset_dir}")
        self.mode = check_name(mode, "split")
        self.names = parse_dataset_names(datasets)
        self.prob = parse_probabilities(prob, len(self.names), datasets)
        self.sequence_length = int(sequence_length)
        if self.sequence_length < 1:
            raise DatasetError(f"sequence_length must be >= 1, got {sequence_length}")
        self.rules = rules if isinstance(rules, MixRules) else MixRules.from_config(rules)
        self.latent_shape = tuple(latent_shape) if latent_shape is not None else None
        self.seed = int(seed)
        self.epoch = 0
        self.subsets = [
            self._build(name, annotation_name, debug, skip_bad_annotations, num_threads) for name in self.names
        ]
        self._len = max(len(s) for s in self.subsets)

    @classmethod
    def from_train_args(
        cls, train_args: Mapping | DictConfig, mode: str, latent_shape: Sequence[int] | None = None, seed: int = 0
    ) -> DatasetMix:
        """Build from the `train_args` block of a stage-1 yaml (the original constructor's signature)."""
        get = train_args.get
        return cls(
            get("dataset_dir"),
            get("dataset"),
            get("prob"),
            mode,
            sequence_length=get("sequence_length", 16),
            annotation_name=get("annotation_name", "annotation"),
            rules=get("mix_rules"),
            latent_shape=latent_shape,
            seed=seed,
            debug=bool(get("debug", False)),
            skip_bad_annotations=bool(get("skip_bad_annotations", False)),
        )

    # ----------------------------------------------------------------------------------------------------- build
    def _build(self, name: str, annotation_name: str, debug: bool, skip_bad: bool, num_threads: int) -> _SubDataset:
        root = self.dataset_dir / name
        if not root.is_dir():
            available = sorted(p.name for p in self.dataset_dir.iterdir() if p.is_dir())
            raise DatasetError(f"data set folder not found: {root} (data sets in {self.dataset_dir}: {available})")
        ann_name, split = self.rules.annotation_folder(name, annotation_name, self.mode)
        files = list_annotation_files(root / ann_name / split)
        if debug:
            files = files[:DEBUG_MAX_ANNOTATIONS]
        episode_latents = self.rules.episode_latents(name)
        sampled = np.nonzero(self.rules.cameras(name))[0]

        def parse(path: Path) -> Annotation | DatasetError:
            """The annotation, with the latent files of its sampled cameras checked to exist: a missing file fails
            here, with the other bad annotations, instead of at whichever training step first draws it."""
            try:
                ann = load_annotation(path, require_latents=not episode_latents)
                if not episode_latents:
                    for camera in sampled[sampled < len(ann.latent_paths)]:
                        resolve_latent_path(root, ann.latent_paths[camera], self.rules.latent_fallback)
                return ann
            except DatasetError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=max(1, min(num_threads, len(files)))) as pool:
            results = list(pool.map(parse, files))
        errors = [r for r in results if isinstance(r, DatasetError)]
        annotations = [r for r in results if isinstance(r, Annotation)]
        cams = self.rules.cameras(name)
        needed = int(np.nonzero(cams)[0].max()) + 1
        if not episode_latents:
            for ann in list(annotations):
                if len(ann.latent_paths) < needed:
                    errors.append(
                        DatasetError(
                            f"{ann.path}: has {len(ann.latent_paths)} latent_videos but data set {name!r} samples "
                            f"cameras with probabilities {cams.tolist()} (mix_rules.camera_probs)"
                        )
                    )
                    annotations.remove(ann)
        if errors:
            listing = "\n  ".join(str(e) for e in errors[:10])
            more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
            if not skip_bad:
                raise DatasetError(
                    f"{len(errors)} bad annotation(s) in data set {name!r}:\n  {listing}{more}\n"
                    "Fix or remove them, or set train_args.skip_bad_annotations=true to skip them."
                )
            log.warning("skipping %d bad annotation(s) in %s:\n  %s%s", len(errors), name, listing, more)

        ann_index: list[np.ndarray] = []
        starts: list[np.ndarray] = []
        stride, start_interval = self.rules.stride(name)
        internet = self.rules.is_internet(name)
        too_long = 0
        for i, ann in enumerate(annotations):
            if internet:
                if ann.num_frames > self.rules.internet_max_frames:
                    too_long += 1
                    continue
                s = np.array([-1], dtype=np.int64)
            else:
                s = np.arange(0, ann.num_frames, start_interval, dtype=np.int64)
            ann_index.append(np.full(len(s), i, dtype=np.int64))
            starts.append(s)
        if too_long:
            log.info("%s: skipped %d episodes longer than %d frames", name, too_long, self.rules.internet_max_frames)
        if not ann_index:
            raise DatasetError(
                f"data set {name!r} ({root / ann_name / split}) yields no clips: {len(annotations)} usable "
                f"annotations, {too_long} longer than internet_max_frames={self.rules.internet_max_frames}"
            )
        return _SubDataset(
            name=name,
            root=root,
            split=split,
            annotations=annotations,
            ann_index=np.concatenate(ann_index),
            starts=np.concatenate(starts),
            stride=stride,
            camera_probs=cams,
            episode_latents=episode_latents,
        )

    # ------------------------------------------------------------------------------------------------- sampling
    def __len__(self) -> int:
        return self._len

    def set_epoch(self, epoch: int) -> None:
        """Training draws differ per epoch; validation keeps epoch 0 and is identical on every evaluation."""
        self.epoch = int(epoch)

    def num_clips(self, name: str) -> int:
        return len(self.subsets[self.names.index(name)])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get(index)

    def get(self, index: int, epoch: int | None = None) -> dict[str, Any]:
        """Item `index` as drawn in `epoch` (default: the epoch set with `set_epoch`)."""
        if not 0 <= index < self._len:
            raise IndexError(f"index {index} out of range for DatasetMix of length {self._len}")
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else int(epoch), int(index)])
        d = int(rng.choice(len(self.subsets), p=self.prob)) if len(self.subsets) > 1 else 0
        subset = self.subsets[d]
        camera = int(rng.choice(len(subset.camera_probs), p=subset.camera_probs))
        return self.clip(d, index % len(subset), camera)

    def frame_ids(self, dataset_index: int, clip_index: int) -> np.ndarray:
        subset = self.subsets[dataset_index]
        ann = subset.annotations[subset.ann_index[clip_index]]
        start = int(subset.starts[clip_index])
        if start < 0:
            return internet_frame_ids(ann.num_frames, self.sequence_length)
        return robot_frame_ids(start, ann.num_frames, self.sequence_length, subset.stride)

    def latent_path(self, dataset_index: int, ann: Annotation, camera: int) -> Path:
        subset = self.subsets[dataset_index]
        if subset.episode_latents:
            rel = f"latent_videos/{subset.split}/{ann.episode_id}/{camera}.pt"
        else:
            if camera >= len(ann.latent_paths):
                raise DatasetError(
                    f"{ann.path}: camera {camera} requested but only {len(ann.latent_paths)} latent_videos"
                )
            rel = ann.latent_paths[camera]
        return resolve_latent_path(subset.root, rel, self.rules.latent_fallback)

    def clip(self, dataset_index: int, clip_index: int, camera: int = 0) -> dict[str, Any]:
        """Deterministic access: clip `clip_index` of data set `dataset_index` seen from `camera`."""
        subset = self.subsets[dataset_index]
        ann = subset.annotations[subset.ann_index[clip_index]]
        ids = self.frame_ids(dataset_index, clip_index)
        path = self.latent_path(dataset_index, ann, camera)
        latent = load_latent(path, self.latent_shape)
        if ids.max() >= latent.shape[0]:
            raise DatasetError(
                f"{path}: latent has {latent.shape[0]} frames but annotation {ann.path} says {ann.num_frames} "
                f"(frame {int(ids.max())} requested); re-run step1_prepare_latent_data.py for this episode"
            )
        clip = latent[torch.from_numpy(ids)].contiguous()
        return {
            "text": ann.text,
            "latent": clip,
            "video": clip,
            "dataset": subset.name,
            "camera": camera,
            "frame_ids": torch.from_numpy(ids),
            "annotation": str(ann.path),
        }
