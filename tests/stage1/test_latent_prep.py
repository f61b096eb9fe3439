"""Latent preparation from videos and from teleop HDF5: shapes, resume, corrupt inputs, and the mixer reading it."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from video_dataset import DatasetMix
from video_dataset.annotations import DatasetError
from video_dataset.latent_prep import EncodeOptions, prepare_dataset
from video_dataset.transforms import letterbox_to_4_3, preprocess_frames, select_frames

from .helpers import moving_square_video, write_video_dataset


@pytest.fixture(scope="module")
def tiny_vae(tiny_model_dirs):
    from diffusers import AutoencoderKLTemporalDecoder

    return AutoencoderKLTemporalDecoder.from_pretrained(tiny_model_dirs[0], subfolder="vae").eval()


def test_letterbox_and_resize():
    frames = np.full((2, 30, 80, 3), 200, dtype=np.uint8)
    boxed = letterbox_to_4_3(frames)
    assert boxed.shape == (2, 60, 80, 3)
    assert (boxed[:, :15] == 0).all() and (boxed[:, 15:45] == 200).all() and (boxed[:, 45:] == 0).all()
    tall = letterbox_to_4_3(np.ones((1, 90, 60, 3), dtype=np.uint8))
    assert tall.shape == (1, 90, 120, 3)
    x = preprocess_frames(moving_square_video(3, 48, 80), 64)
    assert x.shape == (3, 3, 64, 64) and x.dtype == torch.float32 and -1 <= float(x.min()) and float(x.max()) <= 1
    assert select_frames(10, 4, start=5, skip=2).tolist() == [5, 7, 9, 9]
    assert select_frames(31, 16, whole_clip=True)[[0, -1]].tolist() == [0, 30]


def test_prepare_latents_resume_and_corrupt_video(tmp_path, tiny_vae):
    root = write_video_dataset(tmp_path, "robo", {"train": [(9, 48, 64), (6, 60, 80)], "val": [(7, 64, 64)]}, cams=2)
    corrupt = root / "videos/train/1/1.mp4"
    corrupt.write_bytes(b"this is not an mp4 file" * 10)
    options = EncodeOptions(resolution=64, chunk_size=4, seed=1)
    report = prepare_dataset(root, tiny_vae, options=options, progress=False)
    assert len(report.encoded) == 2 and len(report.failed) == 1
    assert report.failed[0][0] == str(corrupt)
    assert "FAILED" in report.summary() and str(corrupt) in report.summary()

    latent = torch.load(root / "latent_videos/train/0/1.pt", weights_only=True)
    assert latent.shape == (9, 4, 8, 8) and latent.dtype == torch.float32
    ann = json.loads((root / "annotation/train/0.json").read_text())
    assert ann["latent_videos"] == [{"latent_video_path": f"latent_videos/train/0/{c}.pt"} for c in range(2)]
    assert ann["texts"] == ["push square 0"]  # the rest of the json is kept
    assert not (root / "latent_videos/train/1/1.pt").exists()
    assert "latent_videos" not in json.loads((root / "annotation/train/1.json").read_text())

    # the mixer reads what was written (train episode 1 is not encoded yet -> only the val split is complete)
    val = DatasetMix(
        root.parent,
        "robo",
        None,
        "val",
        sequence_length=4,
        latent_shape=(4, 8, 8),
        rules={"camera_probs": {"robo": [0.5, 0.5]}},
    )
    assert val[0]["latent"].shape == (4, 4, 8, 8)

    # rerun: finished episodes are skipped, the corrupt one is reported again; fixing it completes the data set
    mtime = (root / "latent_videos/train/0/0.pt").stat().st_mtime_ns
    again = prepare_dataset(root, tiny_vae, options=options, progress=False)
    assert len(again.skipped) == 2 and len(again.encoded) == 0 and len(again.failed) == 1
    assert (root / "latent_videos/train/0/0.pt").stat().st_mtime_ns == mtime
    from vpp_core.video_io import write_mp4

    write_mp4(corrupt, moving_square_video(6, 60, 80), fps=5)
    fixed = prepare_dataset(root, tiny_vae, options=options, progress=False)
    assert len(fixed.encoded) == 1 and len(fixed.skipped) == 2 and not fixed.failed
    train = DatasetMix(root.parent, "robo", None, "train", sequence_length=4, latent_shape=(4, 8, 8))
    assert len(train) == 5 + 3


def test_malformed_video_lists_are_reported_by_file(tmp_path, tiny_vae):
    """A 'videos' list of the wrong form, or none, fails that episode with its file named instead of a crash."""
    root = write_video_dataset(tmp_path, "robo", {"train": [(6, 48, 64), (6, 48, 64), (6, 48, 64)]}, cams=1)
    for episode, videos in ((1, ["videos/train/1/0.mp4"]), (2, [])):
        path = root / f"annotation/train/{episode}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "videos": videos}))
    report = prepare_dataset(root, tiny_vae, options=EncodeOptions(resolution=64, chunk_size=4), progress=False)
    assert len(report.encoded) == 1
    failed = dict(report.failed)
    assert "must be a dict with a non-empty string 'video_path'" in failed[str(root / "annotation/train/1.json")]
    assert failed[str(root / "annotation/train/2.json")] == "annotation lists no 'videos'"


def test_latents_are_seeded_and_mode_option(tmp_path, tiny_vae):
    root = write_video_dataset(tmp_path, "a", {"val": [(5, 40, 40)]})
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    prepare_dataset(root, tiny_vae, out_root=out1, options=EncodeOptions(resolution=64, seed=3), progress=False)
    prepare_dataset(root, tiny_vae, out_root=out2, options=EncodeOptions(resolution=64, seed=3), progress=False)
    a = torch.load(out1 / "latent_videos/val/0/0.pt", weights_only=True)
    b = torch.load(out2 / "latent_videos/val/0/0.pt", weights_only=True)
    assert torch.equal(a, b)
    # separate output folder: video paths in the written json still resolve
    ann = json.loads((out1 / "annotation/val/0.json").read_text())
    assert (out1 / ann["videos"][0]["video_path"]).resolve() == (root / "videos/val/0/0.mp4").resolve()
    mode = tmp_path / "mode"
    prepare_dataset(root, tiny_vae, out_root=mode, options=EncodeOptions(resolution=64, sample=False), progress=False)
    m = torch.load(mode / "latent_videos/val/0/0.pt", weights_only=True)
    assert not torch.equal(a, m)


def test_prepare_cli_exit_status(tmp_path, tiny_model_dirs):
    import step1_prepare_latent_data

    root = write_video_dataset(tmp_path, "a", {"val": [(4, 32, 32), (4, 32, 32)]})
    (root / "videos/val/1/0.mp4").write_bytes(b"\x00" * 100)
    argv = [
        "videos",
        "--dataset_dir",
        str(root),
        "--pretrained_model_path",
        str(tiny_model_dirs[0]),
        "--resolution",
        "64",
        "--no_progress",
    ]
    assert step1_prepare_latent_data.main(argv) == 1
    (root / "annotation/val/1.json").unlink()
    assert step1_prepare_latent_data.main(argv) == 0
    with pytest.raises(SystemExit, match="no vae/ subfolder"):
        step1_prepare_latent_data.main(["videos", "--dataset_dir", str(root), "--pretrained_model_path", str(tmp_path)])


def _encoded_rows(frames: np.ndarray) -> np.ndarray:
    """Encode RGB frames as PNG byte rows, zero-padded to one length (the teleop recorder's layout)."""
    from PIL import Image

    blobs = []
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="PNG")
        blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    width = max(len(b) for b in blobs)
    return np.stack([np.pad(b, (0, width - len(b))) for b in blobs])


def _write_h5(path, frames: np.ndarray, compress: bool, text: bytes = b"fold the towel"):
    import h5py

    t = len(frames)
    with h5py.File(path, "w") as f:
        f.attrs["compress"] = compress
        obs = f.create_group("observations")
        obs["arm_end_pose"] = np.arange(t * 14, dtype=np.float64).reshape(t, 14)
        obs["hand_qpos"] = np.arange(t * 24, dtype=np.float64).reshape(t, 24) + 1000
        images = obs.create_group("images")
        for cam in ("cam_high", "cam_left"):
            images[cam] = _encoded_rows(frames) if compress else frames
        f["action"] = np.arange(t * 38, dtype=np.float64).reshape(t, 38)
        f["text"] = np.array([text])


def test_hdf5_import(tmp_path, tiny_vae):
    from video_dataset.hdf5_import import Hdf5ImportOptions, import_hdf5, parse_state_spec

    raw = tmp_path / "raw" / "day1"
    raw.mkdir(parents=True)
    frames = np.zeros((10, 24, 32, 3), dtype=np.uint8)
    frames[..., 0] = 250  # pure red in RGB
    _write_h5(raw / "a.hdf5", frames, compress=True)
    _write_h5(raw / "b.hdf5", frames, compress=False)
    (raw / "c.hdf5").write_bytes(b"broken")
    out = tmp_path / "out"
    options = Hdf5ImportOptions(cameras=("cam_high", "cam_left"), val_every=3, val_offset=1, resolution=64)
    report = import_hdf5(tmp_path / "raw", out, tiny_vae, options, progress=False)
    assert len(report.encoded) == 2 and len(report.failed) == 1 and report.failed[0][0].endswith("c.hdf5")

    # file 0 -> train/0, file 1 -> val/5 (val if index % 3 == 1; id = 5 * index)
    a = json.loads((out / "annotation/train/0.json").read_text())
    b = json.loads((out / "annotation/val/5.json").read_text())
    assert a["texts"] == ["fold the towel"] and a["video_length"] == 2  # frames 0 and 5
    assert np.asarray(a["states"]).shape == (2, 38) and np.asarray(a["actions"]).shape == (2, 38)
    state0 = np.asarray(a["states"][0])
    assert state0[:7].tolist() == list(range(7)) and state0[7:19].tolist() == list(range(1000, 1012))
    assert state0[19:26].tolist() == list(range(7, 14)) and state0[26:].tolist() == list(range(1012, 1024))
    assert np.asarray(a["actions"])[1, 0] == 5 * 38
    assert torch.load(out / a["latent_videos"][1]["latent_video_path"], weights_only=True).shape == (2, 4, 8, 8)

    from vpp_core.video_io import read_video

    # compressed frames keep the original's OpenCV (BGR) order -> red becomes blue; raw frames are untouched
    comp = read_video(out / a["videos"][0]["video_path"]).astype(int)
    raw_frames = read_video(out / b["videos"][0]["video_path"]).astype(int)
    centre = (slice(None), slice(28, 36), slice(28, 36))
    assert comp[centre][..., 2].mean() > 200 and comp[centre][..., 0].mean() < 60
    assert raw_frames[centre][..., 0].mean() > 200
    # letterbox (32x24 is 4:3 already -> no bars); text override + bgr_to_rgb; rerun skips finished files
    out2 = tmp_path / "out2"
    opts2 = Hdf5ImportOptions(cameras=("cam_high",), text="stack blocks", bgr_to_rgb=True, resolution=64)
    import_hdf5(tmp_path / "raw", out2, None, opts2, progress=False)
    c = json.loads((out2 / "annotation/train/0.json").read_text())
    assert c["texts"] == ["stack blocks"] and "latent_videos" not in c
    assert read_video(out2 / c["videos"][0]["video_path"]).astype(int)[centre][..., 0].mean() > 200
    again = import_hdf5(tmp_path / "raw", out2, None, opts2, progress=False)
    assert len(again.skipped) == 2 and len(again.failed) == 1

    assert parse_state_spec("a[:7], b[12:],c") == [("a", slice(None, 7)), ("b", slice(12, None)), ("c", slice(None))]
    with pytest.raises(ValueError, match="cannot parse state spec"):
        parse_state_spec("a[1:2:3]")


def test_hdf5_episode_with_different_frame_counts_fails(tmp_path):
    """Cameras, states and actions of different lengths are a failed episode naming the file and the lengths, even
    where subsampling would make them agree (10 and 9 frames at step 5 both give 2)."""
    import h5py

    from video_dataset.hdf5_import import Hdf5ImportOptions, import_hdf5

    raw = tmp_path / "raw" / "day1"
    raw.mkdir(parents=True)
    frames = np.zeros((10, 24, 32, 3), dtype=np.uint8)
    for name in ("a", "b", "c"):
        _write_h5(raw / f"{name}.hdf5", frames, compress=False)
    with h5py.File(raw / "b.hdf5", "r+") as f:
        del f["observations/images/cam_left"]
        f["observations/images/cam_left"] = frames[:9]
    with h5py.File(raw / "c.hdf5", "r+") as f:
        del f["observations/hand_qpos"]
        f["observations/hand_qpos"] = np.zeros((8, 24))
    out = tmp_path / "out"
    options = Hdf5ImportOptions(cameras=("cam_high", "cam_left"), resolution=32)
    report = import_hdf5(tmp_path / "raw", out, None, options, progress=False)
    assert report.encoded == [str(raw / "a.hdf5")]
    failed = dict(report.failed)
    assert failed[str(raw / "b.hdf5")] == ("ValueError: frame counts differ: /action 10, states (/observations) 10, "
                                           "/observations/images/cam_high 10, /observations/images/cam_left 9")
    assert failed[str(raw / "c.hdf5")] == ("ValueError: state sources have different frame counts: "
                                           "/observations/arm_end_pose 10, /observations/hand_qpos 8")
    assert f"FAILED {raw / 'b.hdf5'}: ValueError: frame counts differ" in report.summary()
    assert sorted(p.name for p in (out / "annotation" / "train").iterdir()) == ["0.json"]


def test_select_frames_start_outside_the_video():
    assert select_frames(10, 4, start=9, skip=2).tolist() == [9, 9, 9, 9]  # a clip running off the end is padded
    for start in (10, 25, -1):
        with pytest.raises(ValueError, match=rf"start index {start} is outside the video's 10 frames \(valid: 0..9\)"):
            select_frames(10, 16, start=start, skip=2)


def test_prediction_start_outside_the_episode_names_the_annotation(tmp_path):
    from video_dataset.annotations import DatasetError
    from video_models.prediction import PredictionSettings, load_episode

    root = write_video_dataset(tmp_path, "ds", {"val": [(8, 32, 32)]})
    settings = PredictionSettings(val_dataset_dir=str(root), start_idx=100, height=32, width=32)
    with pytest.raises(DatasetError, match=r"annotation/val/0\.json: start index 100 is outside the video's 8 frames"):
        load_episode(root, 0, settings)


def test_off_scale_latents_are_reported_once_and_calibrated_ones_are_not(tmp_path, tiny_model_dirs):
    from diffusers import AutoencoderKLTemporalDecoder

    from video_models.vae_fit import calibrate_latent_scale

    root = write_video_dataset(tmp_path, "ds", {"train": [(8, 48, 48), (8, 48, 48)]})
    random_vae = AutoencoderKLTemporalDecoder.from_pretrained(tiny_model_dirs[0], subfolder="vae").eval()
    report = prepare_dataset(root, random_vae, out_root=tmp_path / "a", options=EncodeOptions(resolution=64),
                             progress=False)
    scale_warnings = [w for w in report.warnings if "scaled latents have std" in w]
    assert len(scale_warnings) == 1 and "video_models.vae_fit" in scale_warnings[0]

    frames = torch.from_numpy(moving_square_video(16, 64, 64))
    calibrate_latent_scale(random_vae, frames)
    report = prepare_dataset(root, random_vae, out_root=tmp_path / "b", options=EncodeOptions(resolution=64),
                             progress=False)
    assert not [w for w in report.warnings if "scaled latents have std" in w]


def test_rerun_with_other_settings_refuses_before_encoding(tmp_path, tiny_vae):
    """Finished episodes record how they were encoded. A rerun with another resolution, resize or autoencoder would
    skip them and leave two kinds of latents in one data set: it stops before writing anything, naming what
    differs and the ways out; --overwrite re-encodes; the same settings (or only another precision) still resume."""
    import copy

    root = write_video_dataset(tmp_path, "robo", {"train": [(6, 48, 64), (6, 48, 64)]}, cams=1)
    options = EncodeOptions(resolution=64, chunk_size=4)
    first = root / "annotation/train/1.json"
    prepare_dataset(root, tiny_vae, options=options, progress=False)
    recorded = json.loads(first.read_text())["latent_encoding"]
    assert recorded["resolution"] == 64 and recorded["latent"] == "sample" and len(recorded["vae"]["fingerprint"]) == 64

    # episode 1 unfinished: a resumed run with the same settings encodes it and skips episode 0
    ann = json.loads(first.read_text())
    first.write_text(json.dumps({k: v for k, v in ann.items() if k not in ("latent_videos", "latent_encoding")}))
    assert len(prepare_dataset(root, tiny_vae, options=options, progress=False).encoded) == 1
    mtime = (root / "latent_videos/train/0/0.pt").stat().st_mtime_ns
    with pytest.raises(DatasetError, match=r"of its 2 finished episodes, some were .*\(resolution: 64 -> 128 "
                                           r"\(2 episode\(s\)\)\).*--overwrite.*--output_dir"):
        prepare_dataset(root, tiny_vae, options=EncodeOptions(resolution=128, chunk_size=4), progress=False)
    other = copy.deepcopy(tiny_vae)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    with pytest.raises(DatasetError, match="autoencoder: other weights"):
        prepare_dataset(root, other, options=options, progress=False)
    with pytest.raises(DatasetError, match="letterbox: False -> True"):
        prepare_dataset(root, tiny_vae, options=EncodeOptions(resolution=64, letterbox=True), progress=False)
    assert (root / "latent_videos/train/0/0.pt").stat().st_mtime_ns == mtime  # nothing was written
    half = prepare_dataset(root, copy.deepcopy(tiny_vae).to(torch.bfloat16), options=options, progress=False)
    assert len(half.skipped) == 2  # another precision of the same weights is no conflict

    redone = prepare_dataset(root, tiny_vae, options=EncodeOptions(resolution=128, chunk_size=4), overwrite=True,
                             progress=False)
    assert len(redone.encoded) == 2
    assert torch.load(root / "latent_videos/train/0/0.pt", weights_only=True).shape[-1] == 16

    # latents without the record (released data sets): their size is checked against the resolution
    for path in (root / "annotation/train").glob("*.json"):
        ann = json.loads(path.read_text())
        path.write_text(json.dumps({k: v for k, v in ann.items() if k != "latent_encoding"}))
    with pytest.raises(DatasetError, match=r"are 16 x 16, but --resolution 64 makes 8 x 8"):
        prepare_dataset(root, tiny_vae, options=options, progress=False)
    assert len(prepare_dataset(root, tiny_vae, options=EncodeOptions(resolution=128), progress=False).skipped) == 2
