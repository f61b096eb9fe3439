"""What every stage-2 dataset shares: the sample format, image preprocessing, errors, collation and the builder.

A sample (one item of any dataset here) is::

    {"rgb_obs":   {camera: (1, 3, R, R) float32 in [-1, 1]   or   (1, 4, h, w) float32 pre-encoded latents},
     "lang_text": str,
     "actions":   (T, A) float32,            # T = action chunk length (CALVIN 10, xbot 8)
     "state_obs": (1, S) float32,            # only embodiments with proprioception (xbot)
     "idx":       int}                       # position in the dataset (used by validation bookkeeping)

:func:`collate_samples` stacks samples into the batch the policy's ``compute_loss`` consumes (same keys, a leading
batch dimension, ``lang_text`` a list of strings). Embodiments differ by config and by the dataset class that reads
their files (CALVIN npz / packed arrays, xbot json + latents); the built-in simulator writes the CALVIN format and is
read by the CALVIN dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate


class DatasetError(ValueError):
    """Bad or missing training data; the message names the file (and key/field) and, where possible, the fix."""


def preprocess_rgb(frames: np.ndarray | torch.Tensor, size: int | None) -> torch.Tensor:
    """uint8 RGB frames (T, H, W, 3) or (H, W, 3) -> float32 (T, 3, size, size) in [-1, 1].

    Reproduces the original CALVIN transform chain ``Resize(size, antialias=True)`` on a uint8 tensor (torchvision
    interpolates in float, rounds and casts back to uint8), then ``/255`` and ``Normalize(0.5, 0.5)``. Bilinear,
    antialiased, ``align_corners=False``. ``size=None`` keeps the input resolution. Images are resized to a square
    (CALVIN's 200x200 and 84x84 cameras are square already; the video model needs square inputs).
    """
    x = torch.as_tensor(frames)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB frames (T, H, W, 3), got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 RGB frames, got dtype {x.dtype}")
    x = x.permute(0, 3, 1, 2).float()
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        x = x.round_().clamp_(0.0, 255.0)
    return (x / 255.0 - 0.5) / 0.5


class RobotDataset(Dataset):
    """Base class: subclasses fill ``cameras``, ``action_seq_len``, ``action_dim``, ``state_dim`` and implement
    ``__len__`` and ``load_sample(i)``. ``__getitem__`` adds ``idx`` and checks the sample once (first item) so a
    dataset/config mismatch fails with a clear message instead of a shape error deep in the model."""

    cameras: tuple[str, ...] = ()
    action_seq_len: int = 0
    action_dim: int = 0
    state_dim: int = 0
    source: str = "?"  # folder/file the data comes from, for messages

    _checked = False

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_sample(self, i: int) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {type(self).__name__} of length {len(self)}")
        sample = self.load_sample(i)
        sample["idx"] = i
        if not self._checked:
            self.check_sample(sample)
            self._checked = True
        return sample

    def check_sample(self, sample: Mapping[str, Any]) -> None:
        where = f"{type(self).__name__} ({self.source})"
        missing = [k for k in ("rgb_obs", "lang_text", "actions") if k not in sample]
        if missing:
            raise DatasetError(f"{where}: sample lacks {missing}")
        cams = list(sample["rgb_obs"])
        if cams != list(self.cameras):
            raise DatasetError(f"{where}: sample cameras {cams} != configured {list(self.cameras)}")
        for cam, img in sample["rgb_obs"].items():
            if img.ndim != 4 or img.shape[1] not in (3, 4):
                raise DatasetError(f"{where}: camera {cam!r} tensor has shape {tuple(img.shape)}, expected "
                                   "(1, 3, H, W) pixels or (1, 4, h, w) latents")
        shape = tuple(sample["actions"].shape)
        if shape != (self.action_seq_len, self.action_dim):
            raise DatasetError(f"{where}: actions have shape {shape}, "
                               f"expected ({self.action_seq_len}, {self.action_dim})")
        if self.state_dim:
            st = sample.get("state_obs")
            if st is None or tuple(st.shape) != (1, self.state_dim):
                raise DatasetError(f"{where}: state_obs has shape {None if st is None else tuple(st.shape)}, "
                                   f"expected (1, {self.state_dim})")

    def describe(self) -> str:
        return f"{type(self).__name__}: {len(self)} samples from {self.source}"


def collate_samples(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch: tensors get a leading batch dim, ``lang_text`` becomes a list of strings, ``idx`` a
    (B,) int64 tensor. Keys other than the standard ones are collated with torch's default rules."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    batch = default_collate(list(samples))
    batch["lang_text"] = [s["lang_text"] for s in samples]
    return batch


def _resolve_int(value: Any, fallback: int | None, name: str) -> int:
    if value is None:
        if fallback is None:
            raise DatasetError(f"dataset config lacks '{name}' and the embodiment does not provide it")
        return int(fallback)
    return int(value)


# the split folder of a CALVIN-format root: the dataset-block key that names it, and its default
_CALVIN_SPLIT_KEYS = {"train": ("train_folder", "training"), "val": ("val_folder", "validation")}


def _calvin_split_dir(cfg: Mapping[str, Any], split: str) -> Path:
    """``{root_data_dir}/{train_folder | val_folder}`` of a CALVIN-format ``dataset:`` block (a plain mapping)."""
    root = cfg.get("root_data_dir")
    if not root:
        raise DatasetError("dataset.root_data_dir is not set (pass --root_data_dir D or dataset.root_data_dir=D)")
    return Path(root) / cfg.get(*_CALVIN_SPLIT_KEYS[split])


def check_dataset_folders(cfg: Mapping[str, Any], splits: Sequence[str]) -> None:
    """Check that the folders a ``dataset:`` block names exist, for each split in `splits` ("train", "val"); raises
    DatasetError naming the missing one. The trainer calls it before loading the frozen video model, which takes
    minutes at full size, so that a misspelt data path fails at once."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    kind = cfg.get("type", "calvin")
    if kind in ("calvin", "sim"):
        folders = {f"dataset.{_CALVIN_SPLIT_KEYS[s][0]}": _calvin_split_dir(cfg, s) for s in splits}
    elif kind == "xbot":
        folders = {f"dataset.{key}": Path(cfg[key]) for key in ("data_json_path", "data_root_path") if cfg.get(key)}
    else:
        return  # build_dataset names the unknown type
    for key, folder in folders.items():
        if not folder.is_dir():
            raise DatasetError(f"data folder not found: {folder} (from {key} of the dataset block)")


def build_dataset(
    cfg: Mapping[str, Any],
    split: str,
    *,
    cameras: Sequence[str] | None = None,
    action_seq_len: int | None = None,
    action_dim: int | None = None,
    state_dim: int | None = None,
    image_size: int | None = None,
    vae: Callable[[], Any] | None = None,
    latent_size: int | None = None,
) -> RobotDataset:
    """Build the dataset described by a ``dataset:`` config block for ``split`` ("train" or "val").

    Keyword arguments are the embodiment's values (from the policy) and fill config keys left null, so one yaml
    block serves both the full and the tiny model. `vae` returns the policy's autoencoder identity
    (``vae_latents.VaeIdentity``), which precomputed CALVIN latents must match; `latent_size`, the policy's latent
    height and width, which xbot latent files must have.
    """
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    cfg = dict(cfg)
    kind = cfg.get("type", "calvin")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    cams = cfg.get("cameras") or cameras
    if not cams:
        raise DatasetError("dataset config lacks 'cameras' and the embodiment does not provide them")
    chunk = _resolve_int(cfg.get("action_seq_len"), action_seq_len, "action_seq_len")
    adim = _resolve_int(cfg.get("action_dim"), action_dim, "action_dim")
    size = cfg.get("image_size") or image_size
    if kind in ("calvin", "sim"):
        from policy_models.datasets.calvin import CalvinDataset

        return CalvinDataset(
            _calvin_split_dir(cfg, split),
            cameras=tuple(cams),
            action_seq_len=chunk,
            action_dim=adim,
            obs_seq_len=int(cfg.get("obs_seq_len", 1)),
            min_window_size=int(cfg.get("min_window_size", 21)),
            skip_frames=int(cfg.get("skip_frames", 1)),
            lang_folder=cfg.get("lang_folder", "lang_annotations"),
            image_size=None if size is None else int(size),
            data_format=cfg.get("data_format", "auto"),
            action_key=cfg.get("action_key", "rel_actions"),
            vae_latents=cfg.get("vae_latents", "auto"),
            vae=vae,
        )
    if kind == "xbot":
        from policy_models.datasets.xbot import XbotDataset

        sdim = _resolve_int(cfg.get("state_dim"), state_dim, "state_dim")
        return XbotDataset(
            data_json_path=cfg.get("data_json_path"),
            data_root_path=cfg.get("data_root_path"),
            split=split,
            cameras=tuple(cams),
            camera_ids=cfg.get("camera_ids"),
            action_seq_len=chunk,
            action_dim=adim,
            state_dim=sdim,
            stats=cfg.get("stats"),
            stats_path=cfg.get("stats_path"),
            obs_source=cfg.get("obs_source", "latent"),
            image_size=None if size is None else int(size),
            cache_episodes=int(cfg.get("cache_episodes", 32)),
            latent_size=latent_size,
        )
    raise DatasetError(f"unknown dataset.type {kind!r}; expected 'calvin', 'sim' or 'xbot'")
