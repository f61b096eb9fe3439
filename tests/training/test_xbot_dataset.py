"""xbot dataset: percentile normalisation of state and relative actions, latents / pixels, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from policy_models.datasets.base import DatasetError, build_dataset, collate_samples
from policy_models.datasets.synthetic import write_synthetic_xbot
from policy_models.datasets.xbot_index import IndexConfig, prepare_index
from policy_models.normalization import Stats

CAMS = ["cam_high", "cam_left", "cam_right"]


@pytest.fixture(scope="module")
def xbot_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("xbot")
    write_synthetic_xbot(root, episodes={"train": 2, "val": 1}, length=20, latent_size=8, write_videos=True,
                         video_size=32)
    prepare_index(IndexConfig(root=str(root), dataset_names=["xbot_synth"]), root / "index")
    return root


def _ds(root, split="train", **kw):
    cfg = {"type": "xbot", "data_json_path": str(root / "index"), "data_root_path": str(root), **kw}
    return build_dataset(cfg, split, cameras=CAMS, action_seq_len=8, action_dim=38, state_dim=38, image_size=32)


def test_xbot_sample_normalisation(xbot_data):
    ds = _ds(xbot_data)
    index = json.loads((xbot_data / "index" / "train_all.json").read_text())
    stats = Stats.load(xbot_data / "index" / "train_stats.json")
    assert len(ds) == len(index) == 2 * 20
    s = ds[7]
    entry = index[7]
    ann = json.loads((xbot_data / "xbot_synth" / entry["ann_file"]).read_text())
    ids = entry["frame_ids"][:8]
    states, actions = np.asarray(ann["states"]), np.asarray(ann["actions"])
    cur = states[ids[0]]
    rel = actions[ids] - cur[None]
    expect_a = np.clip(2 * (rel - stats.action_01) / (stats.action_99 - stats.action_01 + 1e-8) - 1, -1, 1)
    expect_s = np.clip(2 * (cur - stats.state_01) / (stats.state_99 - stats.state_01 + 1e-8) - 1, -1, 1)
    np.testing.assert_allclose(s["actions"].numpy(), expect_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s["state_obs"].numpy(), expect_s[None], rtol=1e-5, atol=1e-6)
    assert s["actions"].shape == (8, 38) and s["state_obs"].shape == (1, 38)
    assert s["lang_text"] == ann["texts"][0]
    for k, cam in enumerate(CAMS):
        lat = torch.load(xbot_data / "xbot_synth" / ann["latent_videos"][k]["latent_video_path"], weights_only=True)
        assert torch.equal(s["rgb_obs"][cam], lat[ids[0] : ids[0] + 1])
    b = collate_samples([ds[0], ds[1]])
    assert b["rgb_obs"]["cam_left"].shape == (2, 1, 4, 8, 8)
    assert b["state_obs"].shape == (2, 1, 38)


def test_xbot_pixels_and_inline_stats(xbot_data):
    stats = json.loads((xbot_data / "index" / "train_stats.json").read_text())
    inline = {k: stats[k] for k in ("state_01", "state_99", "action_01", "action_99")}
    ds = _ds(xbot_data, "val", obs_source="pixels", stats=inline)
    s = ds[0]
    assert s["rgb_obs"]["cam_high"].shape == (1, 3, 32, 32)
    assert -1 <= float(s["rgb_obs"]["cam_high"].min()) and float(s["rgb_obs"]["cam_high"].max()) <= 1


def test_xbot_missing_stats_and_index(xbot_data, tmp_path):
    with pytest.raises(DatasetError, match="normalisation statistics not found: .*nope.json"):
        _ds(xbot_data, stats_path=str(tmp_path / "nope.json"))
    with pytest.raises(DatasetError, match="sample index not found"):
        build_dataset({"type": "xbot", "data_json_path": str(tmp_path), "data_root_path": str(xbot_data)}, "train",
                      cameras=CAMS, action_seq_len=8, action_dim=38, state_dim=38)
    with pytest.raises(DatasetError, match=rf"{xbot_data / 'index' / 'train_stats.json'}: stats have state_dim 38 / "
                                           "action_dim 38, the embodiment expects 19 / 18"):
        build_dataset({"type": "xbot", "data_json_path": str(xbot_data / "index"), "data_root_path": str(xbot_data)},
                      "train", cameras=CAMS, action_seq_len=8, action_dim=18, state_dim=19)


def test_xbot_missing_latent_names_file(xbot_data, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(xbot_data, root)
    ds = _ds(root)
    ann = json.loads((root / "xbot_synth" / ds.samples[0]["ann_file"]).read_text())
    missing = root / "xbot_synth" / ann["latent_videos"][1]["latent_video_path"]
    missing.unlink()
    with pytest.raises(DatasetError, match=f"latent file not found: {missing}"):
        ds[0]


def _copy(xbot_data, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(xbot_data, root)
    return root


def _first_latent(root):
    index = json.loads((root / "index" / "train_all.json").read_text())
    ann = json.loads((root / "xbot_synth" / index[0]["ann_file"]).read_text())
    return root / "xbot_synth" / ann["latent_videos"][0]["latent_video_path"]


def test_xbot_truncated_latent_names_file(xbot_data, tmp_path):
    root = _copy(xbot_data, tmp_path)
    latent = _first_latent(root)
    latent.write_bytes(latent.read_bytes()[: latent.stat().st_size // 2])
    with pytest.raises(DatasetError, match=rf"{latent}: cannot load latent tensor: the file is truncated or not a "
                                           "saved latent tensor"):
        _ds(root)
    latent.write_bytes(b"")
    with pytest.raises(DatasetError, match=rf"{latent}: cannot load latent tensor"):
        _ds(root)


def test_xbot_latent_size_is_checked_at_construction(xbot_data, tmp_path):
    from policy_models.datasets.xbot import XbotDataset

    def make(root, latent_size):
        return XbotDataset(root / "index", root, "train", cameras=CAMS, latent_size=latent_size)

    assert make(xbot_data, 8)[0]["rgb_obs"]["cam_high"].shape == (1, 4, 8, 8)
    with pytest.raises(DatasetError, match=rf"{_first_latent(xbot_data)}: latents are 8x8, the policy expects 32x32"):
        make(xbot_data, 32)
    root = _copy(xbot_data, tmp_path)  # a later file at the wrong size fails when it is first read
    index = json.loads((root / "index" / "train_all.json").read_text())
    other = next(i for i, s in enumerate(index) if s["ann_file"] != index[0]["ann_file"])
    ann = json.loads((root / "xbot_synth" / index[other]["ann_file"]).read_text())
    bad = root / "xbot_synth" / ann["latent_videos"][2]["latent_video_path"]
    torch.save(torch.zeros(20, 4, 16, 16), bad)
    ds = make(root, 8)
    with pytest.raises(DatasetError, match=rf"{bad}: latents are 16x16, the policy expects 8x8"):
        ds[other]
