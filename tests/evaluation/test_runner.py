"""Runner: resumable results, interrupted runs, shards + merge, worker processes, videos, CLI merge."""

import json

import numpy as np
import pytest

from policy_evaluation import calvin_evaluate
from policy_evaluation.runner import (
    EvalSettings,
    EvaluationError,
    merge_shards,
    parse_shard,
    read_records,
    run_evaluation,
    shard_indices,
)
from policy_evaluation.suites import calvin_suite
from policy_evaluation.testing import RandomPolicyFactory, ScriptedEnvFactory

N, EP = 12, 25


@pytest.fixture(scope="module")
def suite():
    return calvin_suite()  # sequences, reset states and instructions of the real protocol; env from the tests


def _settings(**kw):
    kw.setdefault("num_sequences", N)
    kw.setdefault("ep_len", EP)
    kw.setdefault("progress", False)
    return EvalSettings(**kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, suite):
    out = tmp_path_factory.mktemp("uninterrupted")
    metrics = run_evaluation(suite, RandomPolicyFactory(), _settings(), out, env_factory=ScriptedEnvFactory())
    return out, metrics


def test_uninterrupted_run_outputs(reference):
    out, metrics = reference
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["fake_checkpoint"]
    r = results["fake_checkpoint"]
    assert set(r) == {"avg_seq_len", "chain_sr", "task_info"}
    assert list(r["chain_sr"]) == ["1", "2", "3", "4", "5"]
    recs = read_records(out / "results.jsonl")
    assert sorted(recs) == list(range(N))
    assert 0 < r["avg_seq_len"] < 5  # the scripted difficulties give a mix of outcomes
    for i, rec in recs.items():
        assert rec["seed"] == i and len(rec["tasks"]) == 5 and 0 <= rec["result"] <= 5
        assert len(rec["steps"]) == min(rec["result"] + 1, 5)
        assert len(rec["robot_obs"]) == 15 and len(rec["scene_obs"]) == 24
    cfg = json.loads((out / "eval_config.json").read_text())
    assert cfg["checkpoint"] == "fake_checkpoint" and cfg["num_sequences"] == N and cfg["ep_len"] == EP


def test_resume_after_interruption_gives_identical_results(tmp_path, suite, reference):
    ref_dir, _ = reference
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_evaluation(suite, RandomPolicyFactory(), _settings(), tmp_path,
                       env_factory=ScriptedEnvFactory(fail_on_reset=5))
    assert sorted(read_records(tmp_path / "results.jsonl")) == [0, 1, 2, 3, 4]
    assert not (tmp_path / "results.json").exists()
    # a crash while writing leaves a truncated last line: it is ignored and that sequence is run again
    with open(tmp_path / "results.jsonl", "a") as fh:
        fh.write('{"index": 5, "initial_cond')
    run_evaluation(suite, RandomPolicyFactory(), _settings(), tmp_path, env_factory=ScriptedEnvFactory())
    assert (tmp_path / "results.json").read_bytes() == (ref_dir / "results.json").read_bytes()
    recs, ref = read_records(tmp_path / "results.jsonl"), read_records(ref_dir / "results.jsonl")
    outcome = lambda rs: {i: (r["result"], r["steps"]) for i, r in rs.items()}  # noqa: E731
    assert outcome(recs) == outcome(ref)
    # a complete folder: a rerun runs nothing and keeps the numbers
    env_factory = ScriptedEnvFactory(fail_on_reset=0)  # would crash if any sequence ran
    run_evaluation(suite, RandomPolicyFactory(), _settings(), tmp_path, env_factory=env_factory)
    assert (tmp_path / "results.json").read_bytes() == (ref_dir / "results.json").read_bytes()


def test_resume_with_other_settings_is_refused(tmp_path, suite):
    run_evaluation(suite, RandomPolicyFactory(), _settings(num_sequences=2), tmp_path, env_factory=ScriptedEnvFactory())
    with pytest.raises(EvaluationError, match="ep_len"):
        run_evaluation(suite, RandomPolicyFactory(), _settings(num_sequences=2, ep_len=EP + 1), tmp_path,
                       env_factory=ScriptedEnvFactory())
    with pytest.raises(EvaluationError, match="checkpoint"):
        run_evaluation(suite, RandomPolicyFactory(name="other"), _settings(num_sequences=2), tmp_path,
                       env_factory=ScriptedEnvFactory())


def test_shards_and_merge_equal_unsharded(tmp_path, suite, reference):
    ref_dir, ref_metrics = reference
    dirs = []
    for i in range(3):
        d = tmp_path / f"shard{i}"
        run_evaluation(suite, RandomPolicyFactory(), _settings(shard_index=i, num_shards=3), d,
                       env_factory=ScriptedEnvFactory())
        assert sorted(read_records(d / "results.jsonl")) == shard_indices(N, i, 3)
        dirs.append(d)
    with pytest.raises(EvaluationError, match="missing"):
        merge_shards(dirs[:2], tmp_path / "partial", verbose=False)
    merge_shards(dirs[:2], tmp_path / "partial", allow_incomplete=True, verbose=False)
    # merge through the CLI
    assert calvin_evaluate.main(["merge", *map(str, dirs), "--output", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "results.json").read_bytes() == (ref_dir / "results.json").read_bytes()
    merged = read_records(tmp_path / "merged" / "results.jsonl")
    assert list(merged) == list(range(N))


def test_merge_refuses_mixed_evaluations(tmp_path, suite):
    a, b = tmp_path / "a", tmp_path / "b"
    run_evaluation(suite, RandomPolicyFactory(), _settings(num_sequences=2, shard_index=0, num_shards=2), a,
                   env_factory=ScriptedEnvFactory())
    run_evaluation(suite, RandomPolicyFactory(), _settings(num_sequences=2, shard_index=1, num_shards=2, ep_len=3),
                   b, env_factory=ScriptedEnvFactory())
    with pytest.raises(EvaluationError, match="ep_len"):
        merge_shards([a, b], tmp_path / "m", verbose=False)
    with pytest.raises(EvaluationError, match="not an evaluation folder"):
        merge_shards([tmp_path / "nothing"], tmp_path / "m", verbose=False)


def test_worker_processes_give_the_same_results(tmp_path, suite, reference):
    ref_dir, _ = reference
    run_evaluation(suite, RandomPolicyFactory(), _settings(num_workers=2), tmp_path, env_factory=ScriptedEnvFactory())
    assert (tmp_path / "results.json").read_bytes() == (ref_dir / "results.json").read_bytes()


def test_worker_errors_are_reported(tmp_path, suite):
    with pytest.raises(EvaluationError, match="simulated crash"):
        run_evaluation(suite, RandomPolicyFactory(), _settings(num_sequences=4, num_workers=2), tmp_path,
                       env_factory=ScriptedEnvFactory(fail_on_reset=0))


def test_videos_and_wandb_logging(tmp_path, suite):
    from vpp_core.video_io import read_video

    class FakeRun:
        def __init__(self):
            self.logs = []

        def log(self, d):
            self.logs.append(d)

    run = FakeRun()
    run_evaluation(suite, RandomPolicyFactory(), _settings(num_sequences=3, ep_len=6, num_videos=2), tmp_path,
                   env_factory=ScriptedEnvFactory(image_size=32), wandb_run=run)
    recs = read_records(tmp_path / "results.jsonl")
    assert recs[0]["video"] == "videos/sequence_0000.mp4" and recs[2]["video"] is None
    assert not (tmp_path / "videos" / "sequence_0002.mp4").exists()
    video = read_video(tmp_path / recs[1]["video"])
    assert video.shape[0] == 1 + sum(recs[1]["steps"])
    assert video.shape[1] > 64 and video.shape[3] == 3
    assert len(run.logs) == 3 and "eval/chain_sr_1" in run.logs[-1]


def test_video_frame_composition_without_pil(monkeypatch):
    import builtins

    from policy_evaluation import video

    real_import = builtins.__import__

    def no_pil(name, *args, **kwargs):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("no PIL")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pil)
    frames = video.rollout_video_frames([np.zeros((20, 20, 3), np.uint8)] * 3, [-1, 0, 1], ["open_drawer", "x"],
                                        {"open_drawer": "pull the handle"}, result=1)
    assert frames.shape[0] == 3 and frames.dtype == np.uint8
    assert tuple(frames[1, 0, 0]) == video.GREEN and tuple(frames[2, 0, 0]) == video.RED
    assert tuple(frames[0, 0, 0]) == video.GREY
    assert frames[1, video.BORDER:video.BORDER + video.CAPTION_H].max() == 255  # caption text drawn


def test_shard_parsing_and_slices():
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "x", "1-4", "-1/2"):
        with pytest.raises(EvaluationError):
            parse_shard(bad)
    slices = [shard_indices(1000, i, 3) for i in range(3)]
    assert [len(s) for s in slices] == [334, 333, 333]
    assert sum(slices, []) == list(range(1000))


def test_workers_stop_when_the_evaluator_is_gone(tmp_path, suite, monkeypatch):
    """A killed evaluator cannot record results: its workers take no further sequence (a rerun resumes them)."""
    import queue
    from types import SimpleNamespace

    from policy_evaluation import runner

    for alive in (False, True):
        parent = SimpleNamespace(is_alive=lambda alive=alive: alive)
        monkeypatch.setattr(runner.multiprocessing, "parent_process", lambda parent=parent: parent)
        jobs, results = queue.Queue(), queue.Queue()
        for job in runner.build_jobs(suite, 1, [0]):
            jobs.put(job)
        jobs.put(None)
        runner._worker_main(0, ScriptedEnvFactory(), RandomPolicyFactory(), "cpu", dict(suite.instructions),
                            _settings(), str(tmp_path), jobs, results)
        kinds = [results.get_nowait()[0] for _ in range(results.qsize())]
        assert (jobs.qsize(), kinds) == ((0, ["record", "done"]) if alive else (2, ["done"]))


def test_a_rerun_removes_what_a_killed_evaluation_was_writing(tmp_path, suite):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / ".sequence_0001.mp4.abc123.tmp").write_bytes(b"half a video")
    (tmp_path / ".results.json.4242.tmp").write_text("{")
    run_evaluation(suite, RandomPolicyFactory(), _settings(num_sequences=1), tmp_path, env_factory=ScriptedEnvFactory())
    assert not list(tmp_path.rglob("*.tmp")) and (tmp_path / "results.json").is_file()
