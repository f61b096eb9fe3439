"""Generate scripted demonstrations in CALVIN's on-disk format and in the stage-1 video layout.

    python -m vpp_sim.generate --output DIR --episodes-per-task N --seed S [--val-fraction 0.1] [--workers 2] \
        [--perturb-fraction 0.5]

Output (DIR):
    training/, validation/       CALVIN format: episode_%07d.npz (one file per frame: actions, rel_actions,
                                 robot_obs, scene_obs, rgb_static, rgb_gripper), ep_start_end_ids.npy (inclusive),
                                 ep_lens.npy, scene_info.npy, statistics.yaml,
                                 lang_annotations/auto_lang_ann.npy (+ embeddings.npy in validation/)
    annotation/{train,val}/{id}.json, videos/{train,val}/{id}/{0,1}.mp4
                                 stage-1 layout (camera 0 = static, 1 = gripper, 256x256), one clip per episode
    .work/                       resumable state: one finished episode per file; deleted when everything is written

Every episode is one annotated segment (one task, one instruction). With --perturb-fraction F, a share F of each
task's episodes is executed with DART-style pushes that the expert corrects (vpp_sim.perturb).

Generation runs in two phases so that an interrupted run resumes: (1) each planned episode is simulated and saved
atomically as .work/episodes/JOB.npz (the file is its completion marker; failed expert attempts are retried with a
new seed and never written); (2) the episodes are laid out with contiguous global frame ids per split, each
episode's files written and then marked done in .work/written/. Re-running the same command skips everything already
done.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from vpp_core.io import atomic_write
from vpp_core.process_pool import spawn_pool
from vpp_core.video_io import write_mp4

logger = logging.getLogger("vpp_sim.generate")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRAIN_ANNOTATIONS = REPO_ROOT / "policy_conf" / "annotations" / "new_playtable.yaml"
DEFAULT_VAL_ANNOTATIONS = REPO_ROOT / "policy_conf" / "annotations" / "new_playtable_validation.yaml"
SCENE_NAME = "vpp_sim_tabletop"
LANG_EMB_DIM = 384  # calvin's SBERT size; the embeddings are written as zeros (the VPP policy encodes text itself)
VIDEO_SIZE = 256
VIDEO_FPS = 30
CAMERAS = ("rgb_static", "rgb_gripper")  # stage-1 camera ids 0 and 1
FRAME_KEYS = ("actions", "rel_actions", "robot_obs", "scene_obs", "rgb_static", "rgb_gripper")
SPLIT_DIRS = {"train": "training", "val": "validation"}


@dataclass(frozen=True)
class Job:
    index: int  # global position in the plan
    task: str
    split: str  # "train" | "val"
    seed: int
    perturbed: bool = False  # executed with DART-style pushes (vpp_sim.perturb), expert actions recorded


def _every(fraction: float, k: int) -> bool:
    """Whether position k is one of the evenly spread `fraction` of all positions."""
    return int((k + 1) * fraction) > int(k * fraction)


def plan_jobs(tasks: Sequence[str], episodes_per_task: int, seed: int, val_fraction: float,
              perturb_fraction: float = 0.0) -> list[Job]:
    """Episodes interleaved over tasks; every job whose index crosses a multiple of 1/val_fraction is validation.
    Per task, episodes spread evenly at `perturb_fraction` are perturbed ones."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if not 0.0 <= perturb_fraction <= 1.0:
        raise ValueError(f"--perturb-fraction must be in [0, 1], got {perturb_fraction}")
    jobs = []
    for i in range(episodes_per_task):
        for t, task in enumerate(tasks):
            k = len(jobs)
            job_seed = int(np.random.SeedSequence([seed, t, i]).generate_state(1)[0])
            split = "val" if _every(val_fraction, k) else "train"
            jobs.append(Job(k, task, split, job_seed, perturbed=_every(perturb_fraction, i)))
    return jobs


# ------------------------------------------------------------------------------------------------------------------
# Phase 1: simulate
# ------------------------------------------------------------------------------------------------------------------
_ENV = None


def _worker_env():
    global _ENV
    if _ENV is None:
        from vpp_sim.env import TabletopEnv

        _ENV = TabletopEnv(seed=0)
    return _ENV


def simulate_job(job: Job, work_dir: str, max_attempts: int) -> tuple[int, bool, int]:
    """Run the expert until it succeeds (at most max_attempts seeds) and save the episode. -> (index, ok, attempts)"""
    from vpp_sim.demos import run_expert_episode
    from vpp_sim.perturb import PerturbationSpec, Perturber

    path = Path(work_dir) / "episodes" / f"{job.index:07d}.npz"
    if path.exists():
        return job.index, True, 0
    env = _worker_env()
    for attempt in range(max_attempts):
        rng = np.random.default_rng([job.seed, attempt])
        perturber = None
        if job.perturbed:  # its own random stream: start state and expert draws stay those of the unperturbed plan
            perturber = Perturber(PerturbationSpec(), np.random.default_rng([job.seed, attempt, 1]))
        ep = run_expert_episode(env, job.task, rng, perturber=perturber)
        if ep.success:
            arrays = {
                "rgb_static": np.stack([f["rgb_obs"]["rgb_static"] for f in ep.frames]),
                "rgb_gripper": np.stack([f["rgb_obs"]["rgb_gripper"] for f in ep.frames]),
                "robot_obs": np.stack([f["robot_obs"] for f in ep.frames]),
                "scene_obs": np.stack([f["scene_obs"] for f in ep.frames]),
                "rel_actions": np.stack(ep.rel_actions),
                "actions": np.stack(ep.abs_actions),
            }
            meta = {"task": job.task, "split": job.split, "seed": job.seed, "attempt": attempt,
                    "perturbed_steps": ep.perturbed_steps}
            with atomic_write(path) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)
            return job.index, True, attempt + 1
    return job.index, False, max_attempts


# ------------------------------------------------------------------------------------------------------------------
# Phase 2: lay out
# ------------------------------------------------------------------------------------------------------------------
def load_phrasings(path: Path, tasks: Sequence[str]) -> dict[str, list[str]]:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} not found; pass --annotations / --val-annotations PATH")
    data = yaml.safe_load(path.read_text())
    missing = [t for t in tasks if t not in data]
    if missing:
        raise KeyError(f"{path}: no phrasings for tasks {missing}")
    return {t: list(data[t]) for t in tasks}


def resize_frames(frames: np.ndarray, size: int = VIDEO_SIZE) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR)) for f in frames])


def write_frame(path: Path, frame: dict[str, np.ndarray]) -> None:
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **frame)


def _write_episode_files(out: str, split: str, ep_id: int, start: int, episode_file: str, task: str, text: str,
                         marker: str) -> None:
    """Every file of one episode (frames, videos, annotation), then its done-marker; runs in a worker process."""
    out = Path(out)
    with np.load(episode_file) as z:
        data = {k: z[k] for k in FRAME_KEYS}
    split_dir = out / SPLIT_DIRS[split]
    n = len(data["robot_obs"])
    for t in range(n):
        write_frame(split_dir / f"episode_{start + t:07d}.npz", {k: data[k][t] for k in FRAME_KEYS})
    videos, latents = [], []
    for cam, key in enumerate(CAMERAS):
        rel = f"videos/{split}/{ep_id}/{cam}.mp4"
        write_mp4(out / rel, resize_frames(data[key]), fps=VIDEO_FPS)
        videos.append({"video_path": rel})
        latents.append({"latent_video_path": f"latent_videos/{split}/{ep_id}/{cam}.pt"})
    ann = {
        "task": "robot_trajectory_prediction",
        "texts": [text],
        "videos": videos,
        "episode_id": ep_id,
        "video_length": n,
        "latent_videos": latents,
        "calvin_task": task,
        "frame_ids": [start, start + n - 1],
        "state": data["robot_obs"].tolist(),
        "actions": data["rel_actions"].tolist(),
    }
    with atomic_write(out / "annotation" / split / f"{ep_id}.json") as tmp:
        tmp.write_text(json.dumps(ann, indent=2))
    Path(marker).parent.mkdir(parents=True, exist_ok=True)
    Path(marker).touch()


def statistics(robot_obs: np.ndarray, scene_obs: np.ndarray, actions: np.ndarray) -> dict:
    """calvin's statistics.yaml content (NormalizeVector mean/std for robot_obs and scene_obs, action bounds)."""

    def entry(x):
        return [
            {
                "_target_": "calvin_models.calvin_agent.utils.transforms.NormalizeVector",
                "mean": [float(v) for v in x.mean(0)],
                "std": [float(v) for v in x.std(0)],
            }
        ]

    return {
        "robot_obs": entry(robot_obs),
        "scene_obs": entry(scene_obs),
        "act_min_bound": [float(v) for v in actions.min(0)],
        "act_max_bound": [float(v) for v in actions.max(0)],
    }


def _save_pickle(path: Path, obj) -> None:
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, obj, allow_pickle=True)


def layout(out: Path, jobs: list[Job], work: Path, phrasings: dict[str, list[str]], val_sentences: dict[str, str],
           seed: int, workers: int = 1) -> dict[str, int]:
    """Phase 2: contiguous frame ids per split, per-episode files (resumable, in `workers` processes), then the
    split-level index files."""
    done = [j for j in jobs if (work / "episodes" / f"{j.index:07d}.npz").exists()]
    counts = {}
    for split in ("train", "val"):
        split_jobs = [j for j in done if j.split == split]
        split_dir = out / SPLIT_DIRS[split]
        split_dir.mkdir(parents=True, exist_ok=True)
        (out / "annotation" / split).mkdir(parents=True, exist_ok=True)
        ids, anns, tasks, robot, scene, acts, pending = [], [], [], [], [], [], []
        start = 0
        for ep_id, job in enumerate(split_jobs):
            episode_file = work / "episodes" / f"{job.index:07d}.npz"
            with np.load(episode_file) as z:  # npz members load lazily: only the small arrays are read here
                robot_obs = z["robot_obs"]
                if split == "train":
                    scene.append(z["scene_obs"])
                    acts.append(z["actions"])
                    robot.append(robot_obs)
            n = len(robot_obs)
            rng = np.random.default_rng([seed, job.index])
            text = phrasings[job.task][rng.integers(len(phrasings[job.task]))]
            marker = work / "written" / f"{split}_{ep_id:07d}_{job.index:07d}"
            if not marker.exists():
                pending.append((str(out), split, ep_id, start, str(episode_file), job.task, text, str(marker)))
            ids.append((start, start + n - 1))
            anns.append(text)
            tasks.append(job.task)
            start += n
        bar = tqdm(total=len(split_jobs), initial=len(split_jobs) - len(pending), desc=f"writing {SPLIT_DIRS[split]}",
                   unit="episode")
        if workers <= 1:
            for args in pending:
                _write_episode_files(*args)
                bar.update(1)
        else:
            with spawn_pool(workers) as pool:
                for _ in pool.map(_write_episode_files, *zip(*pending)) if pending else ():
                    bar.update(1)
        bar.close()
        ids_arr = np.asarray(ids, dtype=np.int64).reshape(-1, 2)
        _save_pickle(split_dir / "ep_start_end_ids.npy", ids_arr)
        _save_pickle(split_dir / "ep_lens.npy", ids_arr[:, 1] - ids_arr[:, 0] + 1)
        _save_pickle(split_dir / "scene_info.npy", {SCENE_NAME: [0, max(start - 1, 0)]})
        lang = {
            "language": {"ann": anns, "task": tasks, "emb": np.zeros((len(anns), 1, LANG_EMB_DIM), np.float32)},
            "info": {"episodes": [], "indx": [tuple(int(v) for v in p) for p in ids]},
        }
        _save_pickle(split_dir / "lang_annotations" / "auto_lang_ann.npy", lang)
        if split == "val":
            emb = {t: {"emb": np.zeros((1, 1, LANG_EMB_DIM), np.float32), "ann": [s]} for t, s in val_sentences.items()}
            _save_pickle(split_dir / "lang_annotations" / "embeddings.npy", emb)
        else:
            if not robot:
                raise RuntimeError("no training episode was generated; raise --episodes-per-task")
            stats = statistics(np.concatenate(robot), np.concatenate(scene), np.concatenate(acts))
        counts[split] = len(split_jobs)
    for split in ("train", "val"):
        with atomic_write(out / SPLIT_DIRS[split] / "statistics.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(stats, sort_keys=False))
    return counts


def generate(output: str | Path, episodes_per_task: int, seed: int = 0, val_fraction: float = 0.1,
             tasks: Sequence[str] | None = None, workers: int = 1, max_attempts: int = 5,
             annotations: str | Path | None = None, val_annotations: str | Path | None = None,
             keep_work: bool = False, perturb_fraction: float = 0.0) -> dict:
    from vpp_sim.tasks import SIM_TASKS

    tasks = list(tasks or SIM_TASKS)
    unknown = [t for t in tasks if t not in SIM_TASKS]
    if unknown:
        raise ValueError(f"--tasks: the expert has no script for {unknown}; choose from {list(SIM_TASKS)}")
    if episodes_per_task < 1:
        raise ValueError("--episodes-per-task must be >= 1")
    phrasings = load_phrasings(Path(annotations or DEFAULT_TRAIN_ANNOTATIONS), tasks)
    val_path = Path(val_annotations or DEFAULT_VAL_ANNOTATIONS)
    val_sentences = {t: v[0] for t, v in load_phrasings(val_path, tasks).items()}
    out = Path(output)
    work = out / ".work"
    jobs = plan_jobs(tasks, episodes_per_task, seed, val_fraction, perturb_fraction)
    plan = {"tasks": tasks, "episodes_per_task": episodes_per_task, "seed": seed, "val_fraction": val_fraction,
            "perturb_fraction": perturb_fraction}
    plan_file = work / "plan.json"
    if plan_file.exists():
        previous = json.loads(plan_file.read_text())
        if previous != plan:
            raise ValueError(f"{out} holds an unfinished generation with another plan {previous}; use a new --output")
    elif (out / "training" / "ep_start_end_ids.npy").exists():
        raise FileExistsError(f"{out} already holds a finished dataset; use a new --output")
    work.mkdir(parents=True, exist_ok=True)
    with atomic_write(plan_file) as tmp:
        tmp.write_text(json.dumps(plan))

    todo = [j for j in jobs if not (work / "episodes" / f"{j.index:07d}.npz").exists()]
    (work / "episodes").mkdir(parents=True, exist_ok=True)
    failed = []
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="simulating", unit="episode")
    if workers <= 1:
        results = (simulate_job(j, str(work), max_attempts) for j in todo)
        pool = None
    else:
        pool = spawn_pool(workers)
        results = pool.map(simulate_job, todo, [str(work)] * len(todo), [max_attempts] * len(todo))
    try:
        for index, ok, _ in results:
            if not ok:
                failed.append(jobs[index].task)
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if failed:
        logger.warning("the expert failed %d planned episodes after %d attempts each: %s", len(failed), max_attempts,
                       sorted(set(failed)))
    counts = layout(out, jobs, work, phrasings, val_sentences, seed, workers)
    summary = {"output": str(out), "episodes": counts, "failed": failed}
    if not keep_work:
        shutil.rmtree(work)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="dataset folder (created)")
    parser.add_argument("--episodes-per-task", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--tasks", default=None, help="comma-separated subset of vpp_sim.tasks.SIM_TASKS")
    parser.add_argument("--workers", type=int, default=1, help="simulation processes (one env each)")
    parser.add_argument("--max-attempts", type=int, default=5, help="expert attempts (new seed each) per episode")
    parser.add_argument("--annotations", default=None,
                        help=f"training phrasings yaml (default {DEFAULT_TRAIN_ANNOTATIONS})")
    parser.add_argument("--val-annotations", default=None,
                        help=f"evaluation sentences yaml (default {DEFAULT_VAL_ANNOTATIONS})")
    parser.add_argument("--keep-work", action="store_true", help="keep the per-episode work files")
    parser.add_argument("--perturb-fraction", type=float, default=0.0,
                        help="share of each task's episodes executed with DART-style pushes that the expert corrects "
                             "(vpp_sim.perturb); their recorded actions are the expert's")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    try:
        summary = generate(args.output, args.episodes_per_task, args.seed, args.val_fraction, tasks, args.workers,
                           args.max_attempts, args.annotations, args.val_annotations, args.keep_work,
                           args.perturb_fraction)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
