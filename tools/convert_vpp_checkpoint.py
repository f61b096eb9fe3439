"""Convert a released VPP stage-2 checkpoint (.pt with {"model", "args"}) into a stage-2 checkpoint folder.

    python tools/convert_vpp_checkpoint.py --input dp-calvin/last.pt --output checkpoints/dp-calvin \
        [--trust-pickled-config] [--config policy_conf/model/calvin.yaml] \
        [--video-model-path svd-robot-calvin] [--clip-model-path clip-vit-base-patch32]

The released files pickle their OmegaConf training config; reading that executes code from the file, so it needs the
explicit --trust-pickled-config flag (the weights themselves are read with torch.load(weights_only=True) first).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from policy_models.checkpoints import CheckpointError, convert_released_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="released .pt file (e.g. from dp-calvin)")
    parser.add_argument("--output", required=True, help="output checkpoint folder")
    parser.add_argument("--trust-pickled-config", action="store_true",
                        help="allow unpickling the OmegaConf config stored in the file (runs code from the file)")
    parser.add_argument("--config", default=None,
                        help="yaml with model:/embodiment: blocks (default: chosen by action size: calvin or xbot)")
    parser.add_argument("--video-model-path", default=None, help="stage-1 video model folder to record in config.yaml")
    parser.add_argument("--clip-model-path", default=None, help="HF CLIP folder to record in config.yaml")
    args = parser.parse_args(argv)
    try:
        out = convert_released_checkpoint(
            args.input, args.output, allow_pickle_config=args.trust_pickled_config, config=args.config,
            video_model_path=args.video_model_path, clip_model_path=args.clip_model_path,
        )
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
