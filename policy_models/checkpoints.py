"""Stage-2 checkpoints: save / load policy folders, and convert the released `.pt` files.

Folder layout:
    <dir>/config.yaml          full resolved config (model + embodiment [+ training])
    <dir>/model.safetensors    Video_Former.* + model.inner_model.* (vpp_reference §11.3/11.4 names; no CLIP/SVD)
    <dir>/ema.safetensors      same keys, EMA weights (when EMA is on)
    <dir>/stats.json           normalisation statistics (robots trained with stats), absent for CALVIN
    <dir>/training_state/      written by the trainer (optimizer, scheduler, RNG, step)

A run folder holds checkpoints/step_XXXXXXX/ plus `last` / `best` text files naming a checkpoint folder;
`resolve_checkpoint_dir` follows them.
"""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from policy_models.config import EmbodimentConfig, policy_config_from, to_container
from policy_models.policy import VPPPolicy, build_frozen_encoders

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATS_FILE = "stats.json"

# Groups of the released checkpoints that are not policy weights: the frozen OpenAI CLIP (LangClip, CALVIN goal) and
# the frozen HF CLIP text tower (TVP text features; the xbot policy registered it a second time as `text_encoder.`).
# Both are supplied by the CLIP folder (`model.clip_model_path`) instead.
DROPPED_PREFIXES = ("language_goal.clip_rn50.", "TVP_encoder.text_encoder.", "text_encoder.")
POLICY_PREFIXES = ("Video_Former.", "model.inner_model.")
BASE_CONFIGS = {7: "calvin.yaml", 38: "xbot.yaml"}


class CheckpointError(ValueError):
    """A checkpoint folder or file is missing, incomplete or does not match the model; the message says which."""


# ---------------------------------------------------------------------------------------------------------- save/load
def _full_config(policy: VPPPolicy, cfg: DictConfig | Mapping | None) -> DictConfig:
    """The given (training) config with the policy's resolved model/embodiment blocks written over it."""
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    base = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    resolved = OmegaConf.create(to_container(policy.config))
    base.model = resolved.model
    base.embodiment = resolved.embodiment
    return base


def save_policy_checkpoint(
    checkpoint_dir: str | Path,
    policy: VPPPolicy,
    cfg: DictConfig | Mapping | None = None,
    ema_state: Mapping[str, torch.Tensor] | None = None,
    stats: Mapping[str, Any] | None = None,
) -> Path:
    """Write config.yaml, model.safetensors (+ ema.safetensors, stats.json) into `checkpoint_dir` (atomic per file).
    `ema_state` must have exactly the keys of `policy.state_dict()`."""
    from vpp_core.config import save_config
    from vpp_core.io import atomic_json_dump, atomic_save_safetensors

    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float() if v.is_floating_point() else v.detach() for k, v in policy.state_dict().items()}
    meta = {"format": "pt", "content": "vpp-stage2-policy"}
    if ema_state is not None:
        ema_keys, model_keys = set(ema_state), set(state)
        if ema_keys != model_keys:
            raise CheckpointError(
                f"ema_state keys differ from the policy's: missing {sorted(model_keys - ema_keys)[:5]}, "
                f"unexpected {sorted(ema_keys - model_keys)[:5]}"
            )
        atomic_save_safetensors({k: ema_state[k].detach().float() for k in state}, checkpoint_dir / EMA_FILE, meta)
    atomic_save_safetensors(state, checkpoint_dir / MODEL_FILE, meta)
    if stats is not None:
        atomic_json_dump(_jsonable(stats), checkpoint_dir / STATS_FILE)
    save_config(_full_config(policy, cfg), checkpoint_dir / CONFIG_FILE)
    return checkpoint_dir


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "tolist"):  # numpy
        return obj.tolist()
    return obj


def resolve_checkpoint_dir(path: str | Path, pointer: str = "last") -> Path:
    """A checkpoint folder itself, or a run folder whose `last`/`best` pointer (in the run folder or its
    checkpoints/ sub-folder) names one."""
    path = Path(path)
    if not path.exists():  # a mistyped path: saying what the folder lacks would suggest it is there
        raise CheckpointError(f"checkpoint folder {path} does not exist")
    if (path / CONFIG_FILE).is_file():
        return path
    for base in (path, path / "checkpoints"):
        ptr = base / pointer
        if ptr.is_file():
            target = Path(ptr.read_text().strip())
            for cand in (target, base / target, path / target):
                if (cand / CONFIG_FILE).is_file():
                    return cand
            raise CheckpointError(f"{ptr} names {target}, which is not a checkpoint folder (no {CONFIG_FILE})")
    raise CheckpointError(
        f"{path} is not a stage-2 checkpoint folder (no {CONFIG_FILE}) and has no '{pointer}' pointer file"
    )


def load_policy_config(checkpoint_dir: str | Path, overrides: Mapping[str, Any] | None = None) -> DictConfig:
    """config.yaml of a checkpoint with dotted-key overrides applied (e.g. {"model.diffusion.sigma_min": 1.0})."""
    path = Path(checkpoint_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint config not found: {path}")
    cfg = OmegaConf.load(path)
    for key, value in (overrides or {}).items():
        # unknown model./embodiment. keys are rejected by policy_config_from with the key's name
        OmegaConf.update(cfg, key, value, merge=True, force_add=True)
    return cfg


def read_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except SafetensorError as exc:  # a copy cut short, or another format under this name
        raise CheckpointError(f"cannot read weights file {path} (truncated or not safetensors): {exc}") from exc


def checkpoint_embodiment(checkpoint_dir: str | Path) -> EmbodimentConfig:
    """The embodiment block of a checkpoint's config.yaml (CALVIN's defaults for keys it lacks), read without the
    model block, so that a robot mismatch can be named before anything is built."""
    block = load_policy_config(checkpoint_dir).get("embodiment") or {}
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EmbodimentConfig), block))
    except Exception as exc:  # omegaconf's errors name the offending key
        raise CheckpointError(f"{checkpoint_dir}: invalid embodiment block in its config: {exc}") from exc


def check_embodiment(checkpoint_dir: str | Path, embodiment: EmbodimentConfig, purpose: str) -> None:
    """Before loading a checkpoint's weights into a policy built from another config: a checkpoint of another robot
    (cameras, action or state width, chunk length) is named as such, rather than as a list of mis-shaped tensors."""
    theirs = checkpoint_embodiment(checkpoint_dir)
    fields = ("cameras", "action_dim", "state_dim", "chunk_length")
    differences = [f"{name} {getattr(theirs, name)} vs {getattr(embodiment, name)}" for name in fields
                   if getattr(theirs, name) != getattr(embodiment, name)]
    if differences:
        raise CheckpointError(
            f"{purpose} {checkpoint_dir} holds a policy for embodiment {theirs.name!r}, and this run is configured "
            f"for {embodiment.name!r}: {'; '.join(differences)} (checkpoint vs this run)"
        )


def load_policy_weights(policy: VPPPolicy, state: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """Strict load with a readable error (missing / unexpected / mis-shaped keys listed)."""
    expected = policy.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{source} does not match the layout of the policy it is loaded into:\n"
            f"  missing keys ({len(missing)}): {missing[:20]}\n"
            f"  unexpected keys ({len(unexpected)}): {unexpected[:20]}\n"
            f"  shape mismatches ({len(mismatched)}): {mismatched[:20]}"
        )
    policy.load_state_dict(dict(state), strict=True)


def load_policy(
    checkpoint_dir: str | Path,
    video_model_path: str | Path | None = None,
    clip_model_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    use_ema: bool = False,
    load_frozen_models: bool = True,
) -> VPPPolicy:
    """Rebuild a policy from a stage-2 checkpoint folder (or a run folder with a `last` pointer), in eval mode.

    `video_model_path` / `clip_model_path` default to the paths in config.yaml; `dtype` is the frozen video model's
    dtype (default: config `model.video_dtype`); `overrides` are dotted config keys; `use_ema` loads ema.safetensors.
    `load_frozen_models=False` builds only the trainable part (for inspection/conversion; cannot run on images)."""
    checkpoint_dir = resolve_checkpoint_dir(checkpoint_dir)
    full = load_policy_config(checkpoint_dir, overrides)
    cfg = policy_config_from(full)
    tvp = goal = None
    if load_frozen_models:
        if video_model_path is not None:
            cfg.model.video_model_path = str(video_model_path)
        if clip_model_path is not None:
            cfg.model.clip_model_path = str(clip_model_path)
        if dtype is not None:
            cfg.model.video_dtype = str(dtype).replace("torch.", "")
        tvp, goal = build_frozen_encoders(cfg, device=device)
    policy = VPPPolicy(cfg, tvp_encoder=tvp, goal_encoder=goal)
    weights = checkpoint_dir / (EMA_FILE if use_ema else MODEL_FILE)
    if use_ema and not weights.is_file():
        raise CheckpointError(f"use_ema=True but {weights} does not exist (was the run trained with EMA?)")
    load_policy_weights(policy, read_state_file(weights), source=str(weights))
    stats_path = checkpoint_dir / STATS_FILE
    if stats_path.is_file():
        policy.stats = json.loads(stats_path.read_text())
    policy.checkpoint_dir = str(checkpoint_dir)
    return policy.to(device).eval()


def load_inference_policy(
    checkpoint_dir: str | Path,
    video_model_path: str | Path | None = None,
    clip_model_path: str | Path | None = None,
    device: str = "cpu",
    *,
    dtype: torch.dtype | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    use_ema: bool = False,
    cudnn_benchmark: bool = False,
    compile_mode: str | None = None,
    short_query_attention: bool | str = "auto",
    float32_matmul_precision: str = "high",
    fused_decoder: bool | str = "auto",
) -> VPPPolicy:
    """`load_policy` on the inference fast path that the evaluator, the policy server and the in-process agent share.
    On CUDA each chunk replays as one CUDA graph (bit-identical to eager; captured on the first chunk, so the caller
    must not run other CUDA work of the process concurrently with it). `short_query_attention` (True, False or
    "auto": on CUDA) runs the U-Net's 16-frame attention on the memory-efficient kernel; `compile_mode` (None, "auto"
    or a torch.compile mode) compiles the video passes and the action head. `float32_matmul_precision` is set for the
    whole process (torch.set_float32_matmul_precision; "high" runs the float32 action head on TF32 tensor cores).
    `fused_decoder` runs the sampler's decoder steps as Triton kernels (`VPPPolicy.use_fused_decoder`: 0.6 ms less
    per chunk at batch 1 on an H100, the batch these three run; slower at batch 8): True raises where they cannot
    run, "auto" turns them on where they can (`VPPPolicy.fused_decoder_problem`: CUDA, triton, a float32 action head,
    the released decoder layout) and on a CUDA device where they cannot, warns why they stay off. Each setting is
    applied before the graphs that would capture it."""
    from video_models.attention_kernels import use_short_query_kernels
    from vpp_core.config import AUTO, resolve_compile_setting, resolve_flag

    torch.set_float32_matmul_precision(float32_matmul_precision)
    policy = load_policy(checkpoint_dir, video_model_path=video_model_path, clip_model_path=clip_model_path,
                         device=device, dtype=dtype, overrides=overrides, use_ema=use_ema)
    policy.use_fastest_exact_inference(cudnn_benchmark=cudnn_benchmark)
    device_type = torch.device(device).type
    if resolve_flag(short_query_attention, device_type):
        use_short_query_kernels(policy.tvp_encoder.unet)  # before compiling: the graphs trace it
    compile_mode = resolve_compile_setting(compile_mode, device_type)
    if compile_mode is not None:
        policy.compile_for_inference(compile_mode)
    if fused_decoder == AUTO:
        problem = policy.fused_decoder_problem()
        if problem is not None and device_type == "cuda":  # elsewhere, being off is what "auto" means
            warnings.warn(f"fused_decoder auto: left off, {problem}", stacklevel=2)
        fused_decoder = problem is None
    if fused_decoder:
        policy.use_fused_decoder()
    return policy


# ---------------------------------------------------------------------------------------------------------- conversion
def _load_original(input_pt: Path, allow_pickle_config: bool) -> Any:
    try:
        return torch.load(input_pt, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
        if not allow_pickle_config:
            raise CheckpointError(
                f"{input_pt} could not be read with torch.load(weights_only=True): {str(exc).splitlines()[0]}\n"
                "The released VPP checkpoints store the training config as a pickled OmegaConf object next to the "
                "weights. Loading it runs pickle code from the file: only do so for files you trust, by passing "
                "--trust-pickled-config (convert_released_checkpoint(..., allow_pickle_config=True))."
            ) from exc
    return torch.load(input_pt, map_location="cpu", weights_only=False)


def split_released_state(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Keep the policy groups, drop the frozen CLIP groups and `position_ids`; anything else is an error."""
    kept: dict[str, torch.Tensor] = {}
    dropped: dict[str, int] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if key.endswith("position_ids"):
            dropped["position_ids"] = dropped.get("position_ids", 0) + 1
            continue
        prefix = next((p for p in DROPPED_PREFIXES if key.startswith(p)), None)
        if prefix is not None:
            dropped[prefix] = dropped.get(prefix, 0) + 1
            continue
        if key.startswith(POLICY_PREFIXES):
            kept[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"unknown keys in the released checkpoint ({len(unknown)}): {unknown[:20]}")
    return kept, dropped


def _count_blocks(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    return len({k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix)})


def infer_config_from_state(state: Mapping[str, torch.Tensor], base: DictConfig | None = None) -> DictConfig:
    """Pick calvin.yaml / xbot.yaml by action size (unless `base` is given) and fill the sizes the tensors imply."""
    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise CheckpointError(f"the released checkpoint lacks {key}")
        return state[key]

    action_dim = need("model.inner_model.action_pred.weight").shape[0]
    if base is None:
        name = BASE_CONFIGS.get(action_dim)
        if name is None:
            raise CheckpointError(
                f"cannot tell the embodiment of a checkpoint with action_dim {action_dim}; pass a config yaml with "
                "model: and embodiment: blocks (--config)"
            )
        base = OmegaConf.load(Path(__file__).resolve().parent.parent / "policy_conf" / "model" / name)
    cfg = OmegaConf.create(OmegaConf.to_container(base, resolve=True))
    latents = need("Video_Former.latents")
    num_frames, per_frame, latent_dim = latents.shape
    num_latents = num_frames * per_frame
    pos = need("model.inner_model.pos_emb")
    n_layers = len({k.split(".")[2] for k in state if k.startswith("Video_Former.layers.")})
    temporal = any(".1.qkv." in k for k in state if k.startswith("Video_Former.layers."))
    updates = {
        "model.latent_dim": latent_dim,
        "model.feature.feature_dim": need("Video_Former.goal_emb.0.weight").shape[1],
        "model.former.num_latents": num_latents,
        "model.former.num_time_embeds": need("Video_Former.time_pos_emb").shape[0],
        "model.former.depth": n_layers,
        "model.former.type": "3d" if temporal else "2d",
        "model.former.dim_head": need("Video_Former.layers.0.0.to_q.weight").shape[0] // cfg.model.former.heads,
        "model.dit.goal_dim": need("model.inner_model.lang_emb.0.weight").shape[1],
        "model.dit.proprio_dim": need("model.inner_model.proprio_emb.0.weight").shape[1],
        "model.dit.n_enc_layers": _count_blocks(state, "model.inner_model.encoder.blocks."),
        "model.dit.n_dec_layers": _count_blocks(state, "model.inner_model.decoder.blocks."),
        "embodiment.action_dim": action_dim,
        "embodiment.chunk_length": pos.shape[1] - 1 - num_latents,
    }
    for key, value in updates.items():
        OmegaConf.update(cfg, key, value, merge=True)
    if cfg.model.multistep > cfg.embodiment.chunk_length:
        cfg.model.multistep = cfg.embodiment.chunk_length
    return cfg


def convert_released_checkpoint(
    input_pt: str | Path,
    output_dir: str | Path,
    allow_pickle_config: bool = False,
    config: str | Path | DictConfig | None = None,
    video_model_path: str | None = None,
    clip_model_path: str | None = None,
) -> Path:
    """Convert an original `{"model": state_dict, "args": cfg}` .pt (dp-calvin, xbot) into a stage-2 checkpoint
    folder. Key names map 1:1 (`Video_Former.*`, `model.inner_model.*`); the frozen CLIP groups
    (`language_goal.clip_rn50.*`, `TVP_encoder.text_encoder.*`, xbot's duplicate `text_encoder.*`) and `position_ids`
    are dropped because the CLIP folder supplies them. Unknown, missing or mis-shaped keys are errors."""
    input_pt = Path(input_pt)
    if not input_pt.is_file():
        raise CheckpointError(f"released checkpoint not found: {input_pt}")
    obj = _load_original(input_pt, allow_pickle_config)
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        state = obj["model"]
    elif isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    else:
        raise CheckpointError(f"{input_pt} is neither {{'model': state_dict, 'args': cfg}} nor a plain state dict")
    kept, dropped = split_released_state(state)
    base = None
    if config is not None:
        base = config if isinstance(config, DictConfig) else OmegaConf.load(config)
    cfg = infer_config_from_state(kept, base)
    if video_model_path is not None:
        cfg.model.video_model_path = str(video_model_path)
    if clip_model_path is not None:
        cfg.model.clip_model_path = str(clip_model_path)
    policy = VPPPolicy(policy_config_from(cfg))
    load_policy_weights(policy, {k: v.float() for k, v in kept.items()}, source=str(input_pt))
    cfg.converted_from = {"file": input_pt.name, "dropped_tensors": dropped}
    return save_policy_checkpoint(output_dir, policy, cfg)

