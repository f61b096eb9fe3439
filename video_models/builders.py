"""Build, save and load the stage-1 video model and the CLIP text encoder.

Released models are diffusers folders (`svd-robot`, `svd-robot-calvin`: `unet/`, `vae/`, `scheduler/`, ...) and an HF
CLIP folder (`openai/clip-vit-base-patch32`). Tests build tiny random models from yaml, save them with
`save_pretrained` into the same layouts, and load them back through `load_video_model` / `load_text_encoder`, so the
loading code the released weights go through is the code the tests exercise.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
from omegaconf import DictConfig, OmegaConf
from transformers import (
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    PreTrainedTokenizerBase,
)

from video_models.temporal_context import share_temporal_context
from video_models.tiny_tokenizer import build_tiny_clip_tokenizer

# The scheduler of the SVD img2vid folder that the released models inherit (vpp_reference §3.7).
SVD_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "use_karras_sigmas": True,
    "sigma_min": 0.002,
    "sigma_max": 700.0,
    "timestep_type": "continuous",
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "steps_offset": 1,
}

# Subfolders of a StableVideoDiffusionPipeline folder that stage 1 and stage 2 read.
REQUIRED_SUBFOLDERS = ("unet", "vae", "scheduler")


class ModelFolderError(FileNotFoundError):
    """A model folder is missing or lacks a required part; the message names the path and what is expected."""


@dataclass
class VideoModel:
    """The pieces of the text-guided SVD that the code uses. `image_encoder`/`feature_extractor` exist only so the
    saved folder stays loadable by diffusers' StableVideoDiffusionPipeline; VPP never uses them."""

    unet: UNetSpatioTemporalConditionModel
    vae: AutoencoderKLTemporalDecoder
    scheduler: EulerDiscreteScheduler
    text_encoder: CLIPTextModelWithProjection
    tokenizer: PreTrainedTokenizerBase
    image_encoder: CLIPVisionModelWithProjection | None = None
    feature_extractor: CLIPImageProcessor | None = None


def _plain(cfg: DictConfig | dict | None) -> dict[str, Any]:
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    """diffusers configs expect tuples where yaml gives lists."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def build_unet(cfg: DictConfig | dict | None = None) -> UNetSpatioTemporalConditionModel:
    """An SVD U-Net; empty config = the full-size SVD architecture (1.52 B parameters) with sample_size 96. Its
    temporal cross-attention projects the text once per clip (video_models.temporal_context), as loaded ones do."""
    kwargs = {"sample_size": 96, **_tuples(_plain(cfg))}
    unet = UNetSpatioTemporalConditionModel(**kwargs)
    share_temporal_context(unet)
    return unet


def build_vae(cfg: DictConfig | dict | None = None) -> AutoencoderKLTemporalDecoder:
    """The SVD temporal-decoder VAE; empty config = the full-size SVD VAE (scaling factor 0.18215)."""
    kwargs = _tuples(_plain(cfg))
    if not kwargs:
        kwargs = {
            "block_out_channels": (128, 256, 512, 512),
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "layers_per_block": 2,
            "latent_channels": 4,
            "sample_size": 768,
        }
    kwargs.setdefault("down_block_types", ("DownEncoderBlock2D",) * len(kwargs.get("block_out_channels", (64,))))
    return AutoencoderKLTemporalDecoder(**kwargs)


def build_scheduler(cfg: DictConfig | dict | None = None) -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(**{**SVD_SCHEDULER_CONFIG, **_plain(cfg)})


def build_text_encoder(
    cfg: DictConfig | dict | None, vocab_size: int, eos_token_id: int, bos_token_id: int
) -> CLIPTextModelWithProjection:
    """A CLIP text tower; empty config = the ViT-B/32 text tower (512 wide, 12 layers, projection 512)."""
    kwargs = {
        "vocab_size": vocab_size,
        "eos_token_id": eos_token_id,
        "bos_token_id": bos_token_id,
        "pad_token_id": eos_token_id,
        "max_position_embeddings": 77,
        **_plain(cfg),
    }
    return CLIPTextModelWithProjection(CLIPTextConfig(**kwargs))


def build_image_encoder(cfg: DictConfig | dict | None = None) -> CLIPVisionModelWithProjection:
    """Only kept so saved folders load in diffusers' StableVideoDiffusionPipeline; VPP never calls it."""
    kwargs = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "projection_dim": 32,
        "image_size": 32,
        "patch_size": 16,
        **_plain(cfg),
    }
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**kwargs))


def build_video_model(model_cfg: DictConfig | dict, seed: int = 0) -> VideoModel:
    """Random video model + download-free CLIP tokenizer (video_models.tiny_tokenizer) from a `model:` config block
    (see video_conf/tiny.yaml)."""
    cfg = _plain(model_cfg)
    torch.manual_seed(seed)
    tokenizer = build_tiny_clip_tokenizer()
    unet = build_unet(cfg.get("unet"))
    text_encoder = build_text_encoder(
        cfg.get("text_encoder"), len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id
    )
    text_width = text_encoder.config.hidden_size
    if unet.config.cross_attention_dim % text_width:
        raise ValueError(
            f"unet.cross_attention_dim ({unet.config.cross_attention_dim}) must be a multiple of the text width "
            f"({text_width}): text tokens are duplicated along channels to fill it"
        )
    return VideoModel(
        unet=unet,
        vae=build_vae(cfg.get("vae")),
        scheduler=build_scheduler(cfg.get("scheduler")),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        image_encoder=build_image_encoder(cfg.get("image_encoder")),
        feature_extractor=CLIPImageProcessor(crop_size={"height": 32, "width": 32}, size={"shortest_edge": 32}),
    )


def save_video_model(
    folder: str | Path,
    unet: UNetSpatioTemporalConditionModel,
    *,
    source_folder: str | Path | None = None,
    vae: AutoencoderKLTemporalDecoder | None = None,
    scheduler: EulerDiscreteScheduler | None = None,
    image_encoder: CLIPVisionModelWithProjection | None = None,
    feature_extractor: CLIPImageProcessor | None = None,
) -> Path:
    """Write a StableVideoDiffusionPipeline folder. Parts not given are copied from `source_folder` (the model that
    training started from), which is how stage-1 checkpoints stay complete without reloading the VAE each time."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    given = {"vae": vae, "scheduler": scheduler, "image_encoder": image_encoder, "feature_extractor": feature_extractor}
    for name, part in given.items():
        if part is not None:
            part.save_pretrained(folder / name)
        elif source_folder is not None and (Path(source_folder) / name).is_dir():
            dst = folder / name
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(Path(source_folder) / name, dst)
    _write_model_index(folder)
    return folder


def _write_model_index(folder: Path) -> None:
    import json

    import diffusers

    index = {"_class_name": "StableVideoDiffusionPipeline", "_diffusers_version": diffusers.__version__}
    classes = {
        "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
        "vae": ["diffusers", "AutoencoderKLTemporalDecoder"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
    }
    for name, cls in classes.items():
        index[name] = cls if (folder / name).is_dir() else [None, None]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def check_video_model_folder(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ModelFolderError(
            f"video model folder not found: {path} (expected a diffusers SVD folder such as svd-robot-calvin)"
        )
    missing = [s for s in REQUIRED_SUBFOLDERS if not (path / s).is_dir()]
    if missing:
        raise ModelFolderError(f"video model folder {path} lacks subfolders {missing}{_model_folder_hint(path)}")
    return path


def _model_folder_hint(folder: Path) -> str:
    """What to pass instead of an incomplete video model folder: a stage-1 run folder is an easy mistake (its
    checkpoints are the model folders), so name its newest checkpoint."""
    from video_models.training import list_checkpoints  # the stage-1 trainer's naming; imported on this error only

    checkpoints = list_checkpoints(folder)
    if not checkpoints:
        return " (expected a diffusers SVD folder such as svd-robot-calvin)"
    return f"; this looks like a training run folder: pass one of its checkpoints, e.g. {checkpoints[-1]}"


def load_pretrained(cls: Any, folder: str | Path, subfolder: str | None = None, **kwargs: Any) -> Any:
    """`cls.from_pretrained(folder, subfolder=...)`, with an unreadable or inconsistent folder (a weights file cut short
    by a copy, a config of another model) reported as a ModelFolderError naming the folder, not as the library's
    traceback."""
    where = Path(folder) / subfolder if subfolder else Path(folder)
    extra = {"subfolder": subfolder} if subfolder else {}
    try:
        return cls.from_pretrained(folder, **extra, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"cannot load {cls.__name__} from {where}: {exc}") from exc


def load_video_model(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[UNetSpatioTemporalConditionModel, AutoencoderKLTemporalDecoder, EulerDiscreteScheduler]:
    """Load unet/, vae/ and scheduler/ of a released or trained SVD folder (the image encoder is never needed). The
    U-Net's temporal cross-attention projects the text once per clip (video_models.temporal_context)."""
    path = check_video_model_folder(path)
    unet = load_pretrained(UNetSpatioTemporalConditionModel, path, "unet", torch_dtype=dtype)
    share_temporal_context(unet)
    vae = load_pretrained(AutoencoderKLTemporalDecoder, path, "vae", torch_dtype=dtype)
    scheduler = load_pretrained(EulerDiscreteScheduler, path, "scheduler")
    return unet.to(device), vae.to(device), scheduler


def save_text_encoder(
    folder: str | Path, tokenizer: PreTrainedTokenizerBase, text_encoder: CLIPTextModelWithProjection
) -> Path:
    folder = Path(folder)
    tokenizer.save_pretrained(folder)
    text_encoder.save_pretrained(folder, safe_serialization=True)
    return folder


def load_text_encoder(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[PreTrainedTokenizerBase, CLIPTextModelWithProjection]:
    """Tokenizer + CLIP text tower (with projection) from an HF CLIP folder, e.g. openai/clip-vit-base-patch32."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFolderError(
            f"CLIP folder not found: {path} (expected e.g. a local copy of openai/clip-vit-base-patch32)"
        )
    tokenizer = load_pretrained(AutoTokenizer, path)
    text_encoder, info = load_pretrained(CLIPTextModelWithProjection, path, torch_dtype=dtype,
                                         output_loading_info=True)
    missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
    if missing:
        # A randomly initialised text tower would silently ruin every feature; refuse instead.
        raise ModelFolderError(f"CLIP folder {path} lacks text-encoder weights {missing[:5]} ({len(missing)} in all)")
    return tokenizer, text_encoder.to(device).eval()


def make_tiny_video_model_folders(
    root: str | Path, config_path: str | Path | None = None, seed: int = 0, prefix: str = "tiny"
) -> tuple[Path, Path]:
    """Save a random video model and CLIP folder (`{prefix}-svd`, `{prefix}-clip`) under `root`, built from a yaml
    `model:` block (default video_conf/tiny.yaml, for tests and the demo); returns their paths."""
    from vpp_core.config import load_config

    root = Path(root)
    config_path = (
        Path(config_path) if config_path else Path(__file__).resolve().parent.parent / "video_conf" / "tiny.yaml"
    )
    cfg = load_config(config_path)
    return save_model_folders(build_video_model(cfg.model, seed=seed), root / f"{prefix}-svd", root / f"{prefix}-clip")


def save_model_folders(model: VideoModel, svd_dir: str | Path, clip_dir: str | Path) -> tuple[Path, Path]:
    """Save a built video model as the two folders the loaders read: the SVD pipeline folder and the CLIP folder."""
    svd_dir = save_video_model(svd_dir, model.unet, vae=model.vae, scheduler=model.scheduler,
                               image_encoder=model.image_encoder, feature_extractor=model.feature_extractor)
    return svd_dir, save_text_encoder(clip_dir, model.tokenizer, model.text_encoder)


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
