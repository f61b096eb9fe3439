"""Stage-1 trainer: fine-tune SVD into the text-guided video predictor (vpp_reference §3).

    accelerate launch step1_train_svd.py --config video_conf/train_calvin_svd.yaml \
        pretrained_model_path=checkpoints/stable-video-diffusion-img2vid \
        train_args.clip_model_path=checkpoints/clip-vit-base-patch32 train_args.dataset_dir=data/opensource_robotdata

What it does (original behaviour unless noted):
  * loads the SVD folder (unet/vae/scheduler) and the CLIP text tower; trains the whole U-Net, VAE and text encoder
    frozen; AdamW lr 5e-6, betas (0.9, 0.999), weight decay 0, eps 1e-8, constant schedule, grad-norm clip 1.0;
  * batches of pre-encoded latent clips from `DatasetMix`; EDM v-prediction loss (`video_models.edm`), condition =
    frame 0 of the clip, text features with 5 % zero dropout, micro-conditioning [fps 7, motion bucket 127, 0];
  * every `validation_steps` (and once at `first_validation_step`, 5): validation loss over up to `validation_num`
    batches (mean over the batches actually used — the original divided by one less when the loader was short) and
    `video_num` sample grids (ground truth over prediction, mp4) in {run_dir}/samples/;
  * every `checkpointing_steps`: {run_dir}/checkpoint-{step}/ = a StableVideoDiffusionPipeline folder (loadable by
    diffusers) with the trained U-Net, plus training_state/ (accelerate save_state + trainer_state.json) for exact
    resume; only the newest `keep_training_states` training states are kept.

Changes from the original: gradient checkpointing follows the config (it was forced on; default now "layers", every
ResNet and transformer of the U-Net, see docs/PERFORMANCE.md); fused AdamW on CUDA; mixed precision "auto"
(bf16 where supported, else fp32) is the default and fp16/bf16/no are selectable; validation and sample generation use
their own seeded generators, so they are identical at every evaluation and do not perturb the training RNG; the
data set draw is seeded per (seed, epoch, index); `resume=latest` resumes exactly (same batches, same RNG); the run
stops cleanly at `max_train_steps` and writes a final checkpoint; DataLoader workers follow `train_args.num_workers`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from video_dataset.dataset_mix import DatasetMix
from video_models.attention_kernels import use_short_query_kernels
from video_models.checkpointing import CHECKPOINTING_MODES, configure_gradient_checkpointing
from video_models.edm import micro_conditioning, video_diffusion_loss
from video_models.layer_compile import compile_unet_layers
from video_models.text_conditioning import drop_text_embeddings, encode_text
from vpp_core.config import (
    ConfigError,
    compile_setting,
    flag_setting,
    resolve_compile_setting,
    resolve_flag,
    save_config,
)
from vpp_core.ddp import ddp_kwargs_handlers
from vpp_core.gc_freeze import FrozenHeap
from vpp_core.input_wait import InputWaitMeter
from vpp_core.io import append_jsonl, atomic_json_dump, drop_jsonl_records_after, recover_from_a_kill, replace_folder
from vpp_core.memory import peak_memory_record
from vpp_core.precision import mixed_precision_name, resolve_dtype
from vpp_core.run_log import run_log_file
from vpp_core.seeding import seed_everything
from vpp_core.sharded_optimizer import ShardedAdamW
from vpp_core.side_stream import SideStream

log = logging.getLogger(__name__)

# Defaults = the original train_calvin_svd.yaml (vpp_reference §10.3) plus the keys this implementation adds.
DEFAULTS: dict[str, Any] = {
    "pretrained_model_path": None,
    "output_dir": "./output/svd",
    "run_dir": None,  # new: explicit run folder (default {output_dir}/train_{timestamp})
    "resume": None,  # new: null | latest | path/to/checkpoint-N
    "learning_rate": 5e-6,
    "adam_weight_decay": 0.0,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
    "max_grad_norm": 1.0,
    "lr_scheduler": "constant",
    "lr_warmup_steps": 0,
    "gradient_accumulation_steps": 1,
    "train_batch_size": 6,
    "max_train_steps": 500000,
    "checkpointing_steps": 20000,
    "keep_training_states": 1,
    "save_final_checkpoint": True,
    "validation_steps": 2000,
    "seed": 6,
    "mixed_precision": "auto",
    # auto (attentions when the U-Net is compiled, else layers: both fit batch 6 in 40 GiB) | none | diffusers (what
    # the original forced) | blocks | layers | attentions | resnets; true = layers
    "gradient_checkpointing": "layers",
    # torch.compile of every U-Net layer: null (eager), auto (default mode on CUDA) or a mode; not bit-identical
    "compile_unet": None,
    # the memory-efficient attention kernel for queries of at most 64 tokens (video_models.attention_kernels): true,
    # false or auto (on CUDA); same attention, other rounding
    "short_query_attention": False,
    # with compile_unet: launch each compiled layer's kernels from generated C++ instead of Python (inductor's
    # cpp_wrapper): true, false or auto (on CUDA); the same kernels, less host time per step
    "compile_cpp_wrapper": False,
    # with several processes: each keeps the AdamW states of its share of the U-Net's parameters only (ZeRO stage 1,
    # vpp_core.sharded_optimizer); same updates, one more broadcast of the weights per step
    "shard_optimizer_states": False,
    "report_to": "wandb",  # wandb | none ; WANDB_MODE defaults to offline
    "train_args": {
        "project_name": "svd_xhand_cleancode",
        "run_name": "clean_code",
        "clip_model_path": None,
        "clip_token_length": 20,
        "position_encode": False,
        "annotation_name": "annotation",
        "dataset_dir": None,
        "dataset": "sthv2+bridge+rt1+calvin",
        "prob": [0.4, 0.2, 0.2, 0.2],
        "sequence_length": 16,
        "debug": False,
        "num_workers": 0,
        "skip_bad_annotations": False,
        "mix_rules": None,  # None: MixRules defaults (the original's hard-coded classification)
        "validation_num": 32,
        "video_num": 3,
        "samples_per_grid": 8,
        "num_frames": 16,
        "width": 256,
        "height": 256,
        "sample_preview": True,
        "first_validation_step": 5,
        "num_inference_steps": 30,
        "guidance_scale": 7.5,
        "min_guidance_scale": 1.0,
        "uncond_image": "same",
        "fps": 7,
        "motion_bucket_id": 127,
        "decode_chunk_size": 7,
        "sample_fps": 4,
        "log_every": 100,
        "text_drop_prob": 0.05,
    },
}

# Keys of the original yaml that never had an effect (vpp_reference §12.4); accepted with a warning so that the
# original config files still load.
LEGACY_KEYS = {
    "use_8bit_adam",
    "text_encoder_gradient_checkpointing",
    "enable_xformers_memory_efficient_attention",
    "enable_torch_2_attn",
    "trainable_modules",
    "motion_mask",
    "motion_strength",
    "dataset_types",
    "offset_noise_strength",
    "use_offset_noise",
    "rescale_schedule",
    "extend_dataset",
    "cache_latents",
    "cached_latent_dir",
    "train_text_encoder",
    "lora_version",
    "lora_rank",
    "lora_dropout",
    "lora_path",
    "use_unet_lora",
    "use_text_lora",
    "save_lora_for_webui",
    "only_lora_for_webui",
    "unet_lora_modules",
    "text_encoder_lora_modules",
    "extra_unet_params",
    "extra_text_encoder_params",
    "trainable_text_modules",
    "model",  # the tiny.yaml architecture block (used by video_models.builders, not by the trainer)
}
LEGACY_TRAIN_ARGS = {
    "use_lora",
    "clip_img_size",
    "use_img_cond",
    "tie_weight",
    "normalize",
    "pre_encode",
    "video_size",
    "only_one_clip",
    "global_seed",
    "do_evaluate",
    "evaluate_checkpoint",
    "resume_from_checkpoint",
}
REQUIRED = ("pretrained_model_path", "train_args.clip_model_path", "train_args.dataset_dir")


def resolve_train_config(cfg: DictConfig | dict) -> DictConfig:
    """Merge a user config over DEFAULTS; unknown keys are errors (typos), legacy keys a warning."""
    user = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    user = OmegaConf.to_container(user, resolve=True)
    train_args = user.get("train_args") or {}
    unknown_top = sorted(set(user) - set(DEFAULTS) - LEGACY_KEYS)
    unknown_args = sorted(set(train_args) - set(DEFAULTS["train_args"]) - LEGACY_TRAIN_ARGS)
    if unknown_top or unknown_args:
        raise ConfigError(
            f"unknown stage-1 config keys: {unknown_top + ['train_args.' + k for k in unknown_args]}; "
            f"known top-level keys {sorted(DEFAULTS)}, train_args keys {sorted(DEFAULTS['train_args'])}"
        )
    legacy = sorted(k for k in user if k in LEGACY_KEYS and k != "model")
    legacy += ["train_args." + k for k in train_args if k in LEGACY_TRAIN_ARGS]
    if legacy:
        log.warning("ignoring config keys that had no effect in the original trainer: %s", legacy)
    if train_args.get("use_img_cond"):
        raise ConfigError(
            "train_args.use_img_cond=true (CLIP image condition) is not implemented; it was off in every config"
        )
    for key in [k for k in user if k in LEGACY_KEYS]:
        user.pop(key)
    user["train_args"] = {k: v for k, v in train_args.items() if k not in LEGACY_TRAIN_ARGS}
    merged = OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.create(user))
    merged.compile_unet = compile_setting(merged.compile_unet, "compile_unet")
    merged.short_query_attention = flag_setting(merged.short_query_attention, "short_query_attention")
    merged.compile_cpp_wrapper = flag_setting(merged.compile_cpp_wrapper, "compile_cpp_wrapper")
    if merged.compile_cpp_wrapper is True and merged.compile_unet is None:
        raise ConfigError("compile_cpp_wrapper=true needs compile_unet (auto or a torch.compile mode)")
    checkpointing_mode(merged.gradient_checkpointing, compiled=False)  # checked before anything is built
    if not isinstance(merged.shard_optimizer_states, bool):
        raise ConfigError(f"shard_optimizer_states must be true or false, got {merged.shard_optimizer_states!r}")
    if merged.train_args.num_frames != merged.train_args.sequence_length:
        raise ConfigError(
            f"train_args.num_frames ({merged.train_args.num_frames}) must equal train_args.sequence_length "
            f"({merged.train_args.sequence_length}): the sample videos predict whole validation clips, whose length "
            "sequence_length sets; change both to train on other clip lengths"
        )
    missing = [k for k in REQUIRED if OmegaConf.select(merged, k) in (None, "")]
    if missing:
        raise ConfigError(
            f"missing required settings {missing}; pass them on the command line, e.g. "
            + " ".join(f"{k}=/path" for k in missing)
        )
    return merged


# ----------------------------------------------------------------------------------------------------------- data
class EpochSampler(torch.utils.data.Sampler[int]):
    """Deterministic shuffled order per epoch, sharded over processes, resumable mid-epoch.

    Yields `epoch * N + i` so that the dataset wrapper knows the epoch even inside persistent workers.
    """

    def __init__(self, num_items: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.seed, self.rank, self.world, self.shuffle = num_items, seed, rank, world, shuffle
        self.epoch, self.skip = 0, 0
        self.per_rank = math.ceil(num_items / world)

    def set_epoch(self, epoch: int, skip_items: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_items

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.n))
        order += order[: self.per_rank * self.world - self.n]  # pad like DistributedSampler
        mine = order[self.rank :: self.world][self.skip :]
        return iter(self.epoch * self.n + i for i in mine)

    def __len__(self) -> int:
        return self.per_rank - self.skip


class _EpochIndexed(torch.utils.data.Dataset):
    def __init__(self, dataset: DatasetMix):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, k: int):
        epoch, index = divmod(int(k), len(self.dataset))
        return self.dataset.get(index, epoch)


def _collate(items: list[dict]) -> dict[str, Any]:
    return {
        "latent": torch.stack([it["latent"] for it in items]),
        "text": [it["text"] for it in items],
        "dataset": [it["dataset"] for it in items],
    }


def make_loader(
    dataset: DatasetMix, batch_size: int, sampler: EpochSampler, num_workers: int
) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        _EpochIndexed(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=_collate,
        # own generator: creating an iterator must not draw from the global RNG (exact resume depends on it)
        generator=torch.Generator().manual_seed(0),
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


# ------------------------------------------------------------------------------------------------- checkpoints
CHECKPOINT_PREFIX = "checkpoint-"
STATE_DIR = "training_state"
TRAINER_STATE = "trainer_state.json"


def checkpoint_step(path: Path) -> int | None:
    name = path.name
    if not name.startswith(CHECKPOINT_PREFIX):
        return None
    tail = name[len(CHECKPOINT_PREFIX) :]
    return int(tail) if tail.isdigit() else None


def list_checkpoints(run_dir: Path, with_state: bool = False) -> list[Path]:
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    if with_state:
        found = [p for p in found if (p / STATE_DIR / TRAINER_STATE).is_file()]
    return sorted(found, key=checkpoint_step)


def find_resume_checkpoint(resume: str, output_dir: Path, run_dir: Path | None) -> Path | None:
    """`latest`: newest resumable checkpoint of `run_dir`, or of the newest run under `output_dir` that has one."""
    if resume != "latest":
        path = Path(resume)
        if (path / STATE_DIR / TRAINER_STATE).is_file():
            return path
        raise ConfigError(
            f"resume={resume}: no {STATE_DIR}/{TRAINER_STATE} in that folder (expected a checkpoint-N "
            "folder written by this trainer whose training state was kept)"
        )
    runs = (
        [run_dir]
        if run_dir is not None
        else sorted((p for p in output_dir.glob("train_*") if p.is_dir()), key=lambda p: p.name, reverse=True)
    )
    for run in runs:
        ckpts = list_checkpoints(run, with_state=True)
        if ckpts:
            return ckpts[-1]
    return None


def _refuse_a_run_dir_with_checkpoints(run_dir: Path) -> None:
    """A new run in a folder that holds another run's checkpoints would overwrite them step by step."""
    existing = list_checkpoints(run_dir)
    if existing:
        raise ConfigError(
            f"run_dir {run_dir} holds another run's checkpoints ({existing[-1].name}); continue it with resume=latest "
            "(it needs a checkpoint whose training_state/ was kept), or give this run another run_dir"
        )


@dataclass
class TrainResult:
    run_dir: Path
    global_step: int
    checkpoints: list[Path] = field(default_factory=list)
    train_losses: list[float] = field(default_factory=list)  # mean over each logging window (log_every steps)
    val_losses: dict[int, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------------ helpers
def checkpointing_mode(value: Any, compiled: bool) -> str:
    """Config value -> video_models.checkpointing mode; booleans (the original yaml's spelling) map to layers/none.
    "auto" is the fastest mode that keeps batch 6 of the full-size U-Net within 40 GiB on an H100
    (docs/PERFORMANCE.md): attentions for compiled layers (35 GiB), layers for eager ones (eager attentions: 43 GiB)."""
    if str(value).lower() == "auto":
        return "attentions" if compiled else "layers"
    if value is True or str(value).lower() == "true":
        return "layers"
    if value is False or value is None or str(value).lower() in ("false", "no", "none"):
        return "none"
    mode = str(value).lower()
    if mode not in CHECKPOINTING_MODES:
        raise ConfigError(
            f"gradient_checkpointing must be auto, one of {list(CHECKPOINTING_MODES)}, true or false, got {value!r}"
        )
    return mode


def _mixed_precision(name: str, device_type: str) -> str:
    # yaml 1.1 reads an unquoted `no` as False
    name = "no" if name is False or str(name).lower() in ("false", "none", "fp32") else str(name).lower()
    if name == "auto":
        return mixed_precision_name(resolve_dtype("auto", device_type))
    if name not in ("no", "fp16", "bf16"):
        raise ConfigError(f"mixed_precision must be auto, no, fp16 or bf16, got {name!r}")
    if name == "fp16" and device_type != "cuda":
        log.warning("mixed_precision=fp16 needs a CUDA device; training in fp32 instead")
        return "no"
    return name


def _allow_new_mixed_precision(mixed_precision: str) -> None:
    """accelerate keeps one process-wide AcceleratorState and refuses a second Accelerator with another precision
    (a notebook, or tests that train twice). Only the precision part is reset; the process group is kept."""
    from accelerate.state import AcceleratorState

    current = AcceleratorState._shared_state.get("_mixed_precision")
    if current is not None and current != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def _new_run_dir(accelerator, output_dir: Path) -> Path:
    from accelerate.utils import broadcast_object_list

    stamp = [time.strftime("%Y-%m-%dT%H-%M-%S")]
    if accelerator.num_processes > 1:
        broadcast_object_list(stamp, from_process=0)
    return output_dir / f"train_{stamp[0]}"


def _wandb_wanted(cfg: DictConfig) -> bool:
    """report_to=wandb, offline unless WANDB_MODE says otherwise; `disabled` or a missing package turn it off."""
    if str(cfg.report_to).lower() != "wandb":
        return False
    os.environ.setdefault("WANDB_MODE", "offline")
    if os.environ["WANDB_MODE"] == "disabled":
        return False
    try:
        import wandb  # noqa: F401
    except ImportError:
        log.warning("wandb is not installed; metrics go to metrics.jsonl in the run folder only")
        return False
    return True


def _setup_trackers(accelerator, cfg: DictConfig, run_dir: Path) -> None:
    accelerator.init_trackers(
        cfg.train_args.project_name,
        config=OmegaConf.to_container(cfg, resolve=True),
        init_kwargs={"wandb": {"name": f"{cfg.train_args.run_name}_{run_dir.name}", "dir": str(run_dir)}},
    )


# --------------------------------------------------------------------------------------------------------- train
class Stage1Trainer:
    def __init__(self, cfg: DictConfig | dict):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.cfg = cfg = resolve_train_config(cfg)
        self.args = cfg.train_args
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        wandb_wanted = _wandb_wanted(cfg)
        mixed_precision = _mixed_precision(cfg.mixed_precision, device_type)
        _allow_new_mixed_precision(mixed_precision)
        self.accelerator = Accelerator(
            # without a GPU, accelerate treats torchrun's processes as one distributed run only when told cpu=True;
            # otherwise every process would train alone on all the data
            cpu=device_type == "cpu",
            mixed_precision=mixed_precision,
            gradient_accumulation_steps=int(cfg.gradient_accumulation_steps),
            log_with="wandb" if wandb_wanted else None,
            project_config=ProjectConfiguration(project_dir=str(cfg.output_dir)),
            kwargs_handlers=ddp_kwargs_handlers(),
        )
        acc = self.accelerator
        seed_everything(int(cfg.seed) + acc.process_index)

        self.resume_from: Path | None = None
        output_dir = Path(cfg.output_dir)
        if cfg.resume:
            self.resume_from = find_resume_checkpoint(
                str(cfg.resume), output_dir, Path(cfg.run_dir) if cfg.run_dir else None
            )
            if self.resume_from is None:  # the first call of a resumable script; a misspelt folder looks the same
                where = cfg.run_dir or output_dir
                log.warning("resume=latest: no resumable checkpoint under %s%s; starting a new run", where,
                            "" if Path(where).is_dir() else " (the folder does not exist)")
        if self.resume_from is not None:
            self.run_dir = self.resume_from.parent
        else:
            self.run_dir = Path(cfg.run_dir) if cfg.run_dir else _new_run_dir(acc, output_dir)
            _refuse_a_run_dir_with_checkpoints(self.run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if acc.is_main_process:
            (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
            recover_from_a_kill(self.run_dir)
            save_config(cfg, self.run_dir / "config.yaml")
            if self.resume_from is None:  # what an attempt killed before its first checkpoint logged is redone
                drop_jsonl_records_after(self.metrics_path, 0)

        self.latent_shape = self._latent_shape()
        self._build_data()  # before loading the models: a data error should not cost a 6 GB load first
        self._load_models()
        self._build_optimizer()
        self.use_wandb = wandb_wanted and acc.is_main_process
        if wandb_wanted:
            _setup_trackers(acc, cfg, self.run_dir)
        self.global_step = 0
        self.batches_seen = 0
        if self.resume_from is not None:
            self._load_state(self.resume_from)

    # ---------------------------------------------------------------------------------------------------- setup
    def _load_models(self) -> None:
        from video_models.builders import load_text_encoder, load_video_model

        acc, cfg = self.accelerator, self.cfg
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(acc.mixed_precision, torch.float32)
        unet, vae, scheduler = load_video_model(cfg.pretrained_model_path, dtype=torch.float32)
        self.tokenizer, text_encoder = load_text_encoder(self.args.clip_model_path, dtype=self.weight_dtype)
        self.vae = vae.to(acc.device).eval().requires_grad_(False)  # fp32 (small); only decodes sample videos
        self.text_encoder = text_encoder.to(acc.device).eval().requires_grad_(False)
        # the text tower reads its padding mask on the host: on a side stream that read does not wait for the step
        # queued before it (vpp_core.side_stream)
        self.text_stream = SideStream(acc.device)
        self.scheduler = scheduler
        unet.requires_grad_(True).train()
        # what "auto" resolved to on this device
        self.compile_mode = resolve_compile_setting(cfg.compile_unet, acc.device.type)
        self.gradient_checkpointing = checkpointing_mode(cfg.gradient_checkpointing, self.compile_mode is not None)
        configure_gradient_checkpointing(unet, self.gradient_checkpointing)
        self.short_query_attention = resolve_flag(cfg.short_query_attention, acc.device.type)
        if self.short_query_attention:
            use_short_query_kernels(unet)  # before compiling: the compiled layers trace the kernel choice
        self.compile_cpp_wrapper = self.compile_mode is not None and resolve_flag(cfg.compile_cpp_wrapper,
                                                                                   acc.device.type)
        if self.compile_mode:
            # layer by layer, inside the checkpointing: the whole-U-Net graph ignored the checkpointing and doubled
            # the memory. Only grad-enabled calls run compiled, so validation and sampling never compile, and the
            # weights and the saved U-Net are the plain module's.
            compile_unet_layers(unet, self.compile_mode, cpp_wrapper=self.compile_cpp_wrapper)
        log.info("U-Net: gradient checkpointing %s; torch.compile %s%s; short-query attention kernels %s",
                 self.gradient_checkpointing, self.compile_mode or "off",
                 " with the C++ wrapper" if self.compile_cpp_wrapper else "",
                 "on" if self.short_query_attention else "off")
        if acc.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.unet = unet
        self.scaling_factor = float(vae.config.scaling_factor)
        self.cross_attention_dim = int(unet.config.cross_attention_dim)

    def _latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the training latents, from the model folder's configs (no weights loaded)."""
        from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

        from video_models.builders import check_video_model_folder

        path = check_video_model_folder(self.cfg.pretrained_model_path)
        unet_cfg = UNetSpatioTemporalConditionModel.load_config(path, subfolder="unet")
        vae_cfg = AutoencoderKLTemporalDecoder.load_config(path, subfolder="vae")
        vsf = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
        if self.args.width % vsf or self.args.height % vsf:
            raise ConfigError(f"train_args.width/height must be multiples of the VAE factor {vsf}")
        return int(unet_cfg.get("out_channels", 4)), self.args.height // vsf, self.args.width // vsf

    def _build_data(self) -> None:
        acc, args, seed = self.accelerator, self.args, int(self.cfg.seed)
        self.train_set = DatasetMix.from_train_args(args, "train", self.latent_shape, seed=seed)
        self.val_set = DatasetMix.from_train_args(args, "val", self.latent_shape, seed=seed)
        self.train_sampler = EpochSampler(len(self.train_set), seed, acc.process_index, acc.num_processes, shuffle=True)
        self.train_loader = make_loader(
            self.train_set, int(self.cfg.train_batch_size), self.train_sampler, int(args.num_workers)
        )
        val_sampler = EpochSampler(len(self.val_set), seed, acc.process_index, acc.num_processes, shuffle=True)
        self.val_loader = make_loader(self.val_set, int(self.cfg.train_batch_size), val_sampler, 0)
        if len(self.train_loader) == 0:
            raise ConfigError("the training set yields no batches")

    def _build_optimizer(self) -> None:
        from diffusers.optimization import get_scheduler

        cfg, acc = self.cfg, self.accelerator
        fused = acc.device.type == "cuda"  # one fused kernel instead of 1,428 per-tensor updates (docs/PERFORMANCE.md)
        adamw = dict(
            fused=fused,
            foreach=not fused,
            lr=float(cfg.learning_rate),
            betas=(float(cfg.adam_beta1), float(cfg.adam_beta2)),
            weight_decay=float(cfg.adam_weight_decay),
            eps=float(cfg.adam_epsilon),
        )
        sharded = bool(cfg.shard_optimizer_states)
        if sharded and acc.num_processes == 1:
            log.warning("shard_optimizer_states: a run of one process has nothing to shard; using plain AdamW")
            sharded = False
        if sharded:
            optimizer = ShardedAdamW(self.unet.parameters(), **adamw)
            log.info("AdamW states sharded over %d processes", acc.num_processes)
        else:
            optimizer = torch.optim.AdamW(self.unet.parameters(), **adamw)
        lr_scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=int(cfg.lr_warmup_steps) * acc.num_processes,
            num_training_steps=int(cfg.max_train_steps) * acc.num_processes,
        )
        # accelerate would move the new optimizer's (empty) state to the device through state_dict(), which for the
        # sharded optimizer is a collective that answers on rank 0 only
        self.unet, self.optimizer, self.lr_scheduler = acc.prepare(
            self.unet, optimizer, lr_scheduler, device_placement=[True, not sharded, True]
        )

    # ------------------------------------------------------------------------------------------------ the step
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        def encode() -> torch.Tensor:
            return encode_text(
                texts,
                self.tokenizer,
                self.text_encoder,
                cross_attention_dim=self.cross_attention_dim,
                max_length=int(self.args.clip_token_length),
                position_encode=bool(self.args.position_encode),
            )

        with torch.no_grad():
            return self.text_stream.run(encode)

    def loss(self, batch: dict, generator: torch.Generator | None = None, text_drop: float = 0.0) -> torch.Tensor:
        latents = batch["latent"].to(self.accelerator.device, non_blocking=True)
        emb = drop_text_embeddings(self.text_embeddings(batch["text"]), text_drop, generator=generator)
        time_ids = micro_conditioning(
            latents.shape[0], float(self.args.fps), float(self.args.motion_bucket_id), 0.0, latents.device, emb.dtype
        )
        with self.accelerator.autocast():
            return video_diffusion_loss(self.unet, latents, emb, time_ids, self.scaling_factor, generator=generator)

    # ------------------------------------------------------------------------------------------------ training
    def train(self) -> TrainResult:
        """Run the training loop up to `max_train_steps`, with the objects alive after the first step frozen
        against Python's full garbage collections (vpp_core.gc_freeze), logging into the run folder's log.txt."""
        logs = run_log_file(self.run_dir / "log.txt") if self.accelerator.is_main_process else contextlib.nullcontext()
        with FrozenHeap() as heap, logs:
            return self._train(heap)

    def _train(self, heap: FrozenHeap) -> TrainResult:
        from tqdm.auto import tqdm

        acc, cfg, args = self.accelerator, self.cfg, self.args
        result = TrainResult(run_dir=self.run_dir, global_step=self.global_step)
        max_steps = int(cfg.max_train_steps)
        ga = int(cfg.gradient_accumulation_steps)
        batches_per_epoch = math.ceil(self.train_sampler.per_rank / int(cfg.train_batch_size))
        log.info(
            "run folder %s, from step %d; %d train clips, %d val clips, %d batches/epoch/process, %d processes",
            self.run_dir,
            self.global_step,
            len(self.train_set),
            len(self.val_set),
            batches_per_epoch,
            acc.num_processes,
        )
        bar = tqdm(
            total=max_steps, initial=self.global_step, desc="stage-1 training", disable=not acc.is_local_main_process
        )
        window: list[torch.Tensor] = []  # per-batch losses, kept on the device: one sync per log, not per step
        steps_in_window, clock, busy = 0, time.perf_counter(), 0.0  # busy: validation/checkpoint seconds
        last_saved = self.global_step if self.resume_from is not None else None
        batches = InputWaitMeter(self.train_loader)
        while self.global_step < max_steps:
            epoch, skip = divmod(self.batches_seen, batches_per_epoch)
            self.train_sampler.set_epoch(epoch, skip * int(cfg.train_batch_size))
            for batch in batches:
                with acc.accumulate(self.unet):
                    loss = self.loss(batch, text_drop=float(args.text_drop_prob))
                    acc.backward(loss)
                    if acc.sync_gradients and float(cfg.max_grad_norm) > 0:
                        acc.clip_grad_norm_(self.unet.parameters(), float(cfg.max_grad_norm))
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                self.batches_seen += 1
                window.append(loss.detach().float().reshape(1))
                if not acc.sync_gradients:
                    continue
                self.global_step += 1
                steps_in_window += 1
                heap.freeze_once()  # the first step compiled the layers; later steps make few lasting objects
                bar.update(1)
                if self.global_step % int(args.log_every) == 0 or self.global_step == max_steps:
                    mean_loss = float(acc.gather(torch.cat(window)).mean())
                    elapsed = max(time.perf_counter() - clock - busy, 1e-9)
                    result.train_losses.append(mean_loss)
                    bar.set_postfix(loss=f"{mean_loss:.4f}")
                    self._log(
                        {
                            "train_loss": mean_loss,
                            "lr": self.lr_scheduler.get_last_lr()[0],
                            "sec_per_step": elapsed / steps_in_window,
                            "samples_per_s": steps_in_window
                            * ga
                            * int(cfg.train_batch_size)
                            * acc.num_processes
                            / elapsed,
                            "input_wait_frac": batches.take() / elapsed,
                            **peak_memory_record(acc.device),
                        }
                    )
                    window, steps_in_window, busy = [], 0, 0.0
                    clock = time.perf_counter()
                first = args.first_validation_step
                busy_start = time.perf_counter()
                if self.global_step % int(cfg.validation_steps) == 0 or (first and self.global_step == int(first)):
                    result.val_losses[self.global_step] = self.validate()
                    if args.sample_preview:
                        self.sample_videos()
                if self.global_step % int(cfg.checkpointing_steps) == 0:
                    result.checkpoints.append(self.save_checkpoint())
                    last_saved = self.global_step
                busy += time.perf_counter() - busy_start  # validation and checkpoints do not count in sec_per_step
                if self.global_step >= max_steps:
                    break
        bar.close()
        if cfg.save_final_checkpoint and last_saved != self.global_step:
            result.checkpoints.append(self.save_checkpoint())
        acc.wait_for_everyone()
        acc.end_training()
        result.global_step = self.global_step
        return result

    def _log(self, values: dict[str, float]) -> None:
        if not self.accelerator.is_main_process:
            return
        record = {"step": self.global_step, **values}
        append_jsonl(record, self.metrics_path)
        log.info("step %d: %s", self.global_step, ", ".join(f"{k} {v:.5g}" for k, v in values.items()))
        if self.use_wandb:
            self.accelerator.log(values, step=self.global_step)

    # ---------------------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> float:
        """Mean loss over min(validation_num, len(val loader)) batches, fixed noise, no text dropout."""
        acc = self.accelerator
        start = time.perf_counter()
        self.unet.eval()
        generator = torch.Generator().manual_seed(int(self.cfg.seed) + 1000 * acc.process_index)
        total, count = torch.zeros(2, device=acc.device), 0
        self.val_loader.sampler.set_epoch(0)
        for i, batch in enumerate(self.val_loader):
            if i >= int(self.args.validation_num):
                break
            total[0] += self.loss(batch, generator=generator).float()
            count += 1
        total[1] = count
        total = acc.reduce(total, reduction="sum")
        self.unet.train()
        val_loss = float(total[0] / total[1].clamp(min=1))
        self._log({"val_loss": val_loss, "val_batches": float(total[1]), "val_seconds": time.perf_counter() - start})
        return val_loss

    @torch.no_grad()
    def sample_videos(self) -> list[Path]:
        """`video_num` grids of `samples_per_grid` evenly spaced validation clips: GT row over prediction row."""
        acc, args = self.accelerator, self.args
        paths: list[Path] = []
        start = time.perf_counter()
        if acc.is_main_process:
            from video_models.pipeline import TextVideoPipeline, decode_latents
            from video_models.prediction import make_sample_grid
            from vpp_core.video_io import write_mp4

            unet = acc.unwrap_model(self.unet)
            unet.eval()
            pipe = TextVideoPipeline(unet, self.vae, self.scheduler)
            n_grids, per_grid = int(args.video_num), int(args.samples_per_grid)
            idx = np.floor(np.linspace(0, len(self.val_set) - 1, n_grids * per_grid)).astype(int)
            for k in range(n_grids):
                items = [self.val_set.get(int(i), epoch=0) for i in idx[k * per_grid : (k + 1) * per_grid]]
                latents = torch.stack([it["latent"] for it in items])
                emb = self.text_embeddings([it["text"] for it in items])
                with acc.autocast():
                    out = pipe(
                        emb,
                        image_latents=latents[:, 0],
                        num_frames=latents.shape[1],
                        num_inference_steps=int(args.num_inference_steps),
                        min_guidance_scale=float(args.min_guidance_scale),
                        max_guidance_scale=float(args.guidance_scale),
                        fps=float(args.fps),
                        motion_bucket_id=float(args.motion_bucket_id),
                        noise_aug_strength=0.0,
                        decode_chunk_size=int(args.decode_chunk_size),
                        uncond_image=str(args.uncond_image),
                        generator=torch.Generator().manual_seed(int(self.cfg.seed) + k),
                        output_type="np",
                    )
                    gt = decode_latents(self.vae, latents, int(args.decode_chunk_size))
                gt = gt.mul(255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
                pred = out.frames.copy()
                pred[:, 0] = gt[:, 0]  # as the original: the conditioning frame is shown as ground truth
                path = self.run_dir / "samples" / f"train_steps_{self.global_step}_{k}.mp4"
                write_mp4(path, make_sample_grid(gt, pred), fps=int(args.sample_fps))
                paths.append(path)
                if self.use_wandb:
                    try:
                        import wandb

                        acc.get_tracker("wandb", unwrap=True).log(
                            {f"samples/{k}": wandb.Video(str(path), format="mp4")}, step=self.global_step
                        )
                    except Exception as exc:  # a logging failure must not stop training
                        log.warning("could not log sample video to wandb: %s", exc)
            unet.train()
            log.info("wrote %d sample grid(s) in %.1f s", len(paths), time.perf_counter() - start)
        acc.wait_for_everyone()
        return paths

    # ----------------------------------------------------------------------------------------------- checkpoint
    def save_checkpoint(self) -> Path:
        """checkpoint-{step}/: diffusers pipeline folder + training_state/ (written to a .tmp folder, then renamed)."""
        from video_models.builders import save_video_model

        acc = self.accelerator
        start = time.perf_counter()
        final = self.run_dir / f"{CHECKPOINT_PREFIX}{self.global_step}"
        tmp = self.run_dir / f".{final.name}.tmp"
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp / STATE_DIR))  # every rank writes its own RNG state file
        acc.wait_for_everyone()
        if acc.is_main_process:
            unet = acc.unwrap_model(self.unet)
            save_video_model(tmp, unet, source_folder=self.cfg.pretrained_model_path)
            save_config(self.cfg, tmp / "training_config.yaml")
            atomic_json_dump(
                {
                    "global_step": self.global_step,
                    "batches_seen": self.batches_seen,
                    "num_processes": acc.num_processes,
                    "train_batch_size": int(self.cfg.train_batch_size),
                },
                tmp / STATE_DIR / TRAINER_STATE,
            )
            replace_folder(tmp, final)
            self._prune_training_states()
            log.info("saved %s in %.1f s", final, time.perf_counter() - start)
        acc.wait_for_everyone()
        return final

    def _prune_training_states(self) -> None:
        keep = int(self.cfg.keep_training_states)
        if keep <= 0:
            return
        with_state = list_checkpoints(self.run_dir, with_state=True)
        for old in with_state[:-keep]:
            shutil.rmtree(old / STATE_DIR, ignore_errors=True)

    def _load_state(self, checkpoint: Path) -> None:
        state = json.loads((checkpoint / STATE_DIR / TRAINER_STATE).read_text())
        acc = self.accelerator
        if state["num_processes"] != acc.num_processes or state["train_batch_size"] != int(self.cfg.train_batch_size):
            log.warning(
                "resuming with %d processes x batch %d (checkpoint: %d x %d): the data order will differ from an "
                "uninterrupted run",
                acc.num_processes,
                int(self.cfg.train_batch_size),
                state["num_processes"],
                state["train_batch_size"],
            )
        acc.load_state(str(checkpoint / STATE_DIR))
        self.global_step = int(state["global_step"])
        self.batches_seen = int(state["batches_seen"])
        if acc.is_main_process:  # the steps after the checkpoint run again and are logged again
            drop_jsonl_records_after(self.metrics_path, self.global_step)
        log.info("resumed from %s at step %d", checkpoint, self.global_step)


def train(cfg: DictConfig | dict) -> TrainResult:
    return Stage1Trainer(cfg).train()
