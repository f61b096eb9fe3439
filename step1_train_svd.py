"""Stage 1: fine-tune Stable Video Diffusion into the text-guided video predictor.

    accelerate launch step1_train_svd.py --config video_conf/train_calvin_svd.yaml \
        pretrained_model_path=checkpoints/stable-video-diffusion-img2vid \
        train_args.clip_model_path=checkpoints/clip-vit-base-patch32 \
        train_args.dataset_dir=data/opensource_robotdata

Overrides may also be written `--pretrained_model_path checkpoints/...` (the original README's form). `resume=latest`
continues the newest run under output_dir from its last checkpoint. Plain `python step1_train_svd.py ...` runs on one
device. See video_models/training.py for what is trained and how.
"""

from __future__ import annotations

import argparse
import logging
import sys

from video_dataset.annotations import DatasetError
from video_models.builders import ModelFolderError
from vpp_core.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="video_conf/train_calvin_svd.yaml", help="stage-1 yaml")
    parser.add_argument("--eval", action="store_true", help=argparse.SUPPRESS)  # accepted for compatibility; no effect
    args, overrides = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, overrides)
        from video_models.training import train

        result = train(cfg)
    except (ConfigError, DatasetError, ModelFolderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"finished at step {result.global_step}; run folder {result.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
