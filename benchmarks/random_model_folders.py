"""Random full-size model folders and stage-1 latent clips, to run the real trainers where no weights can be downloaded.

    python benchmarks/random_model_folders.py --out W [--stage1-clips 24]    # W/svd, W/clip, W/stage1_data/robo

W/svd is an SVD img2vid diffusers folder (U-Net 1.52 B parameters, temporal-decoder VAE) and W/clip a CLIP ViT-B/32
text tower with the download-free tokenizer, both with random weights: what the released `svd-robot` and
`openai/clip-vit-base-patch32` folders look like to the loaders. W/stage1_data/robo holds random latent clips
(32 x 32, 256 x 256 video) in the original's layout. The trainers' timings and memory on their default configs then
come from (docs/PERFORMANCE.md, session 10):

    python step1_train_svd.py --config video_conf/train_calvin_svd.yaml pretrained_model_path=W/svd \\
        train_args.clip_model_path=W/clip train_args.dataset_dir=W/stage1_data train_args.dataset=robo \\
        "train_args.prob=[1.0]" max_train_steps=60 train_args.first_validation_step=null report_to=none
    python -m policy_models.datasets.synthetic --root D --episodes 40 && python -m policy_models.datasets.pack_calvin \\
        --root D && python -m policy_models.datasets.encode_latents --root D --video_model_path W/svd
    python step2_train_action_calvin.py --root_data_dir D --video_model_path W/svd --text_encoder_path W/clip \\
        dataloader.batch_size=32 training.max_steps=80 training.validate=false

and either stage with 1 and N processes from `benchmarks/trainer_scaling.py --work W`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from video_models.builders import build_video_model, save_model_folders
from vpp_core.config import load_config

TINY_CONFIG = Path(__file__).resolve().parents[1] / "video_conf" / "tiny.yaml"


def write_model_folders(out: Path, tiny: bool = False, seed: int = 0) -> tuple[Path, Path]:
    """`out`/svd and `out`/clip; `tiny` builds video_conf/tiny.yaml's models instead (for tests)."""
    # tiny.yaml's model block, or the empty config: the full-size SVD U-Net and VAE, CLIP B/32 text tower
    model = build_video_model(load_config(TINY_CONFIG).model if tiny else {}, seed=seed)
    return save_model_folders(model, out / "svd", out / "clip")


def write_latent_clips(root: Path, clips: int, frames: int, size: int, seed: int = 0,
                       splits: tuple[str, ...] = ("train", "val")) -> Path:
    """`clips` random latent episodes per split (one camera, `frames` x 4 x size x size) with their annotations, in
    the layout step1_prepare_latent_data.py writes: annotation/{split}/{i}.json, latent_videos/{split}/{i}/0.pt."""
    generator = torch.Generator().manual_seed(seed)
    for split in splits:
        count = clips if split == "train" else max(1, clips // 8)
        for i in tqdm(range(count), desc=f"latent clips ({split})", unit="clip"):
            relative = f"latent_videos/{split}/{i}/0.pt"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            torch.save(torch.randn(frames, 4, size, size, generator=generator), root / relative)
            annotation = {"texts": [f"move object {i}"], "episode_id": i, "video_length": frames,
                          "latent_videos": [{"latent_video_path": relative}]}
            (root / "annotation" / split).mkdir(parents=True, exist_ok=True)
            (root / "annotation" / split / f"{i}.json").write_text(json.dumps(annotation))
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--stage1-clips", type=int, default=24, help="training clips (validation gets an eighth)")
    parser.add_argument("--frames", type=int, default=24, help="frames per clip (the trainer samples 16)")
    parser.add_argument("--tiny", action="store_true", help="tiny models and 8 x 8 latents (tests, laptops)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    svd, clip = write_model_folders(args.out, args.tiny, args.seed)
    data = write_latent_clips(args.out / "stage1_data" / "robo", args.stage1_clips, args.frames, 8 if args.tiny else 32,
                              args.seed)
    print(json.dumps({"svd": str(svd), "clip": str(clip), "stage1_dataset_dir": str(data.parent)}))


if __name__ == "__main__":
    main()
