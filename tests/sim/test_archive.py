"""pack -> unpack rebuilds the dataset the generator's layout writes: low-dimensional arrays, ids, texts and
statistics exactly, images within h264 loss. Uses synthetic work files, so no simulation is needed."""

import json

import numpy as np
import pytest

import vpp_sim.generate as gen
from vpp_sim.archive import main, pack, unpack

TASKS = ["turn_on_led", "open_drawer"]


def _episode(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[0:200, 0:200]
    static = np.stack([(np.stack([xx + 3 * t, yy, xx + yy], -1) % 256).astype(np.uint8) for t in range(n)])
    gripper = np.ascontiguousarray(static[:, ::2, ::2][:, :84, :84])
    return {
        "rgb_static": static,
        "rgb_gripper": gripper,
        "robot_obs": rng.normal(size=(n, 15)),
        "scene_obs": rng.normal(size=(n, 24)),
        "rel_actions": rng.uniform(-1, 1, size=(n, 7)),
        "actions": rng.normal(size=(n, 7)),
    }


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A dataset folder as `generate --keep-work` leaves it, plus the episodes it was made from."""
    root = tmp_path_factory.mktemp("archive")
    out = root / "original"
    work = out / ".work"
    (work / "episodes").mkdir(parents=True)
    plan = {"tasks": TASKS, "episodes_per_task": 2, "seed": 3, "val_fraction": 0.25}
    (work / "plan.json").write_text(json.dumps(plan))
    jobs = gen.plan_jobs(TASKS, 2, 3, 0.25)
    rng = np.random.default_rng(0)
    episodes = {}
    for job in jobs:
        episodes[job.index] = _episode(rng, 52 + job.index)
        np.savez(work / "episodes" / f"{job.index:07d}.npz", meta=np.array("{}"), **episodes[job.index])
    phrasings = gen.load_phrasings(gen.DEFAULT_TRAIN_ANNOTATIONS, TASKS)
    val = {t: v[0] for t, v in gen.load_phrasings(gen.DEFAULT_VAL_ANNOTATIONS, TASKS).items()}
    gen.layout(out, jobs, work, phrasings, val, plan["seed"], workers=1)
    return root, out, episodes


def _frames(split_dir):
    out = {}
    for path in sorted(split_dir.glob("episode_*.npz")):
        with np.load(path) as z:
            out[path.name] = {k: z[k] for k in z.files}
    return out


def test_round_trip(generated):
    root, original, _ = generated
    summary = pack(original, root / "archive", crf=18, workers=2)
    assert summary["episodes"] == 4 and summary["min_psnr_db"] > 30
    raw = sum(p.stat().st_size for p in (original / ".work" / "episodes").glob("*.npz"))
    assert summary["bytes"] < raw / 5
    rebuilt = root / "rebuilt"
    assert unpack(root / "archive", rebuilt, workers=2)["episodes"] == {"train": 3, "val": 1}
    assert not (rebuilt / ".work").exists()
    with pytest.raises(FileExistsError, match="finished dataset"):
        unpack(root / "archive", rebuilt)
    for split in ("training", "validation"):
        a, b = _frames(original / split), _frames(rebuilt / split)
        assert a.keys() == b.keys() and len(a) > 50
        for name in a:
            for key in ("actions", "rel_actions", "robot_obs", "scene_obs"):
                np.testing.assert_array_equal(a[name][key], b[name][key])
            for key in ("rgb_static", "rgb_gripper"):
                assert a[name][key].shape == b[name][key].shape
                assert np.abs(a[name][key].astype(int) - b[name][key].astype(int)).mean() < 4
        for f in ("ep_start_end_ids.npy", "ep_lens.npy", "scene_info.npy", "statistics.yaml"):
            assert (original / split / f).read_bytes() == (rebuilt / split / f).read_bytes(), f
        la = np.load(original / split / "lang_annotations" / "auto_lang_ann.npy", allow_pickle=True).item()
        lb = np.load(rebuilt / split / "lang_annotations" / "auto_lang_ann.npy", allow_pickle=True).item()
        assert la["language"]["ann"] == lb["language"]["ann"] and la["info"] == lb["info"]
    for split in ("train", "val"):
        for ann in (original / "annotation" / split).glob("*.json"):
            assert json.loads(ann.read_text()) == json.loads((rebuilt / "annotation" / split / ann.name).read_text())
        assert len(list((rebuilt / "videos" / split).rglob("*.mp4"))) == 2 * len(list(
            (original / "annotation" / split).glob("*.json")))


def test_errors_name_the_problem(generated, tmp_path, capsys):
    root, original, _ = generated
    assert main(["pack", "--dataset", str(tmp_path), "--output", str(tmp_path / "a")]) == 2
    assert "--keep-work" in capsys.readouterr().err
    assert main(["unpack", "--archive", str(tmp_path), "--output", str(tmp_path / "b")]) == 2
    assert "manifest.json" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["pack", "--dataset", str(original), "--output", str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err
