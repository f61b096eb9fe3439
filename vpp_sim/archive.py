"""Carry a generated simulator dataset to another machine in a few percent of its size, and rebuild it there.

    python -m vpp_sim.archive pack   --dataset DIR --output ARCHIVE [--crf 18]
    python -m vpp_sim.archive unpack --archive ARCHIVE --output DIR [--workers 8]

Why: a CALVIN-format dataset stores every frame as its own npz (≈ 140 KB per frame with both cameras), so a few
hundred demonstrations are gigabytes, while a GPU machine without pybullet (or one reached through a small upload
limit) still needs them to train. The archive keeps each episode's low-dimensional arrays exactly (compressed npz)
and its two camera streams as h264 mp4 at their native sizes; `unpack` decodes them and runs the generator's own
layout phase, so the rebuilt folder has the same files, frame ids, instructions and statistics as the original. The
only difference is lossy compression of the images (PSNR printed by `pack`); say so when results depend on pixels.

`pack` reads the per-episode work files that `python -m vpp_sim.generate ... --keep-work` leaves in DIR/.work.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vpp_core.io import atomic_write
from vpp_core.process_pool import spawn_pool
from vpp_core.video_io import read_video, write_mp4

IMAGE_KEYS = ("rgb_static", "rgb_gripper")
ARCHIVE_VERSION = 1


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def _pack_episode(src: str, dst_dir: str, crf: int) -> tuple[str, int, float, dict[str, list[int]]]:
    """One work file -> arrays npz + one mp4 per camera. Returns (name, frames, worst camera PSNR, image sizes)."""
    src_path, dst = Path(src), Path(dst_dir)
    name = src_path.stem
    with np.load(src_path) as z:
        data = {k: z[k] for k in z.files}
    worst = float("inf")
    for key in IMAGE_KEYS:
        video = dst / f"{name}_{key}.mp4"
        write_mp4(video, data[key], fps=30, crf=crf)
        decoded = read_video(video)[:, : data[key].shape[1], : data[key].shape[2]]
        worst = min(worst, _psnr(decoded, data[key]))
    arrays = {k: v for k, v in data.items() if k not in IMAGE_KEYS}
    with atomic_write(dst / f"{name}.npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    sizes = {key: list(data[key].shape[1:3]) for key in IMAGE_KEYS}
    return name, len(data["robot_obs"]), worst, sizes


def pack(dataset: str | Path, output: str | Path, crf: int = 18, workers: int = 1) -> dict:
    """Write the archive of a generated dataset (needs DIR/.work from `--keep-work`)."""
    dataset, output = Path(dataset), Path(output)
    work = dataset / ".work"
    plan_file = work / "plan.json"
    if not plan_file.is_file():
        raise FileNotFoundError(f"{plan_file} not found: pack needs the work files of `python -m vpp_sim.generate "
                                "--keep-work` (a finished dataset without them cannot be packed)")
    sources = sorted((work / "episodes").glob("*.npz"))
    if not sources:
        raise FileNotFoundError(f"{work / 'episodes'} holds no episode files")
    if output.exists() and any(output.iterdir()):
        raise FileExistsError(f"{output} exists and is not empty; choose a new --output")
    (output / "episodes").mkdir(parents=True, exist_ok=True)
    shutil.copy(plan_file, output / "plan.json")
    args = ([str(s) for s in sources], [str(output / "episodes")] * len(sources), [crf] * len(sources))
    results = []
    with spawn_pool(workers) as pool:
        for r in tqdm(pool.map(_pack_episode, *args), total=len(sources), desc="packing", unit="episode"):
            results.append(r)
    manifest = {
        "version": ARCHIVE_VERSION,
        "crf": crf,
        "episodes": [{"name": n, "frames": f, "sizes": s} for n, f, _, s in results],
        "min_psnr_db": round(min(r[2] for r in results), 2),
        "mean_psnr_db": round(float(np.mean([r[2] for r in results])), 2),
    }
    with atomic_write(output / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    size = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
    return {"archive": str(output), "episodes": len(results), "frames": sum(r[1] for r in results),
            "bytes": size, "min_psnr_db": manifest["min_psnr_db"], "mean_psnr_db": manifest["mean_psnr_db"]}


def _unpack_episode(archive_dir: str, entry: dict, dst: str) -> str:
    src, name = Path(archive_dir) / "episodes", entry["name"]
    with np.load(src / f"{name}.npz") as z:
        data = {k: z[k] for k in z.files}
    for key in IMAGE_KEYS:
        video = read_video(src / f"{name}_{key}.mp4")
        if len(video) != entry["frames"]:
            raise ValueError(f"{src / f'{name}_{key}.mp4'}: {len(video)} frames, the manifest says {entry['frames']}")
        h, w = entry["sizes"][key]
        data[key] = np.ascontiguousarray(video[:, :h, :w])  # write_mp4 pads odd sizes by one pixel
    path = Path(dst) / f"{name}.npz"
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **data)
    return name


def unpack(archive: str | Path, output: str | Path, workers: int = 1, annotations: str | Path | None = None,
           val_annotations: str | Path | None = None) -> dict:
    """Rebuild the dataset: decode the episodes into DIR/.work, then the generator's layout phase (resumable)."""
    from vpp_sim import generate as gen

    archive, output = Path(archive), Path(output)
    manifest_file = archive / "manifest.json"
    if not manifest_file.is_file():
        raise FileNotFoundError(f"{manifest_file} not found: not a vpp_sim archive (make one with `pack`)")
    manifest = json.loads(manifest_file.read_text())
    if manifest.get("version") != ARCHIVE_VERSION:
        raise ValueError(f"{manifest_file}: archive version {manifest.get('version')}, expected {ARCHIVE_VERSION}")
    plan = json.loads((archive / "plan.json").read_text())
    work = output / ".work"
    if (output / "training" / "ep_start_end_ids.npy").exists() and not work.exists():
        raise FileExistsError(f"{output} already holds a finished dataset; choose a new --output")
    (work / "episodes").mkdir(parents=True, exist_ok=True)
    shutil.copy(archive / "plan.json", work / "plan.json")
    todo = [e for e in manifest["episodes"] if not (work / "episodes" / f"{e['name']}.npz").exists()]
    with spawn_pool(workers) as pool:
        futures = pool.map(_unpack_episode, [str(archive)] * len(todo), todo, [str(work / "episodes")] * len(todo))
        for _ in tqdm(futures, total=len(todo), desc="decoding", unit="episode"):
            pass
    jobs = gen.plan_jobs(plan["tasks"], plan["episodes_per_task"], plan["seed"], plan["val_fraction"],
                         plan.get("perturb_fraction", 0.0))  # archives packed before perturbation existed lack it
    phrasings = gen.load_phrasings(Path(annotations or gen.DEFAULT_TRAIN_ANNOTATIONS), plan["tasks"])
    val_path = Path(val_annotations or gen.DEFAULT_VAL_ANNOTATIONS)
    val_sentences = {t: v[0] for t, v in gen.load_phrasings(val_path, plan["tasks"]).items()}
    counts = gen.layout(output, jobs, work, phrasings, val_sentences, plan["seed"], workers=workers)
    shutil.rmtree(work)
    return {"output": str(output), "episodes": counts}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="dataset (generated with --keep-work) -> archive")
    p.add_argument("--dataset", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--crf", type=int, default=18, help="h264 quality (lower = larger, closer to the original)")
    p.add_argument("--workers", type=int, default=1)
    u = sub.add_parser("unpack", help="archive -> CALVIN-format dataset + stage-1 video layout")
    u.add_argument("--archive", required=True)
    u.add_argument("--output", required=True)
    u.add_argument("--workers", type=int, default=1)
    u.add_argument("--annotations", default=None, help="training phrasings yaml (as given to generate)")
    u.add_argument("--val-annotations", default=None, help="evaluation sentences yaml (as given to generate)")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            summary = pack(args.dataset, args.output, args.crf, args.workers)
        else:
            summary = unpack(args.archive, args.output, args.workers, args.annotations, args.val_annotations)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
