"""Stage-1 training throughput and memory with 1 and N processes on one node: the multi-GPU scaling figure.

    python benchmarks/random_model_folders.py --out W --stage1-clips 96
    python benchmarks/stage1_scaling.py --work W --processes 1,8 --steps 40 [--set shard_optimizer_states=true]

For each process count the real trainer, `step1_train_svd.py` on the full-size config (`--config`), runs under
torchrun, as `accelerate launch` starts it, on the random folders of `random_model_folders.py`, with validation,
sample videos and checkpoints pushed past the last step. Its `metrics.jsonl` logs the node's samples/s every
`--log-every` steps. The harness reports:
- the median over the windows after the first `--skip-windows` (the first step compiles for minutes);
- per GPU, and the scaling efficiency: the per-GPU rate against one process's;
- rank 0's peak memory (the trainer logs from rank 0 only).
A run that fails or passes `--timeout` is reported with the end of its output, and the others still run. One JSON
object is printed at the end. `--cpu` runs gloo processes without GPUs; that is only for checking the harness (tests).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import emit, environment

REPO = Path(__file__).resolve().parents[1]


def trainer_overrides(work: Path, run_dir: Path, steps: int, log_every: int) -> list[str]:
    """The trainer's settings for a timing run on the folders of `random_model_folders.py` under `work`."""
    never = steps + 1  # validation, sample videos and checkpoints only after the last step
    return [
        f"pretrained_model_path={work / 'svd'}", f"train_args.clip_model_path={work / 'clip'}",
        f"train_args.dataset_dir={work / 'stage1_data'}", "train_args.dataset=robo", "train_args.prob=[1.0]",
        f"output_dir={run_dir.parent}", f"run_dir={run_dir}", f"max_train_steps={steps}",
        f"train_args.log_every={log_every}", "train_args.first_validation_step=null", f"validation_steps={never}",
        f"checkpointing_steps={never}", "save_final_checkpoint=false", "train_args.sample_preview=false",
        "report_to=none",
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


def run_trainer(processes: int, config: Path, overrides: list[str], cpu: bool, timeout: float) -> tuple[bool, str]:
    """step1_train_svd.py in `processes` torchrun processes; (finished, the end of its output)."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    if cpu:
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           str(REPO / "step1_train_svd.py"), "--config", str(config), *overrides]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or b"")[-1500:] + (exc.stderr or b"")[-1500:]
        return False, f"timed out after {timeout:.0f} s: " + (tail.decode(errors="replace") if isinstance(tail, bytes)
                                                              else tail)
    return proc.returncode == 0, (proc.stdout[-1500:] + proc.stderr[-1500:])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="the --out folder of random_model_folders.py")
    parser.add_argument("--processes", default="1,8", help="process counts to run, comma-separated")
    parser.add_argument("--config", type=Path, default=REPO / "video_conf" / "train_calvin_svd.yaml")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--skip-windows", type=int, default=2, help="logged windows left out (compiling, warm-up)")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="more trainer overrides, e.g. shard_optimizer_states=true (repeatable)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--cpu", action="store_true", help="gloo processes without GPUs (to check the harness)")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.processes.split(",")]
    for folder in ("svd", "clip", "stage1_data"):
        if not (args.work / folder).is_dir():
            parser.error(f"{args.work / folder} is missing: make it with benchmarks/random_model_folders.py "
                         f"--out {args.work}")
    result: dict[str, Any] = {"benchmark": "stage1_scaling", "settings": {**vars(args), "processes": counts},
                              "environment": environment(), "runs": {}}
    for n in counts:
        run_dir = args.work / "scaling" / f"stage1_{n}proc"
        overrides = trainer_overrides(args.work, run_dir, args.steps, args.log_every) + args.extra
        finished, tail = run_trainer(n, args.config, overrides, args.cpu, args.timeout)
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
