"""Training-config composition: a top-level yaml with a hydra-style ``defaults`` list, plus command-line overrides.

``policy_conf/VPP_Calvinabc_train.yaml`` starts with::

    defaults:
      - model/calvin      # policy_conf/model/calvin.yaml (`# @package _global_`: merged at the top level)
      - _self_

Entries are paths relative to the top-level file's folder without ``.yaml`` (``model/calvin``) or hydra's group form
(``model: calvin``); ``_self_`` marks where the file's own content is merged (last when absent, as in hydra). The same
files also compose with hydra itself. Overrides use ``key=value`` or ``--key value`` (vpp_core.config), so the
original README's ``--root_data_dir D --video_model_path V --text_encoder_path C`` works as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from vpp_core.config import ConfigError, apply_overrides, load_config


def _entry_path(entry, base: Path) -> Path | None:
    if isinstance(entry, str):
        if entry == "_self_":
            return None
        rel = entry.lstrip("/")
    elif isinstance(entry, (dict, DictConfig)) and len(entry) == 1:
        group, name = next(iter(entry.items()))
        if name is None:
            raise ConfigError(f"defaults entry {dict(entry)} has no value")
        rel = f"{str(group).lstrip('/')}/{name}"
    else:
        raise ConfigError(f"cannot parse defaults entry {entry!r}: expected 'group/name', {{group: name}} or _self_")
    path = base / (rel if rel.endswith(".yaml") else f"{rel}.yaml")
    if not path.is_file():
        raise ConfigError(f"defaults entry {entry!r}: file not found: {path}")
    return path


def _compose_file(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"defaults cycle: {' -> '.join(str(p) for p in (*seen, path))}")
    cfg = load_config(path)
    defaults = cfg.pop("defaults", None)
    if defaults is None:
        return cfg
    if not isinstance(defaults, (list, ListConfig)):
        raise ConfigError(f"{path}: 'defaults' must be a list")
    entries = list(defaults)
    if "_self_" not in entries:
        entries.append("_self_")
    out = OmegaConf.create({})
    for entry in entries:
        sub = _entry_path(entry, path.parent)
        out = OmegaConf.merge(out, cfg if sub is None else _compose_file(sub, (*seen, path)))
    return out  # type: ignore[return-value]


def compose_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Load ``path`` with its defaults list, then apply overrides (``key=value`` / ``--key value``). Overrides must
    name keys the composed config has, with values of their kind (``apply_overrides(strict=True)``): a misspelt key
    would otherwise train silently on the default."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    return apply_overrides(_compose_file(path), overrides, strict=True)
