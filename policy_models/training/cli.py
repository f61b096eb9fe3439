"""Command-line front end shared by step2_train_action_calvin.py and step2_train_action_xbot.py."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from vpp_core.config import ConfigError


def run_training(argv: Sequence[str], default_config: Path, description: str | None = None) -> int:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Other arguments are config overrides: key=value or --key value.")
    parser.add_argument("--config", default=str(default_config), help=f"training yaml (default: {default_config})")
    parser.add_argument("--print_config", action="store_true", help="print the composed config and exit")
    args, overrides = parser.parse_known_args(list(argv))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from omegaconf import OmegaConf

    from policy_models.training.config import compose_config

    try:
        cfg = compose_config(args.config, overrides)
    except ConfigError as exc:
        parser.error(str(exc))
    if args.print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    from policy_models.checkpoints import CheckpointError
    from policy_models.config import PolicyConfigError
    from policy_models.datasets.base import DatasetError
    from policy_models.datasets.xbot_index import AnnotationError
    from policy_models.training.trainer import train
    from video_models.builders import ModelFolderError

    try:
        result = train(cfg)
    except (AnnotationError, CheckpointError, ConfigError, DatasetError, ModelFolderError, PolicyConfigError) as exc:
        # mistakes in the data, folders or config: the message names the file or key; a traceback would bury it
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("vpp.train").info("done: step %d, epoch %d, last checkpoint %s, best %s", result.step,
                                        result.epoch, result.last_checkpoint, result.best_checkpoint)
    return 0
