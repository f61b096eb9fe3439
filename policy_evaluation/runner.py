"""CALVIN long-horizon evaluation runner: sharding, env worker processes, resumable results, merge.

Output folder (one per evaluated checkpoint and shard):
    eval_config.json   what is being evaluated (checkpoint, suite, num_sequences, ep_len, seed, shard, policy
                       settings); a rerun with different settings into the same folder is refused
    results.jsonl      one record per finished sequence, appended (flush + fsync) as soon as it finishes:
                       {"index", "initial_condition", "robot_obs", "scene_obs", "tasks", "result", "steps",
                        "seed", "duration_s", "video"}
    results.json       {checkpoint_name: {"avg_seq_len", "chain_sr" {"1".."5"}, "task_info"}}, written atomically
                       once every sequence of the shard is done (merged with any other checkpoints already there)
    videos/            sequence_XXXX.mp4 for the first `num_videos` sequences (global index < num_videos)

Resumption: a rerun reads results.jsonl and runs only the missing sequences. Sequence i always runs with
`seed + i` for python/numpy/torch, so its outcome does not depend on which process runs it, in which order, or
whether the run was interrupted; metrics are computed over the records in index order. (With calvin_env, pybullet
state carried over from earlier rollouts in the same process can still move blocks by < 0.3 mm; calvin_reference
§0. The built-in simulator and the fakes used in the tests are exactly reproducible.)

Sharding: `shard i/n` takes the i-th contiguous slice of range(num_sequences) (np.array_split: sizes differ by at
most 1). `merge_shards` combines shard folders into one folder whose results.json equals an unsharded run's.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import queue
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policy_evaluation.env_interface import EnvFactory, EvalEnv, EvalPolicy, PolicyFactory, TaskOracle, close_env
from policy_evaluation.metrics import metrics_from_records, print_metrics, progress_description
from policy_evaluation.protocol import run_sequence
from policy_evaluation.suites import EvalSuite
from vpp_core.io import remove_stale_temporaries

logger = logging.getLogger(__name__)

RESULTS_JSONL = "results.jsonl"
RESULTS_JSON = "results.json"
CONFIG_JSON = "eval_config.json"
VIDEO_DIR = "videos"
# eval_config.json keys that must match for a resume / a merge (shard excluded for merges)
IDENTITY_KEYS = ("checkpoint", "suite", "num_sequences", "ep_len", "seed", "policy_settings")


class EvaluationError(RuntimeError):
    """A problem with the evaluation setup or its output folder; the message says what to do."""


@dataclass
class EvalSettings:
    num_sequences: int = 1000
    ep_len: int = 360
    num_videos: int = 0
    seed: int = 0
    shard_index: int = 0
    num_shards: int = 1
    num_workers: int = 1
    devices: tuple[str, ...] = ("cpu",)
    video_fps: int = 30
    progress: bool = True

    def __post_init__(self) -> None:
        if self.num_sequences < 1:
            raise EvaluationError(f"num_sequences must be >= 1, got {self.num_sequences}")
        if self.ep_len < 1:
            raise EvaluationError(f"ep_len must be >= 1, got {self.ep_len}")
        if not 0 <= self.shard_index < self.num_shards:
            raise EvaluationError(f"shard {self.shard_index}/{self.num_shards}: need 0 <= i < n")
        if self.num_workers < 1:
            raise EvaluationError(f"num_workers must be >= 1, got {self.num_workers}")
        self.devices = tuple(self.devices) or ("cpu",)


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n."""
    try:
        i_str, n_str = text.split("/")
        i, n = int(i_str), int(n_str)
    except ValueError:
        raise EvaluationError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise EvaluationError(f"--shard {text}: need 0 <= i < n")
    return i, n


def shard_indices(num_sequences: int, shard_index: int = 0, num_shards: int = 1) -> list[int]:
    """The shard's contiguous slice of range(num_sequences) (np.array_split)."""
    return [int(i) for i in np.array_split(np.arange(num_sequences), num_shards)[shard_index]]


# ----------------------------------------------------------------------------------------------------- records I/O


def read_records(path: str | Path) -> dict[int, dict[str, Any]]:
    """Finished sequences in results.jsonl by index. A truncated last line (crash while writing) is ignored."""
    path = Path(path)
    out: dict[int, dict[str, Any]] = {}
    if not path.is_file():
        return out
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) - 1:
                logger.warning("ignoring a truncated last line in %s", path)
                continue
            raise EvaluationError(f"{path} line {n + 1} is not valid JSON") from None
        out[int(rec["index"])] = rec
    return out


def repair_jsonl(path: str | Path) -> bool:
    """Cut a truncated last line (a crash while writing) off results.jsonl; True if something was cut."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return False
    keep = data.rfind(b"\n") + 1
    logger.warning("removing a truncated last line from %s", path)
    with open(path, "r+b") as fh:
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    return True


def _append_record(path: Path, record: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _atomic_json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_results_json(output_dir: Path, checkpoint_name: str, metrics: Mapping[str, Any]) -> Path:
    """results.json = {checkpoint_name: metrics}, merged with other checkpoints already in the file."""
    path = output_dir / RESULTS_JSON
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            logger.warning("overwriting unreadable %s", path)
    data[checkpoint_name] = metrics
    _atomic_json(data, path)
    return path


def _check_config(output_dir: Path, config: dict[str, Any], extra_keys: Sequence[str] = ()) -> None:
    """Write eval_config.json, or refuse when the folder holds another evaluation (IDENTITY_KEYS, shard and
    `extra_keys` must match)."""
    path = output_dir / CONFIG_JSON
    if path.is_file():
        old = json.loads(path.read_text())
        diffs = [k for k in (*IDENTITY_KEYS, "shard", *extra_keys) if old.get(k) != config.get(k)]
        if diffs:
            detail = "; ".join(f"{k}: {old.get(k)!r} there vs {config.get(k)!r} now" for k in diffs)
            raise EvaluationError(
                f"{output_dir} holds results of a different evaluation ({detail}). Use another --output_dir, or "
                "delete the folder to start over."
            )
    else:
        _atomic_json(config, path)


# ----------------------------------------------------------------------------------------------------- one sequence


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def run_job(
    env: EvalEnv,
    oracle: TaskOracle,
    policy: EvalPolicy,
    job: Mapping[str, Any],
    instructions: Mapping[str, str],
    settings: EvalSettings,
    output_dir: Path,
) -> dict[str, Any]:
    """Run one sequence (seeded with job["seed"] if given, else settings.seed + index) and return its record;
    writes its video (videos/<job["video_name"] or sequence_XXXX>.mp4) if index < num_videos."""
    index = int(job["index"])
    seed = int(job.get("seed", settings.seed + index))
    _seed_all(seed)
    record_video = index < settings.num_videos
    t0 = time.perf_counter()
    outcome = run_sequence(
        env,
        oracle,
        policy,
        np.asarray(job["robot_obs"], dtype=np.float64),
        np.asarray(job["scene_obs"], dtype=np.float64),
        job["tasks"],
        instructions,
        ep_len=settings.ep_len,
        record=record_video,
    )
    video = None
    if record_video:
        from policy_evaluation.video import write_rollout_video

        path = output_dir / VIDEO_DIR / f"{job.get('video_name') or f'sequence_{index:04d}'}.mp4"
        write_rollout_video(
            path, outcome.frames, outcome.frame_subtask, job["tasks"], dict(instructions), outcome.result,
            fps=settings.video_fps,
        )
        video = str(path.relative_to(output_dir))
    return {
        "index": index,
        "initial_condition": dict(job["initial_condition"]),
        "robot_obs": [float(x) for x in job["robot_obs"]],
        "scene_obs": [float(x) for x in job["scene_obs"]],
        "tasks": list(job["tasks"]),
        "result": int(outcome.result),
        "steps": [int(s) for s in outcome.steps],
        "seed": seed,
        "duration_s": round(time.perf_counter() - t0, 3),
        "video": video,
    }


# ----------------------------------------------------------------------------------------------------- workers


def make_policy(policy_factory: PolicyFactory, device: str, env: EvalEnv) -> EvalPolicy:
    """`policy_factory(device)`; a factory with a true `needs_env` attribute (a privileged baseline such as the
    scripted expert, which reads the simulator's state) also gets this process's env as `env=`."""
    if getattr(policy_factory, "needs_env", False):
        return policy_factory(device, env=env)
    return policy_factory(device)


def _worker_main(
    worker_id: int,
    env_factory: EnvFactory,
    policy_factory: PolicyFactory,
    device: str,
    instructions: dict[str, str],
    settings: EvalSettings,
    output_dir: str,
    jobs: Any,
    results: Any,
) -> None:
    """Evaluation process: builds its own env and policy, then runs jobs until it gets None, or until the evaluator
    that started it is gone: killed, it can no longer record results, and a worker left running would hold its GPU
    and compete with the rerun (which resumes from results.jsonl)."""
    env = None
    parent = multiprocessing.parent_process()
    try:
        env, oracle = env_factory()
        policy = make_policy(policy_factory, device, env)
        while True:
            if parent is not None and not parent.is_alive():
                break
            job = jobs.get()
            if job is None:
                break
            results.put(("record", worker_id, run_job(env, oracle, policy, job, instructions, settings,
                                                       Path(output_dir))))
        results.put(("done", worker_id, None))
    except BaseException:
        results.put(("error", worker_id, traceback.format_exc()))
    finally:
        if env is not None:
            close_env(env)


def _run_in_process(
    jobs: Sequence[dict], env_factory: EnvFactory, policy_factory: PolicyFactory, instructions: dict[str, str],
    settings: EvalSettings, output_dir: Path, on_record: Callable[[dict], None],
) -> None:
    env, oracle = env_factory()
    try:
        policy = make_policy(policy_factory, settings.devices[0], env)
        for job in jobs:
            on_record(run_job(env, oracle, policy, job, instructions, settings, output_dir))
    finally:
        close_env(env)


def _run_workers(
    jobs: Sequence[dict], env_factory: EnvFactory, policy_factory: PolicyFactory, instructions: dict[str, str],
    settings: EvalSettings, output_dir: Path, on_record: Callable[[dict], None],
) -> None:
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: one env (EGL client) and one CUDA context each
    job_q, result_q = ctx.Queue(), ctx.Queue()
    n = min(settings.num_workers, len(jobs))
    for job in jobs:
        job_q.put(dict(job))
    for _ in range(n):
        job_q.put(None)
    procs = []
    for w in range(n):
        device = settings.devices[w % len(settings.devices)]
        p = ctx.Process(
            target=_worker_main,
            args=(w, env_factory, policy_factory, device, instructions, settings, str(output_dir), job_q, result_q),
            name=f"calvin-eval-{w}",
            daemon=True,
        )
        p.start()
        procs.append(p)
    done: set[int] = set()
    try:
        while len(done) < n:
            try:
                kind, wid, payload = result_q.get(timeout=5.0)
            except queue.Empty:
                dead = [w for w, p in enumerate(procs) if w not in done and not p.is_alive()]
                if dead:
                    raise EvaluationError(
                        f"evaluation worker(s) {dead} died (exit codes {[procs[w].exitcode for w in dead]}) without "
                        "reporting an error; finished sequences are saved, rerun to resume"
                    ) from None
                continue
            if kind == "record":
                on_record(payload)
            elif kind == "done":
                done.add(wid)
            else:
                raise EvaluationError(f"evaluation worker {wid} failed:\n{payload}")
    finally:
        for p in procs:
            if p.is_alive() and len(done) < n:
                p.terminate()
        for p in procs:
            p.join(timeout=30)


def dispatch_jobs(
    jobs: Sequence[dict], env_factory: EnvFactory, policy_factory: PolicyFactory, instructions: dict[str, str],
    settings: EvalSettings, output_dir: Path, on_record: Callable[[dict], None],
) -> None:
    """Run `jobs` (run_job) in this process or in settings.num_workers worker processes; records go to on_record."""
    if not jobs:
        return
    runner = _run_in_process if settings.num_workers <= 1 or len(jobs) <= 1 else _run_workers
    runner(jobs, env_factory, policy_factory, instructions, settings, output_dir, on_record)


# ----------------------------------------------------------------------------------------------------- main entry


def build_jobs(suite: EvalSuite, num_sequences: int, indices: Iterable[int]) -> list[dict[str, Any]]:
    sequences = suite.sequences(num_sequences)
    jobs = []
    for i in indices:
        cond, tasks = sequences[i]
        robot_obs, scene_obs = suite.reset_state(cond)
        jobs.append(
            {
                "index": int(i),
                "initial_condition": dict(cond),
                "tasks": list(tasks),
                "robot_obs": np.asarray(robot_obs, dtype=np.float64).tolist(),
                "scene_obs": np.asarray(scene_obs, dtype=np.float64).tolist(),
            }
        )
    return jobs


def run_evaluation(
    suite: EvalSuite,
    policy_factory: PolicyFactory,
    settings: EvalSettings,
    output_dir: str | Path,
    env_factory: EnvFactory | None = None,
    wandb_run: Any = None,
) -> dict[str, Any]:
    """Evaluate (the shard of) the suite's sequences; returns this shard's metrics. Resumes from results.jsonl."""
    output_dir = Path(output_dir)
    env_factory = env_factory or suite.env_factory
    if env_factory is None:
        raise EvaluationError(f"suite {suite.name!r} has no env factory (for calvin: pass --calvin_abc_dir)")
    name = str(getattr(policy_factory, "name", "policy"))
    config = {
        "checkpoint": name,
        "suite": suite.name,
        "num_sequences": settings.num_sequences,
        "ep_len": settings.ep_len,
        "seed": settings.seed,
        "shard": [settings.shard_index, settings.num_shards],
        "policy_settings": _jsonable(getattr(policy_factory, "settings", {})),
        "settings": _jsonable(asdict(settings)),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    _check_config(output_dir, config)
    for folder in (output_dir, output_dir / "videos"):  # what a killed evaluation was writing; no worker runs yet
        remove_stale_temporaries(folder)

    indices = shard_indices(settings.num_sequences, settings.shard_index, settings.num_shards)
    jsonl = output_dir / RESULTS_JSONL
    repair_jsonl(jsonl)
    wanted = set(indices)
    finished = {i: r for i, r in read_records(jsonl).items() if i in wanted}
    todo = [i for i in indices if i not in finished]
    logger.info("%d of %d sequences already finished in %s", len(finished), len(indices), output_dir)

    # sequences are generated before any thread (progress bar monitor, wandb) exists, so the generator may fork
    jobs = build_jobs(suite, settings.num_sequences, todo) if todo else []
    records = dict(finished)
    bar = None
    if settings.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(indices), initial=len(finished), dynamic_ncols=True)
        bar.set_description(progress_description([records[i]["result"] for i in sorted(records)]))

    def on_record(rec: dict[str, Any]) -> None:
        _append_record(jsonl, rec)
        records[int(rec["index"])] = rec
        results = [records[i]["result"] for i in sorted(records)]
        if bar is not None:
            bar.update(1)
            bar.set_description(progress_description(results))
        if wandb_run is not None:
            m = metrics_from_records(records.values())
            wandb_run.log({"eval/avg_seq_len": m["avg_seq_len"], "eval/num_done": len(records),
                           **{f"eval/chain_sr_{k}": v for k, v in m["chain_sr"].items()}})

    try:
        dispatch_jobs(jobs, env_factory, policy_factory, suite.instructions, settings, output_dir, on_record)
    finally:
        if bar is not None:
            bar.close()

    missing = [i for i in indices if i not in records]
    if missing:  # pragma: no cover - the runners raise before this
        raise EvaluationError(f"{len(missing)} sequences were not evaluated: {missing[:10]}")
    metrics = metrics_from_records(records[i] for i in indices)
    write_results_json(output_dir, name, metrics)
    return metrics


def merge_shards(
    shard_dirs: Sequence[str | Path], output_dir: str | Path, allow_incomplete: bool = False, verbose: bool = True
) -> dict[str, Any]:
    """Combine shard folders (same checkpoint/suite/num_sequences/ep_len/seed) into `output_dir`:
    results.jsonl (records in index order), eval_config.json and results.json."""
    if not shard_dirs:
        raise EvaluationError("merge needs at least one shard folder")
    output_dir = Path(output_dir)
    configs, records = [], {}
    for d in map(Path, shard_dirs):
        cfg_path = d / CONFIG_JSON
        if not cfg_path.is_file():
            raise EvaluationError(f"{d} is not an evaluation folder (no {CONFIG_JSON})")
        cfg = json.loads(cfg_path.read_text())
        configs.append(cfg)
        for i, rec in read_records(d / RESULTS_JSONL).items():
            if i in records and records[i]["result"] != rec["result"]:
                raise EvaluationError(f"sequence {i} appears in two shards with different results")
            records.setdefault(i, rec)
    first = configs[0]
    for d, cfg in zip(shard_dirs, configs):
        diffs = [k for k in IDENTITY_KEYS if cfg.get(k) != first.get(k)]
        if diffs:
            raise EvaluationError(f"{d} evaluated something else than {shard_dirs[0]} (differs in {diffs})")
    n = int(first["num_sequences"])
    records = {i: r for i, r in records.items() if 0 <= i < n}
    missing = [i for i in range(n) if i not in records]
    if missing and not allow_incomplete:
        raise EvaluationError(
            f"{len(missing)} of {n} sequences are missing from the shards (first: {missing[:10]}); finish the "
            "shards (rerun them to resume) or pass --allow_incomplete"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    merged_cfg = {k: first.get(k) for k in IDENTITY_KEYS}
    merged_cfg.update(shard=[0, 1], merged_from=[str(Path(d).resolve()) for d in shard_dirs])
    _atomic_json(merged_cfg, output_dir / CONFIG_JSON)
    tmp = output_dir / f".{RESULTS_JSONL}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        for i in sorted(records):
            fh.write(json.dumps(records[i]) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, output_dir / RESULTS_JSONL)
    metrics = metrics_from_records(records.values())
    write_results_json(output_dir, str(first["checkpoint"]), metrics)
    if verbose:
        print_metrics(metrics, f"Results for {first['checkpoint']} ({len(records)} sequences):")
    return metrics


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
