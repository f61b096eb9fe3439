"""Predict videos with a stage-1 model from sample episodes (the original make_prediction.py, vpp_reference §5.2).

For each requested episode id: read `{val_dataset_dir}/annotation/val/{id}.json`, take `texts[0]` (or the configured
replacement instruction), decode the `camera_idx`-th video, pick 16 frames (start_idx, start_idx + skip_step, ...,
the last frame repeated when the video is too short; or 16 frames spread over the whole video with only_one_clip),
resize to width x height (bilinear, antialiased) in [-1, 1], and let the pipeline predict from the first frame (pixel
input). The output mp4 shows, per frame, the ground truth (top) over the prediction (bottom), episodes side by side.

Differences from the original: the guidance scale comes from the config / --guidance_scale (the original ignored the
yaml and used 3.0; pass --guidance_scale 3 to reproduce it); a seed makes the result reproducible; the CFG
unconditional branch keeps the first frame (see video_models/pipeline.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from video_dataset.annotations import DatasetError, read_annotation_json
from video_dataset.transforms import preprocess_frames, select_frames, to_uint8_frames
from vpp_core.config import ConfigError
from vpp_core.video_io import read_video

if TYPE_CHECKING:
    from transformers import CLIPTextModelWithProjection, PreTrainedTokenizerBase

    from video_models.pipeline import TextVideoPipeline

log = logging.getLogger(__name__)


def make_sample_grid(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """uint8 (B, F, H, W, 3) ground truth and prediction -> (F, 2H, B*W, 3): GT row over prediction row."""
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ")
    top = np.concatenate(list(gt), axis=2)
    bottom = np.concatenate(list(pred), axis=2)
    return np.concatenate([top, bottom], axis=1)


@dataclass
class PredictionSettings:
    """`validation_args` of val_svd.yaml / val_calvin_svd.yaml (vpp_reference §10.4) plus the keys added here."""

    position_encode: bool = True
    width: int = 256
    height: int = 256
    clip_token_length: int = 20
    val_dataset_dir: str = "video_dataset_instance/bridge"
    val_idx: tuple = (2, 8, 10, 14)
    camera_idx: int = 0
    use_new_instru: bool = False
    new_instru: str = "Stack the red block above the blue block."
    only_one_clip: bool = False
    start_idx: int = 5
    num_frames: int = 16
    skip_step: int = 2
    output_path: str = "video_output"
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    min_guidance_scale: float = 1.0
    uncond_image: str = "same"
    noise_aug_strength: float = 0.0
    fps: float = 4
    motion_bucket_id: float = 127
    decode_chunk_size: int = 7
    output_fps: int = 4
    seed: int = 0
    annotation_name: str = "annotation"
    split: str = "val"

    # keys of the original yaml that are accepted and ignored
    _IGNORED = ("debug", "clip_img_size", "use_img_cond")

    @classmethod
    def from_config(cls, cfg: Mapping | DictConfig | None) -> PredictionSettings:
        data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})
        if data.get("use_img_cond"):
            raise ConfigError("validation_args.use_img_cond=true (CLIP image condition) is not implemented")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - set(cls._IGNORED))
        if unknown:
            raise ConfigError(f"unknown validation_args keys {unknown}; known keys {sorted(known)}")
        kwargs = {k: v for k, v in data.items() if k in known}
        if "val_idx" in kwargs:
            kwargs["val_idx"] = parse_val_idx(kwargs["val_idx"])
        return cls(**kwargs)


def parse_val_idx(value: Any) -> tuple:
    """ "0+50+100" or [0, 50, 100] -> (0, 50, 100); ids that are not integers stay strings (file stems)."""
    items = str(value).split("+") if isinstance(value, str | int) else list(value)
    out = []
    for item in items:
        item = str(item).strip()
        if not item:
            raise ConfigError(f"empty id in val_idx {value!r}")
        out.append(int(item) if item.lstrip("-").isdigit() else item)
    return tuple(out)


@dataclass
class Episode:
    text: str
    frames: torch.Tensor  # (F, 3, H, W) in [-1, 1]
    path: Path


def load_episode(dataset_dir: str | Path, episode_id: Any, s: PredictionSettings) -> Episode:
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / s.annotation_name / s.split / f"{episode_id}.json"
    ann = read_annotation_json(path)
    texts = ann.get("texts")
    if not s.use_new_instru and (not isinstance(texts, list) or not texts or not isinstance(texts[0], str)):
        raise DatasetError(f"{path}: annotation needs 'texts', a non-empty list of instruction strings")
    text = s.new_instru if s.use_new_instru else texts[0]
    videos = ann.get("videos") or []
    if s.camera_idx >= len(videos):
        raise DatasetError(f"{path}: camera_idx {s.camera_idx} requested but only {len(videos)} videos listed")
    video = read_video(dataset_dir / videos[s.camera_idx]["video_path"])
    length = len(ann["action"]) if "action" in ann else ann.get("video_length", len(video))
    length = max(1, min(int(length), len(video)))
    try:
        ids = select_frames(length, s.num_frames, s.start_idx, s.skip_step, whole_clip=s.only_one_clip)
    except ValueError as exc:  # a start index outside the episode: name the annotation it came from
        raise DatasetError(f"{path}: {exc} (validation_args.start_idx)") from exc
    frames = preprocess_frames(video[ids], (s.height, s.width))
    return Episode(text=text, frames=frames, path=path)


def predict(
    pipe: TextVideoPipeline,
    tokenizer: PreTrainedTokenizerBase,
    text_encoder: CLIPTextModelWithProjection,
    first_frames: torch.Tensor | None,
    texts: Sequence[str],
    s: PredictionSettings,
    generator: torch.Generator | None = None,
    first_latents: torch.Tensor | None = None,
    num_frames: int | None = None,
) -> np.ndarray:
    """Predicted uint8 videos (B, F, H, W, 3) from first frames (pixels in [-1, 1], or scaled latents)."""
    from video_models.text_conditioning import encode_text

    with torch.no_grad():
        emb = encode_text(
            list(texts),
            tokenizer,
            text_encoder,
            cross_attention_dim=pipe.unet.config.cross_attention_dim,
            max_length=s.clip_token_length,
            position_encode=s.position_encode,
        )
    out = pipe(
        emb,
        image=first_frames,
        image_latents=first_latents,
        num_frames=num_frames or s.num_frames,
        num_inference_steps=s.num_inference_steps,
        min_guidance_scale=s.min_guidance_scale,
        max_guidance_scale=s.guidance_scale,
        fps=s.fps,
        motion_bucket_id=s.motion_bucket_id,
        noise_aug_strength=s.noise_aug_strength,
        decode_chunk_size=s.decode_chunk_size,
        uncond_image=s.uncond_image,
        generator=generator,
        output_type="np",
    )
    return out.frames


def trained_resolution(video_model_path: str | Path) -> tuple[int, int] | None:
    """(height, width) the stage-1 trainer trained this checkpoint at, from the `training_config.yaml` it saves in
    every checkpoint folder; None for folders it did not write (the released svd-robot folders, converted ones)."""
    path = Path(video_model_path) / "training_config.yaml"
    if not path.is_file():
        return None
    args = OmegaConf.load(path).get("train_args") or {}
    if "height" not in args or "width" not in args:
        return None
    return int(args["height"]), int(args["width"])


def warn_on_resolution_mismatch(video_model_path: str | Path, s: PredictionSettings) -> None:
    """A model predicts at any multiple of the VAE factor, but at another resolution than it was trained at its
    videos are rarely what it learned: say so, with the keys that set it, rather than let a config mistake pass."""
    trained = trained_resolution(video_model_path)
    if trained is not None and trained != (s.height, s.width):
        log.warning(
            "%s was trained at %d x %d (height x width, its training_config.yaml) but validation_args asks for "
            "%d x %d; set validation_args.height=%d validation_args.width=%d to predict at the trained resolution",
            video_model_path, *trained, s.height, s.width, *trained,
        )


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_models(
    video_model_path: str | Path, clip_model_path: str | Path, device: str, dtype: torch.dtype
) -> tuple[TextVideoPipeline, PreTrainedTokenizerBase, CLIPTextModelWithProjection]:
    from video_models.builders import load_text_encoder
    from video_models.pipeline import TextVideoPipeline

    pipe = TextVideoPipeline.from_pretrained(video_model_path, dtype=dtype, device=device)
    tokenizer, text_encoder = load_text_encoder(clip_model_path, dtype=dtype, device=device)
    return pipe, tokenizer, text_encoder


def make_prediction(
    s: PredictionSettings,
    video_model_path: str | Path,
    clip_model_path: str | Path,
    output_dir: str | Path | None = None,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Predict the configured episodes and write one GT-over-prediction mp4; returns its path."""
    from vpp_core.video_io import write_mp4

    device = device or default_device()
    warn_on_resolution_mismatch(video_model_path, s)
    episodes = [load_episode(s.val_dataset_dir, i, s) for i in s.val_idx]
    pipe, tokenizer, text_encoder = load_models(video_model_path, clip_model_path, device, dtype)
    first = torch.stack([e.frames[0] for e in episodes])
    generator = torch.Generator().manual_seed(int(s.seed))
    pred = predict(pipe, tokenizer, text_encoder, first, [e.text for e in episodes], s, generator)
    gt = np.stack([to_uint8_frames(e.frames, (-1.0, 1.0)) for e in episodes])
    model = Path(video_model_path).resolve()
    name = f"{time.strftime('%Y-%m-%d-%H-%M-%S')}_{model.parent.name}_{model.name}_{s.start_idx}.mp4"
    out = Path(output_dir or s.output_path) / Path(s.val_dataset_dir).name / name
    write_mp4(out, make_sample_grid(gt, pred), fps=int(s.output_fps))
    for e in episodes:
        log.info("%s: %s", e.path, e.text)
    return out
