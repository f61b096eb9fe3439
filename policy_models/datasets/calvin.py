"""CALVIN training data (vpp_reference §7, calvin_reference §5), also used for the built-in simulator's recordings.

On disk, per split folder (``training/``, ``validation/``)::

    episode_0000000.npz ...          one file per frame; keys rel_actions (7,), rgb_static (200,200,3) uint8,
                                     rgb_gripper (84,84,3) uint8, robot_obs, scene_obs, actions, depth_*, ...
    lang_annotations/auto_lang_ann.npy   pickled dict: info.indx [(start, end)] inclusive frame ids of annotated
                                     segments, language.ann [instruction per segment] (other lang_* folders hold the
                                     same annotations with other embeddings)
    ep_start_end_ids.npy             optional, (n, 2) inclusive [start, end] frame ids of the recorded episodes; when
                                     present, segments that cross an episode's bounds are reported (a warning)
    packed/                          optional, written by ``python -m policy_models.datasets.pack_calvin``
    vae_latents/                     optional, written by ``python -m policy_models.datasets.encode_latents``: the
                                     camera frames' VAE latents, served instead of the images (``vae_latents``)

Samples (the original ``ExtendedDiskDataset`` in language mode): for every annotated segment ``(start, end)`` and every
start frame ``idx`` in ``range(start, end + 1 - min_window_size, skip_frames)`` (min_window_size 21: the last start is
``end - 21``), the frames ``idx .. idx + action_seq_len + obs_seq_len - 2`` are read; ``actions`` are the
``rel_actions`` of the ``action_seq_len`` frames from ``idx + obs_seq_len - 1`` (unnormalised: CALVIN's relative
actions are already scaled to [-1, 1]), the images are the first ``obs_seq_len`` frames of each camera, resized and
scaled to [-1, 1], and ``lang_text`` is the segment's instruction. The original drew a random window size and then
ignored it; that draw is not reproduced (it has no effect on the samples).

Security note: ``auto_lang_ann.npy`` is a *pickled* Python dict (the CALVIN format), so it is read with
``np.load(allow_pickle=True)``, which can execute code embedded in the file. Only read annotation files from a trusted
source (the official CALVIN release, the built-in simulator, or your own recordings). The per-frame ``.npz`` files and
the packed arrays are read without pickle.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policy_models.datasets.base import DatasetError, RobotDataset, preprocess_rgb
from policy_models.datasets.frame_arrays import FRAME_ARRAYS_INDEX, FrameArrays
from policy_models.datasets.vae_latents import (
    LATENT_MODES,
    LATENTS_INDEX,
    LatentFrames,
    VaeIdentity,
    latents_folder,
)

log = logging.getLogger(__name__)

LANG_FILE = "auto_lang_ann.npy"
DEFAULT_LANG_FOLDER = "lang_annotations"
ORIGINAL_LANG_FOLDER = "lang_clip_resnet50"  # policy_conf/VPP_Calvinabc_train.yaml, as in the original
EPISODES_FILE = "ep_start_end_ids.npy"
PACKED_DIR = "packed"
PACKED_INDEX = FRAME_ARRAYS_INDEX
PACKED_VERSION = 1
DATA_FORMATS = ("auto", "packed", "npz")


# ----------------------------------------------------------------------------------------------------------------------
# file naming and annotations


@dataclass(frozen=True)
class EpisodeNaming:
    """How frame files are named: ``{prefix}{frame:0{digits}d}{suffix}`` (CALVIN: ``episode_``, 7, ``.npz``)."""

    prefix: str
    digits: int
    suffix: str = ".npz"

    def path(self, folder: Path, frame: int) -> Path:
        return folder / f"{self.prefix}{int(frame):0{self.digits}d}{self.suffix}"


def discover_naming(folder: str | Path, suffix: str = ".npz") -> EpisodeNaming:
    """Find the frame-file naming from the first ``*.npz`` in ``folder`` (as the original does, via scandir: no full
    listing of a 1.8 M-file folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"CALVIN split folder not found: {folder} (expected <root>/training and <root>/validation)")
    with os.scandir(folder) as it:
        for entry in it:
            name = entry.name
            if name.endswith(suffix) and entry.is_file():
                stem = name[: -len(suffix)]
                m = re.fullmatch(r"(.*?)(\d+)", stem)
                if m is None:
                    continue
                return EpisodeNaming(prefix=m.group(1), digits=len(m.group(2)), suffix=suffix)
    raise DatasetError(f"no frame files '*{suffix}' (e.g. episode_0000000.npz) found in {folder}")


def find_lang_file(folder: Path, lang_folder: str | None) -> Path:
    """``{folder}/{lang_folder}/auto_lang_ann.npy``.

    A folder named explicitly must hold the file: a typo is an error naming the path, never other annotations read
    silently. Fallbacks are kept only for the defaults: ``lang_annotations`` (or None) falls back to the split folder
    itself, as the original does; ``lang_clip_resnet50``, the original training config's folder, also falls back to
    ``lang_annotations/`` (the annotations are identical across CALVIN's ``lang_*`` folders, only the embeddings this
    loader does not read differ), so that config runs on the synthetic and simulator data, which have only
    ``lang_annotations/``."""
    if not lang_folder or lang_folder in (DEFAULT_LANG_FOLDER, ORIGINAL_LANG_FOLDER):
        subs = [lang_folder, DEFAULT_LANG_FOLDER, None] if lang_folder else [DEFAULT_LANG_FOLDER, None]
        candidates = list(dict.fromkeys(folder / sub / LANG_FILE if sub else folder / LANG_FILE for sub in subs))
        for p in candidates:
            if p.is_file():
                if p != candidates[0]:
                    log.info("language annotations: %s not found, using %s", candidates[0], p)
                return p
        raise DatasetError(f"language annotations not found: tried {[str(c) for c in candidates]}")
    path = folder / lang_folder / LANG_FILE
    if not path.is_file():
        hint = f"; {DEFAULT_LANG_FOLDER}/ has them" if (folder / DEFAULT_LANG_FOLDER / LANG_FILE).is_file() else ""
        raise DatasetError(f"language annotations not found: {path} (dataset.lang_folder={lang_folder!r} was asked "
                           f"for explicitly{hint})")
    return path


def load_lang_annotations(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Read ``auto_lang_ann.npy`` -> (segments (N, 2) int64 inclusive [start, end], instructions list[str]).

    Uses ``np.load(allow_pickle=True)`` because the CALVIN file is a pickled dict: trusted data only (module doc).
    """
    path = Path(path)
    try:
        obj = np.load(path, allow_pickle=True)
        data = obj.item() if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == () else obj
    except Exception as exc:
        raise DatasetError(f"cannot read language annotations {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a pickled dict with 'info' and 'language', got {type(data).__name__}")
    try:
        indx = data["info"]["indx"]
        ann = data["language"]["ann"]
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: missing field {exc} (need info.indx and language.ann)") from None
    try:
        segments = np.asarray(indx, dtype=np.int64).reshape(-1, 2)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: info.indx must be a list of (start, end) pairs ({exc})") from None
    if len(segments) != len(indx):
        raise DatasetError(f"{path}: info.indx must be a list of (start, end) pairs")
    ann = [_instruction(a, path, i) for i, a in enumerate(ann)]
    if len(ann) != len(segments):
        raise DatasetError(f"{path}: language.ann has {len(ann)} entries but info.indx has {len(segments)}")
    if len(segments) == 0:
        raise DatasetError(f"{path}: no annotated segments")
    bad = np.nonzero(segments[:, 1] < segments[:, 0])[0]
    if bad.size:
        raise DatasetError(f"{path}: segment {int(bad[0])} has end < start: {segments[bad[0]].tolist()}")
    return segments, ann


def _instruction(value: Any, path: Path, i: int) -> str:
    """One ``language.ann`` entry as text: files written under Python 2 or by other tools hold bytes, which str()
    would turn into the literal "b'...'"."""
    if isinstance(value, bytes | np.bytes_):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{path}: language.ann[{i}] is bytes that are not UTF-8 text ({exc})") from None
    return str(value)


def load_episode_bounds(split_dir: Path) -> np.ndarray | None:
    """The (n, 2) inclusive [start, end] frame ids of the recorded episodes from ``ep_start_end_ids.npy``, or None
    where the split has no such file (CALVIN ships it; other recordings may not)."""
    path = split_dir / EPISODES_FILE
    if not path.is_file():
        return None
    try:
        bounds = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"cannot read episode bounds {path}: {type(exc).__name__}: {exc}") from exc
    if bounds.ndim != 2 or bounds.shape[1] != 2 or not np.issubdtype(bounds.dtype, np.integer):
        raise DatasetError(f"{path}: expected an (n, 2) integer array of inclusive [start, end] frame ids, got "
                           f"{bounds.dtype} {bounds.shape}")
    return bounds.astype(np.int64)


def check_segments_in_episodes(segments: np.ndarray, bounds: np.ndarray, lang_path: Path, bounds_path: Path) -> None:
    """Warn about annotated segments that do not lie inside one recorded episode: their windows join the end of one
    recording to the start of another. A warning, not an error: the original trained on such windows without looking
    at the bounds, and refusing a split of CALVIN's own release would block reproducing its numbers."""
    ep = bounds[np.argsort(bounds[:, 0], kind="stable")]
    k = np.searchsorted(ep[:, 0], segments[:, 0], side="right") - 1
    inside = (k >= 0) & (segments[:, 1] <= ep[np.maximum(k, 0), 1])
    if inside.all():
        return
    bad = np.nonzero(~inside)[0]
    start, end = segments[bad[0]].tolist()
    touched = ep[(ep[:, 0] <= end) & (ep[:, 1] >= start)].tolist()
    log.warning("%s: segment %d [%d, %d] is not inside one episode of %s (episode bounds it touches: %s); %d of %d "
                "segments cross episode boundaries, and their windows span two episodes", lang_path, int(bad[0]),
                start, end, bounds_path, touched or "none", len(bad), len(segments))


def build_window_index(
    segments: np.ndarray, min_window_size: int, skip_frames: int = 1, source: str = "annotations"
) -> tuple[np.ndarray, np.ndarray]:
    """Start frame and segment id of every sample: ``range(start, end + 1 - min_window_size, skip_frames)`` per segment
    (the original's language-mode index). A segment too short for one window is an error naming the segment."""
    if min_window_size < 1 or skip_frames < 1:
        raise ValueError("min_window_size and skip_frames must be >= 1")
    starts, segs = [], []
    for i, (start, end) in enumerate(np.asarray(segments, dtype=np.int64)):
        s = np.arange(start, end + 1 - min_window_size, skip_frames, dtype=np.int64)
        if s.size == 0:
            raise DatasetError(
                f"{source}: segment {i} [{start}, {end}] has {end - start + 1} frames, fewer than one window of "
                f"min_window_size+1 = {min_window_size + 1} frames; remove it or lower dataset.min_window_size"
            )
        starts.append(s)
        segs.append(np.full(s.size, i, dtype=np.int64))
    return np.concatenate(starts), np.concatenate(segs)


def annotated_frames(segments: np.ndarray) -> np.ndarray:
    """Sorted unique frame ids covered by the annotated segments (inclusive ranges)."""
    spans = [np.arange(s, e + 1, dtype=np.int64) for s, e in np.asarray(segments, dtype=np.int64)]
    return np.unique(np.concatenate(spans))


# ----------------------------------------------------------------------------------------------------------------------
# frame sources


def _check_image(arr: np.ndarray, key: str, where: str) -> np.ndarray:
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise DatasetError(f"{where}: key {key!r} has shape {arr.shape} dtype {arr.dtype}, expected (H, W, 3) uint8")
    return arr


def _check_vector(arr: np.ndarray, key: str, dim: int, where: str) -> np.ndarray:
    if arr.shape != (dim,):
        raise DatasetError(f"{where}: key {key!r} has shape {arr.shape}, expected ({dim},)")
    return arr


class NpzFrames:
    """Reads frames from the per-frame ``episode_XXXXXXX.npz`` files (only the keys needed are decompressed)."""

    kind = "npz"

    def __init__(self, folder: Path, naming: EpisodeNaming):
        self.folder = folder
        self.naming = naming

    def describe(self) -> str:
        return f"per-frame npz files in {self.folder}"

    def open(self, frame: int):
        path = self.naming.path(self.folder, frame)
        try:
            return path, np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise DatasetError(f"frame file not found: {path} (needed by an annotated segment)") from None
        except Exception as exc:
            raise DatasetError(f"cannot read frame file {path}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def get(z, key: str, path: Path) -> np.ndarray:
        if key not in z.files:
            raise DatasetError(f"{path}: missing key {key!r} (present: {sorted(z.files)})")
        try:
            return z[key]
        except Exception as exc:
            raise DatasetError(f"{path}: cannot decode key {key!r}: {type(exc).__name__}: {exc}") from exc

    def read_window(self, frames: np.ndarray, n_obs: int, cameras: Sequence[str], action_key: str, action_dim: int):
        images: dict[str, list[np.ndarray]] = {c: [] for c in cameras}
        paths = []
        actions = np.empty((len(frames), action_dim), dtype=np.float32)
        for k, f in enumerate(frames):
            path, z = self.open(int(f))
            with z:
                if k < n_obs:
                    paths.append(path)
                    for cam in cameras:
                        images[cam].append(_check_image(self.get(z, cam, path), cam, str(path)))
                actions[k] = _check_vector(self.get(z, action_key, path), action_key, action_dim, str(path))
        return {c: self._stack(v, paths, c) for c, v in images.items()}, actions

    def _stack(self, images: list[np.ndarray], paths: list[Path], key: str) -> np.ndarray:
        """One camera's frames as one array; frames of different sizes are an error naming two of the files (as
        pack_calvin reports them), not numpy's bare shape error."""
        odd = [k for k, a in enumerate(images) if a.shape != images[0].shape]
        if odd:
            k = odd[0]
            raise DatasetError(f"{self.folder}: key {key!r} has inconsistent shapes "
                               f"{sorted({a.shape for a in images})}: {paths[0]} has {images[0].shape}, {paths[k]} "
                               f"has {images[k].shape}; every frame of a split needs the same image size")
        return np.stack(images)

    def check_frame(self, frame: int, cameras: Sequence[str], action_key: str, action_dim: int) -> None:
        path, z = self.open(frame)
        with z:
            for cam in cameras:
                _check_image(self.get(z, cam, path), cam, str(path))
            _check_vector(self.get(z, action_key, path), action_key, action_dim, str(path))

    def has_frames(self, frames: np.ndarray) -> np.ndarray:
        return np.array([self.naming.path(self.folder, int(f)).is_file() for f in frames], dtype=bool)


class PackedFrames(FrameArrays):
    """Reads frames from the contiguous memory-mapped arrays written by ``pack_calvin`` (``<split>/packed/``)."""

    kind = "packed"

    def __init__(self, folder: Path):
        super().__init__(folder, PACKED_VERSION, "pack_calvin")
        self.keys: dict[str, dict[str, Any]] = self.index["keys"]

    def describe(self) -> str:
        return f"packed arrays in {self.folder} ({len(self.frame_ids)} frames, keys {sorted(self.keys)})"

    def array(self, key: str) -> np.ndarray:
        if key not in self.keys:
            raise DatasetError(f"{self.folder}: key {key!r} was not packed (packed keys: {sorted(self.keys)}); "
                               f"re-run pack_calvin with --keys including {key} or use dataset.data_format=npz")
        return self._open(key, self.keys[key])

    def rows(self, frames: np.ndarray) -> np.ndarray:
        rows, ok = self.lookup(frames)
        if not ok.all():
            missing = np.asarray(frames)[~ok]
            raise DatasetError(f"{self.folder}: frames {missing[:5].tolist()} are not in the packed arrays; re-run "
                               "pack_calvin --overwrite (the annotations changed?) or use dataset.data_format=npz")
        return rows

    def read_window(self, frames: np.ndarray, n_obs: int, cameras: Sequence[str], action_key: str, action_dim: int):
        rows = self.rows(frames)
        images = {}
        for cam in cameras:
            arr = self.array(cam)
            images[cam] = _check_image(np.array(arr[rows[0]]), cam, str(self.folder))[None] if n_obs == 1 else \
                np.stack([_check_image(np.array(arr[r]), cam, str(self.folder)) for r in rows[:n_obs]])
        acts = self.array(action_key)
        if acts.ndim != 2 or acts.shape[1] != action_dim:
            raise DatasetError(f"{self.folder}: packed {action_key!r} has shape {acts.shape}, "
                               f"expected (N, {action_dim})")
        if rows[-1] - rows[0] == len(rows) - 1:  # contiguous: one slice
            actions = np.array(acts[rows[0] : rows[-1] + 1], dtype=np.float32)
        else:
            actions = np.array(acts[rows], dtype=np.float32)
        return images, actions

    def check_frame(self, frame: int, cameras: Sequence[str], action_key: str, action_dim: int) -> None:
        self.read_window(np.array([frame]), 1, cameras, action_key, action_dim)


def packed_folder(split_dir: Path) -> Path:
    return split_dir / PACKED_DIR


def open_frame_source(split_dir: Path, data_format: str = "auto") -> NpzFrames | PackedFrames:
    """Packed arrays when present (``auto``) or requested (``packed``), else the per-frame npz files."""
    if data_format not in DATA_FORMATS:
        raise DatasetError(f"dataset.data_format must be one of {DATA_FORMATS}, got {data_format!r}")
    pdir = packed_folder(split_dir)
    if data_format in ("auto", "packed") and (pdir / PACKED_INDEX).is_file():
        return PackedFrames(pdir)
    if data_format == "packed":
        raise DatasetError(f"dataset.data_format=packed but {pdir / PACKED_INDEX} does not exist; run "
                           f"python -m policy_models.datasets.pack_calvin --root {split_dir.parent}")
    if not split_dir.is_dir():
        raise DatasetError(f"CALVIN split folder not found: {split_dir} "
                           "(expected <root>/training and <root>/validation)")
    return NpzFrames(split_dir, discover_naming(split_dir))


# ----------------------------------------------------------------------------------------------------------------------
# the dataset


class CalvinDataset(RobotDataset):
    """Language-annotated CALVIN windows (see the module docstring)."""

    def __init__(
        self,
        split_dir: str | Path,
        *,
        cameras: Sequence[str] = ("rgb_static", "rgb_gripper"),
        action_seq_len: int = 10,
        action_dim: int = 7,
        obs_seq_len: int = 1,
        min_window_size: int = 21,
        skip_frames: int = 1,
        lang_folder: str | None = "lang_annotations",
        image_size: int | None = 256,
        data_format: str = "auto",
        action_key: str = "rel_actions",
        vae_latents: str | bool = "off",
        vae: Callable[[], VaeIdentity] | None = None,
    ):
        """`vae_latents`: "auto" serves the precomputed latents of `<split>/vae_latents/` when that folder exists,
        "on" requires them, "off" serves images. `vae` gives the policy's autoencoder identity, which the latents must
        match (called only when they are used)."""
        self.split_dir = Path(split_dir)
        self.cameras = tuple(cameras)
        self.action_seq_len = int(action_seq_len)
        self.action_dim = int(action_dim)
        self.state_dim = 0
        self.obs_seq_len = int(obs_seq_len)
        self.image_size = image_size
        self.action_key = action_key
        if self.obs_seq_len < 1 or self.action_seq_len < 1:
            raise ValueError("obs_seq_len and action_seq_len must be >= 1")
        self.window_len = self.action_seq_len + self.obs_seq_len - 1
        if min_window_size < self.window_len:
            raise DatasetError(f"min_window_size {min_window_size} is shorter than the frames one sample reads "
                               f"({self.window_len}); windows would run past their segment")
        if not self.split_dir.is_dir():
            raise DatasetError(f"CALVIN split folder not found: {self.split_dir}")
        self.lang_path = find_lang_file(self.split_dir, lang_folder)
        self.segments, self.instructions = load_lang_annotations(self.lang_path)
        self.episode_lookup, self.lang_lookup = build_window_index(
            self.segments, min_window_size, skip_frames, source=str(self.lang_path))
        self.frames = open_frame_source(self.split_dir, data_format)
        self.latents = self._open_latents(vae_latents, vae)
        self.source = str(self.split_dir)
        log.info("CALVIN %s: %d windows from %d segments, reading %s", self.split_dir.name, len(self.episode_lookup),
                 len(self.segments), self.frames.describe())
        if self.frames.kind == "npz":
            log.info("CALVIN %s: tip: python -m policy_models.datasets.pack_calvin --root %s packs the frames into "
                     "memory-mapped arrays for much faster loading", self.split_dir.name, self.split_dir.parent)
        if self.latents is not None:
            log.info("CALVIN %s: camera inputs from %s", self.split_dir.name, self.latents.describe())
        self._check_files()

    @property
    def data_format(self) -> str:
        return self.frames.kind

    def _open_latents(self, mode: str | bool, vae: Callable[[], VaeIdentity] | None) -> LatentFrames | None:
        if isinstance(mode, bool):  # yaml reads on / off as booleans
            mode = "on" if mode else "off"
        if mode not in LATENT_MODES:
            raise DatasetError(f"dataset.vae_latents must be one of {LATENT_MODES}, got {mode!r}")
        folder = latents_folder(self.split_dir)
        present = (folder / LATENTS_INDEX).is_file()
        if mode == "off" or (mode == "auto" and not present):
            return None
        if not present:
            raise DatasetError(f"dataset.vae_latents=on but {folder / LATENTS_INDEX} does not exist; run python -m "
                               f"policy_models.datasets.encode_latents --root {self.split_dir.parent} "
                               "--video_model_path V")
        if vae is None:
            raise DatasetError(f"{folder}: latents can only be used with the policy's video model at hand, to check "
                               "that they were made by it; pass `vae` or set dataset.vae_latents=off")
        return LatentFrames(folder, vae(), self.cameras)

    def _check_files(self) -> None:
        """Cheap up-front checks: the first and last frame of every segment's windows exist, the first frame has
        the expected keys and shapes (so a wrong dataset fails now, naming the file, not hours into training); where
        the split has ``ep_start_end_ids.npy``, segments across episodes are reported."""
        first = self.episode_lookup
        change = np.nonzero(np.diff(self.lang_lookup))[0]
        seg_first = first[np.r_[0, change + 1]]
        seg_last = first[np.r_[change, len(first) - 1]] + self.window_len - 1
        frames = np.unique(np.concatenate([seg_first, seg_last]))
        have = self.frames.has_frames(frames)
        if not have.all():
            miss = frames[~have][:5].tolist()
            if self.frames.kind == "npz":
                names = [str(self.frames.naming.path(self.split_dir, f)) for f in miss]
                raise DatasetError(f"{self.lang_path}: annotated frames are missing on disk, e.g. {names}")
            raise DatasetError(f"{self.frames.folder}: packed arrays lack annotated frames {miss}; re-run "
                               "pack_calvin --overwrite or use dataset.data_format=npz")
        self.frames.check_frame(int(first[0]), self.cameras, self.action_key, self.action_dim)
        bounds = load_episode_bounds(self.split_dir)
        if bounds is not None:
            check_segments_in_episodes(self.segments, bounds, self.lang_path, self.split_dir / EPISODES_FILE)
        if self.latents is not None:
            have = self.latents.has_frames(frames)
            if not have.all():
                raise DatasetError(f"{self.latents.folder}: annotated frames {frames[~have][:5].tolist()} have no "
                                   "latents; re-run encode_latents or set dataset.vae_latents=off")

    def __len__(self) -> int:
        return len(self.episode_lookup)

    def window_frames(self, i: int) -> np.ndarray:
        start = int(self.episode_lookup[i])
        return np.arange(start, start + self.window_len, dtype=np.int64)

    def load_sample(self, i: int) -> dict[str, Any]:
        frames = self.window_frames(i)
        if self.latents is not None:
            _, actions = self.frames.read_window(frames, 0, (), self.action_key, self.action_dim)
            rgb_obs = self.latents.read(frames[: self.obs_seq_len], self.cameras)
        else:
            images, actions = self.frames.read_window(frames, self.obs_seq_len, self.cameras, self.action_key,
                                                      self.action_dim)
            rgb_obs = {cam: preprocess_rgb(images[cam], self.image_size) for cam in self.cameras}
        a0 = self.obs_seq_len - 1
        return {
            "rgb_obs": rgb_obs,
            "lang_text": self.instructions[int(self.lang_lookup[i])],
            "actions": torch.from_numpy(np.ascontiguousarray(actions[a0 : a0 + self.action_seq_len])),
        }
