"""CALVIN loading speed: per-frame npz files vs the packed memory-mapped arrays (pack_calvin).

    python benchmarks/calvin_loading.py [--root D] [--episodes 2 --episode_len 256] [--samples 300]
                                        [--image_size 256] [--loader_workers 2]

Without --root a CALVIN-format dataset with CALVIN-like files (all keys incl. depth/tactile, ~300 KB per frame) is
generated in a temporary folder and packed. Measures samples/s of one process (= one DataLoader worker) reading
random training windows (10 frames of rel_actions + first-frame rgb_static/rgb_gripper resized to --image_size), for
both paths; optionally also a DataLoader with --loader_workers workers and batch 28. Prints one JSON object.
Files are in the OS page cache after generation (warm-cache numbers; a cold disk slows the npz path far more, since
it opens 10 files per sample).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _per_worker(ds, n: int, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ds), n)
    ds[int(idx[0])]  # warm-up (opens memmaps)
    t = time.perf_counter()
    for i in idx:
        ds[int(i)]
    dt = time.perf_counter() - t
    return {"samples_per_s": round(n / dt, 1), "ms_per_sample": round(1000 * dt / n, 3), "samples": n}


def _loader(ds, workers: int, batches: int, batch_size: int = 28) -> dict[str, float]:
    from torch.utils.data import DataLoader, RandomSampler

    from policy_models.datasets.base import collate_samples

    dl = DataLoader(ds, batch_size=batch_size, sampler=RandomSampler(ds, replacement=True, num_samples=10**9),
                    num_workers=workers, collate_fn=collate_samples, persistent_workers=False,
                    prefetch_factor=2 if workers else None)
    it = iter(dl)
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t
    del it
    return {"samples_per_s": round(batches * batch_size / dt, 1), "workers": workers, "batch_size": batch_size}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=None, help="existing CALVIN root (default: generate one)")
    p.add_argument("--split", default="training")
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--episode_len", type=int, default=256)
    p.add_argument("--samples", type=int, default=300, help="samples timed per path (npz; packed times 5x more)")
    p.add_argument("--image_size", type=int, default=256)
    p.add_argument("--loader_workers", type=int, default=0, help="also time a DataLoader with this many workers")
    p.add_argument("--loader_batches", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (DataLoader workers use 1)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from policy_models.datasets.calvin import CalvinDataset
    from policy_models.datasets.pack_calvin import pack_split
    from policy_models.datasets.synthetic import SyntheticCalvinSpec, write_synthetic_calvin_split

    tmp = None
    out: dict[str, object] = {"benchmark": "calvin_loading", "image_size": args.image_size,
                              "torch_threads": args.threads, "cpu_count": os.cpu_count(),
                              "machine": platform.machine(), "python": platform.python_version(),
                              "torch": torch.__version__}
    if args.root is None:
        tmp = tempfile.TemporaryDirectory(prefix="calvin_bench_")
        split_dir = Path(tmp.name) / args.split
        spec = SyntheticCalvinSpec(episodes=args.episodes, episode_len=args.episode_len, segment_len=64,
                                   segment_stride=16, full=True, noise=6)
        t = time.perf_counter()
        write_synthetic_calvin_split(split_dir, spec)
        out["generate_s"] = round(time.perf_counter() - t, 2)
        out["dataset"] = "synthetic (CALVIN keys and image sizes)"
    else:
        split_dir = Path(args.root) / args.split
        out["dataset"] = str(split_dir)
    npz_files = list(split_dir.glob("*.npz"))
    out["frames_on_disk"] = len(npz_files)
    out["npz_mean_kb"] = round(float(np.mean([f.stat().st_size for f in npz_files[:200]])) / 1024, 1)
    t = time.perf_counter()
    packed_dir = pack_split(split_dir, workers=max(1, min(4, os.cpu_count() or 1)), progress=False)
    out["pack_s"] = round(time.perf_counter() - t, 2)
    out["packed_mb"] = round(sum(f.stat().st_size for f in packed_dir.iterdir()) / 2**20, 1)

    results = {}
    for fmt, n in (("npz", args.samples), ("packed", 5 * args.samples)):
        ds = CalvinDataset(split_dir, image_size=args.image_size, data_format=fmt)
        out["windows"] = len(ds)
        results[fmt] = {"per_worker": _per_worker(ds, n)}
        raw = CalvinDataset(split_dir, image_size=None, data_format=fmt)
        results[fmt]["per_worker_no_resize"] = _per_worker(raw, n)
        if args.loader_workers:
            results[fmt]["dataloader"] = _loader(ds, args.loader_workers, args.loader_batches)
    out["results"] = results
    out["speedup_per_worker"] = round(results["packed"]["per_worker"]["samples_per_s"]
                                      / results["npz"]["per_worker"]["samples_per_s"], 2)
    print(json.dumps(out))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
