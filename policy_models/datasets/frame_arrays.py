"""Read side of a folder of per-frame `.npy` arrays, shared by ``pack_calvin``'s ``packed/`` and ``encode_latents``'
``vae_latents/``: an ``index.json`` records each array's file and shape, ``frame_ids.npy`` the sorted frame id of
every row. Arrays open lazily as memory maps, and again in each DataLoader worker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from policy_models.datasets.base import DatasetError

FRAME_ARRAYS_INDEX = "index.json"


class FrameArrays:
    """A finished folder written by `tool` (``python -m policy_models.datasets.<tool>``) in index `version`."""

    def __init__(self, folder: Path, version: int, tool: str):
        self.folder = Path(folder)
        self.tool = tool
        index_path = self.folder / FRAME_ARRAYS_INDEX
        try:
            self.index: dict[str, Any] = json.loads(index_path.read_text())
        except Exception as exc:
            raise DatasetError(f"cannot read {index_path}: {exc}; re-run python -m policy_models.datasets.{tool}") \
                from exc
        if self.index.get("version") != version or not self.index.get("complete"):
            raise DatasetError(f"{index_path}: incomplete or unsupported data (version {self.index.get('version')}); "
                               f"re-run python -m policy_models.datasets.{tool}")
        self.frame_ids = self._load(self.folder / self.index["frame_ids_file"], mmap_mode=None)
        self._arrays: dict[str, np.ndarray] = {}

    def __getstate__(self):  # memmaps are reopened in each DataLoader worker
        state = self.__dict__.copy()
        state["_arrays"] = {}
        return state

    def _open(self, name: str, entry: dict[str, Any]) -> np.ndarray:
        """The array `name` described by its index entry ({"file", "shape"}), memory-mapped once."""
        arr = self._arrays.get(name)
        if arr is None:
            path = self.folder / entry["file"]
            arr = self._load(path, mmap_mode="r")
            if arr.shape != tuple(entry["shape"]):
                raise DatasetError(f"{path}: shape {arr.shape} != {tuple(entry['shape'])} recorded in "
                                   f"{FRAME_ARRAYS_INDEX}; re-run python -m policy_models.datasets.{self.tool}")
            self._arrays[name] = arr
        return arr

    def _load(self, path: Path, mmap_mode: str | None) -> np.ndarray:
        """``np.load`` of one of the folder's arrays; a missing, truncated or corrupt file (an interrupted copy, a full
        disk) is a DatasetError naming it and the command that rebuilds the folder."""
        try:
            return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
        except FileNotFoundError:
            raise DatasetError(f"{path}: file listed in {FRAME_ARRAYS_INDEX} is missing; rebuild the folder with "
                               f"python -m policy_models.datasets.{self.tool} --overwrite") from None
        except (OSError, ValueError, EOFError) as exc:
            raise DatasetError(f"{path}: cannot read the array, the file is truncated or corrupt "
                               f"({type(exc).__name__}: {exc}); rebuild the folder with "
                               f"python -m policy_models.datasets.{self.tool} --overwrite") from exc

    def lookup(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row of each frame, whether the frame is there at all)."""
        frames = np.asarray(frames, dtype=np.int64)
        rows = np.searchsorted(self.frame_ids, frames)
        ok = (rows < len(self.frame_ids)) & (self.frame_ids[np.minimum(rows, len(self.frame_ids) - 1)] == frames)
        return rows, ok

    def has_frames(self, frames: np.ndarray) -> np.ndarray:
        return self.lookup(frames)[1]
