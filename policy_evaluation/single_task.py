"""Single-task evaluation on the built-in simulator: K episodes per task, each from its own varied start scene.

Chains only ask for the tasks the sequence generator happens to draw (with a 6-task subset, the first 20 sequences
never ask for some of them), so per-task success cannot be read off a short chain evaluation. This mode measures it
directly:

* For every task of the (subset) suite and every trial j < K, one episode. Its start is drawn by vpp_sim's
  demonstration sampler (`vpp_sim.demos.sample_start`: a random symbolic condition where the task applies, blocks
  anywhere on the free table, jittered doors, a random arm pose) from `SeedSequence([seed, task index in
  SIM_TASKS, j])`; a second child of that sequence seeds python/numpy/torch for the rollout. So episode (task, j)
  is the same whatever the worker, the order, the task subset or K.
* The episode itself is a one-task chain run by the chain protocol (`runner.run_job` -> `protocol.run_sequence`):
  reset to the start, `policy.reset()`, the suite's instruction for the task, up to ep_len steps, gripper
  binarised, success as soon as the oracle detects the task.
* Episodes are numbered trial-major (index = j * num_tasks + task position), so `--num_videos N` films the first
  trials of every task first (videos/<task>_<j>.mp4).

Output folder: eval_config.json (mode "single_task"; "num_sequences" is null, so neither mode resumes the other's
folder), results.jsonl (one record per finished episode, with "task" and "trial"; a rerun runs only the missing
ones), results.json ({name: {"mode", "trials", "ep_len", "tasks", "avg_success_rate", "task_info" {task:
{"success", "total", "success_rate", "mean_success_steps"}}}}).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from policy_evaluation.env_interface import PolicyFactory, close_env
from policy_evaluation.runner import (
    RESULTS_JSONL,
    EvalSettings,
    EvaluationError,
    _append_record,
    _check_config,
    _jsonable,
    dispatch_jobs,
    read_records,
    repair_jsonl,
    write_results_json,
)
from policy_evaluation.suites import DEFAULT_ANNOTATIONS, SimEnvFactory, load_instructions, parse_sim_tasks

logger = logging.getLogger(__name__)

MODE = "single_task"
# eval_config.json keys a resume must match on top of runner.IDENTITY_KEYS and the shard
EXTRA_IDENTITY_KEYS = ("mode", "single_task_trials")


@dataclass(frozen=True)
class SingleTaskSuite:
    """The tasks (in SIM_TASKS order, the keys of `instructions`), their instructions and the simulator."""

    name: str
    instructions: dict[str, str]
    env_factory: SimEnvFactory

    @property
    def tasks(self) -> list[str]:
        return list(self.instructions)


def single_task_suite(
    tasks: str | Iterable[str] | None = None,
    annotations: str | Path = DEFAULT_ANNOTATIONS,
    seed: int = 0,
    cameras: tuple[str, ...] = ("static", "gripper"),
) -> SingleTaskSuite:
    """Like `suites.sim_suite` (same name, instructions and env) but without the chain table: any subset works,
    including ones the chain generator refuses (e.g. a single task)."""
    from vpp_sim.tasks import SIM_TASKS

    subset = parse_sim_tasks(tasks)
    instructions = load_instructions(annotations)
    return SingleTaskSuite(
        name="sim" if subset is None else "sim:" + ",".join(subset),
        instructions={t: instructions[t] for t in (subset or SIM_TASKS)},
        env_factory=SimEnvFactory(seed, tuple(cameras)),
    )


def episode_seeds(seed: int, task: str, trial: int) -> tuple[np.random.Generator, int]:
    """(start-scene generator, rollout seed) of episode (task, trial): children of SeedSequence([seed, task index in
    SIM_TASKS, trial])."""
    from vpp_sim.tasks import SIM_TASKS

    scene, rollout = np.random.SeedSequence([seed, SIM_TASKS.index(task), trial]).spawn(2)
    return np.random.default_rng(scene), int(rollout.generate_state(1)[0])


def build_episode_jobs(env: Any, tasks: Sequence[str], seed: int, indices: Iterable[int]) -> list[dict[str, Any]]:
    """runner.run_job jobs for the given episode indices (trial-major); `env` (a vpp_sim TabletopEnv) is only used
    by the start sampler's inverse kinematics."""
    from vpp_sim.demos import sample_start

    jobs = []
    for index in indices:
        trial, pos = divmod(int(index), len(tasks))
        task = tasks[pos]
        rng, rollout_seed = episode_seeds(seed, task, trial)
        robot_obs, scene_obs = sample_start(env, task, rng)
        jobs.append({
            "index": int(index),
            "initial_condition": {},  # sample_start draws a symbolic condition but does not return it
            "tasks": [task],
            "robot_obs": np.asarray(robot_obs, dtype=np.float64).tolist(),
            "scene_obs": np.asarray(scene_obs, dtype=np.float64).tolist(),
            "seed": rollout_seed,
            "video_name": f"{task}_{trial:03d}",
        })
    return jobs


def single_task_metrics(records: Iterable[Mapping[str, Any]], tasks: Sequence[str]) -> dict[str, Any]:
    """Per-task success counts and rates (and mean steps of the successes), plus their mean over the tasks."""
    by_task: dict[str, list[Mapping[str, Any]]] = {t: [] for t in tasks}
    for rec in sorted(records, key=lambda r: int(r["index"])):
        by_task[rec["tasks"][0]].append(rec)
    info = {}
    for task, recs in by_task.items():
        steps = [int(r["steps"][0]) for r in recs if int(r["result"]) == 1]
        info[task] = {
            "success": len(steps),
            "total": len(recs),
            "success_rate": len(steps) / len(recs) if recs else 0.0,
            "mean_success_steps": float(np.mean(steps)) if steps else None,
        }
    rates = [v["success_rate"] for v in info.values()]
    return {"avg_success_rate": float(np.mean(rates)) if rates else 0.0, "task_info": info}


def format_single_task_table(metrics: Mapping[str, Any]) -> str:
    """A short per-task table: successes/episodes, rate, mean steps of the successes; then the mean rate."""
    info = metrics["task_info"]
    width = max([len("task"), *map(len, info)])
    lines = [f"{'task':<{width}}  {'success':>9}  {'rate':>6}  {'steps':>5}"]
    for task, v in info.items():
        steps = "-" if v["mean_success_steps"] is None else f"{v['mean_success_steps']:.0f}"
        count = f"{v['success']:>4}/{v['total']:<4}"
        lines.append(f"{task:<{width}}  {count}  {100 * v['success_rate']:>5.1f}%  {steps:>5}")
    lines.append(f"{'mean':<{width}}  {'':>9}  {100 * metrics['avg_success_rate']:>5.1f}%")
    return "\n".join(lines)


def run_single_task_evaluation(
    suite: SingleTaskSuite,
    policy_factory: PolicyFactory,
    trials: int,
    settings: EvalSettings,
    output_dir: str | Path,
    wandb_run: Any = None,
) -> dict[str, Any]:
    """Evaluate `trials` episodes of every task of the suite (see module docstring); returns the results.json entry.
    Resumes from results.jsonl; settings.num_sequences is replaced by the episode count, shards are not supported."""
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise EvaluationError(f"single_task_trials must be an integer >= 1, got {trials!r}")
    if settings.num_shards != 1:
        raise EvaluationError("single-task evaluation does not shard; use --num_workers to parallelise")
    if settings.seed < 0:
        raise EvaluationError(f"single-task evaluation needs seed >= 0, got {settings.seed}")
    output_dir = Path(output_dir)
    tasks = suite.tasks
    settings = replace(settings, num_sequences=len(tasks) * trials)
    name = str(getattr(policy_factory, "name", "policy"))
    config = {
        "mode": MODE,
        "checkpoint": name,
        "suite": suite.name,
        "num_sequences": None,  # a chain-mode resume of this folder is refused
        "single_task_trials": trials,
        "tasks": tasks,
        "ep_len": settings.ep_len,
        "seed": settings.seed,
        "shard": [0, 1],
        "policy_settings": _jsonable(getattr(policy_factory, "settings", {})),
        "settings": _jsonable(asdict(settings)),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    _check_config(output_dir, config, EXTRA_IDENTITY_KEYS)

    indices = list(range(settings.num_sequences))
    jsonl = output_dir / RESULTS_JSONL
    repair_jsonl(jsonl)
    records = {i: r for i, r in read_records(jsonl).items() if 0 <= i < len(indices)}
    todo = [i for i in indices if i not in records]
    logger.info("%d of %d episodes already finished in %s", len(records), len(indices), output_dir)
    jobs: list[dict[str, Any]] = []
    if todo:
        from vpp_sim import make_sim_env

        sampler_env, _ = make_sim_env(cameras=())
        try:
            jobs = build_episode_jobs(sampler_env, tasks, settings.seed, todo)
        finally:
            close_env(sampler_env)

    bar = None
    if settings.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(indices), initial=len(records), dynamic_ncols=True)

    def on_record(rec: dict[str, Any]) -> None:
        trial, pos = divmod(int(rec["index"]), len(tasks))
        rec = {**rec, "task": tasks[pos], "trial": trial}
        _append_record(jsonl, rec)
        records[int(rec["index"])] = rec
        if bar is not None:
            bar.update(1)
            bar.set_description(f"success {sum(int(r['result']) for r in records.values())}/{len(records)}")
        if wandb_run is not None:
            wandb_run.log({"eval/avg_success_rate": single_task_metrics(records.values(), tasks)["avg_success_rate"],
                           "eval/num_done": len(records)})

    try:
        dispatch_jobs(jobs, suite.env_factory, policy_factory, suite.instructions, settings, output_dir, on_record)
    finally:
        if bar is not None:
            bar.close()
    missing = [i for i in indices if i not in records]
    if missing:  # pragma: no cover - the runners raise before this
        raise EvaluationError(f"{len(missing)} episodes were not evaluated: {missing[:10]}")
    metrics = {"mode": MODE, "trials": trials, "ep_len": settings.ep_len, "tasks": tasks,
               **single_task_metrics(records.values(), tasks)}
    write_results_json(output_dir, name, metrics)
    return metrics
