import json
from pathlib import Path

import numpy as np
import pytest

import step2_prepare_json
from policy_models.datasets.xbot_index import AnnotationError, IndexConfig, index_split
from policy_models.normalization import Stats

D = 38


def _episode(rng, T):
    q = rng.normal(size=(T, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    states = rng.normal(size=(T, D))
    states[:, 3:7] = q
    states[:, 22:26] = q[::-1]
    actions = states + rng.normal(scale=0.1, size=(T, D))
    return states, actions


def make_dataset(root: Path, name: str, lengths: dict[str, list[int]], seed: int, write_latents: bool = True) -> dict:
    """A mini xbot data set in the original layout; returns {split: [(ann_file, states, actions, T), ...]}."""
    rng = np.random.default_rng(seed)
    out = {}
    eid = 0
    for split, lens in lengths.items():
        (root / name / "annotation" / split).mkdir(parents=True)
        out[split] = []
        for T in lens:
            states, actions = _episode(rng, T)
            lat = [{"latent_video_path": f"latent_videos/{split}/{eid}/{k}.pt"} for k in range(3)]
            if write_latents:
                for entry in lat:
                    p = root / name / entry["latent_video_path"]
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_bytes(b"")
            ann = {"task": "robot_trajectory_prediction", "texts": ["place the bag"], "episode_id": eid,
                   "video_length": T, "latent_videos": lat,
                   "videos": [{"video_path": f"videos/{split}/{eid}/{k}.mp4"} for k in range(3)],
                   "states": states.tolist(), "actions": actions.tolist()}
            (root / name / "annotation" / split / f"{eid}.json").write_text(json.dumps(ann))
            out[split].append((f"annotation/{split}/{eid}.json", states, actions, T))
            eid += 1
    return out


@pytest.fixture
def mini(tmp_path):
    root = tmp_path / "data"
    eps = {
        "xbot_a": make_dataset(root, "xbot_a", {"train": [5, 12, 9], "val": [6]}, seed=0),
        "xbot_b": make_dataset(root, "xbot_b", {"train": [3, 10], "val": [4, 7]}, seed=1),
    }
    return root, eps


def _expected(eps, split, L, stride, start_interval):
    """Hand-rolled reference of the original's sampling + statistics."""
    samples, cur, rel = [], [], []
    for name in ("xbot_a", "xbot_b"):
        for ann_file, states, actions, T in eps[name][split]:
            for s in range(0, T, start_interval):
                ids = [min(s + stride * k, T - 1) for k in range(L)]
                samples.append((name, ann_file, tuple(ids)))
                cur.append(states[ids[0]])
                rel.append(actions[ids] - states[ids[0]][None])
    cur, rel = np.array(cur), np.array(rel).reshape(-1, D)
    return samples, np.percentile(cur, 1, axis=0), np.percentile(cur, 99, axis=0), \
        np.percentile(rel, 1, axis=0), np.percentile(rel, 99, axis=0)


@pytest.mark.parametrize("stride,start_interval", [(1, 1), (2, 3)])
def test_prepare_json_samples_and_stats(mini, tmp_path, stride, start_interval):
    root, eps = mini
    out = tmp_path / "out"
    rc = step2_prepare_json.main(["--root", str(root), "--dataset_names", "xbot_a+xbot_b", "--output", str(out),
                                  "--stride", str(stride), "--start_interval", str(start_interval), "--seed", "3"])
    assert rc == 0
    for split in ("train", "val"):
        index = json.loads((out / f"{split}_all.json").read_text())
        exp_samples, s01, s99, a01, a99 = _expected(eps, split, 8, stride, start_interval)
        got = sorted((r["dataset_name"], r["ann_file"], tuple(r["frame_ids"])) for r in index)
        assert got == sorted(exp_samples)
        assert set(index[0]) == {"dataset_name", "ann_file", "episode_id", "frame_ids"}
        st = Stats.load(out / f"{split}_stats.json")
        np.testing.assert_allclose(st.state_01, s01, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(st.state_99, s99, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(st.action_01, a01, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(st.action_99, a99, rtol=1e-12, atol=1e-12)
        assert st.relative_mode == "componentwise" and st.meta["num_samples"] == len(index)


def test_prepare_json_deterministic_shuffle(mini, tmp_path):
    root, _ = mini
    args = ["--root", str(root), "--dataset_names", "xbot_a+xbot_b", "--splits", "train"]

    def run(out, seed):
        assert step2_prepare_json.main([*args, "--output", str(out), "--seed", str(seed)]) == 0
        return (out / "train_all.json").read_text()

    a, b, c = run(tmp_path / "a", 7), run(tmp_path / "b", 7), run(tmp_path / "c", 8)
    assert a == b
    assert a != c and sorted(json.loads(a), key=str) == sorted(json.loads(c), key=str)
    ids = [r["frame_ids"] for r in json.loads(a)]
    assert ids != sorted(ids)  # actually shuffled


def test_prepare_json_refuses_overwrite(mini, tmp_path, capsys):
    root, _ = mini
    args = ["--root", str(root), "--dataset_names", "xbot_a", "--output", str(tmp_path / "o")]
    assert step2_prepare_json.main(args) == 0
    before = (tmp_path / "o" / "train_all.json").read_text()
    assert step2_prepare_json.main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "o" / "train_all.json").read_text() == before
    assert step2_prepare_json.main([*args, "--overwrite"]) == 0


def test_pose_slices_of_another_robot_reach_the_stats(mini, tmp_path, capsys):
    root, _ = mini
    args = ["--root", str(root), "--dataset_names", "xbot_a", "--quaternion_mode", "compose", "--quat_order", "wxyz"]
    assert step2_prepare_json.main([*args, "--output", str(tmp_path / "one"), "--pose_slices", "19:26"]) == 0
    one = Stats.load(tmp_path / "one" / "train_stats.json")
    assert one.pose_slices == ((19, 26),) and one.relative_mode == "compose"
    assert step2_prepare_json.main([*args, "--output", str(tmp_path / "xbot")]) == 0
    xbot = Stats.load(tmp_path / "xbot" / "train_stats.json")
    assert xbot.pose_slices == ((0, 7), (19, 26))
    # [0:7] is composed only with the xbot layout; with 19:26 alone it stays a plain difference
    assert not np.allclose(one.action_01[:7], xbot.action_01[:7])
    np.testing.assert_allclose(one.action_01[19:26], xbot.action_01[19:26])
    for bad in ("0:6", "0-7", "a:b"):
        with pytest.raises(SystemExit):
            step2_prepare_json.main([*args, "--output", str(tmp_path / "bad"), "--pose_slices", bad])
    assert "stop = start + 7" in capsys.readouterr().err


@pytest.mark.parametrize("field", ["states", "latent_videos", "texts"])
def test_bad_json_names_file_and_field(mini, tmp_path, capsys, field):
    root, _ = mini
    bad = root / "xbot_b" / "annotation" / "train" / "1.json"
    ann = json.loads(bad.read_text())
    del ann[field]
    bad.write_text(json.dumps(ann))
    out = tmp_path / "o"
    rc = step2_prepare_json.main(["--root", str(root), "--dataset_names", "xbot_a+xbot_b", "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "xbot_b/annotation/train/1.json" in err and field in err
    assert not out.exists() or not any(out.iterdir())  # nothing half-written


def test_bad_values_and_layout_errors(mini, tmp_path):
    root, _ = mini
    cfg = IndexConfig(root=str(root), dataset_names=["xbot_a"])
    f = root / "xbot_a" / "annotation" / "train" / "1.json"
    ann = json.loads(f.read_text())
    f.write_text(json.dumps({**ann, "video_length": 99}))
    with pytest.raises(AnnotationError, match=r"1\.json.*video_length = 99.*states"):
        index_split(cfg, "train")
    f.write_text(json.dumps({**ann, "actions": [[0.0] * 37] * ann["video_length"]}))
    with pytest.raises(AnnotationError, match=r"1\.json.*'states' has 38 columns but 'actions' has 37"):
        index_split(cfg, "train")
    f.write_text("{not json")
    with pytest.raises(AnnotationError, match=r"1\.json.*not valid JSON"):
        index_split(cfg, "train")
    f.write_text(json.dumps(ann))
    (root / "xbot_a" / ann["latent_videos"][2]["latent_video_path"]).unlink()
    with pytest.raises(AnnotationError, match=r"1\.json.*latent_videos\[2\].*not found"):
        index_split(cfg, "train")
    index_split(IndexConfig(root=str(root), dataset_names=["xbot_a"], check_latents=False), "train")
    with pytest.raises(FileNotFoundError, match=r"xbot_c.*annotation.*train"):
        index_split(IndexConfig(root=str(root), dataset_names=["xbot_c"]), "train")


def test_latents_svd_fallback_and_compose_mode(tmp_path):
    root = tmp_path / "data"
    make_dataset(root, "x", {"train": [6]}, seed=4, write_latents=False)
    for k in range(3):
        p = root / "x" / "latent_videos_svd" / "train" / "0" / f"{k}.pt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    cfg = IndexConfig(root=str(root), dataset_names=["x"], relative_mode="compose", quat_order="wxyz")
    samples, st = index_split(cfg, "train")
    assert len(samples) == 6 and st.relative_mode == "compose" and st.quat_order == "wxyz"
    # composed rotation deltas are unit quaternions with w >= 0: bounds of w lie inside [0, 1]
    assert 0.0 <= st.action_01[3] <= st.action_99[3] <= 1.0 + 1e-9
