"""One stage-2 trainer for every embodiment (CALVIN, built-in sim, xbot / custom robots).

Run through ``step2_train_action_calvin.py`` / ``step2_train_action_xbot.py`` (``accelerate launch`` with any number
of processes, or plain ``python``). What it does, and where it departs from the original (vpp_reference §6.11-6.12,
§9.4, §12.2):

* AdamW (lr 1e-4, betas (0.9, 0.9), wd 0.05) over the Video Former + DiT trainable tensors only; constant LR by default
  (what the released weights saw), tri-stage selectable and actually attached to the optimizer.
* Loss = the policy's ``compute_loss`` (xbot: 2*xyz + 2*rot + 1*hand through ``embodiment.loss_groups``).
* EMA (decay 0.9999) of the trainable weights, saved as ``ema.safetensors`` and restored on resume.
* The seed is applied (same model init on every process, then ``seed + rank`` for the training streams).
* Validation every epoch on every process count: the validation set is sharded across processes, each chunk is
  sampled with DDIM at sigma_min 0.001 and the squared errors and element counts are all-reduced, so the MSE is
  exact (the original validated on rank 0 only, crashed with one process, and divided by a polluted counter).
  Validation runs under a forked, seeded RNG, so it neither changes nor depends on the training randomness.
* Mixed precision from config (``auto``: bf16 on a GPU that has it, fp32 on CPU); no forced CUDA_VISIBLE_DEVICES or
  CUDA_LAUNCH_BLOCKING.
* Checkpoints (``policy_models.checkpoints`` folders + ``training_state/``) every N steps and at every epoch end,
  ``last`` / ``best`` pointers, exact resume: the sampler order is a function of (seed, epoch), the position inside
  the epoch is saved, and every process's RNG state is restored, so a resumed run reproduces an uninterrupted one.
* tqdm progress with steps/s, python logging to ``log.txt``, metrics to ``metrics.jsonl`` and wandb (offline by
  default; ``WANDB_MODE`` respected), resolved config in the run folder.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from logging.handlers import MemoryHandler
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from policy_models.datasets.base import RobotDataset, build_dataset, check_dataset_folders, collate_samples
from policy_models.datasets.vae_latents import vae_identity
from policy_models.training.ema import EMA
from policy_models.training.optim import build_optimizer, build_scheduler, trainable_named_parameters
from policy_models.training.sampler import ShardedEpochSampler
from policy_models.training.state import (
    TrainerState,
    checkpoint_name,
    load_torch,
    load_trainer_state,
    prune_checkpoints,
    read_pointer,
    save_rng,
    save_training_state,
    set_rng_state,
    write_pointer,
)
from video_models.attention_kernels import use_short_query_kernels
from vpp_core.config import (
    ConfigError,
    compile_setting,
    flag_setting,
    matmul_precision_setting,
    resolve_compile_setting,
    resolve_flag,
)
from vpp_core.ddp import ddp_kwargs_handlers
from vpp_core.gc_freeze import FrozenHeap
from vpp_core.input_wait import InputWaitMeter
from vpp_core.io import append_jsonl, drop_jsonl_records_after, recover_from_a_kill, replace_folder
from vpp_core.memory import peak_memory_record
from vpp_core.run_log import run_log_file
from vpp_core.seeding import seed_everything

log = logging.getLogger("vpp.train")

PolicyFactory = Callable[[DictConfig, torch.device], nn.Module]
DatasetFactory = Callable[[DictConfig, str, nn.Module], RobotDataset]


def default_policy_factory(cfg: DictConfig, device: torch.device) -> nn.Module:
    from policy_models.policy import build_policy

    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # the policy sees model/embodiment only
    return build_policy(resolved, device=device)


def default_dataset_factory(cfg: DictConfig, split: str, policy: nn.Module) -> RobotDataset:
    emb = policy.embodiment
    try:
        resolution = int(policy.resolution)
    except (AttributeError, RuntimeError):
        resolution = None
    encoder = getattr(policy, "tvp_encoder", None)
    vae = getattr(encoder, "vae", None)
    identity = None if vae is None or resolution is None else (lambda: vae_identity(vae, resolution))
    return build_dataset(cfg.dataset, split, cameras=list(emb.cameras), action_seq_len=emb.chunk_length,
                         action_dim=emb.action_dim, state_dim=emb.state_dim, image_size=resolution, vae=identity,
                         latent_size=getattr(encoder, "latent_size", None))


def _sel(cfg: DictConfig, key: str, default: Any = None) -> Any:
    value = OmegaConf.select(cfg, key, default=default)
    return default if value is None else value


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list) and obj and isinstance(obj[0], torch.Tensor):
        return [_to_device(v, device) for v in obj]
    return obj


def unpack_loss(out: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """compute_loss may return ``(loss, logs)``, ``{"loss": ..., **logs}`` or a bare scalar."""
    if isinstance(out, tuple):
        return out[0], dict(out[1]) if len(out) > 1 and out[1] is not None else {}
    if isinstance(out, Mapping):
        if "loss" not in out:
            raise KeyError(f"compute_loss returned a dict without 'loss' (keys {sorted(out)})")
        return out["loss"], {k: v for k, v in out.items() if k != "loss"}
    if isinstance(out, torch.Tensor):
        return out, {}
    raise TypeError(f"compute_loss returned {type(out).__name__}; expected (loss, logs), a dict or a tensor")


def resolve_mixed_precision(name: str, device: torch.device) -> str:
    name = str(name).lower()
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "no"
    aliases = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16", "fp32": "no", "no": "no",
               "float32": "no"}
    if name not in aliases:
        raise ConfigError(f"training.mixed_precision must be auto, bf16, fp16 or fp32, got {name!r}")
    return aliases[name]


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    epoch: int
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    val_history: list[dict[str, float]] = field(default_factory=list)
    train_losses: list[float] = field(default_factory=list)


def _recover_before_reading(path: Path) -> None:
    """Undo what a kill left in the checkpoints/ folder of `path` (a run folder) or the one holding it (a
    checkpoint): a checkpoint left renamed inside `replace_folder`, which the `last` pointer may name, is put back,
    and half-written `.NAME.tmp` folders are removed (vpp_core.io.recover_from_a_kill)."""
    for folder in (path / "checkpoints", path.parent):
        if folder.name == "checkpoints" and folder.is_dir():
            recover_from_a_kill(folder)


class Trainer:
    def __init__(self, cfg: DictConfig, policy_factory: PolicyFactory | None = None,
                 dataset_factory: DatasetFactory | None = None):
        self.cfg = cfg
        self.policy_factory = policy_factory or default_policy_factory
        self.dataset_factory = dataset_factory or default_dataset_factory

    # ------------------------------------------------------------------------------------------------ setup
    def _setup_accelerator(self) -> None:
        from accelerate import Accelerator

        cfg = self.cfg
        want_cpu = str(_sel(cfg, "training.device", "auto")) == "cpu" or not torch.cuda.is_available()
        probe = torch.device("cpu") if want_cpu else torch.device("cuda")
        self.mixed_precision = resolve_mixed_precision(_sel(cfg, "training.mixed_precision", "auto"), probe)
        # A process may train more than once (tests, notebooks) with other precision settings: accelerate keeps its
        # state in singletons that refuse changes, so start from a fresh one (the process group, if any, is kept).
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
        self.acc = Accelerator(mixed_precision=self.mixed_precision, cpu=want_cpu,
                               kwargs_handlers=ddp_kwargs_handlers())
        self.device = self.acc.device
        self.rank = self.acc.process_index
        self.world = self.acc.num_processes
        self.is_main = self.acc.is_main_process
        key = "training.float32_matmul_precision"
        torch.set_float32_matmul_precision(matmul_precision_setting(_sel(cfg, key, "high"), key))

    def _resolve_run_dir(self) -> tuple[Path, Path | None]:
        """(run_dir, checkpoint to resume from or None), decided on the main process and shared."""
        from accelerate.utils import broadcast_object_list

        cfg = self.cfg
        if str(_sel(cfg, "run.resume", None)) == "auto" and not _sel(cfg, "run.run_dir", None):
            # checked on every process; a new run gets a new timestamped folder, which auto would never find again
            raise ConfigError("run.resume=auto continues the run in run.run_dir, which is not set; set "
                              "run.run_dir=FOLDER (the same on every call), or pass run.resume=<run folder>")
        fixed_dir = _sel(cfg, "run.run_dir", None)
        if not _sel(cfg, "run.resume", None) and fixed_dir and read_pointer(Path(fixed_dir), "last") is not None:
            # checked on every process too: a new run would write its checkpoints over the other run's
            raise ConfigError(f"run.run_dir {fixed_dir} holds another run's checkpoints; continue it with "
                              "run.resume=auto, or give this run another run.run_dir")
        obj: list[Any] = [None]
        if self.is_main:
            resume = _sel(cfg, "run.resume", None)
            run_dir = _sel(cfg, "run.run_dir", None)
            ckpt = None
            # before any pointer or checkpoint is read; the other processes wait for the broadcast below
            for path in (run_dir, None if str(resume) == "auto" else resume):
                if path:
                    _recover_before_reading(Path(path))
            if resume:
                from policy_models.checkpoints import resolve_checkpoint_dir

                if str(resume) == "auto":
                    if read_pointer(Path(run_dir), "last") is not None:
                        ckpt = resolve_checkpoint_dir(run_dir)
                    else:
                        log.info("run.resume=auto: %s has no checkpoint yet, starting at step 0", run_dir)
                else:
                    ckpt = resolve_checkpoint_dir(resume)
                    if run_dir is None:
                        ckpt_parent = ckpt.parent
                        run_dir = ckpt_parent.parent if ckpt_parent.name == "checkpoints" else ckpt_parent
            if run_dir is None:
                stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
                run_dir = Path(_sel(cfg, "run.output_dir", "runs")) / f"{_sel(cfg, 'experiment_name', 'vpp')}-{stamp}"
            obj = [(str(run_dir), None if ckpt is None else str(ckpt))]
        if self.world > 1:
            broadcast_object_list(obj)
        run_dir, ckpt = obj[0]
        return Path(run_dir), (None if ckpt is None else Path(ckpt))

    @contextlib.contextmanager
    def _held_setup_logs(self) -> Iterator[None]:
        """Hold the log records of the setup (models, data, resume) until `_setup_logging` writes them into log.txt:
        the run folder is made only after that setup succeeded, so that a mistake in the inputs leaves none behind.
        Every process holds them (which one is the main is not known yet); the others, and a failed setup, drop them:
        they were shown on the console already."""
        root = logging.getLogger()
        self._early_logs = MemoryHandler(capacity=sys.maxsize, flushLevel=logging.CRITICAL + 1)
        root.addHandler(self._early_logs)
        try:
            yield
        finally:
            root.removeHandler(self._early_logs)
            self._early_logs.close()

    def _log_info_on_main(self) -> None:
        """The main process logs at INFO from the setup on, so log.txt gets the setup's records; the others keep the
        caller's level."""
        if self.is_main and logging.getLogger().level > logging.INFO:
            logging.getLogger().setLevel(logging.INFO)

    def _setup_logging(self) -> None:
        """Make the run folder, with log.txt (the held setup records first) and run_config.yaml."""
        logging.getLogger().removeHandler(self._early_logs)  # the setup is over; before log.txt joins: none twice
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            handler = self._run_logs.enter_context(run_log_file(self.run_dir / "log.txt"))
            self._early_logs.setTarget(handler)
            self._early_logs.flush()
            from vpp_core.config import save_config

            save_config(self.cfg, self.run_dir / "run_config.yaml")  # not config.yaml: that marks a checkpoint folder
        self.acc.wait_for_everyone()

    def _init_wandb(self) -> Any:
        cfg = self.cfg
        if not self.is_main or not _sel(cfg, "wandb.enabled", True):
            return None
        mode = _sel(cfg, "wandb.mode", None) or os.environ.get("WANDB_MODE", "offline")
        if mode == "disabled":
            return None
        try:
            import wandb
        except ImportError:
            log.warning("wandb is not installed; metrics go to metrics.jsonl only")
            return None
        id_file = self.run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        run = wandb.init(project=_sel(cfg, "wandb.project", "vpp"), name=self.run_dir.name, id=run_id,
                         resume="allow", dir=str(self.run_dir), mode=mode,
                         config=OmegaConf.to_container(cfg, resolve=True))
        id_file.write_text(run.id)
        return run

    def _make_loader(self, ds: RobotDataset, sampler: ShardedEpochSampler, batch_size: int, workers: int,
                     train: bool) -> DataLoader:
        cfg = self.cfg
        g = torch.Generator()
        g.manual_seed(int(_sel(cfg, "seed", 0)) + 7919 * self.rank + (0 if train else 1))
        kwargs: dict[str, Any] = dict(batch_size=batch_size, sampler=sampler, num_workers=workers,
                                      collate_fn=collate_samples, drop_last=False, generator=g,
                                      pin_memory=bool(_sel(cfg, "dataloader.pin_memory", True))
                                      and self.device.type == "cuda")
        if workers > 0:
            kwargs["prefetch_factor"] = int(_sel(cfg, "dataloader.prefetch_factor", 2))
            kwargs["persistent_workers"] = bool(_sel(cfg, "dataloader.persistent_workers", True))
        return DataLoader(ds, **kwargs)

    # ------------------------------------------------------------------------------------------------ checkpoints
    def _ema_full_state(self) -> dict[str, torch.Tensor] | None:
        if self.ema is None:
            return None
        full = {k: v.detach() for k, v in self.policy.state_dict().items()}
        full.update(self.ema.state_dict())
        return full

    def _stats(self) -> Any:
        stats = getattr(self.train_ds, "stats", None)
        if stats is None:
            return None
        return stats.to_dict() if hasattr(stats, "to_dict") else stats

    def save_checkpoint(self) -> Path:
        from policy_models.checkpoints import save_policy_checkpoint

        acc = self.acc
        ck_root = self.run_dir / "checkpoints"
        final = ck_root / checkpoint_name(self.state.step)
        tmp = ck_root / f".{final.name}.tmp"
        acc.wait_for_everyone()
        if self.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            save_policy_checkpoint(tmp, self.policy, self.cfg, ema_state=self._ema_full_state(), stats=self._stats())
            save_training_state(tmp, self.state, self.optimizer, self.scheduler)
            if self.acc.scaler is not None:
                torch.save(self.acc.scaler.state_dict(), tmp / "training_state" / "scaler.pt")
        acc.wait_for_everyone()
        save_rng(tmp, self.rank)
        acc.wait_for_everyone()
        if self.is_main:
            replace_folder(tmp, final)
            if self.state.best_checkpoint == final.name:
                # before `last`: a run killed between the two resumes from this checkpoint with its best_val, and
                # would never write `best` for it again
                write_pointer(self.run_dir, "best", final)
            write_pointer(self.run_dir, "last", final)
            best = read_pointer(self.run_dir, "best")
            prune_checkpoints(self.run_dir, _sel(self.cfg, "training.keep_last_checkpoints", None), [best, final])
            log.info("saved checkpoint %s", final)
        acc.wait_for_everyone()
        self._last_saved_step = self.state.step
        return final

    def _load_resume(self, ckpt: Path) -> None:
        from policy_models.checkpoints import (
            EMA_FILE,
            MODEL_FILE,
            check_embodiment,
            load_policy_weights,
            read_state_file,
        )

        check_embodiment(ckpt, self.policy.embodiment, "run.resume:")
        load_policy_weights(self.policy, read_state_file(ckpt / MODEL_FILE), source=str(ckpt / MODEL_FILE))
        if self.ema is not None:
            ema_path = ckpt / EMA_FILE
            if ema_path.is_file():
                state = read_state_file(ema_path)
                self.ema.load_state_dict({n: state[n] for n in self.ema.names if n in state}, source=str(ema_path))
            else:
                log.warning("%s has no %s: EMA restarts from the current weights", ckpt, EMA_FILE)
                self.ema.restart(trainable_named_parameters(self.policy))
        ts = ckpt / "training_state"
        self.optimizer.load_state_dict(load_torch(ts / "optimizer.pt"))
        self.scheduler.load_state_dict(load_torch(ts / "scheduler.pt"))
        self.state = load_trainer_state(ckpt)
        if self.state.world_size != self.world:
            log.warning("resuming a %d-process run with %d processes: the data order changes from here on (the run "
                        "continues, but not bit-exactly)", self.state.world_size, self.world)
            self.state.batch_in_epoch = self.state.batch_in_epoch * self.state.world_size // self.world
            self.state.world_size = self.world
        self._resume_rng = ts / f"rng_state_{self.rank}.pt"
        self._resume_scaler = ts / "scaler.pt"
        log.info("resuming from %s at step %d (epoch %d, batch %d)", ckpt, self.state.step, self.state.epoch,
                 self.state.batch_in_epoch)

    # ------------------------------------------------------------------------------------------------ validation
    @torch.no_grad()
    def _predict(self, batch: Mapping[str, Any]) -> torch.Tensor:
        pol = self.policy
        sigma_min = float(_sel(self.cfg, "training.val_sigma_min", 0.001))
        texts = list(batch["lang_text"])
        if hasattr(pol, "encode_observations") and hasattr(pol, "sample_actions"):
            tokens = pol.encode_observations(batch["rgb_obs"], texts)
            goal = pol.encode_goal(texts)
            proprio = batch["state_obs"].float() if getattr(pol, "uses_state", False) else None
            return pol.sample_actions(tokens, goal, proprio, sigma_min=sigma_min)
        obs = {"rgb_obs": batch["rgb_obs"]}
        if "state_obs" in batch:
            obs["state_obs"] = batch["state_obs"]
        return pol.predict_action_chunk(obs, texts)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Sharded validation MSE of DDIM-sampled chunks, all-reduced over processes."""
        if self.val_loader is None:
            return {}
        max_batches = _sel(self.cfg, "training.val_max_batches", None)
        seed = int(_sel(self.cfg, "training.val_seed", 0))
        pol = self.policy
        was_training = pol.training
        pol.eval()
        results: dict[str, float] = {}
        variants: list[tuple[str, Any]] = [("val_mse", None)]
        if self.ema is not None and _sel(self.cfg, "ema.validate", False):
            variants.append(("val_mse_ema", self.ema))
        t0 = time.time()
        for name, ema in variants:
            se = torch.zeros((), dtype=torch.float64, device=self.device)
            count = torch.zeros((), dtype=torch.float64, device=self.device)
            devices = [self.device] if self.device.type == "cuda" else []
            ctx = ema.swapped_into(trainable_named_parameters(pol)) if ema is not None else _nullcontext()
            with ctx, torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed + 1_000_003 * self.rank)
                for bi, batch in enumerate(self.val_loader):
                    if max_batches is not None and bi >= int(max_batches):
                        break
                    batch = _to_device(batch, self.device)
                    with self.acc.autocast():
                        pred = self._predict(batch)
                    target = batch["actions"].float()
                    se += (pred.float() - target).pow(2).sum().double()
                    count += target.numel()
            totals = self.acc.reduce(torch.stack([se, count]), reduction="sum") if self.world > 1 else \
                torch.stack([se, count])
            results[name] = float(totals[0] / totals[1].clamp_min(1))
            results[f"{name}_elements"] = float(totals[1])
        pol.train(was_training)
        results["val_seconds"] = time.time() - t0
        return results

    # ------------------------------------------------------------------------------------------------ main loop
    def fit(self) -> TrainResult:
        """Train to `training.max_steps` / `max_epochs`, with the objects alive after the first step frozen against
        Python's full garbage collections (vpp_core.gc_freeze)."""
        # _run_logs: the run folder's log.txt (vpp_core.run_log), entered by _setup_logging once the folder exists
        with FrozenHeap() as heap, self._held_setup_logs(), contextlib.ExitStack() as self._run_logs:
            return self._fit(heap)

    def _fit(self, heap: FrozenHeap) -> TrainResult:
        cfg = self.cfg
        # "auto" (the full-size configs) compiles on CUDA, close to eager but not bit-identical (docs/PERFORMANCE.md):
        # the frozen VAE and U-Net passes (1.4x the step rate at batch 32 on an H100), and the trainable Video Former
        # and DiT loss (another 1.1x). Checked first, so a wrong value leaves no run folder behind.
        video_setting = compile_setting(_sel(cfg, "training.compile_video_model", None), "training.compile_video_model")
        head_setting = compile_setting(_sel(cfg, "training.compile_action_head", None), "training.compile_action_head")
        short_query = flag_setting(_sel(cfg, "training.short_query_attention", False), "training.short_query_attention")
        sdpa_perceiver = flag_setting(_sel(cfg, "training.sdpa_perceiver", False), "training.sdpa_perceiver")
        max_epochs = _sel(cfg, "training.max_epochs", None)
        max_steps = _sel(cfg, "training.max_steps", None)
        if max_epochs is None and max_steps is None:
            raise ConfigError("set training.max_epochs and/or training.max_steps")
        if self.dataset_factory is default_dataset_factory:  # a wrong data path fails before anything is made
            check_dataset_folders(cfg.dataset, ["train", "val"] if _sel(cfg, "training.validate", True) else ["train"])
        self._setup_accelerator()
        self._log_info_on_main()
        video_mode = resolve_compile_setting(video_setting, self.device.type)
        head_mode = resolve_compile_setting(head_setting, self.device.type)
        self.run_dir, resume_ckpt = self._resolve_run_dir()
        # from here to _setup_logging: everything that reads the inputs (models, data, checkpoints to resume or start
        # from) and can find them wrong, before the run folder is made
        seed = int(_sel(cfg, "seed", 0))
        seed_everything(seed)  # identical initialisation on every process
        self.policy = self.policy_factory(cfg, self.device)
        self.policy.to(self.device)
        self.policy.train()
        if resolve_flag(short_query, self.device.type):
            use_short_query_kernels(self.policy.tvp_encoder.unet)  # before compiling: the graphs trace it
        if resolve_flag(sdpa_perceiver, self.device.type):
            self.policy.use_sdpa_perceiver()  # 2.3% faster steps at batch 32 on an H100 (docs/PERFORMANCE.md)
        if video_mode:
            self.policy.compile_video_model(video_mode)
        if head_mode:
            self.policy.compile_action_head(head_mode)
        self.train_ds = self.dataset_factory(cfg, "train", self.policy)
        self.val_ds = self.dataset_factory(cfg, "val", self.policy) if _sel(cfg, "training.validate", True) else None
        if hasattr(self.policy, "stats") and getattr(self.train_ds, "stats", None) is not None:
            self.policy.stats = self._stats()
        if self.is_main:
            for name, ds in (("train", self.train_ds), ("val", self.val_ds)):
                if ds is not None:
                    log.info("%s: %s", name, ds.describe() if hasattr(ds, "describe") else f"{len(ds)} samples")

        self.optimizer = build_optimizer(self.policy, _sel(cfg, "optimizer", {}))
        self.scheduler = build_scheduler(self.optimizer, _sel(cfg, "lr_scheduler", {}))
        warmup = _sel(cfg, "ema.warmup_power", None)
        self.ema = EMA(trainable_named_parameters(self.policy), float(_sel(cfg, "ema.decay", 0.9999)),
                       None if warmup is None else float(warmup)) if _sel(cfg, "ema.enabled", True) else None
        self.state = TrainerState(world_size=self.world)
        self._resume_rng: Path | None = None
        self._resume_scaler: Path | None = None
        init_from = _sel(cfg, "init_from", None)
        if resume_ckpt is not None:
            self._load_resume(resume_ckpt)
        elif init_from:
            from policy_models.checkpoints import (
                MODEL_FILE,
                check_embodiment,
                load_policy_weights,
                read_state_file,
                resolve_checkpoint_dir,
            )

            if Path(init_from).is_file():
                raise ConfigError(f"init_from={init_from} is a file; released .pt checkpoints must be converted first: "
                                  "python tools/convert_vpp_checkpoint.py --input FILE.pt --output DIR "
                                  "--trust-pickled-config, then init_from=DIR")
            src = resolve_checkpoint_dir(init_from)
            check_embodiment(src, self.policy.embodiment, "init_from:")
            load_policy_weights(self.policy, read_state_file(src / MODEL_FILE), source=str(src / MODEL_FILE))
            if self.ema is not None:
                self.ema.restart(trainable_named_parameters(self.policy))
            log.info("initialised the trainable weights from %s", src)
        n_params = sum(p.numel() for _, p in trainable_named_parameters(self.policy))
        if self.is_main:
            log.info("trainable parameters: %s; %d process(es); mixed precision %s; device %s; torch.compile: video "
                     "model %s, action head %s", f"{n_params:,}", self.world, self.mixed_precision, self.device,
                     video_mode or "off", head_mode or "off")
        self._setup_logging()

        bs = int(_sel(cfg, "dataloader.batch_size", 28))
        workers = int(_sel(cfg, "dataloader.num_workers", 0))
        self.train_sampler = ShardedEpochSampler(len(self.train_ds), self.world, self.rank,
                                                 shuffle=bool(_sel(cfg, "dataloader.shuffle", True)), seed=seed)
        train_loader = self._make_loader(self.train_ds, self.train_sampler, bs, workers, train=True)
        self.val_loader = None
        if self.val_ds is not None:
            self.val_sampler = ShardedEpochSampler(len(self.val_ds), self.world, self.rank, shuffle=False, pad=False)
            vbs = int(_sel(cfg, "dataloader.val_batch_size", bs))
            vworkers = int(_sel(cfg, "dataloader.val_num_workers", workers))
            self.val_loader = self._make_loader(self.val_ds, self.val_sampler, vbs, vworkers, train=False)
        batches_per_epoch = math.ceil(self.train_sampler.local_length() / bs)

        model, self.optimizer = self.acc.prepare(self.policy, self.optimizer)
        if self._resume_scaler is not None and self._resume_scaler.is_file() and self.acc.scaler is not None:
            self.acc.scaler.load_state_dict(load_torch(self._resume_scaler))
        # per-process training randomness: restored exactly on resume, else seed + rank
        if self._resume_rng is not None and self._resume_rng.is_file():
            set_rng_state(load_torch(self._resume_rng))
        else:
            if self._resume_rng is not None:
                log.warning("no RNG state for rank %d in the checkpoint; reseeding", self.rank)
            seed_everything(seed + self.rank + 104729 * self.state.step)

        max_epochs = int(max_epochs) if max_epochs is not None else 10**9
        max_steps = int(max_steps) if max_steps is not None else 10**12
        ckpt_every = int(_sel(cfg, "training.checkpoint_every_steps", 0) or 0)
        ckpt_epoch_end = bool(_sel(cfg, "training.checkpoint_every_epoch", True))
        val_every = int(_sel(cfg, "training.validate_every_epochs", 1) or 0)
        log_every = max(1, int(_sel(cfg, "training.log_every", 50)))
        clip = _sel(cfg, "training.grad_clip_norm", None)
        self._last_saved_step = self.state.step if resume_ckpt is not None else -1
        wandb_run = self._init_wandb()
        metrics_path = self.run_dir / "metrics.jsonl"
        if self.is_main:  # the steps after the checkpoint (a fresh start: all steps) run again and are logged again
            drop_jsonl_records_after(metrics_path, self.state.step if resume_ckpt is not None else 0)
        result = TrainResult(self.run_dir, self.state.step, self.state.epoch, None, None)

        total = min(max_steps, max_epochs * batches_per_epoch)
        bar = None
        if self.is_main and not _sel(cfg, "training.disable_progress_bar", False):
            from tqdm import tqdm

            bar = tqdm(total=total, initial=min(self.state.step, total), unit="step", dynamic_ncols=True,
                       desc=self.run_dir.name)
        trainable = trainable_named_parameters(self.policy)
        loss_sum = torch.zeros((), device=self.device)
        logs_sum: dict[str, torch.Tensor] = {}
        n_logged = 0
        t_log = time.time()
        stop = self.state.step >= max_steps
        batches = InputWaitMeter(train_loader)

        while not stop and self.state.epoch < max_epochs:
            self.train_sampler.set_epoch(self.state.epoch, skip=self.state.batch_in_epoch * bs)
            for batch in batches:
                batch = _to_device(batch, self.device)
                with self.acc.autocast():
                    loss, logs = unpack_loss(model(batch))
                self.optimizer.zero_grad(set_to_none=True)
                self.acc.backward(loss)
                if clip:
                    self.acc.clip_grad_norm_([p for _, p in trainable], float(clip))
                self.optimizer.step()
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update(trainable, step=self.state.step)
                self.state.step += 1
                self.state.batch_in_epoch += 1
                heap.freeze_once()  # the first step compiled the action head; later steps make few lasting objects
                self.state.samples_seen += len(batch["lang_text"]) * self.world
                loss_sum += loss.detach().float()
                for k, v in logs.items():
                    if isinstance(v, torch.Tensor) and v.numel() == 1:
                        logs_sum[k] = logs_sum.get(k, torch.zeros((), device=self.device)) + v.detach().float()
                n_logged += 1
                if bar is not None:
                    bar.update(1)
                if self.state.step % log_every == 0 or self.state.step >= max_steps:
                    vals = torch.stack([loss_sum, *logs_sum.values()]) / n_logged
                    if self.world > 1:
                        vals = self.acc.reduce(vals, reduction="mean")
                    dt = time.time() - t_log
                    rec = {"step": self.state.step, "epoch": self.state.epoch, "loss": float(vals[0]),
                           **{k: float(v) for k, v in zip(logs_sum, vals[1:])},
                           "lr": self.scheduler.get_last_lr()[0], "steps_per_s": n_logged / max(dt, 1e-9),
                           "samples_per_s": n_logged * bs * self.world / max(dt, 1e-9),
                           "input_wait_frac": batches.take() / max(dt, 1e-9), **peak_memory_record(self.device)}
                    result.train_losses.append(rec["loss"])
                    if self.is_main:
                        append_jsonl(rec, metrics_path)
                        if wandb_run is not None:
                            wandb_run.log({f"train/{k}": v for k, v in rec.items() if k != "step"},
                                          step=self.state.step)
                        if bar is not None:
                            bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", epoch=self.state.epoch)
                        else:
                            log.info("step %d epoch %d loss %.5f lr %.3g %.2f steps/s", rec["step"], rec["epoch"],
                                     rec["loss"], rec["lr"], rec["steps_per_s"])
                    loss_sum.zero_()
                    logs_sum = {}
                    n_logged = 0
                    t_log = time.time()
                if self.state.step >= max_steps:
                    stop = True
                    break
                end_of_epoch = self.state.batch_in_epoch >= batches_per_epoch
                # at the end of an epoch, after its validation (below): a checkpoint taken before it would make a
                # resumed run validate and log that epoch again
                if ckpt_every and self.state.step % ckpt_every == 0 and not end_of_epoch:
                    result.last_checkpoint = self.save_checkpoint()

            if self.state.batch_in_epoch >= batches_per_epoch:  # the epoch is complete
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                val: dict[str, float] = {}
                if self.val_loader is not None and val_every and self.state.epoch % val_every == 0:
                    val = self.validate()
                    rec = {"step": self.state.step, "epoch": self.state.epoch, **val}
                    result.val_history.append(rec)
                    if self.is_main:
                        append_jsonl(rec, metrics_path)
                        log.info("epoch %d step %d: %s", self.state.epoch, self.state.step,
                                 ", ".join(f"{k} {v:.6g}" for k, v in val.items()))
                        if wandb_run is not None:
                            wandb_run.log({f"val/{k}": v for k, v in val.items()}, step=self.state.step)
                improved = "val_mse" in val and (self.state.best_val is None or val["val_mse"] < self.state.best_val)
                if improved:
                    self.state.best_val = val["val_mse"]
                    self.state.best_checkpoint = checkpoint_name(self.state.step)
                if ckpt_epoch_end or improved or (ckpt_every and self.state.step % ckpt_every == 0):
                    result.last_checkpoint = self.save_checkpoint()
        if self._last_saved_step != self.state.step:
            result.last_checkpoint = self.save_checkpoint()
        elif result.last_checkpoint is None:
            result.last_checkpoint = read_pointer(self.run_dir, "last")
        if bar is not None:
            bar.close()
        if wandb_run is not None:
            wandb_run.finish()
        self.acc.wait_for_everyone()
        result.step, result.epoch = self.state.step, self.state.epoch
        result.best_checkpoint = read_pointer(self.run_dir, "best")
        return result


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def train(cfg: DictConfig, policy_factory: PolicyFactory | None = None,
          dataset_factory: DatasetFactory | None = None) -> TrainResult:
    """Train a stage-2 policy from a composed training config (see policy_conf/VPP_Calvinabc_train.yaml)."""
    return Trainer(cfg, policy_factory, dataset_factory).fit()
