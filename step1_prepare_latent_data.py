"""Stage-1 data preparation: videos -> SVD-VAE latents (the original step1_prepare_latent.py, made general).

Two sources:

  videos   a data set in the original layout (annotation/{split}/{id}.json listing mp4/webm videos of any size, fps and
           number of cameras) -> latent_videos/{split}/{id}/{cam}.pt and updated annotation json:

      python step1_prepare_latent_data.py videos --dataset_dir data/my_robot \
          --pretrained_model_path checkpoints/stable-video-diffusion-img2vid

  hdf5     RobotEra teleop HDF5 episodes -> videos + latents + annotation json (every hard-coded value of the
           original is an option; see --help):

      python step1_prepare_latent_data.py hdf5 --raw_dir raw/xhand --output_dir data/xbot_0417 \
          --pretrained_model_path checkpoints/stable-video-diffusion-img2vid --text "place white bag in left ..."

Reruns skip finished episodes. Unreadable videos/files are reported by path and skipped; the exit status is 1 when
any episode failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from vpp_core.precision import resolve_dtype


def load_vae(path: str, device: str, dtype: torch.dtype):
    from diffusers import AutoencoderKLTemporalDecoder

    from video_models.builders import load_pretrained

    if not (Path(path) / "vae").is_dir():
        raise SystemExit(
            f"error: no vae/ subfolder in {path}; --pretrained_model_path must be an SVD folder "
            "(e.g. stable-video-diffusion-img2vid, or a stage-1 checkpoint)"
        )
    return load_pretrained(AutoencoderKLTemporalDecoder, path, "vae", torch_dtype=dtype).to(device).eval()


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="source", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--pretrained_model_path", help="SVD folder whose vae/ encodes the frames")
        p.add_argument("--resolution", type=int, default=256, help="frames are resized to R x R (latents R/8)")
        p.add_argument("--no_antialias", action="store_true", help="bilinear resize without antialiasing")
        p.add_argument(
            "--latent_mode",
            choices=["sample", "mode"],
            default="sample",
            help="latent_dist.sample() (released latents) or .mode()",
        )
        p.add_argument("--chunk_size", type=int, default=64, help="frames per VAE call")
        p.add_argument("--seed", type=int, default=0, help="seed of the posterior samples (per episode and camera)")
        p.add_argument("--device", default="auto")
        p.add_argument("--dtype", default="fp32", help="VAE precision: fp32 (original), bf16, fp16")
        p.add_argument("--annotation_name", default="annotation")
        p.add_argument("--overwrite", action="store_true", help="redo finished episodes")
        p.add_argument("--no_progress", action="store_true")

    v = sub.add_parser("videos", help="encode a data set in the original layout")
    common(v)
    v.add_argument("--dataset_dir", nargs="+", required=True, help="data set folder(s) containing annotation/")
    v.add_argument(
        "--output_dir",
        default=None,
        help="where latents and updated jsons go (default: in place; with several data sets, one "
        "subfolder per data set name)",
    )
    v.add_argument("--splits", nargs="*", default=None, help="default: every folder under annotation/")
    v.add_argument("--letterbox", action="store_true", help="pad frames with black to 4:3 before resizing")

    h = sub.add_parser("hdf5", help="import teleop HDF5 episodes")
    common(h)
    h.add_argument("--raw_dir", required=True)
    h.add_argument("--output_dir", required=True)
    h.add_argument("--no_latents", action="store_true", help="write videos and jsons only (encode later with 'videos')")
    h.add_argument("--subfolders", nargs="*", default=None, help="default: every subfolder of raw_dir, sorted")
    h.add_argument("--cameras", nargs="+", default=["cam_high", "cam_left", "cam_right"])
    h.add_argument("--frame_step", type=int, default=5)
    h.add_argument("--val_every", type=int, default=50)
    h.add_argument("--val_offset", type=int, default=4)
    h.add_argument("--episode_id_stride", type=int, default=5)
    h.add_argument("--text", default=None, help="instruction for every episode (default: the file's /text)")
    h.add_argument("--bgr_to_rgb", action="store_true", help="reverse the channel order of decoded frames")
    h.add_argument("--no_letterbox", action="store_true", help="do not pad frames to 4:3")
    h.add_argument("--fps", type=int, default=10, help="fps of the written videos")
    h.add_argument("--state_spec", default=None, help="state = concatenation of name[a:b] slices of /observations")
    h.add_argument("--check_dims", nargs="*", default=["hand_qpos=24", "arm_end_pose=14"], help="name=dim checks")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from video_dataset.annotations import DatasetError

    try:
        return _prepare(args)
    except (DatasetError, FileNotFoundError) as exc:  # a missing folder or file, bad annotations: named in the message
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _prepare(args: argparse.Namespace) -> int:
    device = _device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    need_vae = not (args.source == "hdf5" and args.no_latents)
    if need_vae and not args.pretrained_model_path:
        raise SystemExit("error: --pretrained_model_path (an SVD folder with vae/) is required")
    vae = load_vae(args.pretrained_model_path, device, dtype) if need_vae else None

    if args.source == "videos":
        from video_dataset.latent_prep import EncodeOptions, prepare_dataset

        options = EncodeOptions(
            resolution=args.resolution,
            letterbox=args.letterbox,
            antialias=not args.no_antialias,
            sample=args.latent_mode == "sample",
            chunk_size=args.chunk_size,
            seed=args.seed,
        )
        failed = 0
        for ds in args.dataset_dir:
            out = args.output_dir
            if out is not None and len(args.dataset_dir) > 1:
                out = str(Path(out) / Path(ds).name)
            report = prepare_dataset(
                ds,
                vae,
                out_root=out,
                splits=args.splits,
                annotation_name=args.annotation_name,
                options=options,
                overwrite=args.overwrite,
                progress=not args.no_progress,
            )
            print(f"[{ds}] {report.summary()}")
            failed += len(report.failed)
        return 1 if failed else 0

    from video_dataset.hdf5_import import DEFAULT_STATE_SPEC, Hdf5ImportOptions, import_hdf5

    dims = {}
    for item in args.check_dims:
        name, _, dim = item.partition("=")
        if not dim.isdigit():
            raise SystemExit(f"error: --check_dims entries are name=dim, got {item!r}")
        dims[name] = int(dim)
    options = Hdf5ImportOptions(
        cameras=tuple(args.cameras),
        subfolders=tuple(args.subfolders) if args.subfolders else None,
        frame_step=args.frame_step,
        val_every=args.val_every,
        val_offset=args.val_offset,
        episode_id_stride=args.episode_id_stride,
        text=args.text,
        bgr_to_rgb=args.bgr_to_rgb,
        letterbox=not args.no_letterbox,
        antialias=not args.no_antialias,
        resolution=args.resolution,
        fps=args.fps,
        state_spec=args.state_spec or DEFAULT_STATE_SPEC,
        check_dims=dims,
        sample=args.latent_mode == "sample",
        chunk_size=args.chunk_size,
        seed=args.seed,
    )
    report = import_hdf5(
        args.raw_dir,
        args.output_dir,
        vae,
        options,
        annotation_name=args.annotation_name,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(report.summary())
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
