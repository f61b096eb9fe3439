"""The shipped sample data (video_dataset_instance) goes through our readers unchanged. Skipped when absent."""

from __future__ import annotations

import pytest
import torch

from video_dataset import DatasetMix
from video_dataset.latent_prep import EncodeOptions, prepare_dataset
from video_models.prediction import PredictionSettings, load_episode


@pytest.mark.parametrize("name, idx", [("bridge", 2), ("rt1", 1), ("sthv2", 872), ("xhand", 50)])
def test_make_prediction_reads_reference_episodes(reference_data, name, idx):
    settings = PredictionSettings(val_dataset_dir=str(reference_data / "video_dataset_instance" / name))
    episode = load_episode(settings.val_dataset_dir, idx, settings)
    assert episode.frames.shape == (16, 3, 256, 256) and episode.text
    assert -1.0 <= float(episode.frames.min()) and float(episode.frames.max()) <= 1.0


def test_prepare_reference_rt1_then_mix(reference_data, tiny_model_dirs, tmp_path):
    from diffusers import AutoencoderKLTemporalDecoder

    vae = AutoencoderKLTemporalDecoder.from_pretrained(tiny_model_dirs[0], subfolder="vae").eval()
    src = reference_data / "video_dataset_instance" / "rt1"
    out = tmp_path / "rt1"
    report = prepare_dataset(src, vae, out_root=out, options=EncodeOptions(resolution=64), progress=False)
    assert len(report.encoded) == 4 and not report.failed, report.summary()
    ds = DatasetMix(tmp_path, "rt1", None, "val", latent_shape=(4, 8, 8))
    assert len(ds) == 4
    item = ds[0]
    assert item["latent"].shape == (16, 4, 8, 8) and item["latent"].dtype == torch.float32


def test_shipped_bridge_latents_count_as_finished(reference_data, tiny_model_dirs, tmp_path):
    """The bridge jsons point at latent_videos/ but the files are in latent_videos_svd/: nothing to redo."""
    import shutil

    src = reference_data / "video_dataset_instance" / "bridge"
    if not (src / "latent_videos_svd").is_dir():
        pytest.skip("bridge latents not present in the reference data")
    copy = shutil.copytree(src, tmp_path / "bridge")
    report = prepare_dataset(copy, vae=None, options=EncodeOptions(resolution=256), progress=False)
    assert len(report.skipped) == 4 and not report.encoded and not report.failed
