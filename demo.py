"""The whole of VPP in one command, on the built-in simulator, on a laptop CPU.

    python demo.py                      # settings in demo.yaml
    python demo.py output_dir=my_demo action_model.max_steps=2000     # overrides

Stages (each one is the real command-line tool, printed before it runs, so you can rerun or scale any of them):
  1. record scripted demonstrations in the simulator (CALVIN format + stage-1 video layout)
  2. build a tiny random video model and CLIP text model (no downloads), then fit its autoencoder to the recorded
     frames and calibrate the latent scale (what SVD's pretrained autoencoder brings)  python -m video_models.vae_fit
  3. encode the videos into VAE latents                                     step1_prepare_latent_data.py
  4. fine-tune the video model (text-guided video prediction)               step1_train_svd.py
  5. write a prediction video (ground truth over prediction)                 make_prediction.py
  6. train the action model on the video model's predictive features        step2_train_action_calvin.py
  7. evaluate the policy on the simulator with the CALVIN evaluator         policy_evaluation/calvin_evaluate.py
A rerun continues where the last one stopped: finished stages are skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from vpp_core.config import ConfigError, apply_overrides, load_config

REPO = Path(__file__).resolve().parent
DATASET_NAME = "tabletop"


def run_stage(title: str, args: list[str], timings: dict[str, float]) -> None:
    """Run one tool as a user would, streaming its output; stop the demo if it fails."""
    print(f"\n=== {title}\n$ {' '.join(args)}", flush=True)
    start = time.perf_counter()
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled"), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=env)
    timings[title] = round(time.perf_counter() - start, 1)
    if result.returncode != 0:
        raise SystemExit(f"demo stopped: '{title}' failed with exit code {result.returncode} (command above)")


def skip(title: str, reason: str, timings: dict[str, float]) -> None:
    print(f"\n=== {title}\n(skipped: {reason})", flush=True)
    timings[title] = 0.0


def run_demo(cfg: DictConfig) -> dict:
    out = (REPO / cfg.output_dir).resolve() if not Path(cfg.output_dir).is_absolute() else Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_root = out / "data"
    dataset = data_root / DATASET_NAME
    models = out / "models"
    video_run = out / "video_model"
    action_run = out / "action_model"
    eval_dir = out / "evaluation"
    timings: dict[str, float] = {}
    sim, vm, am, ev = cfg.simulator, cfg.video_model, cfg.action_model, cfg.evaluation

    title = "1. record demonstrations in the simulator"
    # vpp_sim.generate deletes its .work/ folder last: while it is there, a rerun of the command resumes the recording
    if (dataset / "training" / "ep_start_end_ids.npy").exists() and not (dataset / ".work").exists():
        skip(title, f"{dataset} exists", timings)
    else:
        run_stage(title, ["-m", "vpp_sim.generate", "--output", str(dataset), "--episodes-per-task",
                          str(sim.episodes_per_task), "--seed", str(cfg.seed), "--val-fraction", str(sim.val_fraction),
                          "--workers", str(sim.workers), "--tasks", ",".join(sim.tasks)], timings)

    title = "2. build a tiny random video model and CLIP text model"
    svd_dir, clip_dir = models / "tiny-svd", models / "tiny-clip"
    if (svd_dir / "model_index.json").exists() and (clip_dir / "config.json").exists():
        skip(title, f"{models} exists", timings)
    else:
        run_stage(title, ["-c", "import sys; from video_models.builders import make_tiny_video_model_folders as m; "
                                f"print(*m(sys.argv[1], sys.argv[2], seed={int(cfg.seed)}))", str(models),
                          str(REPO / vm.config)], timings)
    resolution = load_config(REPO / vm.config).model.unet.sample_size * 8 // 3

    title = "2b. fit the tiny autoencoder to the recorded frames and calibrate its latent scale"
    from video_models.vae_fit import FIT_RECORD

    if (svd_dir / FIT_RECORD).exists():
        skip(title, f"{svd_dir / FIT_RECORD} exists", timings)
    else:
        run_stage(title, ["-m", "video_models.vae_fit", "--pretrained_model_path", str(svd_dir), "--dataset_dir",
                          str(dataset), "--resolution", str(resolution), "--steps", str(int(vm.autoencoder_steps)),
                          "--batch_size", "4", "--device", "cpu", "--seed", str(cfg.seed)], timings)

    run_stage("3. encode the videos into VAE latents",
              ["step1_prepare_latent_data.py", "videos", "--pretrained_model_path", str(svd_dir), "--dataset_dir",
               str(dataset), "--resolution", str(resolution), "--seed", str(cfg.seed)], timings)

    title = "4. train the video model"
    final = video_run / f"checkpoint-{int(vm.train_steps)}"
    if (final / "model_index.json").exists():
        skip(title, f"{final} exists", timings)
    else:
        run_stage(title, ["step1_train_svd.py", "--config", str(vm.config), f"pretrained_model_path={svd_dir}",
                          f"train_args.clip_model_path={clip_dir}", f"train_args.dataset_dir={data_root}",
                          f"train_args.dataset={DATASET_NAME}", "train_args.prob=[1.0]", f"run_dir={video_run}",
                          f"max_train_steps={int(vm.train_steps)}", f"train_batch_size={int(vm.batch_size)}",
                          f"seed={int(cfg.seed)}", "resume=latest"], timings)
    from video_models.training import list_checkpoints

    checkpoints = list_checkpoints(video_run)
    if not checkpoints:
        raise SystemExit(f"demo stopped: no checkpoint-* folder in {video_run}")
    video_model = checkpoints[-1]

    val_ids = sorted(int(p.stem) for p in (dataset / "annotation" / "val").glob("*.json"))[:2]
    prediction_dir = out / "prediction"
    run_stage("5. predict a video with the trained video model",
              ["make_prediction.py", "--config", "video_conf/val_calvin_svd.yaml", "--video_model_path",
               str(video_model), "--clip_model_path", str(clip_dir), "--val_dataset_dir", str(dataset),
               "--val_idx", "+".join(map(str, val_ids)), "--num_inference_steps", str(int(vm.prediction_steps)),
               "--output_dir", str(prediction_dir), "--seed", str(cfg.seed), "--device", "cpu",
               f"validation_args.width={resolution}", f"validation_args.height={resolution}",
               "validation_args.start_idx=0"], timings)

    title = "6. train the action model"
    if (action_run / "last").exists() and (action_run / "DONE").exists():
        skip(title, f"{action_run} is finished", timings)
    else:
        resume = ["run.resume=auto"] if action_run.exists() else []
        run_stage(title, ["step2_train_action_calvin.py", "--config", str(am.config), "--root_data_dir", str(dataset),
                          "--video_model_path", str(video_model), "--text_encoder_path", str(clip_dir),
                          f"run.run_dir={action_run}", f"training.max_steps={int(am.max_steps)}",
                          f"dataloader.batch_size={int(am.batch_size)}", f"seed={int(cfg.seed)}", *resume], timings)
        (action_run / "DONE").write_text("finished\n")

    run_stage("7. evaluate the policy on the simulator (CALVIN protocol)",
              ["policy_evaluation/calvin_evaluate.py", "--env", "sim", "--action_model_folder", str(action_run),
               "--num_sequences", str(int(ev.num_sequences)), "--ep_len", str(int(ev.ep_len)), "--num_videos",
               str(int(ev.num_videos)), "--output_dir", str(eval_dir), "--device", "cpu", "--seed", str(cfg.seed)],
              timings)

    results = json.loads((eval_dir / "results.json").read_text())
    summary = {
        "dataset": str(dataset),
        "video_model": str(video_model),
        "prediction_videos": sorted(str(p) for p in prediction_dir.rglob("*.mp4")),
        "action_model": str(action_run),
        "results_json": str(eval_dir / "results.json"),
        "rollout_videos": sorted(str(p) for p in eval_dir.rglob("*.mp4")),
        "results": results,
        "seconds_per_stage": timings,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str]) -> int:
    if {"-h", "--help"} & set(argv):
        print(__doc__)
        return 0
    try:  # the keys of demo.yaml only: a misspelt one would otherwise run the whole demo on the default
        cfg = apply_overrides(load_config(REPO / "demo.yaml"), argv, strict=True)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    total = time.perf_counter()
    summary = run_demo(cfg)
    (metrics,) = summary["results"].values()
    print("\n=== VPP demo finished in %.0f s" % (time.perf_counter() - total))
    print(f"prediction video(s):  {', '.join(summary['prediction_videos']) or '(none)'}")
    print(f"rollout video(s):     {', '.join(summary['rollout_videos']) or '(none)'}")
    print(f"results.json:         {summary['results_json']}")
    print(f"average sequence length on the simulator: {metrics['avg_seq_len']:.2f} "
          f"(chain success {', '.join(f'{k}/5: {v:.0%}' for k, v in metrics['chain_sr'].items())})")
    print("A tiny model trained for minutes on a CPU is not expected to solve the tasks; scale demo.yaml up (and use "
          "a GPU) for that. Summary: " + str(Path(summary['results_json']).parent.parent / "summary.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
