"""Configuration loading: yaml files plus command-line overrides.

The original scripts accepted overrides in two spellings (`key=value` after `--config`, and the README's
`--key value`), and the second one crashed. Both are accepted here and mean the same thing, so commands copied from
either the original README or ours work.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vpp_core.io import atomic_write


class ConfigError(ValueError):
    """A configuration file or override is malformed; the message names the file or the override."""


# torch.compile modes without inductor's own CUDA graphs. The policy's whole-chunk CUDA graph captures the compiled
# kernels, which "reduce-overhead" and "max-autotune" would record in graphs of their own; stage-1 training takes the
# same set, since those two were not tried there.
COMPILE_MODES_WITHOUT_CUDA_GRAPHS = ("default", "max-autotune-no-cudagraphs")

# "auto" in a compile or kernel setting: on for CUDA devices, off elsewhere. Compiling is what makes the GPU paths
# fast (docs/PERFORMANCE.md), so the full-size configs default to it; on the CPU inductor needs a C++ toolchain and
# minutes of compiling for little gain, so tests and laptop runs stay eager.
AUTO = "auto"
_OFF = (None, False, "null", "none", "false")


def compile_setting(value: object, key: str) -> str | None:
    """A torch.compile setting from a config file or flag, checked before anything is built or written: None (eager),
    "auto" or a mode of COMPILE_MODES_WITHOUT_CUDA_GRAPHS. Inductor's own CUDA-graph modes are refused: they were
    never measured here, and the policy's chunk graph cannot capture them."""
    if value in _OFF:
        return None
    if value == AUTO or value in COMPILE_MODES_WITHOUT_CUDA_GRAPHS:
        return str(value)
    raise ConfigError(f"{key} must be null, {AUTO} or one of {list(COMPILE_MODES_WITHOUT_CUDA_GRAPHS)}, got {value!r}")


def resolve_compile_setting(setting: str | None, device_type: str) -> str | None:
    """The compile mode to use on a device of `device_type` ("cuda", "cpu", ...): "auto" is "default" on CUDA."""
    if setting == AUTO:
        return "default" if device_type == "cuda" else None
    return setting


def flag_setting(value: object, key: str) -> bool | str:
    """A true / false / "auto" switch from a config file, checked before anything is built; anything else is an error
    naming `key`."""
    if value == AUTO or isinstance(value, bool):
        return value
    raise ConfigError(f"{key} must be true, false or {AUTO}, got {value!r}")


def switch_argument(text: str) -> bool | str:
    """argparse type of a true / false / "auto" switch on a command line, spelled as in the yaml files."""
    switches = {"true": True, "false": False, AUTO: AUTO}
    if text not in switches:
        raise argparse.ArgumentTypeError(f"{text!r}: use true, false or {AUTO}")
    return switches[text]


def resolve_flag(setting: bool | str, device_type: str) -> bool:
    """The switch on a device of `device_type`: "auto" is on for CUDA."""
    return device_type == "cuda" if setting == AUTO else bool(setting)


# torch.set_float32_matmul_precision values. "highest" multiplies float32 matrices in full float32; "high" lets them
# use TF32 tensor cores (10-bit mantissa, as float16's), "medium" bfloat16. The action head runs in float32, so this
# decides its speed at inference; the original trained it with "medium" (vpp_reference §6.12).
FLOAT32_MATMUL_PRECISIONS = ("highest", "high", "medium")


def matmul_precision_setting(value: object, key: str) -> str:
    """A float32 matmul precision from a config file or flag, checked before anything is built; anything else is an
    error naming `key`."""
    if value in FLOAT32_MATMUL_PRECISIONS:
        return str(value)
    raise ConfigError(f"{key} must be one of {list(FLOAT32_MATMUL_PRECISIONS)}, got {value!r}")


def normalize_overrides(args: Sequence[str]) -> list[str]:
    """Turn `--a.b value`, `--a.b=value` and `a.b=value` into OmegaConf dot-list entries `a.b=value`."""
    dotlist: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            key = arg[2:]
            if "=" in key:
                dotlist.append(key)
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                dotlist.append(f"{key}={args[i + 1]}")
                i += 1
            else:
                dotlist.append(f"{key}=true")
        elif "=" in arg:
            dotlist.append(arg)
        else:
            raise ConfigError(f"cannot parse override {arg!r}: expected key=value or --key value")
        i += 1
    return dotlist


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> DictConfig:
    """Load a yaml config (or start empty) and apply overrides in either spelling."""
    cfg = OmegaConf.create({})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            cfg = OmegaConf.load(path)
        except Exception as exc:  # omegaconf raises several yaml/grammar errors; name the file in all cases
            raise ConfigError(f"cannot parse config file {path}: {exc}") from exc
        if not isinstance(cfg, DictConfig):
            raise ConfigError(f"config file {path} must contain a mapping at the top level")
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: DictConfig, overrides: Sequence[str], strict: bool = False) -> DictConfig:
    """Merge command-line overrides (either spelling) into a loaded config.

    `strict`: every override must name a key the config already has, with a value of the same kind (a number where
    the config holds a number), so that a typo fails before a run starts instead of training on the default. A key
    spelled `+a.b=value` is added even where the config lacks it."""
    dotlist = normalize_overrides(list(overrides))
    if not dotlist:
        return cfg
    added = [entry[1:] for entry in dotlist if entry.startswith("+")]
    replaced = [entry for entry in dotlist if not entry.startswith("+")]
    try:
        parsed = OmegaConf.from_dotlist(replaced + added)
    except Exception as exc:
        raise ConfigError(f"invalid override in {dotlist}: {exc}") from exc
    if strict:
        _check_overrides(cfg, replaced, parsed)
    try:
        return OmegaConf.merge(cfg, parsed)  # type: ignore[return-value]
    except Exception as exc:
        raise ConfigError(f"invalid override in {dotlist}: {exc}") from exc


_ABSENT = object()


def _leaf_keys(node: object, prefix: str = "") -> list[str]:
    if not isinstance(node, DictConfig):
        return [prefix]
    keys = [prefix] if prefix else []
    for key, value in node.items_ex(resolve=False):
        keys += _leaf_keys(value, f"{prefix}.{key}" if prefix else str(key))
    return keys


def _same_kind(old: object, new: object) -> bool:
    """Whether `new` may replace `old`: a number by a number, a boolean by a boolean or "auto" (the switches that
    take it), a mapping by a mapping; strings, lists and nulls by anything."""
    if isinstance(old, bool):
        return isinstance(new, bool) or new == AUTO
    if isinstance(old, (int, float)):
        return isinstance(new, (int, float)) and not isinstance(new, bool)
    if isinstance(old, DictConfig):
        return isinstance(new, DictConfig)
    return True


def _check_overrides(cfg: DictConfig, dotlist: Sequence[str], parsed: DictConfig) -> None:
    """The checks of `apply_overrides(strict=True)`: each key exists, and its new value is of its kind (`_same_kind`)
    or null; a null in the config takes anything."""
    for entry in dotlist:
        key = entry.split("=", 1)[0]
        old = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_resolution_failure=False)
        if old is _ABSENT:
            close = difflib.get_close_matches(key, _leaf_keys(cfg), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ConfigError(f"override {entry!r}: the config has no key {key!r}{hint} (spell it +{key}=... to add "
                              "a new key)")
        new = OmegaConf.select(parsed, key)
        if old is not None and new is not None and not _same_kind(old, new):
            raise ConfigError(f"override {entry!r}: {key} holds {type(old).__name__} {old!r} in the config, got "
                              f"{type(new).__name__} {new!r}")


def save_config(cfg: DictConfig, path: str | Path) -> None:
    """Write the fully resolved config next to a checkpoint, atomically."""
    with atomic_write(path) as tmp:
        OmegaConf.save(cfg, tmp, resolve=True)
