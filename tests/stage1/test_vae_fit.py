"""video_models.vae_fit: a random autoencoder gets SVD's latent scale without changing what it computes, fitting
lowers its reconstruction error, and the command rewrites the folder's vae/ so the real loaders pick it up."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from video_dataset.transforms import to_model_range
from video_models.vae_fit import FIT_RECORD, calibrate_latent_scale, fit_autoencoder, main, scaled_latent_std

from .helpers import moving_square_video, write_video_dataset


def _tiny_vae(seed: int = 0):
    from video_models.builders import build_video_model
    from vpp_core.config import load_config

    return build_video_model(load_config("video_conf/tiny.yaml").model, seed=seed).vae.eval()


def _frames(n: int = 24, size: int = 32) -> torch.Tensor:
    return torch.from_numpy(moving_square_video(n, size, size, seed=3))


def test_random_autoencoder_is_far_from_svd_scale_and_calibration_fixes_it_without_changing_the_function():
    vae, frames = _tiny_vae(), _frames()
    before = scaled_latent_std(vae, frames)
    assert before < 0.5  # the trap this module exists for: scaled latents of a random VAE are nearly zero
    x = to_model_range(frames)
    with torch.no_grad():
        z0 = vae.encode(x).latent_dist
        recon0 = vae.decode(z0.mean, num_frames=1).sample
    k = calibrate_latent_scale(vae, frames)
    assert k == pytest.approx(1.0 / before, rel=1e-5)
    assert scaled_latent_std(vae, frames) == pytest.approx(1.0, abs=1e-4)
    with torch.no_grad():
        z1 = vae.encode(x).latent_dist
        recon1 = vae.decode(z1.mean, num_frames=1).sample
    torch.testing.assert_close(z1.mean, z0.mean * k, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(z1.std, z0.std, rtol=1e-4, atol=1e-5)  # the posterior keeps its width
    torch.testing.assert_close(recon1, recon0, rtol=1e-4, atol=1e-4)  # same autoencoder, other latent units


def test_fitting_lowers_the_reconstruction_error():
    torch.manual_seed(0)
    vae = _tiny_vae()
    clips = _frames(32).reshape(8, 4, 32, 32, 3)
    losses = fit_autoencoder(vae, clips, steps=40, batch_size=4, lr=2e-3, progress=False)
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_command_rewrites_vae_in_place_and_records_what_it_did(tmp_path, tiny_model_dirs, capsys):
    from diffusers import AutoencoderKLTemporalDecoder

    svd = tmp_path / "svd"
    shutil.copytree(tiny_model_dirs[0], svd)
    dataset = write_video_dataset(tmp_path, "ds", {"train": [(12, 40, 40), (12, 40, 40)]}, cams=2)
    assert main(["--pretrained_model_path", str(svd), "--dataset_dir", str(dataset), "--resolution", "32",
                 "--steps", "2", "--batch_size", "2", "--clips_per_video", "2", "--device", "cpu",
                 "--no_progress"]) == 0
    record = json.loads((svd / FIT_RECORD).read_text())
    assert record["frames"] == 2 * 2 * 2 * 4  # episodes x cameras x clips x clip length
    assert record["scaled_latent_std_before"] < 0.5
    assert record["scaled_latent_std_after"] == pytest.approx(1.0, abs=1e-3)
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    vae = AutoencoderKLTemporalDecoder.from_pretrained(svd, subfolder="vae")  # the loaders' own path
    original = AutoencoderKLTemporalDecoder.from_pretrained(tiny_model_dirs[0], subfolder="vae")
    assert not torch.equal(vae.quant_conv.weight, original.quant_conv.weight)
    leftovers = [p.name for p in svd.iterdir() if p.name.startswith("tmp") or p.name == "vae.replaced"]
    assert leftovers == []  # neither the staging folder nor the replaced autoencoder stays behind


def test_command_names_the_folder_without_vae(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--pretrained_model_path", str(tmp_path / "empty"), "--dataset_dir", str(tmp_path),
                 "--resolution", "32", "--device", "cpu"]) == 2
    assert f"no vae/ subfolder in {tmp_path / 'empty'}" in capsys.readouterr().err
