"""Quality check of a stage-1 video model before starting stage 2.

    python eval_video_prediction.py --config video_conf/val_calvin_svd.yaml \
        --video_model_path output/svd/train_.../checkpoint-100000 --clip_model_path checkpoints/clip-vit-base-patch32 \
        --dataset_dir data/opensource_robotdata --dataset calvin+bridge --num_clips 32

Predicts evenly spaced validation clips of each data set from their latents (first frame + instruction), reports
PSNR and SSIM against the ground truth and against a copy-first-frame baseline computed on the same clips, writes
{output_dir}/{dataset}_grid.mp4 and {output_dir}/results.json, and prints whether the model is good enough to start
stage 2 (criteria in video_models/quality.py). CALVIN validates on annotation_abc_13/val_d, as in training.
Prediction settings (guidance, fps, steps, position_encode) come from the config's validation_args.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from video_dataset.annotations import DatasetError
from video_models.builders import ModelFolderError
from vpp_core.config import ConfigError, load_config
from vpp_core.io import atomic_json_dump
from vpp_core.precision import resolve_dtype


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="video_conf/val_calvin_svd.yaml")
    p.add_argument("--video_model_path", required=True)
    p.add_argument("--clip_model_path", required=True)
    p.add_argument("--dataset_dir", required=True, help="folder holding the data sets (latents required)")
    p.add_argument("--dataset", required=True, help="data set names joined with '+'")
    p.add_argument("--split", default="val")
    p.add_argument("--num_clips", type=int, default=16, help="clips per data set")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--camera", type=int, default=0)
    p.add_argument("--num_inference_steps", type=int, default=None)
    p.add_argument("--guidance_scale", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--output_dir", default="eval_output",
                   help="where results.json and the DATASET_grid.mp4 grids go (default: ./eval_output)")
    p.add_argument("--psnr_margin_db", type=float, default=1.0)
    p.add_argument("--ssim_margin", type=float, default=0.05)
    p.add_argument("--min_motion_ratio", type=float, default=0.25)
    p.add_argument("--strict", action="store_true", help="exit with status 1 when the model is not ready")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="auto")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args, overrides = build_parser().parse_known_args(argv)
    from video_dataset.dataset_mix import parse_dataset_names
    from video_models.prediction import (
        PredictionSettings,
        default_device,
        load_models,
        warn_on_resolution_mismatch,
    )
    from video_models.quality import Thresholds, evaluate_datasets, format_report

    try:
        cfg = load_config(args.config, overrides)
        va = OmegaConf.to_container(cfg.get("validation_args") or OmegaConf.create({}), resolve=True)
        for key in ("num_inference_steps", "guidance_scale", "seed"):
            if getattr(args, key) is not None:
                va[key] = getattr(args, key)
        settings = PredictionSettings.from_config(va)
        names = parse_dataset_names(args.dataset)
        device = args.device or default_device()
        warn_on_resolution_mismatch(args.video_model_path, settings)
        pipe, tokenizer, text_encoder = load_models(
            args.video_model_path, args.clip_model_path, device, resolve_dtype(args.dtype, device)
        )
        thresholds = Thresholds(args.psnr_margin_db, args.ssim_margin, args.min_motion_ratio)
        report = evaluate_datasets(
            pipe,
            tokenizer,
            text_encoder,
            settings,
            args.dataset_dir,
            names,
            split=args.split,
            num_clips=args.num_clips,
            batch_size=args.batch_size,
            camera=args.camera,
            thresholds=thresholds,
            output_dir=args.output_dir,
        )
    except (ConfigError, DatasetError, ModelFolderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report["video_model_path"] = str(args.video_model_path)
    output_dir = Path(args.output_dir).resolve()
    atomic_json_dump(report, output_dir / "results.json")
    print(format_report(report))
    print(f"results.json and the prediction grids (DATASET_grid.mp4) are in {output_dir}")
    return 1 if args.strict and not report["ready"] else 0


if __name__ == "__main__":
    sys.exit(main())
