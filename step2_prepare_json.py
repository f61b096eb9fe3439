"""Build the stage-2 sample index and the 1st/99th percentile statistics of an xbot-style custom-robot data set.

    python step2_prepare_json.py --root DATA --dataset_names xbot_0407+xbot_0409 --output DATA/annotation_all/xbot

writes {output}/{split}_all.json and {output}/{split}_stats.json for each split; point the training config's stats
path at {output}/train_stats.json. See docs/CUSTOM_ROBOT.md and policy_models/datasets/xbot_index.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def pose_slices_argument(text: str) -> tuple[tuple[int, int], ...]:
    """argparse type of --pose_slices: "0:7,19:26" -> ((0, 7), (19, 26)); each slice must span 7 numbers."""
    try:
        slices = tuple((int(a), int(b)) for a, b in (part.split(":") for part in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected start:stop pairs joined by commas, e.g. 0:7,19:26") \
            from None
    if any(b - a != 7 for a, b in slices):
        raise argparse.ArgumentTypeError(f"{text!r}: an arm pose is 7 numbers (xyz + quaternion): stop = start + 7")
    return slices


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="folder holding one sub-folder per data set")
    p.add_argument("--dataset_names", required=True, help="data set folder names joined by '+', e.g. a+b+c")
    p.add_argument("--output", default=None,
                   help="output folder (default: {root}/annotation_all/{names}_interval{stride})")
    p.add_argument("--splits", default="train+val", help="splits joined by '+' (default: train+val)")
    p.add_argument("--sequence_length", type=int, default=8, help="frames per sample = action chunk length (8)")
    p.add_argument("--stride", "--sequence_interval", dest="stride", type=int, default=1,
                   help="frame step inside a sample (original: 1; 5 for xhand_1125 data)")
    p.add_argument("--start_interval", type=int, default=1,
                   help="step between sample start frames (original: 1; 3 for xhand_1125 data)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample shuffle (the original was unseeded)")
    p.add_argument("--quaternion_mode", choices=["componentwise", "compose"], default="componentwise",
                   help="how relative arm rotations are formed (componentwise = the original's plain subtraction)")
    p.add_argument("--quat_order", choices=["xyzw", "wxyz"], default="xyzw",
                   help="quaternion layout inside each 7-D arm pose (only used by --quaternion_mode compose)")
    p.add_argument("--pose_slices", type=pose_slices_argument, default=None, metavar="A:B[,C:D...]",
                   help="the 7-D xyz + quaternion arm poses inside the state/action vector, for --quaternion_mode "
                        "compose (default: the xbot layout 0:7,19:26)")
    p.add_argument("--no_check_latents", action="store_true", help="do not check that the latent files exist")
    p.add_argument("--overwrite", action="store_true", help="replace existing index/stats files in --output")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from policy_models.datasets.xbot_index import AnnotationError, IndexConfig, prepare_index

    names = [n for n in args.dataset_names.split("+") if n]
    output = args.output or str(Path(args.root) / "annotation_all" / f"{'+'.join(names)}_interval{args.stride}")
    try:
        cfg = IndexConfig(root=args.root, dataset_names=names, splits=[s for s in args.splits.split("+") if s],
                          sequence_length=args.sequence_length, stride=args.stride,
                          start_interval=args.start_interval, seed=args.seed, relative_mode=args.quaternion_mode,
                          quat_order=args.quat_order, check_latents=not args.no_check_latents,
                          **({} if args.pose_slices is None else {"pose_slices": args.pose_slices}))
        summary = prepare_index(cfg, output, overwrite=args.overwrite)
    except (AnnotationError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
