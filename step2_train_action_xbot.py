"""Stage 2: train the VPP action policy on xbot-style robot data (3 cameras, 38-D two-arm + two-hand actions).

    python step2_prepare_json.py ...     # writes {split}_all.json and train_stats.json
    accelerate launch step2_train_action_xbot.py --data_json_path J --data_root_path R \
        --video_model_path V --text_encoder_path C [key=value ...]

Fixes of the original script (vpp_reference §9.4, §12.2): the config is read from policy_conf/ (not ./conf), the loss
is the policy's weighted 2*xyz + 2*rot + 1*hand (no (target, output) mis-unpacking, no trailing-comma tuple),
validation works with one process, and the normalisation statistics are saved with every checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

from policy_models.training.cli import run_training

DEFAULT_CONFIG = Path(__file__).resolve().parent / "policy_conf" / "VPP_xbot_train.yaml"

if __name__ == "__main__":
    sys.exit(run_training(sys.argv[1:], DEFAULT_CONFIG, description=__doc__))
