"""Stage 2: train the VPP action policy on CALVIN (or the built-in simulator's CALVIN-format recordings).

    accelerate launch step2_train_action_calvin.py --root_data_dir D --video_model_path V --text_encoder_path C
    python step2_train_action_calvin.py --root_data_dir D --video_model_path V --text_encoder_path C \
        dataloader.batch_size=32 training.max_steps=1000          # key=value or --key value overrides
    python step2_train_action_calvin.py ... run.resume=runs/vpp_calvin-20260101-120000   # continue a run exactly

Optional one-time speed-up of data loading: python -m policy_models.datasets.pack_calvin --root D
"""

from __future__ import annotations

import sys
from pathlib import Path

from policy_models.training.cli import run_training

DEFAULT_CONFIG = Path(__file__).resolve().parent / "policy_conf" / "VPP_Calvinabc_train.yaml"

if __name__ == "__main__":
    sys.exit(run_training(sys.argv[1:], DEFAULT_CONFIG, description=__doc__))
