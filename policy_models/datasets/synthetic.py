"""Small synthetic datasets in the real on-disk formats, for tests, the demo and the loading benchmark.

* :func:`write_synthetic_calvin` writes a CALVIN-format root (``training/``, ``validation/``: per-frame
  ``episode_%07d.npz`` files, ``lang_annotations/auto_lang_ann.npy``, ``ep_start_end_ids.npy``, ``statistics.yaml``).
* :func:`write_synthetic_xbot` writes one xbot-style dataset folder (``annotation/{split}/{id}.json`` with 38-D states
  and actions, ``latent_videos/{split}/{id}/{cam}.pt`` latents, optional ``videos/.../{cam}.mp4``).

The data is weakly learnable: each annotated segment performs one "task" whose instruction fixes the motion
direction and the gripper command, and the static camera shows a square at the end-effector position, so a policy
can overfit it. Nothing here is meant to resemble real robot data beyond shapes, dtypes and file layout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# (task name, instruction, xyz direction, gripper) — CALVIN task names and validation-style instructions.
TASKS: tuple[tuple[str, str, tuple[float, float, float], float], ...] = (
    ("move_slider_left", "push the sliding door to the left side", (-1.0, 0.0, 0.0), 1.0),
    ("move_slider_right", "push the sliding door to the right side", (1.0, 0.0, 0.0), 1.0),
    ("lift_red_block_table", "lift the red block from the table", (0.0, 0.0, 1.0), -1.0),
    ("push_blue_block_left", "go push the blue block to the left", (-0.7, 0.7, 0.0), 1.0),
    ("open_drawer", "pull the handle to open the drawer", (0.0, -1.0, 0.0), -1.0),
    ("turn_on_led", "push the button to turn on the led light", (0.0, 0.0, -1.0), 1.0),
)


@dataclass
class SyntheticCalvinSpec:
    episodes: int = 2            # recorded episodes per split (contiguous frame ranges)
    episode_len: int = 64        # frames per episode
    segment_len: int = 32        # frames per annotated segment (CALVIN: up to 64)
    segment_stride: int = 16     # annotated segments may overlap, as in CALVIN
    static_size: int = 200
    gripper_size: int = 84
    full: bool = False           # also write depth/tactile keys (realistic file sizes for benchmarks)
    noise: int = 0               # uniform pixel noise amplitude (realistic compression ratio when > 0)


def _render_static(size: int, pos: np.ndarray, grip: float, rng: np.random.Generator, noise: int) -> np.ndarray:
    img = np.full((size, size, 3), 96, dtype=np.uint8)
    img[: size // 8] = (40, 120, 40)
    c = np.clip(((pos[:2] + 1.0) / 2.0 * size).astype(int), 0, size - 1)
    r = max(2, size // 12)
    y0, y1 = max(0, c[1] - r), min(size, c[1] + r)
    x0, x1 = max(0, c[0] - r), min(size, c[0] + r)
    img[y0:y1, x0:x1] = (230, 60, 60) if grip > 0 else (60, 60, 230)
    if noise:
        img = np.clip(img.astype(np.int16) + rng.integers(-noise, noise + 1, img.shape), 0, 255).astype(np.uint8)
    return img


def _render_gripper(size: int, pos: np.ndarray, grip: float, rng: np.random.Generator, noise: int) -> np.ndarray:
    v = int(np.clip((pos[2] + 1.0) / 2.0 * 255, 0, 255))
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[...] = (v, 255 - v, 128 if grip > 0 else 20)
    img[size // 3 : 2 * size // 3, size // 3 : 2 * size // 3] = 255 - v
    if noise:
        img = np.clip(img.astype(np.int16) + rng.integers(-noise, noise + 1, img.shape), 0, 255).astype(np.uint8)
    return img


def write_synthetic_calvin_split(folder: str | Path, spec: SyntheticCalvinSpec, first_frame: int = 0,
                                 seed: int = 0) -> dict[str, object]:
    """Write one CALVIN split folder; returns {"frames", "segments", "windows_hint"} for tests."""
    folder = Path(folder)
    (folder / "lang_annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frame = first_frame
    ep_ids, indx, ann, task_names = [], [], [], []
    robot_all, scene_all = [], []
    for _ in range(spec.episodes):
        ep_start = frame
        ep_end = frame + spec.episode_len - 1
        ep_ids.append((ep_start, ep_end))
        # one task per annotated segment; frames outside segments continue the last task
        seg_starts = list(range(ep_start, ep_end - spec.segment_len + 2, spec.segment_stride))
        task_of_frame = np.zeros(spec.episode_len, dtype=np.int64)
        for s in seg_starts:
            k = int(rng.integers(len(TASKS)))
            indx.append((s, s + spec.segment_len - 1))
            ann.append(TASKS[k][1])
            task_names.append(TASKS[k][0])
            task_of_frame[s - ep_start :] = k
        pos = rng.uniform(-0.5, 0.5, 3)
        euler = rng.uniform(-0.2, 0.2, 3)
        for t in range(spec.episode_len):
            _, _, direction, grip = TASKS[int(task_of_frame[t])]
            rel = np.empty(7)
            rel[:3] = np.clip(0.6 * np.asarray(direction) + rng.normal(0, 0.05, 3), -1, 1)
            rel[3:6] = np.clip(rng.normal(0, 0.1, 3), -1, 1)
            rel[6] = grip
            robot_obs = np.zeros(15)
            robot_obs[:3], robot_obs[3:6], robot_obs[6] = pos, euler, 0.04 if grip > 0 else 0.0
            robot_obs[7:14] = rng.normal(0, 0.1, 7)
            robot_obs[14] = grip
            scene_obs = rng.normal(0, 0.1, 24)
            actions = np.concatenate([pos + rel[:3] * 0.02, euler + rel[3:6] * 0.05, [grip]])
            data = {
                "actions": actions,
                "rel_actions": rel,
                "robot_obs": robot_obs,
                "scene_obs": scene_obs,
                "rgb_static": _render_static(spec.static_size, pos, grip, rng, spec.noise),
                "rgb_gripper": _render_gripper(spec.gripper_size, pos, grip, rng, spec.noise),
            }
            if spec.full:  # smooth depth and mostly flat tactile images, roughly like CALVIN's (~250 KB files)
                yy, xx = np.mgrid[0 : spec.static_size, 0 : spec.static_size] / spec.static_size
                data["rgb_tactile"] = np.clip(rng.normal(128, 8, (160, 120, 6)), 0, 255).astype(np.uint8)
                data["depth_static"] = (1.0 + 0.5 * yy + 0.1 * np.sin(6 * xx + t)).astype(np.float32)
                gy, gx = np.mgrid[0 : spec.gripper_size, 0 : spec.gripper_size] / spec.gripper_size
                data["depth_gripper"] = (0.2 + 0.1 * gx * gy + 0.01 * t).astype(np.float32)
                data["depth_tactile"] = np.full((160, 120, 2), 0.01 * t, dtype=np.float32)
            np.savez_compressed(folder / f"episode_{frame:07d}.npz", **data)
            robot_all.append(robot_obs)
            scene_all.append(scene_obs)
            pos = np.clip(pos + rel[:3] * 0.02, -1, 1)
            euler = euler + rel[3:6] * 0.05
            frame += 1
        frame += 7  # gaps between recorded episodes, as in CALVIN's global frame numbering
    lang = {
        "info": {"indx": indx, "episodes": []},
        "language": {"ann": ann, "task": task_names,
                     "emb": rng.normal(0, 1, (len(ann), 1, 384)).astype(np.float32)},
    }
    np.save(folder / "lang_annotations" / "auto_lang_ann.npy", lang, allow_pickle=True)
    np.save(folder / "ep_start_end_ids.npy", np.asarray(ep_ids, dtype=np.int64))
    np.save(folder / "ep_lens.npy", np.asarray([e - s + 1 for s, e in ep_ids], dtype=np.int64))
    r, s = np.asarray(robot_all), np.asarray(scene_all)
    stats_yaml = (
        "robot_obs:\n  - _target_: calvin_models.calvin_agent.utils.transforms.NormalizeVector\n"
        f"    mean: {r.mean(0).round(6).tolist()}\n    std: {np.maximum(r.std(0), 1e-6).round(6).tolist()}\n"
        "scene_obs:\n  - _target_: calvin_models.calvin_agent.utils.transforms.NormalizeVector\n"
        f"    mean: {s.mean(0).round(6).tolist()}\n    std: {np.maximum(s.std(0), 1e-6).round(6).tolist()}\n"
    )
    (folder / "statistics.yaml").write_text(stats_yaml)
    return {"frames": frame - first_frame, "segments": indx, "instructions": ann}


def write_synthetic_calvin(
    root: str | Path,
    spec: SyntheticCalvinSpec | None = None,
    val_spec: SyntheticCalvinSpec | None = None,
    seed: int = 0,
) -> Path:
    """Write ``root/training`` and ``root/validation`` in CALVIN's format (validation frames numbered after a gap,
    like CALVIN's scene-D validation ids)."""
    root = Path(root)
    spec = spec or SyntheticCalvinSpec()
    val_spec = val_spec or SyntheticCalvinSpec(**{**spec.__dict__, "episodes": max(1, spec.episodes // 2)})
    write_synthetic_calvin_split(root / "training", spec, first_frame=0, seed=seed)
    write_synthetic_calvin_split(root / "validation", val_spec, first_frame=100000, seed=seed + 1)
    return root


# ----------------------------------------------------------------------------------------------------------------------
# xbot-style data


def _unit_quat_xyzw(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(0, 1, 4)
    q[3] = abs(q[3]) + 2.0  # near identity, w >= 0 (xyzw layout)
    return q / np.linalg.norm(q)


def write_synthetic_xbot(
    root: str | Path,
    dataset_name: str = "xbot_synth",
    episodes: Mapping[str, int] | None = None,
    length: int = 24,
    state_dim: int = 38,
    cameras: int = 3,
    latent_size: int = 32,
    write_videos: bool = False,
    video_size: int = 64,
    texts: Sequence[str] = ("pick up the cup and place it on the plate", "put the bag into the box"),
    seed: int = 0,
) -> Path:
    """Write ``root/dataset_name`` in the xbot layout (vpp_reference §2.1): annotation jsons with ``states``/
    ``actions`` (T x 38: right arm xyz+quat, right hand 12, left arm xyz+quat, left hand 12), scaled latents
    (T, 4, s, s) per camera, and optionally 256-style mp4 videos. Returns the dataset folder."""
    import torch

    episodes = dict(episodes or {"train": 3, "val": 1})
    ds = Path(root) / dataset_name
    rng = np.random.default_rng(seed)
    ep = 0
    for split, n in episodes.items():
        (ds / "annotation" / split).mkdir(parents=True, exist_ok=True)
        for _ in range(n):
            t = np.linspace(0, 1, length)[:, None]
            states = np.zeros((length, state_dim))
            for a in (0, 19) if state_dim == 38 else ():
                states[:, a : a + 3] = rng.uniform(-0.3, 0.3, 3) + t * rng.uniform(-0.2, 0.2, 3)
                states[:, a + 3 : a + 7] = _unit_quat_xyzw(rng)
                states[:, a + 7 : a + 19] = np.clip(t * rng.uniform(0, 1.5, 12), 0, 1.5)  # hand joints
            if state_dim != 38:
                states[:] = rng.normal(0, 1, state_dim) + t * rng.normal(0, 0.5, state_dim)
            actions = np.concatenate([states[1:], states[-1:]], 0) + rng.normal(0, 1e-3, states.shape)
            ann = {
                "task": "robot_trajectory_prediction",
                "texts": [str(texts[ep % len(texts)])],
                "episode_id": ep,
                "video_length": length,
                "states": states.round(6).tolist(),
                "actions": actions.round(6).tolist(),
                "latent_videos": [],
                "videos": [],
            }
            for cam in range(cameras):
                rel = f"latent_videos/{split}/{ep}/{cam}.pt"
                (ds / rel).parent.mkdir(parents=True, exist_ok=True)
                lat = torch.from_numpy(rng.normal(0, 0.8, (length, 4, latent_size, latent_size)).astype(np.float32))
                torch.save(lat, ds / rel)
                ann["latent_videos"].append({"latent_video_path": rel})
                vrel = f"videos/{split}/{ep}/{cam}.mp4"
                ann["videos"].append({"video_path": vrel})
                if write_videos:
                    from vpp_core.video_io import write_mp4

                    frames = np.zeros((length, video_size, video_size, 3), dtype=np.uint8)
                    frames[..., cam % 3] = (np.linspace(40, 220, length)[:, None, None]).astype(np.uint8)
                    write_mp4(ds / vrel, frames, fps=10)
            (ds / "annotation" / split / f"{ep}.json").write_text(json.dumps(ann))
            ep += 1
    return ds


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m policy_models.datasets.synthetic --root D [--kind calvin|xbot]``: write a small synthetic dataset."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--root", required=True)
    p.add_argument("--kind", choices=["calvin", "xbot"], default="calvin")
    p.add_argument("--episodes", type=int, default=2, help="calvin: episodes in training/ (validation gets half)")
    p.add_argument("--episode_len", type=int, default=64)
    p.add_argument("--segment_len", type=int, default=32)
    p.add_argument("--segment_stride", type=int, default=16)
    p.add_argument("--full", action="store_true", help="calvin: also write depth/tactile keys (realistic file sizes)")
    p.add_argument("--latent_size", type=int, default=32, help="xbot: latent resolution (tiny video model: 8)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.kind == "calvin":
        spec = SyntheticCalvinSpec(episodes=a.episodes, episode_len=a.episode_len, segment_len=a.segment_len,
                                   segment_stride=a.segment_stride, full=a.full)
        print(write_synthetic_calvin(a.root, spec, seed=a.seed))
    else:
        print(write_synthetic_xbot(a.root, episodes={"train": a.episodes, "val": max(1, a.episodes // 2)},
                                   length=a.episode_len, latent_size=a.latent_size, seed=a.seed))


if __name__ == "__main__":
    main()
