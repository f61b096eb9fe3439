"""Pack CALVIN's one-file-per-frame npz layout into contiguous memory-mapped arrays (one-time step).

Usage::

    python -m policy_models.datasets.pack_calvin --root /data/task_ABC_D [--workers 8] [--splits training validation]

For each split this writes ``<split>/packed/``::

    index.json        version, frame count, per-key file/dtype/shape, source naming, annotation file fingerprint
    frame_ids.npy     (N,) int64, sorted global frame ids; row r of every array holds frame frame_ids[r]
    rgb_static.npy    (N, 200, 200, 3) uint8      (.npy = self-describing header + raw contiguous data; opened with
    rgb_gripper.npy   (N, 84, 84, 3) uint8         np.load(mmap_mode="r"))
    rel_actions.npy   (N, 7) float32

By default only frames inside annotated language segments are packed (what training reads; about 60 % of ABC's
1.8 M frames, ~140 KB per frame for the two cameras); ``--frames all`` packs every npz in the folder. Floating keys are
stored as float32 (the loader casts to float32 anyway, so samples are identical to the npz path).

The step is resumable and atomic: data goes to ``<split>/packed.partial/`` with a ``progress.json`` updated after
every flushed chunk; re-running the command continues where it stopped; only a finished pack is renamed to
``packed/``, which the loader picks up automatically (``dataset.data_format: auto``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from policy_models.datasets.base import DatasetError
from policy_models.datasets.calvin import (
    PACKED_DIR,
    PACKED_INDEX,
    PACKED_VERSION,
    EpisodeNaming,
    annotated_frames,
    discover_naming,
    find_lang_file,
    load_lang_annotations,
)
from vpp_core.io import replace_folder, restore_replaced_folder
from vpp_core.process_pool import SPAWN, exit_with_parent

log = logging.getLogger("pack_calvin")

DEFAULT_KEYS = ("rgb_static", "rgb_gripper", "rel_actions")
PARTIAL_DIR = "packed.partial"
PROGRESS = "progress.json"


def _stored_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float32) if np.issubdtype(dtype, np.floating) else np.dtype(dtype)


def _read_frames(args: tuple[str, dict[str, Any], list[int], tuple[str, ...]]) -> dict[str, np.ndarray]:
    """Worker: read `keys` of `frames` -> {key: stacked array}. Errors name the file."""
    folder, naming_d, frames, keys = args
    naming = EpisodeNaming(**naming_d)
    out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for f in frames:
        path = naming.path(Path(folder), f)
        try:
            with np.load(path, allow_pickle=False) as z:
                for k in keys:
                    if k not in z.files:
                        raise DatasetError(f"{path}: missing key {k!r} (present: {sorted(z.files)})")
                    out[k].append(z[k])
        except DatasetError:
            raise
        except FileNotFoundError:
            raise DatasetError(f"frame file not found: {path}") from None
        except Exception as exc:
            raise DatasetError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    result = {}
    for k, arrs in out.items():
        shapes = {a.shape for a in arrs}
        if len(shapes) != 1:
            raise DatasetError(f"{folder}: key {k!r} has inconsistent shapes {sorted(shapes)} around frames "
                               f"{frames[0]}..{frames[-1]}")
        result[k] = np.stack(arrs)
    return result


def _list_all_frames(folder: Path, naming: EpisodeNaming) -> np.ndarray:
    ids = []
    plen, slen = len(naming.prefix), len(naming.suffix)
    with os.scandir(folder) as it:
        for e in it:
            n = e.name
            if n.startswith(naming.prefix) and n.endswith(naming.suffix):
                digits = n[plen:-slen]
                if digits.isdigit():
                    ids.append(int(digits))
    return np.array(sorted(ids), dtype=np.int64)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _write_json_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class PartialArrays:
    """The resumable, atomic write of a folder of `.npy` arrays, shared by ``pack_calvin`` and ``encode_latents``.

    The arrays (`layout`: name -> {"file", "shape", "dtype"}) are memory-mapped in `partial` and filled in order by
    the caller, who calls `record(done)` after each stretch it wants kept: the arrays are flushed and `progress.json`
    notes how many rows are complete. Made again with the same `plan` (any json-serialisable description of the job),
    the writer continues at that row; a partial folder of another plan is discarded. `finish` writes the index and
    only then renames `partial` to `final`, replacing an older `final` last, so a reader never sees a half-written
    folder. `what` names the job in messages."""

    def __init__(self, final: Path, partial: Path, layout: dict[str, dict[str, Any]], plan: dict[str, Any], what: str):
        self.final, self.partial, self.what = final, partial, what
        self.plan_id = hashlib.sha1(json.dumps(plan, sort_keys=True).encode()).hexdigest()
        self.progress_path = partial / PROGRESS
        self.nbytes = sum(int(np.prod(v["shape"])) * np.dtype(v["dtype"]).itemsize for v in layout.values())
        rows = int(next(iter(layout.values()))["shape"][0])
        done = 0
        if self.progress_path.is_file():
            try:
                previous = json.loads(self.progress_path.read_text())
            except json.JSONDecodeError:
                previous = {}
            if previous.get("plan_id") == self.plan_id:
                done = int(previous.get("done", 0))
                log.info("%s: resuming at row %d / %d", what, done, rows)
            else:
                log.info("%s: discarding a partial folder made with different settings", what)
        if done > 0 and not all((partial / v["file"]).is_file() for v in layout.values()):
            log.info("%s: the partial folder is missing array files; starting over", what)
            done = 0
        if done == 0 and partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True, exist_ok=True)
        if done == 0:
            free = shutil.disk_usage(partial).free
            if self.nbytes > free:
                raise DatasetError(f"{what} needs {self.nbytes / 1e9:.1f} GB but only {free / 1e9:.1f} GB are free on "
                                   "that disk")
        self.done = done
        self.arrays = {
            name: np.load(partial / v["file"], mmap_mode="r+") if done else
            np.lib.format.open_memmap(partial / v["file"], mode="w+", dtype=np.dtype(v["dtype"]),
                                      shape=tuple(v["shape"]))
            for name, v in layout.items()
        }

    def record(self, done: int) -> None:
        for arr in self.arrays.values():
            arr.flush()
        _write_json_atomic({"plan_id": self.plan_id, "done": done}, self.progress_path)

    def finish(self, index_name: str, index: dict[str, Any]) -> Path:
        for arr in self.arrays.values():
            arr.flush()
        self.arrays = {}
        _write_json_atomic(index, self.partial / index_name)
        self.progress_path.unlink(missing_ok=True)
        _fsync_dir(self.partial)
        replace_folder(self.partial, self.final)  # a kill inside it is undone by `restore_replaced_folder`
        _fsync_dir(self.final.parent)
        return self.final


def pack_split(
    split_dir: str | Path,
    keys: Sequence[str] = DEFAULT_KEYS,
    lang_folder: str | None = "lang_annotations",
    frames: str = "annotated",
    workers: int = 4,
    chunk: int = 256,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Pack one split folder; returns the ``packed/`` folder. See the module docstring."""
    split_dir = Path(split_dir)
    final = split_dir / PACKED_DIR
    restore_replaced_folder(final)  # what a run killed while replacing an older pack left
    if (final / PACKED_INDEX).is_file() and not overwrite:
        log.info("%s already packed (%s); pass --overwrite to re-pack", split_dir, final)
        return final
    naming = discover_naming(split_dir)
    lang_path = None
    if frames == "annotated":
        lang_path = find_lang_file(split_dir, lang_folder)
        segments, _ = load_lang_annotations(lang_path)
        frame_ids = annotated_frames(segments)
    elif frames == "all":
        frame_ids = _list_all_frames(split_dir, naming)
    else:
        raise ValueError(f"frames must be 'annotated' or 'all', got {frames!r}")
    if frame_ids.size == 0:
        raise DatasetError(f"{split_dir}: no frames to pack")
    keys = tuple(keys)
    first = _read_frames((str(split_dir), naming.__dict__, [int(frame_ids[0])], keys))
    layout = {k: {"file": f"{k}.npy", "dtype": _stored_dtype(v.dtype).str, "shape": [len(frame_ids), *v.shape[1:]]}
              for k, v in first.items()}
    n = len(frame_ids)
    plan = {"version": PACKED_VERSION, "num_frames": n, "keys": layout, "naming": naming.__dict__,
            "frames": frames, "frame_ids_sha1": hashlib.sha1(frame_ids.tobytes()).hexdigest()}

    out = PartialArrays(final, split_dir / PARTIAL_DIR, layout, plan, f"packing {split_dir}")
    done = out.done
    log.info("%s: packing %d frames, keys %s, %.2f GB -> %s", split_dir, n, list(keys), out.nbytes / 1e9, final)
    np.save(out.partial / "frame_ids.npy", frame_ids)

    starts = list(range(done, n, chunk))
    jobs = [(str(split_dir), naming.__dict__, frame_ids[s : s + chunk].tolist(), keys) for s in starts]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, initial=done, unit="frame", desc=f"pack {split_dir.name}", smoothing=0.05)
    # never forked, and ending with this process: see vpp_core.process_pool
    pool = SPAWN.Pool(workers, initializer=exit_with_parent) if workers > 1 else None
    try:
        results = pool.imap(_read_frames, jobs) if pool else map(_read_frames, jobs)
        for s, res in zip(starts, results):
            for k, arr in res.items():
                expect = tuple(layout[k]["shape"][1:])
                if arr.shape[1:] != expect:
                    raise DatasetError(f"{split_dir}: key {k!r} of frames {int(frame_ids[s])}.. has shape "
                                       f"{arr.shape[1:]}, expected {expect} (from frame {int(frame_ids[0])})")
                out.arrays[k][s : s + len(arr)] = arr
            e = s + len(next(iter(res.values())))
            if (e // chunk) % 16 == 0 or e == n:  # flush + record progress every 16 chunks
                out.record(e)
            if bar:
                bar.update(e - s)
    finally:
        if pool:
            pool.terminate()
        if bar:
            bar.close()
    out.finish(PACKED_INDEX, {**plan, "frame_ids_file": "frame_ids.npy", "complete": True,
                              "source": {"folder": str(split_dir), "lang_file": str(lang_path) if lang_path else None}})
    log.info("%s: done -> %s", split_dir, final)
    return final


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="CALVIN dataset root (holding training/ and validation/)")
    p.add_argument("--splits", nargs="+", default=["training", "validation"])
    p.add_argument("--keys", nargs="+", default=list(DEFAULT_KEYS), help="npz keys to pack (camera names + action key)")
    p.add_argument("--lang_folder", default="lang_annotations")
    p.add_argument("--frames", choices=["annotated", "all"], default="annotated")
    p.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)))
    p.add_argument("--chunk", type=int, default=256, help="frames per work unit")
    p.add_argument("--overwrite", action="store_true", help="re-pack even if packed/ exists")
    p.add_argument("--no_progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = Path(args.root)
    try:
        for split in args.splits:
            pack_split(root / split, keys=args.keys, lang_folder=args.lang_folder, frames=args.frames,
                       workers=args.workers, chunk=args.chunk, overwrite=args.overwrite, progress=not args.no_progress)
    except DatasetError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
