"""CALVIN long-horizon evaluation of a VPP stage-2 checkpoint.

    python policy_evaluation/calvin_evaluate.py --video_model_path V --action_model_folder A --clip_model_path C \\
        --calvin_abc_dir D [--num_sequences 1000] [--ep_len 360] [--shard i/n] [--num_workers N] [--output_dir O] \\
        [--num_videos 10] [--device cuda] [--env calvin|sim] [--sim_tasks T1,T2,...] [--wandb]
    python policy_evaluation/calvin_evaluate.py --baseline random|expert --env sim [--sim_tasks T1,T2,...] [...]
    python policy_evaluation/calvin_evaluate.py merge SHARD_DIR [SHARD_DIR ...] --output DIR

--action_model_folder is a stage-2 checkpoint folder (config.yaml + model.safetensors) or a training run folder,
whose `last` file names the checkpoint to evaluate. Results go to --output_dir (default
<action_model_folder>/eval_<env>_<checkpoint>[_shard<i>of<n>]): results.jsonl (one line per finished sequence;
a rerun resumes), results.json ({checkpoint: {avg_seq_len, chain_sr, task_info}}) and videos/.
Defaults come from policy_conf/calvin_evaluate.yaml (--config).

--sim_tasks (with --env sim) restricts the built-in simulator's suite to those tasks: same sequence generator and
rules over that subset, chains of min(5, number of task categories) tasks (e.g. 3 for drawer + slider + LED tasks).
--baseline replaces the checkpoint: "random" (uniform random relative actions, gripper +-1, seeded by --seed) or
"expert" (vpp_sim's scripted expert for each subtask; reads the simulator's state, --env sim only). Its results go
to output/baselines/eval_<env>[_<subset>]_baseline_<name> unless --output_dir is given.

--single_task_trials K (--env sim; instead of chains, so not with --num_sequences or --shard) runs K episodes of
every task of the suite, each from a varied start where the task is feasible (vpp_sim's demonstration sampler,
seeded by (seed, task, trial)), and reports the success rate per task (policy_evaluation/single_task.py). Its
default folder gets a `single<K>` tag.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: make the repo's packages importable (also in spawned workers)
    sys.path.insert(0, str(REPO_ROOT))

DEFAULT_CONFIG = REPO_ROOT / "policy_conf" / "calvin_evaluate.yaml"
BASELINE_OUTPUT_ROOT = REPO_ROOT / "output" / "baselines"

logger = logging.getLogger("calvin_evaluate")


def _repo_path(p: str | Path) -> Path:
    p = Path(p).expanduser()
    return p if p.is_absolute() or p.exists() else REPO_ROOT / p


def build_parser() -> argparse.ArgumentParser:
    from policy_evaluation.baselines import BASELINES
    from vpp_core.config import AUTO, COMPILE_MODES_WITHOUT_CUDA_GRAPHS, FLOAT32_MATMUL_PRECISIONS, switch_argument

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video_model_path", help="stage-1 video model folder (default: the checkpoint config's)")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--action_model_folder", help="stage-2 checkpoint folder or run folder")
    what.add_argument("--baseline", choices=BASELINES,
                      help="evaluate a reference policy instead of a checkpoint: random actions or the scripted "
                           "expert (--env sim)")
    ap.add_argument("--clip_model_path", help="CLIP folder (default: the checkpoint config's)")
    ap.add_argument("--calvin_abc_dir", help="CALVIN dataset root (task_ABC_D); its validation/ folder is used")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="evaluation defaults (yaml)")
    ap.add_argument("--num_sequences", type=int)
    ap.add_argument("--single_task_trials", type=int,
                    help="--env sim: K single-task episodes per task instead of chains (not with --num_sequences)")
    ap.add_argument("--ep_len", type=int)
    ap.add_argument("--shard", default="0/1", help="i/n: evaluate the i-th of n contiguous slices")
    ap.add_argument("--num_workers", type=int, help="env processes, each with its own env and policy")
    ap.add_argument("--output_dir")
    ap.add_argument("--num_videos", type=int)
    ap.add_argument("--device", help="cpu, cuda, cuda:1 or a comma list (cuda:0,cuda:1) spread over the workers")
    ap.add_argument("--env", choices=["calvin", "sim"])
    ap.add_argument("--sim_tasks", help="--env sim: comma-separated subset of vpp_sim.tasks.SIM_TASKS to evaluate on")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--use_ema", action="store_true", default=None)
    ap.add_argument("--cudnn_benchmark", action="store_true", default=None,
                    help="CUDA: cuDNN picks the fastest convolution algorithms (faster chunks; may round differently)")
    ap.add_argument("--compile", nargs="?", const="default", choices=[AUTO, "none", *COMPILE_MODES_WITHOUT_CUDA_GRAPHS],
                    metavar="MODE", help="torch.compile the video model's passes and the action head (MODE: auto = "
                    "default on CUDA, the yaml's default; none; default; max-autotune-no-cudagraphs). Faster chunks, "
                    "close to eager but not bit-identical")
    ap.add_argument("--float32_matmul_precision", choices=FLOAT32_MATMUL_PRECISIONS,
                    help="float32 matrix products of the action head: high = TF32 tensor cores (the yaml's default), "
                    "highest = full float32, medium = bfloat16")
    ap.add_argument("--fused_decoder", nargs="?", const=True, type=switch_argument, metavar="true|false|auto",
                    help="the sampler's decoder steps as Triton kernels (auto, the yaml's default: on CUDA where they "
                    "run; true: on, or an error; false): 0.6 ms less per chunk at batch 1 on an H100; close to the "
                    "eager decoder, not bit-identical")
    egl = ap.add_mutually_exclusive_group()
    egl.add_argument("--egl", dest="use_egl", action="store_true", default=None, help="force EGL rendering")
    egl.add_argument("--no_egl", dest="use_egl", action="store_false", help="pybullet's CPU TinyRenderer")
    ap.add_argument("--wandb", action="store_true", help="log to Weights & Biases (offline unless WANDB_MODE says)")
    ap.add_argument("--no_progress", action="store_true")
    return ap


def build_merge_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="calvin_evaluate.py merge", description="merge evaluation shard folders")
    ap.add_argument("shard_dirs", nargs="+")
    ap.add_argument("--output", required=True)
    ap.add_argument("--allow_incomplete", action="store_true", help="merge even if sequences are missing")
    return ap


def load_config(path: str | Path) -> dict[str, Any]:
    import yaml

    path = _repo_path(path)
    if not path.is_file():
        raise SystemExit(f"evaluation config not found: {path}")
    return yaml.safe_load(path.read_text()) or {}


def resolve_devices(device: str | None, num_workers: int) -> tuple[str, ...]:
    if device:
        return tuple(d.strip() for d in device.split(",") if d.strip())
    try:
        import torch

        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            return tuple(f"cuda:{k}" for k in range(n)) if num_workers > 1 and n > 1 else ("cuda",)
    except ImportError:
        pass
    return ("cpu",)


def default_output_dir(
    action_model_folder: str | Path, env: str, checkpoint_name: str, shard: tuple[int, int],
    sim_tasks: tuple[str, ...] | None = None, single_task_trials: int | None = None,
) -> Path:
    """<action_model_folder>/eval_<env>[_<subset tag>][_single<K>]_<checkpoint>[_shard<i>of<n>]; a task subset gets
    its own folder (tag: task count + hash of the names), so runs on different subsets never collide; so does a
    single-task evaluation with K trials per task."""
    base = Path(action_model_folder).expanduser()
    name = f"eval_{env}"
    if sim_tasks:
        digest = hashlib.sha1(",".join(sim_tasks).encode()).hexdigest()[:8]
        name += f"_{len(sim_tasks)}tasks-{digest}"
    if single_task_trials:
        name += f"_single{single_task_trials}"
    name += f"_{checkpoint_name}"
    if shard[1] > 1:
        name += f"_shard{shard[0]}of{shard[1]}"
    return base / name


def _init_wandb(cfg: dict[str, Any], output_dir: Path, run_config: dict[str, Any]) -> Any:
    try:
        import wandb
    except ImportError:
        logger.warning("--wandb given but wandb is not installed; continuing without it")
        return None
    mode = os.environ.get("WANDB_MODE") or (cfg.get("wandb") or {}).get("mode", "offline")
    try:
        return wandb.init(
            project=(cfg.get("wandb") or {}).get("project", "vpp-calvin-eval"),
            mode=mode,
            dir=str(output_dir),
            config=run_config,
            job_type="eval",
        )
    except Exception as exc:  # never let logging kill an evaluation
        logger.warning("wandb.init failed (%s); continuing without it", exc)
        return None


def main_evaluate(argv: list[str]) -> int:
    from policy_evaluation.baselines import BaselinePolicyFactory
    from policy_evaluation.calvin_env_adapter import CalvinSetupError
    from policy_evaluation.metrics import print_metrics
    from policy_evaluation.policy_factory import (
        CheckpointNotFoundError,
        CheckpointPolicyFactory,
        check_calvin_embodiment,
        resolve_checkpoint,
    )
    from policy_evaluation.runner import EvalSettings, EvaluationError, parse_shard, run_evaluation, write_results_json
    from policy_evaluation.single_task import (
        format_single_task_table,
        run_single_task_evaluation,
        single_task_suite,
    )
    from policy_evaluation.suites import SuiteError, calvin_suite, parse_sim_tasks, sim_suite
    from policy_models.checkpoints import CheckpointError
    from policy_models.config import PolicyConfigError
    from vpp_core.config import AUTO, ConfigError, compile_setting, flag_setting, matmul_precision_setting

    args = build_parser().parse_args(argv)
    cfg = load_config(args.config)

    def pick(name: str, default: Any = None) -> Any:
        value = getattr(args, name, None)
        return cfg.get(name, default) if value is None else value

    try:
        env = pick("env", "calvin")
        shard = parse_shard(args.shard)
        # checked before any env or process starts; "auto" resolves per worker, on its device
        compile_mode = compile_setting(pick("compile"), "compile")
        short_query = flag_setting(pick("short_query_attention", False), "short_query_attention")
        fused_decoder = flag_setting(pick("fused_decoder", AUTO), "fused_decoder")
        matmul_precision = matmul_precision_setting(pick("float32_matmul_precision", "highest"),
                                                    "float32_matmul_precision")
        sim_tasks = parse_sim_tasks(pick("sim_tasks"))
        if env != "sim" and sim_tasks:
            raise EvaluationError("--sim_tasks needs --env sim")
        if args.baseline == "expert" and env != "sim":
            raise EvaluationError("--baseline expert reads the built-in simulator's state: use --env sim")
        trials = _single_task_trials(pick("single_task_trials"), args, env, shard)
        checkpoint = resolve_checkpoint(args.action_model_folder) if args.baseline is None else None
        if checkpoint is not None:
            check_calvin_embodiment(checkpoint)
        num_videos = int(pick("num_videos", 0))
        annotations = _repo_path(cfg.get("annotations", "policy_conf/annotations/new_playtable_validation.yaml"))
        if env == "calvin":
            if not args.calvin_abc_dir:
                raise EvaluationError("--calvin_abc_dir is required with --env calvin (or use --env sim)")
            suite = calvin_suite(
                args.calvin_abc_dir,
                annotations=annotations,
                tasks_yaml=_repo_path(cfg.get("tasks", "policy_conf/tasks/new_playtable_tasks.yaml")),
                use_egl=pick("use_egl"),
            )
            suite.env_factory.check()  # fail fast: dataset config and calvin_env import
        else:
            # baselines ignore images: render only what the videos need
            cameras = ("static", "gripper") if args.baseline is None else ("static",) if num_videos > 0 else ()
            make_suite = sim_suite if trials is None else single_task_suite
            suite = make_suite(seed=int(pick("seed", 0)), annotations=annotations, tasks=sim_tasks, cameras=cameras)
        num_workers = int(pick("num_workers", 1))
        settings = EvalSettings(
            num_sequences=int(pick("num_sequences", 1000)),
            ep_len=int(pick("ep_len", 360)),
            num_videos=num_videos,
            seed=int(pick("seed", 0)),
            shard_index=shard[0],
            num_shards=shard[1],
            num_workers=num_workers,
            devices=resolve_devices(pick("device"), num_workers),
            video_fps=int(cfg.get("video_fps", 30)),
            progress=not args.no_progress,
        )
        if args.baseline is not None:
            factory = BaselinePolicyFactory(args.baseline, dict(suite.instructions))
        else:
            factory = CheckpointPolicyFactory(
                checkpoint_dir=str(checkpoint),
                video_model_path=args.video_model_path,
                clip_model_path=args.clip_model_path,
                overrides=dict(cfg.get("policy_overrides") or {}),
                use_ema=bool(pick("use_ema", False)),
                dtype=cfg.get("dtype"),
                cudnn_benchmark=bool(pick("cudnn_benchmark", False)),
                compile_mode=compile_mode,
                short_query_attention=short_query,
                float32_matmul_precision=matmul_precision,
                fused_decoder=fused_decoder,
            )
        output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(
            args.action_model_folder or BASELINE_OUTPUT_ROOT, env, factory.name, shard, sim_tasks, trials
        )
        if trials is None:
            print(f"Evaluating {checkpoint or factory.name} on {suite.name} ({settings.num_sequences} sequences of "
                  f"{suite.task_table.seq_len} tasks, shard {args.shard}) -> {output_dir}")
        else:
            print(f"Evaluating {checkpoint or factory.name} on {suite.name}: {trials} single-task episodes of each of "
                  f"{len(suite.tasks)} tasks -> {output_dir}")
        wandb_run = None
        if args.wandb or (cfg.get("wandb") or {}).get("enabled", False):
            if trials is None:
                suite.sequences(settings.num_sequences)  # cached; generated before wandb starts its threads
            wandb_run = _init_wandb(cfg, output_dir, {"checkpoint": str(checkpoint or factory.name), "env": env,
                                                       "suite": suite.name, **vars(args)})
        try:
            if trials is not None:
                metrics = run_single_task_evaluation(suite, factory, trials, settings, output_dir, wandb_run=wandb_run)
                if wandb_run is not None:
                    wandb_run.log({"final/avg_success_rate": metrics["avg_success_rate"],
                                   **{f"final/sr_{t}": v["success_rate"] for t, v in metrics["task_info"].items()}})
                print(f"Single-task results for {factory.name} ({trials} episodes per task, ep_len {settings.ep_len}):")
                print(format_single_task_table(metrics))
                print(f"Saved {output_dir / 'results.json'}")
                return 0
            metrics = run_evaluation(suite, factory, settings, output_dir, wandb_run=wandb_run)
            if sim_tasks:  # eval_config.json has them in the suite name; results.json says what the numbers cover
                metrics = {**metrics, "sim_tasks": list(sim_tasks), "seq_len": suite.task_table.seq_len}
                write_results_json(output_dir, factory.name, metrics)
            if wandb_run is not None:
                wandb_run.log({"final/avg_seq_len": metrics["avg_seq_len"],
                               **{f"final/chain_sr_{k}": v for k, v in metrics["chain_sr"].items()}})
        finally:
            if wandb_run is not None:
                wandb_run.finish()
    except (CalvinSetupError, CheckpointError, CheckpointNotFoundError, ConfigError, EvaluationError,
            FileNotFoundError, PolicyConfigError, SuiteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    title = f"Results for {factory.name}"
    if shard[1] > 1:
        title += f" (shard {shard[0]}/{shard[1]}; merge the shards for the full numbers)"
    print_metrics(metrics, title + ":")
    print(f"Saved {output_dir / 'results.json'}")
    return 0


def _single_task_trials(value: Any, args: argparse.Namespace, env: str, shard: tuple[int, int]) -> int | None:
    """--single_task_trials / the yaml key: None (chain evaluation) or K >= 1, refused with chain-only options."""
    from policy_evaluation.runner import EvaluationError

    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EvaluationError(f"single_task_trials must be an integer >= 1 (or null for chains), got {value!r}")
    if env != "sim":
        raise EvaluationError("--single_task_trials needs --env sim (start scenes come from vpp_sim's sampler)")
    if args.num_sequences is not None:
        raise EvaluationError("--single_task_trials and --num_sequences are mutually exclusive: single-task episodes "
                              "or chains (set single_task_trials: null in the config for chains)")
    if shard != (0, 1):
        raise EvaluationError("--single_task_trials does not shard: use --num_workers to parallelise")
    return value


def main_merge(argv: list[str]) -> int:
    from policy_evaluation.runner import EvaluationError, merge_shards

    args = build_merge_parser().parse_args(argv)
    try:
        merge_shards(args.shard_dirs, args.output, allow_incomplete=args.allow_incomplete)
    except EvaluationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Saved {Path(args.output) / 'results.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if argv and argv[0] == "merge":
        return main_merge(argv[1:])
    return main_evaluate(argv)


if __name__ == "__main__":
    sys.exit(main())
