"""Predict videos with a stage-1 model and write ground truth over prediction as an mp4.

    python make_prediction.py --config video_conf/val_svd.yaml \
        --video_model_path checkpoints/svd-robot --clip_model_path checkpoints/clip-vit-base-patch32 \
        --val_dataset_dir video_dataset_instance/xhand --val_idx 0+50+100+150

Writes {output_dir}/{dataset name}/{time}_{model parent}_{model}_{start_idx}.mp4 (default output_dir: video_output).
Other `validation_args` keys can be overridden as `validation_args.camera_idx=1` (or `--validation_args.camera_idx 1`).
"""

from __future__ import annotations

import argparse
import logging
import sys

from omegaconf import OmegaConf

from video_dataset.annotations import DatasetError
from video_models.builders import ModelFolderError
from vpp_core.config import ConfigError, load_config
from vpp_core.precision import resolve_dtype
from vpp_core.video_io import VideoReadError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="video_conf/val_svd.yaml")
    p.add_argument("--eval", action="store_true", help=argparse.SUPPRESS)  # accepted for compatibility; no effect
    p.add_argument("--video_model_path", default=None, help="stage-1 diffusers folder (e.g. svd-robot-calvin)")
    p.add_argument("--clip_model_path", default=None, help="CLIP folder (openai/clip-vit-base-patch32)")
    p.add_argument("--val_dataset_dir", default=None, help="data set folder in the original layout")
    p.add_argument("--val_idx", default=None, help="episode ids joined with '+', e.g. 2+8+10+14")
    p.add_argument("--num_inference_steps", type=int, default=None)
    p.add_argument("--guidance_scale", type=float, default=None, help="max CFG scale (default: from the config)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--output_dir", default=None, help="default: validation_args.output_path (video_output)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPUs that have it, else fp32), fp16, bf16, fp32")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args, overrides = build_parser().parse_known_args(argv)
    from video_models.prediction import PredictionSettings, default_device, make_prediction

    try:
        cfg = load_config(args.config, overrides)
        video_model = args.video_model_path or cfg.get("pretrained_model_path")
        clip_model = args.clip_model_path or cfg.get("clip_model_path")
        if not video_model or not clip_model:
            raise ConfigError("--video_model_path and --clip_model_path are required")
        va = OmegaConf.to_container(cfg.get("validation_args") or OmegaConf.create({}), resolve=True)
        for key in ("val_dataset_dir", "val_idx", "num_inference_steps", "guidance_scale", "seed"):
            if getattr(args, key) is not None:
                va[key] = getattr(args, key)
        settings = PredictionSettings.from_config(va)
        device = args.device or default_device()
        out = make_prediction(
            settings,
            video_model,
            clip_model,
            output_dir=args.output_dir,
            device=device,
            dtype=resolve_dtype(args.dtype, device),
        )
    except (ConfigError, DatasetError, ModelFolderError, VideoReadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
