"""Tiny stage-1 data sets in the original on-disk layout, written by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def write_latent_dataset(
    root: Path,
    name: str,
    episodes: dict[str, int] | None = None,
    frames: int | list[int] = 12,
    hw: int = 8,
    cams: int = 1,
    latent_folder: str = "latent_videos",
    annotation_name: str = "annotation",
    json_latent_folder: str | None = None,
    length_key: str = "video_length",
) -> Path:
    """{root}/{name}/{annotation_name}/{split}/{i}.json + {latent_folder}/{split}/{i}/{cam}.pt (T, 4, hw, hw)."""
    episodes = episodes or {"train": 3, "val": 2}
    ds = root / name
    for split, n in episodes.items():
        for i in range(n):
            t = frames[i % len(frames)] if isinstance(frames, list) else frames
            entries = []
            for c in range(cams):
                rel = f"{latent_folder}/{split}/{i}/{c}.pt"
                path = ds / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                g = torch.Generator().manual_seed(1000 * i + c)
                # smooth, learnable clips: a per-episode pattern that drifts over time, plus a camera offset
                base = torch.randn(1, 4, hw, hw, generator=g) * 0.6
                drift = torch.linspace(0, 1, t).view(t, 1, 1, 1) * torch.randn(1, 4, hw, hw, generator=g) * 0.3
                torch.save((base + drift + 0.1 * c).float().contiguous(), path)
                entries.append({"latent_video_path": (json_latent_folder or latent_folder) + f"/{split}/{i}/{c}.pt"})
            ann = {
                "task": "robot_trajectory_prediction",
                "texts": [f"move object {i} to the left"],
                "episode_id": i,
                "latent_videos": entries,
            }
            if length_key == "state":
                ann["state"] = [[0.0] * 7 for _ in range(t)]
            else:
                ann["video_length"] = t
            apath = ds / annotation_name / split / f"{i}.json"
            apath.parent.mkdir(parents=True, exist_ok=True)
            apath.write_text(json.dumps(ann))
    return ds


def moving_square_video(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 (t, h, w, 3): a coloured square moving over a gradient background."""
    rng = np.random.default_rng(seed)
    color = rng.integers(64, 255, size=3, dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    bg = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), np.full_like(xx, 80)], -1).astype(np.uint8)
    frames = np.repeat(bg[None], t, axis=0)
    size = max(4, min(h, w) // 4)
    for k in range(t):
        x0 = (k * 3) % max(w - size, 1)
        frames[k, h // 3 : h // 3 + size, x0 : x0 + size] = color
    return frames


def write_video_dataset(root: Path, name: str, episodes: dict[str, list[tuple[int, int, int]]], cams: int = 1) -> Path:
    """{root}/{name}/annotation/{split}/{i}.json + videos/{split}/{i}/{cam}.mp4 with the given (T, H, W) per episode."""
    from vpp_core.video_io import write_mp4

    ds = root / name
    for split, shapes in episodes.items():
        for i, (t, h, w) in enumerate(shapes):
            videos = []
            for c in range(cams):
                rel = f"videos/{split}/{i}/{c}.mp4"
                write_mp4(ds / rel, moving_square_video(t, h, w, seed=10 * i + c), fps=5)
                videos.append({"video_path": rel})
            apath = ds / "annotation" / split / f"{i}.json"
            apath.parent.mkdir(parents=True, exist_ok=True)
            apath.write_text(
                json.dumps(
                    {
                        "task": "robot_trajectory_prediction",
                        "texts": [f"push square {i}"],
                        "videos": videos,
                        "episode_id": i,
                        "video_length": t,
                        "action": [[0.0] * 7 for _ in range(t)],
                    }
                )
            )
    return ds


def tiny_overrides(svd: Path, clip: Path, data: Path, out: Path, **extra) -> list[str]:
    """Command-line overrides of video_conf/tiny.yaml for a few-step run on the tiny models and a test data set."""
    values = {
        "pretrained_model_path": svd,
        "train_args.clip_model_path": clip,
        "train_args.dataset_dir": data,
        "train_args.dataset": "robo",
        "train_args.prob": "[1.0]",
        "train_args.sequence_length": 4,
        "train_args.num_frames": 4,
        "train_args.width": 64,
        "train_args.height": 64,
        "train_args.validation_num": 2,
        "train_args.first_validation_step": "null",
        "train_args.video_num": 1,
        "train_args.samples_per_grid": 2,
        "train_args.num_inference_steps": 2,
        "train_args.decode_chunk_size": 4,
        "train_args.log_every": 1,
        "train_batch_size": 2,
        "max_train_steps": 3,
        "checkpointing_steps": 2,
        "keep_training_states": 2,
        "validation_steps": 3,
        "mixed_precision": "no",
        "learning_rate": 1e-4,
        "output_dir": out,
        "report_to": "none",
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]
