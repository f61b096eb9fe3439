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
  7. evaluate the policy on the simulator with the CALVIN evaluator, on the tasks recorded in stage 1
                                                                            policy_evaluation/calvin_evaluate.py
A rerun into the same output_dir continues where the last one stopped: stages finished with the same settings are
skipped, interrupted ones resume. Each stage writes the settings its results depend on to demo_<stage>.json in its
folder; when they changed (or a stage before it has to be redone), the demo stops before running anything and names
the stages, the changed settings and the folders to delete (or use a new output_dir=...).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vpp_core.config import ConfigError, apply_overrides, load_config
from vpp_core.io import atomic_json_dump

REPO = Path(__file__).resolve().parent
DATASET_NAME = "tabletop"


@dataclass(frozen=True)
class Stage:
    """What a rerun must know about a stage: the demo.yaml settings its results depend on, the stages whose results
    it reads, and the folder holding its results (deleting it makes the next run redo the stage)."""

    key: str
    title: str
    folder: Path
    settings: dict[str, Any]
    upstream: tuple[str, ...] = ()

    @property
    def record_path(self) -> Path:
        """demo_<key>.json in the stage's folder: deleting the folder deletes the record with the results."""
        return self.folder / f"demo_{self.key}.json"


def chosen_settings(cfg: DictConfig, *keys: str) -> dict[str, Any]:
    """The values of dotted demo.yaml keys as plain values, which a record read back from JSON compares equal to."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    return {key: reduce(lambda node, part: node[part], key.split("."), plain) for key in keys}


def demo_stages(cfg: DictConfig, out: Path) -> dict[str, Stage]:
    """The stages in running order, each with the settings and upstream stages its results depend on."""
    dataset, models = out / "data" / DATASET_NAME, out / "models"
    stages = [
        Stage("record", "1. record demonstrations in the simulator", dataset, chosen_settings(
            cfg, "simulator.tasks", "simulator.episodes_per_task", "simulator.val_fraction", "seed")),
        Stage("models", "2. build a tiny random video model and CLIP text model", models,
              chosen_settings(cfg, "video_model.config", "seed")),
        Stage("vae_fit", "2b. fit the tiny autoencoder to the recorded frames and calibrate its latent scale", models,
              chosen_settings(cfg, "video_model.autoencoder_steps", "seed"), ("record", "models")),
        Stage("latents", "3. encode the videos into VAE latents", dataset / "latent_videos",
              chosen_settings(cfg, "seed"), ("record", "vae_fit")),
        Stage("video_model", "4. train the video model", out / "video_model", chosen_settings(
            cfg, "video_model.config", "video_model.train_steps", "video_model.batch_size", "seed"),
              ("record", "models", "vae_fit", "latents")),
        Stage("prediction", "5. predict a video with the trained video model", out / "prediction",
              chosen_settings(cfg, "video_model.prediction_steps", "seed"), ("record", "models", "video_model")),
        Stage("action_model", "6. train the action model", out / "action_model", chosen_settings(
            cfg, "action_model.config", "action_model.max_steps", "action_model.batch_size", "seed"),
              ("record", "models", "video_model")),
        # its tasks are simulator.tasks, a setting of stage 1, which every later stage's results come from
        Stage("evaluation", "7. evaluate the policy on the simulator (CALVIN protocol)", out / "evaluation",
              chosen_settings(cfg, "evaluation.num_sequences", "evaluation.ep_len", "evaluation.num_videos", "seed"),
              ("action_model",)),
    ]
    return {stage.key: stage for stage in stages}


def read_record(stage: Stage) -> dict | None:
    return json.loads(stage.record_path.read_text()) if stage.record_path.is_file() else None


def write_record(stage: Stage, upstream: dict[str, str], finished: str | None) -> None:
    """Written before the stage runs (finished: None), so that resuming it with other settings is caught too, and
    again when it is done, with a token that tells the stages after it which results they were made from; atomically,
    as a half-written record would stop every later run."""
    record = {"stage": stage.title, "settings": stage.settings, "upstream": upstream, "finished": finished}
    atomic_json_dump(record, stage.record_path, indent=1)


def show(value: Any) -> str:
    return json.dumps(value) if value is not None else "(none)"


def changed_settings(stage: Stage, record: dict | None) -> list[str]:
    """'key: old → new' for each setting that differs from the one the stage's results on disk were made with; a
    folder with results but no record (an older demo.py made it) has unknown settings, which differ too."""
    if record is None:
        folder = stage.folder
        unrecorded = folder.is_dir() and any(folder.iterdir()) and not any(folder.glob("demo_*.json"))
        return ["settings not recorded: an older demo.py made it"] if unrecorded else []
    old, new = record["settings"], stage.settings
    return [f"{key}: {show(old.get(key))} → {show(new.get(key))}" for key in {**old, **new}
            if old.get(key) != new.get(key)]


def outdated_upstream(stage: Stage, record: dict | None, tokens: dict[str, str]) -> list[str]:
    """The upstream stages whose current results are not the ones the stage's results were made from: they were
    redone since, or will be (no valid token)."""
    if record is None:
        return []
    return [key for key in stage.upstream if record["upstream"].get(key) != tokens.get(key)]


def stale_message(changed: dict[str, list[str]], followers: dict[str, list[str]], stages: dict[str, Stage]) -> str:
    """One line: the stages made with other settings and what changed, the stages made from the results of
    stages that are (to be) redone, and the way out."""
    def numbered(keys: list[str]) -> str:
        return ("stage " if len(keys) == 1 else "stages ") + ", ".join(stages[key].title.split(".")[0] for key in keys)

    parts = [f"'{stages[key].title}' ({', '.join(changes)})" for key, changes in changed.items()]
    if followers:
        roots = [key for key in stages if key not in followers and any(key in ups for ups in followers.values())]
        parts.append(f"{numbered(list(followers))} {'was' if len(followers) == 1 else 'were'} made from earlier "
                     f"results of {numbered(roots)}")
    folders = {stages[key].folder for key in stages if key in changed or key in followers}
    outermost = [f for f in dict.fromkeys(stages[key].folder for key in stages)
                 if f in folders and not any(p in folders for p in f.parents)]
    count = len(changed) + len(followers)
    return (f"demo stopped: results on disk cannot be reused: {'; '.join(parts)}. Use a new output_dir=..., or delete "
            f"{' '.join(map(str, outermost))} to redo {'that stage' if count == 1 else 'those stages'}")


def plan_stages(stages: dict[str, Stage]) -> dict[str, str]:
    """Tokens of the stages finished with today's settings on today's upstream results: the run skips those.
    Stops the demo before anything runs when some stage's results were made otherwise: reusing them would pass off
    old results as new ones, and rerunning the stage over them would resume from them."""
    tokens: dict[str, str] = {}
    changed: dict[str, list[str]] = {}
    followers: dict[str, list[str]] = {}
    for stage in stages.values():
        record = read_record(stage)
        if changes := changed_settings(stage, record):
            changed[stage.key] = changes
        elif outdated := outdated_upstream(stage, record, tokens):
            followers[stage.key] = outdated
        elif record is not None and record["finished"]:
            tokens[stage.key] = record["finished"]
    if changed or followers:
        raise SystemExit(stale_message(changed, followers, stages))
    return tokens


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


def run_tracked(stage: Stage, args: list[str], tokens: dict[str, str], timings: dict[str, float]) -> None:
    """Skip a stage that plan_stages found finished; otherwise record its settings, run it (a tool resumes its own
    interrupted work) and mark it finished, with a new token: the stages after it were made from other results."""
    if stage.key in tokens:
        skip(stage.title, f"finished with these settings ({stage.record_path})", timings)
        return
    upstream = {key: tokens[key] for key in stage.upstream}
    write_record(stage, upstream, finished=None)
    run_stage(stage.title, args, timings)
    tokens[stage.key] = uuid.uuid4().hex
    write_record(stage, upstream, finished=tokens[stage.key])


def check_evaluation_tasks(tasks: list[str]) -> None:
    """Refuse, before hours of recording and training, a task subset the evaluator cannot build chains from."""
    from policy_evaluation.suites import SuiteError, parse_sim_tasks, sim_subset_table

    try:
        subset = parse_sim_tasks(tasks)
        if subset is not None:
            sim_subset_table(subset)
    except SuiteError as exc:
        raise SystemExit(f"demo stopped: simulator.tasks cannot be evaluated: {exc}") from exc


def run_demo(cfg: DictConfig) -> dict:
    out = (REPO / cfg.output_dir).resolve() if not Path(cfg.output_dir).is_absolute() else Path(cfg.output_dir)
    sim, vm, am, ev = cfg.simulator, cfg.video_model, cfg.action_model, cfg.evaluation
    tasks = ",".join(sim.tasks)  # recorded in stage 1 and the only ones stage 7 evaluates
    check_evaluation_tasks(list(sim.tasks))
    stages = demo_stages(cfg, out)
    tokens = plan_stages(stages)
    dataset, models = stages["record"].folder, stages["models"].folder
    video_run, action_run = stages["video_model"].folder, stages["action_model"].folder
    prediction_dir, eval_dir = stages["prediction"].folder, stages["evaluation"].folder
    timings: dict[str, float] = {}

    # an interrupted recording is run again: vpp_sim.generate resumes it from its .work/ folder
    run_tracked(stages["record"], ["-m", "vpp_sim.generate", "--output", str(dataset), "--episodes-per-task",
                                   str(sim.episodes_per_task), "--seed", str(cfg.seed), "--val-fraction",
                                   str(sim.val_fraction), "--workers", str(sim.workers), "--tasks", tasks],
                tokens, timings)

    svd_dir, clip_dir = models / "tiny-svd", models / "tiny-clip"
    run_tracked(stages["models"], ["-c", "import sys; from video_models.builders import make_tiny_video_model_folders "
                                         f"as m; print(*m(sys.argv[1], sys.argv[2], seed={int(cfg.seed)}))",
                                   str(models), str(REPO / vm.config)], tokens, timings)
    resolution = load_config(REPO / vm.config).model.unet.sample_size * 8 // 3

    run_tracked(stages["vae_fit"], ["-m", "video_models.vae_fit", "--pretrained_model_path", str(svd_dir),
                                    "--dataset_dir", str(dataset), "--resolution", str(resolution), "--steps",
                                    str(int(vm.autoencoder_steps)), "--batch_size", "4", "--device", "cpu", "--seed",
                                    str(cfg.seed)], tokens, timings)

    run_tracked(stages["latents"], ["step1_prepare_latent_data.py", "videos", "--pretrained_model_path", str(svd_dir),
                                    "--dataset_dir", str(dataset), "--resolution", str(resolution), "--seed",
                                    str(cfg.seed)], tokens, timings)

    run_tracked(stages["video_model"], [
        "step1_train_svd.py", "--config", str(vm.config), f"pretrained_model_path={svd_dir}",
        f"train_args.clip_model_path={clip_dir}", f"train_args.dataset_dir={dataset.parent}",
        f"train_args.dataset={DATASET_NAME}", "train_args.prob=[1.0]", f"run_dir={video_run}",
        f"max_train_steps={int(vm.train_steps)}", f"train_batch_size={int(vm.batch_size)}", f"seed={int(cfg.seed)}",
        "resume=latest"], tokens, timings)
    from video_models.training import list_checkpoints

    checkpoints = list_checkpoints(video_run)
    if not checkpoints:
        raise SystemExit(f"demo stopped: no checkpoint-* folder in {video_run}")
    video_model = checkpoints[-1]

    val_ids = sorted(int(p.stem) for p in (dataset / "annotation" / "val").glob("*.json"))[:2]
    run_tracked(stages["prediction"], [
        "make_prediction.py", "--config", "video_conf/val_calvin_svd.yaml", "--video_model_path", str(video_model),
        "--clip_model_path", str(clip_dir), "--val_dataset_dir", str(dataset), "--val_idx", "+".join(map(str, val_ids)),
        "--num_inference_steps", str(int(vm.prediction_steps)), "--output_dir", str(prediction_dir), "--seed",
        str(cfg.seed), "--device", "cpu", f"validation_args.width={resolution}", f"validation_args.height={resolution}",
        "validation_args.start_idx=0"], tokens, timings)

    run_tracked(stages["action_model"], [
        "step2_train_action_calvin.py", "--config", str(am.config), "--root_data_dir", str(dataset),
        "--video_model_path", str(video_model), "--text_encoder_path", str(clip_dir), f"run.run_dir={action_run}",
        f"training.max_steps={int(am.max_steps)}", f"dataloader.batch_size={int(am.batch_size)}",
        f"seed={int(cfg.seed)}", "run.resume=auto"], tokens, timings)

    run_tracked(stages["evaluation"], [
        "policy_evaluation/calvin_evaluate.py", "--env", "sim", "--sim_tasks", tasks, "--action_model_folder",
        str(action_run), "--num_sequences", str(int(ev.num_sequences)), "--ep_len", str(int(ev.ep_len)),
        "--num_videos", str(int(ev.num_videos)), "--output_dir", str(eval_dir), "--device", "cpu", "--seed",
        str(cfg.seed)], tokens, timings)

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
    seq_len = int(metrics.get("seq_len", 5))  # chains over a task subset can be shorter (policy_evaluation/README.md)
    chain_sr = ", ".join(f"{k}/{seq_len}: {v:.0%}" for k, v in metrics["chain_sr"].items() if int(k) <= seq_len)
    print(f"average sequence length on the simulator's recorded tasks: {metrics['avg_seq_len']:.2f} of {seq_len} "
          f"(chain success {chain_sr})")
    print("A tiny model trained for minutes on a CPU is not expected to solve the tasks; scale demo.yaml up (and use "
          "a GPU) for that. Summary: " + str(Path(summary['results_json']).parent.parent / "summary.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
