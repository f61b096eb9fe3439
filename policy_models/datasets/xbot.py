"""xbot-style custom-robot data (vpp_reference §9.2), read through the sample index of ``xbot_index.py``.

Inputs::

    {data_json_path}/{split}_all.json      [{"dataset_name", "ann_file", "episode_id", "frame_ids"}, ...]
    {data_json_path}/train_stats.json      policy_models.normalization.Stats (1st/99th percentiles)
    {data_root_path}/{dataset_name}/{ann_file}   annotation json: texts, states (T x D), actions (T x D),
                                                 latent_videos [{latent_video_path}], videos [{video_path}]

Per sample (``frame_ids`` = ids[:chunk]): the current state ``states[ids[0]]``; relative actions
``actions[ids] - current_state`` (or the rotation-composing variant recorded in the stats, see
``policy_models.normalization.relative_actions``), both normalised with the percentile bounds
(``2 (x - p1) / (p99 - p1 + 1e-8) - 1``, clipped to [-1, 1]); the observation of frame ids[0] for every camera, either
from the pre-encoded latents (``obs_source: latent``, (1, 4, 32, 32) scaled latents; the ``latent_videos_svd``
fallback of the original is kept) or decoded from the videos (``obs_source: pixels``, (1, 3, R, R) in [-1, 1]);
``lang_text`` = texts[0]. Statistics are required: a missing stats file is an error naming it.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policy_models.datasets.base import DatasetError, RobotDataset, preprocess_rgb
from policy_models.normalization import Stats, relative_actions

log = logging.getLogger(__name__)

OBS_SOURCES = ("latent", "pixels")


def load_stats(stats: Mapping[str, Any] | Stats | None, stats_path: str | Path | None, where: str) -> Stats:
    """Stats from an inline mapping (the original pasted the percentiles into the yaml) or a json file."""
    if isinstance(stats, Stats):
        return stats
    if stats:
        try:
            return Stats.from_dict(dict(stats), source=f"{where}: dataset.stats")
        except ValueError as exc:
            raise DatasetError(str(exc)) from None
    if not stats_path:
        raise DatasetError(f"{where}: normalisation statistics are required (dataset.stats_path pointing at the "
                           "train_stats.json written by step2_prepare_json.py, or inline dataset.stats)")
    try:
        return Stats.load(stats_path)
    except FileNotFoundError:
        raise DatasetError(f"normalisation statistics not found: {stats_path} (run step2_prepare_json.py to "
                           "write them, or set dataset.stats_path)") from None
    except ValueError as exc:
        raise DatasetError(str(exc)) from None


def _stats_source(stats: Mapping[str, Any] | Stats | None, stats_path: str | Path | None) -> str:
    """Where `load_stats` took the statistics from, so that a mismatch names the file (or the inline config) to fix."""
    if isinstance(stats, Stats):
        return "the statistics passed as dataset.stats"
    if stats:
        return "inline dataset.stats"
    return str(stats_path)


def _load_latent_file(path: Path) -> Any:
    """``torch.load`` of a latent file, memory-mapped where its format allows; an unreadable file (cut short by an
    interrupted copy, or something else saved under the name) is a DatasetError naming it, as in stage 1."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, unpickling and OS errors come in many types
        raise DatasetError(f"{path}: cannot load latent tensor: the file is truncated or not a saved latent tensor "
                           f"({type(exc).__name__}: {exc})") from exc


class _LRU:
    def __init__(self, size: int):
        self.size = max(1, size)
        self.data: OrderedDict = OrderedDict()

    def get(self, key, make):
        if key in self.data:
            self.data.move_to_end(key)
            return self.data[key]
        value = make()
        self.data[key] = value
        if len(self.data) > self.size:
            self.data.popitem(last=False)
        return value


class XbotDataset(RobotDataset):
    def __init__(
        self,
        data_json_path: str | Path | None,
        data_root_path: str | Path | None,
        split: str,
        *,
        cameras: Sequence[str] = ("rgb_static", "rgb_gripper", "rgb_gripper2"),
        camera_ids: Sequence[int] | None = None,
        action_seq_len: int = 8,
        action_dim: int = 38,
        state_dim: int = 38,
        stats: Mapping[str, Any] | Stats | None = None,
        stats_path: str | Path | None = None,
        obs_source: str = "latent",
        image_size: int | None = 256,
        cache_episodes: int = 32,
        latent_size: int | None = None,
    ):
        """`latent_size`: the spatial size h = w of the latents the policy expects (its resolution divided by the
        autoencoder's scale factor). Given, every latent file is checked against it, the first sample's at once, so
        latents encoded at another resolution fail here naming the file instead of inside the first training step."""
        if not data_json_path or not data_root_path:
            raise DatasetError("xbot dataset needs dataset.data_json_path (folder with {split}_all.json) and "
                               "dataset.data_root_path (folder holding the dataset folders)")
        if obs_source not in OBS_SOURCES:
            raise DatasetError(f"dataset.obs_source must be one of {OBS_SOURCES}, got {obs_source!r}")
        self.json_dir = Path(data_json_path)
        self.root = Path(data_root_path)
        self.split = split
        self.cameras = tuple(cameras)
        self.camera_ids = tuple(int(c) for c in camera_ids) if camera_ids is not None else tuple(range(len(cameras)))
        if len(self.camera_ids) != len(self.cameras):
            raise DatasetError(f"dataset.camera_ids {list(self.camera_ids)} must give one annotation camera index per "
                               f"camera {list(self.cameras)}")
        self.action_seq_len, self.action_dim, self.state_dim = int(action_seq_len), int(action_dim), int(state_dim)
        self.obs_source = obs_source
        self.image_size = image_size
        self.latent_size = None if latent_size is None else int(latent_size)
        index_path = self.json_dir / f"{split}_all.json"
        self.source = str(index_path)
        if not index_path.is_file():
            raise DatasetError(f"xbot sample index not found: {index_path} (run step2_prepare_json.py)")
        try:
            self.samples: list[dict[str, Any]] = json.loads(index_path.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{index_path}: not valid JSON ({exc})") from None
        if not isinstance(self.samples, list) or not self.samples:
            raise DatasetError(f"{index_path}: expected a non-empty list of samples")
        for key in ("dataset_name", "ann_file", "frame_ids"):
            if key not in self.samples[0]:
                raise DatasetError(f"{index_path}: samples lack field {key!r}")
        stats_path = stats_path if stats_path else self.json_dir / "train_stats.json"
        self.stats = load_stats(stats, stats_path, str(index_path))
        if self.stats.state_dim != self.state_dim or self.stats.action_dim != self.action_dim:
            raise DatasetError(f"{_stats_source(stats, stats_path)}: stats have state_dim {self.stats.state_dim} / "
                               f"action_dim {self.stats.action_dim}, the embodiment expects {self.state_dim} / "
                               f"{self.action_dim}")
        short = [i for i, s in enumerate(self.samples[:1000]) if len(s["frame_ids"]) < self.action_seq_len]
        if short:
            raise DatasetError(f"{index_path}: sample {short[0]} has {len(self.samples[short[0]]['frame_ids'])} "
                               f"frame ids, fewer than the action chunk {self.action_seq_len}")
        self._episodes = _LRU(cache_episodes)
        self._latents = _LRU(cache_episodes * len(self.cameras))
        if obs_source == "latent":
            self._check_first_latents()
        log.info("xbot %s: %d samples from %s, observations from %s", split, len(self.samples), index_path, obs_source)

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_episodes"] = _LRU(self._episodes.size)
        state["_latents"] = _LRU(self._latents.size)
        return state

    # -- file access -----------------------------------------------------------------------------------------------
    def _episode(self, dataset_name: str, ann_file: str) -> dict[str, Any]:
        def load():
            path = self.root / dataset_name / ann_file
            try:
                ann = json.loads(path.read_text())
            except FileNotFoundError:
                raise DatasetError(f"annotation file not found: {path}") from None
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}: not valid JSON ({exc})") from None
            out = {"path": path, "dir": self.root / dataset_name}
            for key in ("states", "actions"):
                if key not in ann:
                    raise DatasetError(f"{path}: missing field {key!r}")
                arr = np.asarray(ann[key], dtype=np.float64)
                if arr.ndim != 2 or arr.shape[1] != self.state_dim:
                    raise DatasetError(f"{path}: field {key!r} has shape {arr.shape}, expected (T, {self.state_dim})")
                out[key] = arr
            texts = ann.get("texts")
            if not isinstance(texts, list) or not texts:
                raise DatasetError(f"{path}: field 'texts' must be a non-empty list of strings")
            out["text"] = str(texts[0])
            field = "latent_videos" if self.obs_source == "latent" else "videos"
            entries = ann.get(field)
            key = "latent_video_path" if self.obs_source == "latent" else "video_path"
            if not isinstance(entries, list) or len(entries) <= max(self.camera_ids):
                raise DatasetError(f"{path}: field {field!r} must list at least {max(self.camera_ids) + 1} cameras "
                                   f"(camera_ids {list(self.camera_ids)})")
            try:
                out["obs_files"] = [entries[c][key] for c in self.camera_ids]
            except (KeyError, TypeError):
                raise DatasetError(f"{path}: entries of {field!r} must be objects with {key!r}") from None
            return out

        return self._episodes.get((dataset_name, ann_file), load)

    def _check_first_latents(self) -> None:
        """Open the first sample's latent files now (not cached: the workers open their own), so unreadable files
        or latents of the wrong shape fail at construction."""
        s = self.samples[0]
        ep = self._episode(s["dataset_name"], s["ann_file"])
        for rel in ep["obs_files"]:
            self._open_latent(ep, rel)

    def _open_latent(self, ep: dict[str, Any], rel: str) -> torch.Tensor:
        """The (T, 4, h, w) latents of one camera, from ``latent_videos`` or the original's ``latent_videos_svd``."""
        cands = [ep["dir"] / rel, ep["dir"] / rel.replace("latent_videos", "latent_videos_svd", 1)]
        for c in cands:
            if c.is_file():
                return self._check_latent(_load_latent_file(c), c)
        raise DatasetError(f"{ep['path']}: latent file not found: {cands[0]} (nor {cands[1]})")

    def _check_latent(self, lat: Any, path: Path) -> torch.Tensor:
        if not isinstance(lat, torch.Tensor) or lat.ndim != 4 or lat.shape[1] != 4:
            raise DatasetError(f"{path}: expected a (T, 4, h, w) latent tensor, got "
                               f"{tuple(lat.shape) if isinstance(lat, torch.Tensor) else type(lat).__name__}")
        if self.latent_size is not None and tuple(lat.shape[2:]) != (self.latent_size, self.latent_size):
            raise DatasetError(f"{path}: latents are {lat.shape[2]}x{lat.shape[3]}, the policy expects "
                               f"{self.latent_size}x{self.latent_size} (its resolution / the autoencoder's scale "
                               "factor); re-encode the videos with step1_prepare_latent_data.py at the policy's "
                               "resolution")
        return lat

    def _latent(self, ep: dict[str, Any], rel: str, frame: int) -> torch.Tensor:
        lat = self._latents.get(str(ep["dir"] / rel), lambda: self._open_latent(ep, rel))
        if frame >= lat.shape[0]:
            raise DatasetError(f"{ep['dir'] / rel}: frame {frame} out of range ({lat.shape[0]} frames)")
        return lat[frame : frame + 1].float().clone()

    def _pixels(self, ep: dict[str, Any], rel: str, frame: int) -> torch.Tensor:
        from vpp_core.video_io import VideoReadError, read_video

        try:
            frames = read_video(ep["dir"] / rel, indices=[frame])
        except VideoReadError as exc:
            raise DatasetError(f"{ep['path']}: {exc}") from None
        return preprocess_rgb(frames, self.image_size)

    # -- samples ---------------------------------------------------------------------------------------------------
    def load_sample(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        ep = self._episode(s["dataset_name"], s["ann_file"])
        ids = np.asarray(s["frame_ids"][: self.action_seq_len], dtype=np.int64)
        if ids.max() >= len(ep["states"]) or ids.max() >= len(ep["actions"]):
            raise DatasetError(f"{ep['path']}: frame ids {ids.tolist()} exceed the {len(ep['states'])} recorded rows")
        cur = ep["states"][ids[0] : ids[0] + 1]  # (1, D)
        rel = relative_actions(ep["actions"][ids], cur, self.stats.relative_mode, self.stats.quat_order,
                               self.stats.pose_slices)
        actions = self.stats.normalize_action(rel).astype(np.float32)
        state = self.stats.normalize_state(cur).astype(np.float32)
        load = self._latent if self.obs_source == "latent" else self._pixels
        rgb_obs = {cam: load(ep, rel_path, int(ids[0])) for cam, rel_path in zip(self.cameras, ep["obs_files"])}
        return {
            "rgb_obs": rgb_obs,
            "lang_text": ep["text"],
            "actions": torch.from_numpy(actions),
            "state_obs": torch.from_numpy(state),
        }
