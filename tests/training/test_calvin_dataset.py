"""CALVIN loader: shapes, values, window index, packed == npz, bad-data errors, resumable packing."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from policy_models.datasets.base import DatasetError, build_dataset, collate_samples, preprocess_rgb
from policy_models.datasets.calvin import (
    CalvinDataset,
    build_window_index,
    discover_naming,
    load_lang_annotations,
)
from policy_models.datasets.pack_calvin import main as pack_main
from policy_models.datasets.pack_calvin import pack_split


def _lang(split_dir):
    return load_lang_annotations(split_dir / "lang_annotations" / "auto_lang_ann.npy")


def test_sample_shapes_and_values(calvin_root):
    split = calvin_root / "training"
    ds = CalvinDataset(split, image_size=256, data_format="npz")
    assert len(ds) == 6 * (32 - 21)  # 6 segments of 32 frames, starts start..end-21
    s = ds[5]
    assert set(s) == {"rgb_obs", "lang_text", "actions", "idx"}
    assert s["rgb_obs"]["rgb_static"].shape == (1, 3, 256, 256)
    assert s["rgb_obs"]["rgb_gripper"].shape == (1, 3, 256, 256)
    assert s["rgb_obs"]["rgb_static"].dtype == torch.float32
    assert s["actions"].shape == (10, 7) and s["actions"].dtype == torch.float32
    assert s["idx"] == 5
    # values: frame = start of window 5 (segment 0 starts at 0), actions = rel_actions of frames 5..14 unnormalised
    segments, ann = _lang(split)
    start = int(segments[0][0]) + 5
    assert s["lang_text"] == ann[0]
    rel = np.stack([np.load(split / f"episode_{f:07d}.npz")["rel_actions"] for f in range(start, start + 10)])
    np.testing.assert_array_equal(s["actions"].numpy(), rel.astype(np.float32))
    img = np.load(split / f"episode_{start:07d}.npz")["rgb_static"]
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    ref = F.interpolate(x, size=(256, 256), mode="bilinear", antialias=True, align_corners=False).round().clamp(0, 255)
    torch.testing.assert_close(s["rgb_obs"]["rgb_static"], (ref / 255 - 0.5) / 0.5)
    assert s["rgb_obs"]["rgb_static"].min() >= -1 and s["rgb_obs"]["rgb_static"].max() <= 1


def test_configurable_resolution_and_batch(calvin_root):
    ds = build_dataset({"type": "calvin", "root_data_dir": str(calvin_root), "image_size": 64}, "val",
                       cameras=["rgb_static", "rgb_gripper"], action_seq_len=10, action_dim=7)
    assert len(ds) == 3 * 11
    batch = collate_samples([ds[0], ds[1], ds[2]])
    assert batch["rgb_obs"]["rgb_static"].shape == (3, 1, 3, 64, 64)
    assert batch["rgb_obs"]["rgb_gripper"].shape == (3, 1, 3, 64, 64)
    assert batch["actions"].shape == (3, 10, 7)
    assert isinstance(batch["lang_text"], list) and len(batch["lang_text"]) == 3
    assert batch["idx"].tolist() == [0, 1, 2]


def test_window_index_every_start():
    segs = np.array([[10, 40], [100, 121], [200, 263]])
    starts, seg_ids = build_window_index(segs, min_window_size=21)
    expect = [*range(10, 40 - 21 + 1), *range(100, 121 - 21 + 1), *range(200, 263 - 21 + 1)]
    assert starts.tolist() == expect  # last start of each segment = end - min_window_size
    assert seg_ids.tolist() == [0] * 10 + [1] * 1 + [2] * 43
    # every window (21 frames from its start, of which the loader reads the first 10) stays inside its segment
    assert all(s + 20 <= segs[i][1] for s, i in zip(starts, seg_ids))


def test_dataset_index_matches_annotations(calvin_root):
    split = calvin_root / "training"
    ds = CalvinDataset(split, image_size=32, data_format="npz")
    segments, ann = _lang(split)
    expect = [(f, i) for i, (s, e) in enumerate(segments) for f in range(s, e - 21 + 1)]
    assert list(zip(ds.episode_lookup.tolist(), ds.lang_lookup.tolist())) == expect
    for i in (0, len(ds) - 1):
        assert ds[i]["lang_text"] == ann[int(ds.lang_lookup[i])]


def test_naming_discovered(tmp_path):
    for f in (3, 4):
        np.savez(tmp_path / f"frame_{f:05d}.npz", x=np.zeros(1))
    n = discover_naming(tmp_path)
    assert (n.prefix, n.digits, n.suffix) == ("frame_", 5, ".npz")
    assert n.path(tmp_path, 12).name == "frame_00012.npz"


def test_packed_equals_npz_and_is_used(calvin_root, caplog):
    assert pack_main(["--root", str(calvin_root), "--workers", "2", "--chunk", "16", "--no_progress"]) == 0
    for split in ("training", "validation"):
        assert (calvin_root / split / "packed" / "index.json").is_file()
        with caplog.at_level(logging.INFO, logger="policy_models.datasets.calvin"):
            packed = CalvinDataset(calvin_root / split, image_size=64)
        assert packed.data_format == "packed"
        assert "packed arrays" in caplog.text
        npz = CalvinDataset(calvin_root / split, image_size=64, data_format="npz")
        assert len(packed) == len(npz)
        for i in range(len(npz)):
            a, b = npz[i], packed[i]
            assert a["lang_text"] == b["lang_text"]
            assert torch.equal(a["actions"], b["actions"])
            for cam in ("rgb_static", "rgb_gripper"):
                assert torch.equal(a["rgb_obs"][cam], b["rgb_obs"][cam])


def test_packing_is_resumable(calvin_root, monkeypatch):
    import policy_models.datasets.pack_calvin as pc

    split = calvin_root / "validation"
    calls = {"n": 0}
    real = pc._read_frames

    def flaky(args):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt("simulated interruption")
        return real(args)

    monkeypatch.setattr(pc, "_read_frames", flaky)
    monkeypatch.setattr(pc, "_write_json_atomic", pc._write_json_atomic)
    with pytest.raises(KeyboardInterrupt):
        pack_split(split, workers=1, chunk=8, progress=False)
    assert not (split / "packed").exists()  # nothing that looks complete
    assert (split / "packed.partial").is_dir()
    monkeypatch.setattr(pc, "_read_frames", real)
    pack_split(split, workers=1, chunk=8, progress=False)
    assert not (split / "packed.partial").exists()
    packed = CalvinDataset(split, image_size=32)
    npz = CalvinDataset(split, image_size=32, data_format="npz")
    assert packed.data_format == "packed"
    for i in range(len(npz)):
        assert torch.equal(packed[i]["rgb_obs"]["rgb_static"], npz[i]["rgb_obs"]["rgb_static"])
        assert torch.equal(packed[i]["actions"], npz[i]["actions"])


def test_a_kill_while_replacing_a_pack_is_undone_by_the_next_run(calvin_root):
    """`--overwrite` renames the old pack to packed.old and removes it last: killed while removing it, the next run
    deletes the rest; killed between the two renames (no packed/), it puts the old pack back."""
    import shutil

    split = calvin_root / "validation"
    final = pack_split(split, workers=1, chunk=8, progress=False)
    leftover = split / "packed.old"
    (leftover / "half_deleted").mkdir(parents=True)
    assert pack_split(split, workers=1, chunk=8, progress=False) == final and not leftover.exists()
    shutil.move(final, leftover)
    assert pack_split(split, workers=1, chunk=8, progress=False) == final
    assert (final / "index.json").is_file() and not leftover.exists()


# ---------------------------------------------------------------------------------------------------- bad data
def _rewrite_frame(path, drop=None, **replace):
    data = dict(np.load(path))
    if drop:
        data.pop(drop)
    data.update(replace)
    np.savez_compressed(path, **data)


def test_missing_key_names_file(calvin_root):
    split = calvin_root / "training"
    ds = CalvinDataset(split, image_size=32, data_format="npz")
    f = int(ds.episode_lookup[3]) + 4
    bad = split / f"episode_{f:07d}.npz"
    _rewrite_frame(bad, drop="rel_actions")
    with pytest.raises(DatasetError, match=rf"{bad.name}.*missing key 'rel_actions'"):
        ds[3]


def test_wrong_shape_names_file(calvin_root):
    split = calvin_root / "training"
    first = split / "episode_0000000.npz"
    _rewrite_frame(first, rgb_static=np.zeros((200, 200), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"episode_0000000\.npz.*rgb_static.*\(H, W, 3\) uint8"):
        CalvinDataset(split, image_size=32, data_format="npz")
    _rewrite_frame(first, rgb_static=np.zeros((200, 200, 3), dtype=np.uint8), rel_actions=np.zeros(6))
    with pytest.raises(DatasetError, match=r"episode_0000000\.npz.*rel_actions.*expected \(7,\)"):
        CalvinDataset(split, image_size=32, data_format="npz")


def test_short_segment_is_an_error(calvin_root):
    split = calvin_root / "validation"
    path = split / "lang_annotations" / "auto_lang_ann.npy"
    lang = np.load(path, allow_pickle=True).item()
    s, _ = lang["info"]["indx"][1]
    lang["info"]["indx"][1] = (s, s + 15)  # 16 frames < one window of 21
    np.save(path, lang, allow_pickle=True)
    with pytest.raises(DatasetError, match=r"auto_lang_ann\.npy: segment 1 .* 16 frames"):
        CalvinDataset(split, image_size=32)


def test_missing_annotations_and_frames(calvin_root):
    split = calvin_root / "validation"
    (split / "lang_annotations" / "auto_lang_ann.npy").unlink()
    with pytest.raises(DatasetError, match="language annotations not found"):
        CalvinDataset(split, image_size=32)
    train = calvin_root / "training"
    segments, _ = _lang(train)
    last = int(segments[-1][1]) - 21 + 9  # the last frame read by the last window
    (train / f"episode_{last:07d}.npz").unlink()
    with pytest.raises(DatasetError, match=rf"episode_{last:07d}\.npz"):
        CalvinDataset(train, image_size=32, data_format="npz")
    with pytest.raises(DatasetError, match="CALVIN split folder not found"):
        CalvinDataset(calvin_root / "nope", image_size=32)


def test_packed_requested_but_missing(calvin_root):
    with pytest.raises(DatasetError, match="pack_calvin"):
        CalvinDataset(calvin_root / "training", image_size=32, data_format="packed")


def test_preprocess_rgb_checks():
    with pytest.raises(ValueError, match="uint8"):
        preprocess_rgb(np.zeros((4, 4, 3), dtype=np.float32), 8)
    out = preprocess_rgb(np.full((5, 5, 3), 255, dtype=np.uint8), None)
    assert out.shape == (1, 3, 5, 5) and torch.all(out == 1)


def _rewrite_lang(split, **changes):
    """Apply `changes` ({"ann": [...], "indx": [...]}) to a split's auto_lang_ann.npy."""
    path = split / "lang_annotations" / "auto_lang_ann.npy"
    lang = np.load(path, allow_pickle=True).item()
    if "ann" in changes:
        lang["language"]["ann"] = changes["ann"]
    if "indx" in changes:
        lang["info"]["indx"] = changes["indx"]
    np.save(path, lang, allow_pickle=True)
    return path


def test_bytes_instructions_are_decoded(calvin_root):
    split = calvin_root / "validation"
    _, ann = _lang(split)
    _rewrite_lang(split, ann=[a.encode("utf-8") for a in ann[:-1]] + [np.bytes_("stäck the blöck".encode())])
    segments, decoded = _lang(split)
    assert decoded == ann[:-1] + ["stäck the blöck"]
    assert CalvinDataset(split, image_size=32)[0]["lang_text"] == ann[0]
    _rewrite_lang(split, ann=ann[:-1] + [b"\xff\xfe"])
    with pytest.raises(DatasetError, match=r"auto_lang_ann\.npy: language\.ann\[2\] is bytes that are not UTF-8"):
        _lang(split)


def test_segments_across_episodes_are_reported(calvin_root, caplog):
    split = calvin_root / "training"
    np.save(split / "ep_start_end_ids.npy", np.array([[0, 40], [41, 63], [71, 134]]))
    with caplog.at_level(logging.WARNING, logger="policy_models.datasets.calvin"):
        ds = CalvinDataset(split, image_size=32, data_format="npz")  # loaded as the original did, but not silently
    assert len(ds) == 6 * (32 - 21)
    assert re.search(r"auto_lang_ann\.npy: segment 1 \[16, 47\] is not inside one episode of .*ep_start_end_ids\.npy "
                     r"\(episode bounds it touches: \[\[0, 40\], \[41, 63\]\]\); 2 of 6 segments", caplog.text)
    caplog.clear()
    np.save(split / "ep_start_end_ids.npy", np.array([[0, 63], [64, 134]]))
    with caplog.at_level(logging.WARNING, logger="policy_models.datasets.calvin"):
        CalvinDataset(split, image_size=32, data_format="npz")
    assert "episode" not in caplog.text
    np.save(split / "ep_start_end_ids.npy", np.array([0, 63, 71, 134]))
    with pytest.raises(DatasetError, match=r"ep_start_end_ids\.npy: expected an \(n, 2\) integer array"):
        CalvinDataset(split, image_size=32, data_format="npz")
    np.save(split / "ep_start_end_ids.npy", np.array([0, 63, 71, 134]))
    with pytest.raises(DatasetError, match=r"ep_start_end_ids\.npy: expected an \(n, 2\) integer array"):
        CalvinDataset(split, image_size=32, data_format="npz")
    (split / "ep_start_end_ids.npy").unlink()  # optional: without it the segments are taken as they are
    assert len(CalvinDataset(split, image_size=32, data_format="npz")) == 6 * (32 - 21)


def test_explicit_lang_folder_must_exist(calvin_root):
    split = calvin_root / "validation"
    with pytest.raises(DatasetError, match=rf"language annotations not found: {split / 'lang_anotations'}.*"
                                           r"lang_folder='lang_anotations'.*lang_annotations/ has them"):
        CalvinDataset(split, image_size=32, lang_folder="lang_anotations")
    # the original config's folder falls back to lang_annotations/ (same annotations, other embeddings)
    ds = CalvinDataset(split, image_size=32, lang_folder="lang_clip_resnet50")
    assert ds.lang_path == split / "lang_annotations" / "auto_lang_ann.npy"
    (split / "lang_other").mkdir()
    (split / "lang_annotations" / "auto_lang_ann.npy").rename(split / "lang_other" / "auto_lang_ann.npy")
    assert CalvinDataset(split, image_size=32, lang_folder="lang_other").lang_path.parent.name == "lang_other"


def test_mixed_image_sizes_name_the_files(calvin_root):
    split = calvin_root / "training"
    ds = CalvinDataset(split, image_size=32, data_format="npz")
    odd = split / "episode_0000003.npz"
    _rewrite_frame(odd, rgb_static=np.zeros((100, 100, 3), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"key 'rgb_static' has inconsistent shapes \[\(100, 100, 3\), "
                                           r"\(200, 200, 3\)\]: .*episode_0000000\.npz has \(200, 200, 3\), "
                                           r".*episode_0000003\.npz has \(100, 100, 3\)"):
        ds.frames.read_window(np.arange(8), 8, ("rgb_static",), "rel_actions", 7)


def test_truncated_packed_array_names_file(calvin_root):
    split = calvin_root / "validation"
    pack_split(split, workers=1, progress=False)
    array = split / "packed" / "rgb_static.npy"
    with open(array, "r+b") as fh:
        fh.truncate(array.stat().st_size // 2)
    with pytest.raises(DatasetError, match=rf"{array}: cannot read the array, the file is truncated or corrupt "
                                           r".*pack_calvin --overwrite"):
        CalvinDataset(split, image_size=32)
    ids = split / "packed" / "frame_ids.npy"
    ids.write_bytes(ids.read_bytes()[:40])
    with pytest.raises(DatasetError, match=rf"{ids}: cannot read the array.*pack_calvin --overwrite"):
        CalvinDataset(split, image_size=32)
