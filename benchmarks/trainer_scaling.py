"""Training throughput and memory of either stage with 1 and N processes on one node: the multi-GPU scaling figure.

    python benchmarks/random_model_folders.py --out W --stage1-clips 96
    python benchmarks/trainer_scaling.py --stage 1 --work W --processes 1,8 --steps 40 \\
        [--set shard_optimizer_states=true]
    python -m policy_models.datasets.synthetic --root D --episodes 40 && python -m policy_models.datasets.pack_calvin \\
        --root D && python -m policy_models.datasets.encode_latents --root D --video_model_path W/svd
    python benchmarks/trainer_scaling.py --stage 2 --work W --data D --processes 1,8 --steps 60 \\
        --set dataloader.batch_size=16    # per process: 8 x 16 = the authors' global batch 128

For each process count the real trainer (`step1_train_svd.py` on `video_conf/train_calvin_svd.yaml`, or
`step2_train_action_calvin.py` on `policy_conf/VPP_Calvinabc_train.yaml`; `--config` for another) runs under
torchrun, as `accelerate launch` starts it, on the random folders of `random_model_folders.py`. Validation, sample
videos and checkpoints are pushed past the last step (stage 2 still saves one at the end). The per-process batch stays
the config's, so N processes train N times as many samples a step. Each run's `metrics.jsonl` logs the node's
samples/s every `--log-every` steps. The harness reports:
- the median over the windows after the first `--skip-windows` (the first steps compile for minutes);
- per process (per GPU), and the scaling efficiency: the per-GPU rate against one process's;
- rank 0's peak memory (the trainers log from rank 0 only).
A run that fails or passes `--timeout` is reported with the end of its output, and the others still run. One JSON
object is printed at the end. `--cpu` runs gloo processes without GPUs; that is only for checking the harness (tests).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import emit, environment
from vpp_core.torchrun import run_torchrun

REPO = Path(__file__).resolve().parents[1]


STAGES = {
    1: {"script": "step1_train_svd.py", "config": REPO / "video_conf" / "train_calvin_svd.yaml",
        "folders": ("svd", "clip", "stage1_data")},
    2: {"script": "step2_train_action_calvin.py", "config": REPO / "policy_conf" / "VPP_Calvinabc_train.yaml",
        "folders": ("svd", "clip")},
}


def trainer_overrides(stage: int, work: Path, data: Path | None, run_dir: Path, steps: int,
                      log_every: int) -> list[str]:
    """The trainer's settings for a timing run on the folders of `random_model_folders.py` under `work` (stage 2:
    and the CALVIN-format root `data`)."""
    if stage == 1:
        never = steps + 1  # validation, sample videos and checkpoints only after the last step
        return [
            f"pretrained_model_path={work / 'svd'}", f"train_args.clip_model_path={work / 'clip'}",
            f"train_args.dataset_dir={work / 'stage1_data'}", "train_args.dataset=robo", "train_args.prob=[1.0]",
            f"output_dir={run_dir.parent}", f"run_dir={run_dir}", f"max_train_steps={steps}",
            f"train_args.log_every={log_every}", "train_args.first_validation_step=null", f"validation_steps={never}",
            f"checkpointing_steps={never}", "save_final_checkpoint=false", "train_args.sample_preview=false",
            "report_to=none",
        ]
    return [
        f"root_data_dir={data}", f"video_model_path={work / 'svd'}", f"text_encoder_path={work / 'clip'}",
        f"run.run_dir={run_dir}", f"training.max_steps={steps}", f"training.log_every={log_every}",
        "training.validate=false", "training.checkpoint_every_steps=0", "training.checkpoint_every_epoch=false",
        "training.disable_progress_bar=true", "wandb.enabled=false",
    ]


def window_rates(metrics: Path, skip_windows: int) -> dict[str, Any]:
    """Median samples/s of the logged windows after the first `skip_windows`, with rank 0's largest peak memory."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    windows = [row for row in rows if "samples_per_s" in row]
    kept = windows[skip_windows:]
    if not kept:
        raise ValueError(f"{metrics}: {len(windows)} logged windows, none left after skipping {skip_windows}")
    out: dict[str, Any] = {"windows": len(kept), "samples_per_s": statistics.median(r["samples_per_s"] for r in kept),
                           "samples_per_s_per_window": [r["samples_per_s"] for r in kept]}
    for key in ("peak_memory_gib", "peak_reserved_gib"):
        if any(key in r for r in windows):
            out[f"rank0_{key}"] = max(r.get(key, 0.0) for r in windows)
    return out


def run_trainer(script: str, processes: int, config: Path, overrides: list[str], cpu: bool,
                timeout: float) -> tuple[bool, str]:
    """A trainer script in `processes` torchrun processes; (finished, the end of its output). On a timeout the whole
    process group goes, so that no worker is left holding a GPU for the next run."""
    env = {"WANDB_MODE": "disabled"}
    if cpu:
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    code, stdout, stderr = run_torchrun(REPO / script, ["--config", str(config), *overrides], processes, env,
                                        timeout, cwd=REPO)
    tail = stdout[-1500:] + stderr[-1500:]
    if code is None:
        return False, f"timed out after {timeout:g} s: " + tail
    return code == 0, tail


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", type=int, choices=sorted(STAGES), required=True)
    parser.add_argument("--work", type=Path, required=True, help="the --out folder of random_model_folders.py")
    parser.add_argument("--data", type=Path, help="stage 2: a CALVIN-format root with the frames' latents")
    parser.add_argument("--processes", default="1,8", help="process counts to run, comma-separated")
    parser.add_argument("--config", type=Path, help="the trainer's yaml (default: the stage's full-size config)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--skip-windows", type=int, default=2, help="logged windows left out (compiling, warm-up)")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="more trainer overrides, e.g. shard_optimizer_states=true (repeatable)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--cpu", action="store_true", help="gloo processes without GPUs (to check the harness)")
    args = parser.parse_args(argv)
    stage = STAGES[args.stage]
    config = args.config or stage["config"]
    counts = [int(n) for n in args.processes.split(",")]
    for folder in stage["folders"]:
        if not (args.work / folder).is_dir():
            parser.error(f"{args.work / folder} is missing: make it with benchmarks/random_model_folders.py "
                         f"--out {args.work}")
    if args.stage == 2 and (args.data is None or not (args.data / "training").is_dir()):
        parser.error(f"--stage 2 needs --data, a CALVIN-format root with training/ (got {args.data})")
    result: dict[str, Any] = {"benchmark": "trainer_scaling", "settings": {**vars(args), "config": config,
                                                                           "processes": counts},
                              "environment": environment(), "runs": {}}
    for n in counts:
        run_dir = args.work / "scaling" / f"stage{args.stage}_{n}proc"
        # a timing run starts from scratch: an earlier run's folder (other settings) would be refused or mixed in
        shutil.rmtree(run_dir, ignore_errors=True)
        overrides = trainer_overrides(args.stage, args.work, args.data, run_dir, args.steps, args.log_every)
        finished, tail = run_trainer(stage["script"], n, config, overrides + args.extra, args.cpu, args.timeout)
        entry: dict[str, Any] = {"run_dir": str(run_dir), "finished": finished}
        if finished:
            entry.update(window_rates(run_dir / "metrics.jsonl", args.skip_windows))
            entry["samples_per_s_per_process"] = entry["samples_per_s"] / n
        else:
            entry["output_tail"] = tail
        result["runs"][str(n)] = entry
    one = result["runs"].get("1", {})
    for entry in result["runs"].values():
        if "samples_per_s" in one and "samples_per_s" in entry:
            entry["scaling_efficiency"] = entry["samples_per_s_per_process"] / one["samples_per_s"]
    emit(result)
    return result


if __name__ == "__main__":
    main()
