"""Does the method learn? Train VPP's two stages on simulator demonstrations and bring the result back for evaluation.

The simulator needs pybullet, which a GPU machine may lack, and a few hundred demonstrations are gigabytes as CALVIN
files; so the experiment is split into three steps on two machines (docs/PERFORMANCE.md, "Does the method learn?"):

  here (CPU):  python -m vpp_sim.generate --output D --episodes-per-task 50 --tasks ... --keep-work
               python -m vpp_sim.archive pack --dataset D --output A
  GPU:         python benchmarks/sim_learning.py train --archive A --work W --export E \
                   [--autoencoder-steps 1200 --stage1-steps 800 --stage2-steps 3000 --until stage1]
               (where the GPU machine has pybullet, generate into W/data/tabletop there instead and omit --archive)
  here (CPU):  python benchmarks/sim_learning.py assemble --export E --output R
               python policy_evaluation/calvin_evaluate.py --env sim --action_model_folder R/policy \
                   --video_model_path R/video/svd --clip_model_path R/video/clip ...

`train` runs the real command-line tools (vpp_sim.archive unpack, video_models.vae_fit, step1_prepare_latent_data.py,
step1_train_svd.py, step2_train_action_calvin.py) and skips what is already done, so a second call continues where a
time limit stopped the first. The random models (video_conf/small_sim.yaml) are built there from a seed, and their
autoencoder is fitted to the demonstrations' frames first (it stands in for SVD's pretrained one; see
video_models/vae_fit.py). What has to travel back (the video model with its trained U-Net in fp16, CLIP, the policy
checkpoint, logs) is written to --export as tar files split into parts of at most 15 MiB (the transfer limit per
file); `assemble` joins them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATASET_NAME = "tabletop"
VIDEO_CONFIG = "video_conf/small_sim.yaml"
POLICY_CONFIG = "policy_conf/small_sim_calvin.yaml"
PART_BYTES = 15 * 2**20


def run(title: str, args: list[str], log: dict) -> None:
    """One real tool, output streamed; its wall time goes into the log."""
    print(f"\n=== {title}\n$ {' '.join(args)}", flush=True)
    start = time.perf_counter()
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled"), "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=env)
    log.setdefault("seconds", {})[title] = round(time.perf_counter() - start, 1)
    if result.returncode != 0:
        raise SystemExit(f"'{title}' failed with exit code {result.returncode}")


def export_parts(src: Path, export: Path, name: str) -> list[str]:
    """tar `src` into export/name.tar.partNN files of at most PART_BYTES (the transfer limit per file)."""
    export.mkdir(parents=True, exist_ok=True)
    tar_path = export / f"{name}.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(src, arcname=name)
    parts = []
    with open(tar_path, "rb") as fh:
        while chunk := fh.read(PART_BYTES):
            part = export / f"{name}.tar.part{len(parts):02d}"
            part.write_bytes(chunk)
            parts.append(part.name)
    tar_path.unlink()
    return parts


def export_unet(checkpoint: Path, dst: Path) -> None:
    """The trained U-Net in fp16 (half the bytes; the policy runs the frozen U-Net in bf16/fp16 on GPUs anyway)."""
    import torch
    from diffusers import UNetSpatioTemporalConditionModel

    unet = UNetSpatioTemporalConditionModel.from_pretrained(checkpoint, subfolder="unet", torch_dtype=torch.float16)
    unet.save_pretrained(dst, safe_serialization=True)


def cmd_train(args: argparse.Namespace) -> None:
    work, export = Path(args.work).resolve(), Path(args.export).resolve()
    models = work / "models"
    svd, clip = models / "small-svd", models / "small-clip"
    data_root = work / "data"
    dataset = data_root / DATASET_NAME
    video_run, action_run = work / "video_model", work / "action_model"
    log: dict = {"args": vars(args)}
    if not (svd / "model_index.json").exists():
        # random weights from a seed: cheaper to build here than to carry (the trained result travels back)
        from video_models.builders import make_tiny_video_model_folders

        make_tiny_video_model_folders(models, REPO / VIDEO_CONFIG, seed=args.seed, prefix="small")
    if not (dataset / "training" / "ep_start_end_ids.npy").exists():
        if not args.archive:
            raise SystemExit(f"no data set in {dataset}: pass --archive A, or generate it there first "
                             f"(python -m vpp_sim.generate --output {dataset} ...) where pybullet is installed")
        run("unpack the demonstrations", ["-m", "vpp_sim.archive", "unpack", "--archive", args.archive, "--output",
                                          str(dataset), "--workers", str(args.workers)], log)
    if not (dataset / "training" / "packed").exists():
        run("pack the stage-2 frames into memory-mapped arrays",
            ["-m", "policy_models.datasets.pack_calvin", "--root", str(dataset), "--lang_folder", "lang_annotations",
             "--workers", str(args.workers), "--no_progress"], log)
    from video_models.vae_fit import FIT_RECORD

    if not (svd / FIT_RECORD).exists():
        run("fit and calibrate the random autoencoder (stands in for SVD's pretrained one)",
            ["-m", "video_models.vae_fit", "--pretrained_model_path", str(svd), "--dataset_dir", str(dataset),
             "--resolution", "128", "--steps", str(args.autoencoder_steps), "--seed", str(args.seed), "--device",
             args.device, "--no_progress"], log)
    marker = work / "latents.done"
    if not marker.exists():
        run("encode the videos into VAE latents",
            ["step1_prepare_latent_data.py", "videos", "--pretrained_model_path", str(svd), "--dataset_dir",
             str(dataset), "--resolution", "128", "--seed", str(args.seed), "--device", args.device,
             "--no_progress"], log)
        marker.touch()
    final = video_run / f"checkpoint-{args.stage1_steps}"
    if not (final / "model_index.json").exists():
        run("train the video model (stage 1)",
            ["step1_train_svd.py", "--config", VIDEO_CONFIG, f"pretrained_model_path={svd}",
             f"train_args.clip_model_path={clip}", f"train_args.dataset_dir={data_root}",
             f"train_args.dataset={DATASET_NAME}", "train_args.prob=[1.0]", f"run_dir={video_run}",
             f"max_train_steps={args.stage1_steps}", f"seed={args.seed}", "resume=latest", *args.stage1_overrides], log)
    from video_models.training import list_checkpoints

    video_model = list_checkpoints(video_run)[-1]  # the newest stage-1 checkpoint (the run above ends with one)
    if not (export / "video.tar.part00").exists():
        staging = work / "export_video"
        if staging.exists():
            shutil.rmtree(staging)
        shutil.copytree(svd, staging / "svd", ignore=shutil.ignore_patterns("unet"))
        export_unet(video_model, staging / "svd" / "unet")
        shutil.copytree(clip, staging / "clip")
        for name in ("config.yaml", "metrics.jsonl"):
            if (video_run / name).exists():
                shutil.copy(video_run / name, staging / name)
        if (video_run / "samples").is_dir():
            shutil.copytree(video_run / "samples", staging / "samples")
        log["video_parts"] = export_parts(staging, export, "video")
    if args.until == "stage1":
        (export / "train_log_stage1.json").write_text(json.dumps(log, indent=1, default=str))
        return
    resume = ["run.resume=auto"] if action_run.exists() else []
    run("train the action model (stage 2)",
        ["step2_train_action_calvin.py", "--config", POLICY_CONFIG, "--root_data_dir", str(dataset),
         "--video_model_path", str(video_model), "--text_encoder_path", str(clip), f"run.run_dir={action_run}",
         f"training.max_steps={args.stage2_steps}", f"seed={args.seed}", *resume, *args.stage2_overrides], log)
    from policy_evaluation.policy_factory import resolve_checkpoint

    checkpoint = resolve_checkpoint(action_run)
    staging = work / "export_policy"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    # the weights (and EMA weights) with their config; the optimizer state stays behind
    for src in (checkpoint / "config.yaml", checkpoint / "model.safetensors", checkpoint / "ema.safetensors",
                action_run / "metrics.jsonl", action_run / "log.txt", action_run / "run_config.yaml"):
        if src.exists():
            shutil.copy(src, staging / src.name)
    log["policy_checkpoint"] = checkpoint.name
    log["policy_parts"] = export_parts(staging, export, "policy")
    (export / "train_log.json").write_text(json.dumps(log, indent=1, default=str))


def join_parts(export: Path, name: str, output: Path) -> Path:
    parts = sorted(export.glob(f"{name}.tar.part*"))
    if not parts:
        raise SystemExit(f"no {name}.tar.part* files in {export}")
    output.mkdir(parents=True, exist_ok=True)
    tar_path = output / f"{name}.tar"
    with open(tar_path, "wb") as fh:
        for part in parts:
            fh.write(part.read_bytes())
    with tarfile.open(tar_path) as tar:
        tar.extractall(output, filter="data")
    tar_path.unlink()
    return output / name


def cmd_assemble(args: argparse.Namespace) -> None:
    """Join the exported parts: video/svd (a loadable video model folder with the trained U-Net in fp16), video/clip,
    the stage-1 logs and samples, and policy/ (a stage-2 checkpoint folder with model and EMA weights)."""
    output, export = Path(args.output), Path(args.export)
    output.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name in ("video", "policy"):
        if list(export.glob(f"{name}.tar.part*")):
            target = output / name
            if target.exists():
                shutil.rmtree(target)
            summary[name] = str(join_parts(export, name, output))
    print(json.dumps(summary))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="unpack, latents, stage 1, stage 2; export the results (GPU machine)")
    t.add_argument("--archive", help="demonstrations packed by vpp_sim.archive; not needed when WORK/data/tabletop "
                                     "already holds a generated data set (a GPU machine with pybullet)")
    t.add_argument("--work", required=True)
    t.add_argument("--export", required=True)
    # defaults: run 3 of docs/PERFORMANCE.md, about 17 minutes of training on an H100
    t.add_argument("--stage1-steps", type=int, default=800)
    t.add_argument("--stage2-steps", type=int, default=3000)
    t.add_argument("--autoencoder-steps", type=int, default=1200,
                   help="video_models.vae_fit steps for the random autoencoder before the latents are encoded")
    t.add_argument("--until", choices=["stage1", "stage2"], default="stage2")
    t.add_argument("--workers", type=int, default=8)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cuda", help="for the latent encoding (the trainers pick the GPU themselves)")
    t.add_argument("--stage1-overrides", nargs="*", default=[], help="extra key=value for step1_train_svd.py")
    t.add_argument("--stage2-overrides", nargs="*", default=[], help="extra key=value for step2_train_action_calvin.py")
    a = sub.add_parser("assemble", help="join the exported parts into a video model folder + policy checkpoint")
    a.add_argument("--export", required=True)
    a.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    {"train": cmd_train, "assemble": cmd_assemble}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
