"""Dataset_mix equivalent: sampling rules, seeding, layout conventions and clear errors."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from video_dataset import DatasetError, DatasetMix, MixRules
from video_dataset.dataset_mix import internet_frame_ids, robot_frame_ids

from .helpers import write_latent_dataset


def test_frame_id_rules():
    assert robot_frame_ids(0, 40, 16, 2).tolist() == list(range(0, 32, 2))
    # clamped at the last frame: the tail repeats
    assert robot_frame_ids(24, 30, 6, 2).tolist() == [24, 26, 28, 29, 29, 29]
    assert internet_frame_ids(24, 16).tolist() == np.floor(np.linspace(0, 23, 16)).astype(int).tolist()
    assert internet_frame_ids(24, 16)[[0, -1]].tolist() == [0, 23]


def test_robot_dataset_clips_and_items(latent_root):
    write_latent_dataset(latent_root, "robo", {"train": 2}, frames=[10, 7])
    ds = DatasetMix(latent_root, "robo", [1.0], "train", sequence_length=4, latent_shape=(4, 8, 8))
    # starts 0,2,4,6,8 for 10 frames + 0,2,4,6 for 7 frames
    assert len(ds) == 9
    item = ds.clip(0, 4, 0)  # episode 0, start 8
    assert item["frame_ids"].tolist() == [8, 9, 9, 9]
    full = torch.load(latent_root / "robo/latent_videos/train/0/0.pt", weights_only=True)
    assert torch.equal(item["latent"], full[[8, 9, 9, 9]])
    assert item["latent"].dtype == torch.float32 and item["latent"].shape == (4, 4, 8, 8)
    assert item["text"] == "move object 0 to the left" and item["dataset"] == "robo"
    assert item["video"] is item["latent"]


def test_cloth_stride_and_internet_rules(latent_root):
    write_latent_dataset(latent_root, "xbot_cloth", {"train": 1}, frames=20)
    write_latent_dataset(latent_root, "bridge", {"train": 3}, frames=[24, 150, 40], length_key="state")
    cloth = DatasetMix(latent_root, "xbot_cloth", None, "train", sequence_length=4)
    assert cloth.subsets[0].starts.tolist() == [0, 5, 10, 15]
    assert cloth.frame_ids(0, 1).tolist() == [5, 10, 15, 19]
    bridge = DatasetMix(latent_root, "bridge", None, "train", sequence_length=16)
    # the 150-frame episode is skipped (> 100 frames), one clip per remaining episode
    assert len(bridge) == 2
    assert bridge.frame_ids(0, 0).tolist() == internet_frame_ids(24, 16).tolist()
    custom = DatasetMix(
        latent_root,
        "bridge",
        None,
        "train",
        sequence_length=4,
        rules={"internet_keywords": [], "robot_stride": 3, "robot_start_interval": 10},
    )
    assert custom.subsets[0].starts.tolist() == [
        0,
        10,
        20,
        0,
        10,
        20,
        30,
        40,
        50,
        60,
        70,
        80,
        90,
        100,
        110,
        120,
        130,
        140,
        0,
        10,
        20,
        30,
    ]


def test_mixing_probabilities_and_seeded_draws(latent_root):
    write_latent_dataset(latent_root, "a", {"val": 4}, frames=12)
    write_latent_dataset(latent_root, "b", {"val": 2}, frames=12)
    ds = DatasetMix(latent_root, "a+b", [0.75, 0.25], "val", sequence_length=4, seed=3)
    assert len(ds) == max(ds.num_clips("a"), ds.num_clips("b"))
    first = [ds[i]["dataset"] for i in range(len(ds))]
    again = DatasetMix(latent_root, "a+b", [0.75, 0.25], "val", sequence_length=4, seed=3)
    assert [again[i]["dataset"] for i in range(len(ds))] == first  # reproducible validation
    assert all(torch.equal(ds[i]["latent"], again[i]["latent"]) for i in range(0, len(ds), 5))
    counts = Counter(ds.get(i % len(ds), epoch=e)["dataset"] for e in range(40) for i in range(len(ds)))
    frac_a = counts["a"] / sum(counts.values())
    assert 0.7 < frac_a < 0.8
    ds.set_epoch(1)
    assert [ds[i]["dataset"] for i in range(len(ds))] != first  # new draws per training epoch


@pytest.mark.parametrize(
    "prob, match",
    [([0.5, 0.6], "sum to 1"), ([1.0], "one per data set"), ([1.2, -0.2], "non-negative"), (None, "required")],
)
def test_bad_probabilities(latent_root, prob, match):
    write_latent_dataset(latent_root, "a", {"val": 1})
    write_latent_dataset(latent_root, "b", {"val": 1})
    with pytest.raises(DatasetError, match=match):
        DatasetMix(latent_root, "a+b", prob, "val")


def test_camera_probabilities(latent_root):
    write_latent_dataset(latent_root, "xhand", {"train": 2}, frames=16, cams=2)
    ds = DatasetMix(latent_root, "xhand", None, "train", sequence_length=4)
    cams = Counter(ds.get(i, epoch=e)["camera"] for e in range(30) for i in range(len(ds)))
    assert 0.65 < cams[0] / sum(cams.values()) < 0.85 and set(cams) == {0, 1}
    item = ds.clip(0, 0, 1)
    full = torch.load(latent_root / "xhand/latent_videos/train/0/1.pt", weights_only=True)
    assert torch.equal(item["latent"], full[item["frame_ids"]])
    # a data set sampled with two cameras but annotated with one -> error naming the file
    write_latent_dataset(latent_root, "calvin_one_cam", {"train": 1}, cams=1)
    with pytest.raises(DatasetError, match=r"0\.json: has 1 latent_videos"):
        DatasetMix(
            latent_root,
            "calvin_one_cam",
            None,
            "train",
            rules={"annotation_overrides": {}, "camera_probs": {"calvin": [0.75, 0.25]}},
        )


def test_calvin_annotation_folders(latent_root):
    write_latent_dataset(latent_root, "calvin", {"train": 2, "val_d": 1}, annotation_name="annotation_abc_13", cams=2)
    train = DatasetMix(latent_root, "calvin", None, "train", sequence_length=4)
    val = DatasetMix(latent_root, "calvin", None, "val", sequence_length=4)
    assert {a.path.parent.name for a in train.subsets[0].annotations} == {"train"}
    assert {a.path.parent.name for a in val.subsets[0].annotations} == {"val_d"}
    assert val.subsets[0].annotations[0].path.parent.parent.name == "annotation_abc_13"
    # configurable: a plain layout when the override is removed
    with pytest.raises(DatasetError, match="annotation folder not found"):
        DatasetMix(latent_root, "calvin", None, "val", rules={"annotation_overrides": {}})


def test_latent_videos_svd_fallback_and_episode_paths(latent_root):
    write_latent_dataset(
        latent_root,
        "bridge",
        {"val": 2},
        frames=20,
        latent_folder="latent_videos_svd",
        json_latent_folder="latent_videos",
        length_key="state",
    )
    ds = DatasetMix(latent_root, "bridge", None, "val")
    assert ds[0]["latent"].shape == (16, 4, 8, 8)
    with pytest.raises(DatasetError, match=r"2 bad annotation\(s\) in data set 'bridge'(.|\n)*latent file not found"):
        DatasetMix(latent_root, "bridge", None, "val", rules={"latent_fallback": None})  # when built, not when drawn
    # xbot data sets build latent_videos/{split}/{episode_id}/{cam}.pt and need no latent_videos entries
    ds_dir = write_latent_dataset(latent_root, "xbot_0417", {"train": 1}, frames=8, cams=1)
    ann_path = ds_dir / "annotation/train/0.json"
    ann = json.loads(ann_path.read_text())
    del ann["latent_videos"]
    ann_path.write_text(json.dumps(ann))
    xbot = DatasetMix(latent_root, "xbot_0417", None, "train", sequence_length=4)
    assert xbot.clip(0, 0, 0)["latent"].shape == (4, 4, 8, 8)


def test_missing_folders_name_the_path(latent_root, tmp_path):
    with pytest.raises(DatasetError, match="dataset_dir not found"):
        DatasetMix(tmp_path / "nope", "a", None)
    write_latent_dataset(latent_root, "a", {"train": 1})
    with pytest.raises(DatasetError, match=r"data set folder not found: .*missing.*\['a'\]"):
        DatasetMix(latent_root, "missing", None)
    with pytest.raises(DatasetError, match=r"annotation folder not found: .*a/annotation/val.*\['train'\]"):
        DatasetMix(latent_root, "a", None, "val")


def test_annotation_without_texts_is_named(latent_root):
    ds_dir = write_latent_dataset(latent_root, "a", {"train": 3})
    bad = ds_dir / "annotation/train/1.json"
    ann = json.loads(bad.read_text())
    ann["texts"] = []
    bad.write_text(json.dumps(ann))
    (ds_dir / "annotation/train/2.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"2 bad annotation\(s\)") as err:
        DatasetMix(latent_root, "a", None, "train")
    assert "1.json: annotation needs 'texts'" in str(err.value)
    assert "2.json: not valid json" in str(err.value)
    ds = DatasetMix(latent_root, "a", None, "train", skip_bad_annotations=True)
    assert [a.path.name for a in ds.subsets[0].annotations] == ["0.json"]


def test_wrong_latent_shape_is_named(latent_root):
    ds_dir = write_latent_dataset(latent_root, "a", {"train": 1}, frames=12, hw=8)
    ds = DatasetMix(latent_root, "a", None, "train", sequence_length=4, latent_shape=(4, 32, 32))
    with pytest.raises(DatasetError, match=r"0\.pt: latent has shape \(12, 4, 8, 8\), expected \(T, 4, 32, 32\)"):
        ds[0]
    torch.save(torch.zeros(12, 4, 8), ds_dir / "latent_videos/train/0/0.pt")
    with pytest.raises(DatasetError, match=r"0\.pt: expected a float latent tensor"):
        DatasetMix(latent_root, "a", None, "train", sequence_length=4)[0]
    torch.save(torch.zeros(5, 4, 8, 8), ds_dir / "latent_videos/train/0/0.pt")  # shorter than the annotation says
    with pytest.raises(DatasetError, match=r"latent has 5 frames but annotation .*0\.json says 12"):
        DatasetMix(latent_root, "a", None, "train", sequence_length=4).clip(0, 0)


def test_unknown_rule_key():
    with pytest.raises(DatasetError, match="unknown mix_rules keys"):
        MixRules.from_config({"internet_keyword": ["x"]})


def test_reads_reference_bridge_latents_unchanged(reference_data):
    root = reference_data / "video_dataset_instance"
    if not (root / "bridge" / "latent_videos_svd").is_dir():
        pytest.skip("bridge latents not present in the reference data")
    ds = DatasetMix(root, "bridge", None, "val", latent_shape=(4, 32, 32))
    assert len(ds) == 4
    for i in range(len(ds)):
        item = ds[i]
        assert item["latent"].shape == (16, 4, 32, 32) and item["latent"].dtype == torch.float32
        assert item["text"]
    # id 10 has 24 frames (len(state)); its clip squeezes them into 16 linspace frames
    ten = next(j for j, a in enumerate(ds.subsets[0].annotations) if a.path.stem == "10")
    assert ds.subsets[0].annotations[ten].num_frames == 24
    assert 0.6 < float(ds.clip(0, ten)["latent"].std()) < 0.95
