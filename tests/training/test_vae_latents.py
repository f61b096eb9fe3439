"""Precomputed VAE latents for stage 2 (`python -m policy_models.datasets.encode_latents`): the served latents are the
policy's own encoding of the served images, interrupted encodings resume, and latents of another autoencoder are
refused rather than used."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from train_helpers import CONF

from policy_models.datasets.base import DatasetError, collate_samples
from policy_models.datasets.calvin import CalvinDataset
from policy_models.datasets.encode_latents import encode_split, main
from policy_models.datasets.vae_latents import LATENTS_DIR, vae_identity
from vpp_core.fingerprint import weights_fingerprint

CAMERAS = ("rgb_static", "rgb_gripper")


@pytest.fixture(scope="module")
def policy(tiny_model_dirs):
    from omegaconf import OmegaConf

    from policy_models.policy import build_policy

    torch.manual_seed(0)
    svd, clip = tiny_model_dirs
    cfg = OmegaConf.load(CONF / "model" / "tiny.yaml")
    return build_policy(cfg, video_model_path=str(svd), clip_model_path=str(clip)).eval()


def _identity(policy):
    return lambda: vae_identity(policy.tvp_encoder.vae, policy.resolution)


def test_cli_latents_are_the_policys_own_encoding(calvin_root, tiny_model_dirs, policy, tmp_path):
    split = calvin_root / "training"
    assert main(["--root", str(calvin_root), "--video_model_path", str(tmp_path / "nothing"), "--device", "cpu"]) == 2
    cut = tmp_path / "cut-svd"  # its autoencoder's weights cut short by a copy: one error line, not a traceback
    shutil.copytree(tiny_model_dirs[0], cut)
    weights = next((cut / "vae").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(["--root", str(calvin_root), "--video_model_path", str(cut), "--device", "cpu"]) == 2
    assert not (split / LATENTS_DIR).exists()
    assert main(["--root", str(calvin_root), "--video_model_path", str(tiny_model_dirs[0]), "--video_dtype", "fp32",
                 "--device", "cpu", "--workers", "0", "--batch", "1", "--no_progress"]) == 0
    index = json.loads((split / LATENTS_DIR / "index.json").read_text())
    assert index["complete"] and index["vae"]["fingerprint"] == weights_fingerprint(policy.tvp_encoder.vae)
    assert (calvin_root / "validation" / LATENTS_DIR / "index.json").is_file()

    res, tvp = policy.resolution, policy.tvp_encoder
    images = CalvinDataset(split, image_size=res, vae_latents="off")
    latents = CalvinDataset(split, image_size=res, vae_latents="on", vae=_identity(policy))
    assert len(images) == len(latents)
    with torch.no_grad():
        for i in (0, len(images) // 2, len(images) - 1):
            a, b = images[i], latents[i]
            assert a["lang_text"] == b["lang_text"] and torch.equal(a["actions"], b["actions"])
            for cam in CAMERAS:
                assert b["rgb_obs"][cam].shape == (1, tvp.latent_channels, tvp.latent_size, tvp.latent_size)
                # what the policy computes from the served latent is its encoding of the served image (encoded one
                # frame at a time, as here: the random autoencoder's GroupNorms make results depend on the batch
                # size at the 1e-3 level). In fp32 the scaling round trip leaves one ulp; half precision: below.
                torch.testing.assert_close(tvp.encode_images(b["rgb_obs"][cam]), tvp.encode_images(a["rgb_obs"][cam]),
                                           rtol=0, atol=1e-6)
        batch_images = collate_samples([images[0], images[5]])
        batch_latents = collate_samples([latents[0], latents[5]])
        loss_images, _ = policy.compute_loss(batch_images, generator=torch.Generator().manual_seed(0))
        loss_latents, _ = policy.compute_loss(batch_latents, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss_latents, loss_images, rtol=1e-3, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_scaling_round_trip_is_exact_in_half_precision(dtype):
    """Stored half-precision latents, served as float32 * scaling factor, come back bit-identical after the
    policy's division and cast (`TVPEncoder.encode_images`)."""
    from policy_models.datasets.vae_latents import storage_dtype

    g = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randn(200_000, generator=g) * scale for scale in (1e-4, 1.0, 30.0)]).to(dtype)
    stored = torch.from_numpy(values.float().numpy().astype(storage_dtype(dtype)))
    served = stored.float() * 0.18215
    assert torch.equal((served / 0.18215).to(dtype), values)


def test_interrupted_encoding_resumes_to_the_same_arrays(calvin_root, policy, monkeypatch):
    split, vae, res = calvin_root / "training", policy.tvp_encoder.vae, policy.resolution
    reference = encode_split(split, vae, res, batch=4, workers=0, progress=False)
    expected = {cam: np.load(reference / f"{cam}.npy") for cam in CAMERAS}
    encode = vae.encode
    calls = []

    def failing_encode(x):
        calls.append(1)
        if len(calls) == 2 * 20:  # the 20th batch of two cameras: after the progress record at batch 16
            raise RuntimeError("simulated crash")
        return encode(x)

    monkeypatch.setattr(vae, "encode", failing_encode)
    with pytest.raises(RuntimeError, match="simulated crash"):
        encode_split(split, vae, res, batch=4, workers=0, progress=False, overwrite=True)
    progress = json.loads((split / f"{LATENTS_DIR}.partial" / "progress.json").read_text())
    assert progress["done"] == 16 * 4
    calls.clear()
    folder = encode_split(split, vae, res, batch=4, workers=0, progress=False, overwrite=True)
    assert len(calls) == 2 * (-(-len(np.load(folder / "frame_ids.npy")) // 4) - 16)  # only the missing batches
    assert not (split / f"{LATENTS_DIR}.partial").exists()
    for cam in CAMERAS:
        assert np.array_equal(np.load(folder / f"{cam}.npy"), expected[cam])


def test_latents_of_another_autoencoder_are_refused(calvin_root, policy):
    split, res = calvin_root / "training", policy.resolution
    # auto without latents: images; "on" without latents: an error naming the command
    assert CalvinDataset(split, image_size=res, vae_latents="auto", vae=_identity(policy))[0]["rgb_obs"][
        "rgb_static"].shape[1] == 3
    with pytest.raises(DatasetError, match="encode_latents"):
        CalvinDataset(split, image_size=res, vae_latents="on", vae=_identity(policy))
    encode_split(split, policy.tvp_encoder.vae, res, batch=16, workers=0, progress=False)
    other = type(policy.tvp_encoder.vae).from_config(policy.tvp_encoder.vae.config)  # fresh random weights
    with pytest.raises(DatasetError, match="another autoencoder"):
        CalvinDataset(split, image_size=res, vae_latents="auto", vae=lambda: vae_identity(other, res))
    with pytest.raises(DatasetError, match="another autoencoder"):  # and the encoder will not mix them either
        encode_split(split, other, res, batch=16, workers=0, progress=False)
    with pytest.raises(DatasetError, match="video model at hand"):
        CalvinDataset(split, image_size=res, vae_latents="auto")
    with pytest.raises(DatasetError, match="vae_latents must be one of"):
        CalvinDataset(split, image_size=res, vae_latents="yes", vae=_identity(policy))


def test_trainer_dataset_factory_serves_latents_when_present(calvin_root, tiny_model_dirs, policy):
    from policy_models.training.config import compose_config
    from policy_models.training.trainer import default_dataset_factory

    svd, clip = tiny_model_dirs
    cfg = compose_config(CONF / "tiny_calvin.yaml", [f"root_data_dir={calvin_root}", f"video_model_path={svd}",
                                                     f"text_encoder_path={clip}"])
    assert default_dataset_factory(cfg, "train", policy).latents is None
    for split in ("training", "validation"):
        encode_split(calvin_root / split, policy.tvp_encoder.vae, policy.resolution, workers=0, progress=False)
    for split in ("train", "val"):
        ds = default_dataset_factory(cfg, split, policy)
        assert ds.latents is not None and ds[0]["rgb_obs"]["rgb_gripper"].shape[1] == 4
    # on the command line, dataset.vae_latents=off / on arrive as yaml booleans
    for value, uses_latents in (("off", False), ("on", True)):
        cfg = compose_config(CONF / "tiny_calvin.yaml", [f"root_data_dir={calvin_root}", f"video_model_path={svd}",
                                                         f"text_encoder_path={clip}", f"dataset.vae_latents={value}"])
        assert (default_dataset_factory(cfg, "train", policy).latents is not None) is uses_latents


def test_mismatch_message_says_what_differs(calvin_root, policy):
    """Latents encoded in another dtype (encode_latents defaults to fp16, the tiny config runs fp32) are refused with
    the dtype named, not blamed on another autoencoder; likewise the image size."""
    import copy

    split, vae, res = calvin_root / "validation", policy.tvp_encoder.vae, policy.resolution
    encode_split(split, vae, res, batch=64, workers=0, progress=False)
    half = copy.deepcopy(vae).half()
    with pytest.raises(DatasetError, match="dtype: encoded in float32, the video model runs in float16") as err:
        CalvinDataset(split, image_size=res, vae_latents="on", vae=lambda: vae_identity(half, res))
    assert "another autoencoder" not in str(err.value) and "image size:" not in str(err.value)
    with pytest.raises(DatasetError, match=rf"image size: encoded from {res}x{res} images, the video model takes "
                                           rf"{2 * res}x{2 * res}"):
        CalvinDataset(split, image_size=res, vae_latents="on", vae=lambda: vae_identity(vae, 2 * res))
    with pytest.raises(DatasetError, match="latents made differently exist \\(dtype: encoded in float32"):
        encode_split(split, half, res, batch=64, workers=0, progress=False)


def test_identity_differences_in_words():
    from policy_models.datasets.vae_latents import VaeIdentity, identity_differences

    want = VaeIdentity("a" * 64, "float16", 0.18215, 256)
    assert identity_differences(want.to_dict(), want) == []
    weights = identity_differences({**want.to_dict(), "fingerprint": "b" * 64}, want)
    assert len(weights) == 1 and weights[0].startswith("weights: encoded by another autoencoder")
    dtype = identity_differences({**want.to_dict(), "fingerprint": "b" * 64, "dtype": "float32"}, want)
    assert len(dtype) == 1 and dtype[0].startswith("dtype: encoded in float32")  # the fingerprint follows the dtype
    both = identity_differences({**want.to_dict(), "scaling_factor": 1.0, "image_size": 128}, want)
    assert [d.split(":")[0] for d in both] == ["image size", "scaling factor"]


def test_truncated_latent_array_names_file(calvin_root, policy):
    split, res = calvin_root / "validation", policy.resolution
    folder = encode_split(split, policy.tvp_encoder.vae, res, batch=64, workers=0, progress=False)
    array = folder / "rgb_static.npy"
    with open(array, "r+b") as fh:
        fh.truncate(array.stat().st_size - 100)
    ds = CalvinDataset(split, image_size=res, vae_latents="on", vae=_identity(policy))  # arrays open lazily
    with pytest.raises(DatasetError, match=rf"{array}: cannot read the array, the file is truncated or corrupt "
                                           r"\(ValueError: .*\); rebuild the folder with python -m "
                                           r"policy_models\.datasets\.encode_latents --overwrite"):
        ds[0]


def test_mixed_image_sizes_fail_naming_the_files(calvin_root, policy):
    split = calvin_root / "validation"
    odd = split / "episode_0100005.npz"
    data = dict(np.load(odd))
    data["rgb_gripper"] = np.zeros((64, 64, 3), dtype=np.uint8)
    np.savez_compressed(odd, **data)
    with pytest.raises(DatasetError, match=r"key 'rgb_gripper' has inconsistent shapes \[\(64, 64, 3\), \(84, 84, 3\)\]"
                                           rf": .*episode_0100000\.npz has \(84, 84, 3\), {odd} has \(64, 64, 3\)"):
        encode_split(split, policy.tvp_encoder.vae, policy.resolution, batch=64, workers=0, progress=False)


def test_encode_dtype_comes_from_the_training_config(tmp_path, caplog):
    """`--config` gives the dtype the trainer of that config checks the latents against; an explicit `--video_dtype`
    wins, with a warning when it differs; without either, fp16 (the CALVIN and xbot configs')."""
    from policy_models.datasets.encode_latents import video_dtype_name
    from vpp_core.config import ConfigError

    tiny = str(CONF / "tiny_calvin.yaml")
    assert video_dtype_name(None, tiny) == "fp32"
    assert video_dtype_name(None, str(CONF / "VPP_Calvinabc_train.yaml")) == "fp16"
    assert video_dtype_name(None, None) == "fp16"
    with caplog.at_level("WARNING", logger="encode_latents"):
        assert video_dtype_name("fp32", tiny) == "fp32" and not caplog.records
        assert video_dtype_name("fp16", tiny) == "fp16"
    assert "will refuse these latents" in caplog.records[-1].getMessage()
    bare = tmp_path / "bare.yaml"
    bare.write_text("experiment_name: x\n")
    with pytest.raises(ConfigError, match="sets no model.video_dtype"):
        video_dtype_name(None, str(bare))
