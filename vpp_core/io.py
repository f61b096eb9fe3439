"""Atomic file writes: a crash or Ctrl-C never leaves a half-written checkpoint, latent or result file behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; move it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would have
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb") as fh:  # on disk before the rename: after a power loss the name never holds an empty file
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the `.NAME.tmp` files and folders that a killed run left in `folder` (this module's `atomic_write` and
    the trainers' checkpoint folders use that pattern); returns what it removed. Call it where no other process is
    writing into `folder`, before the run writes anything."""
    folder = Path(folder)
    stale = sorted(folder.glob(".*.tmp")) if folder.is_dir() else []
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return stale


REPLACED_SUFFIX = ".old"


def replace_folder(tmp: str | Path, final: str | Path) -> None:
    """Rename the completed folder `tmp` to `final`, replacing an older `final`: that one is renamed to `NAME.old`
    first and removed last, so a run killed in between leaves a complete copy under one of the two names, which
    `restore_replaced_folders` puts back."""
    tmp, final = Path(tmp), Path(final)
    if not final.exists():
        os.replace(tmp, final)
        return
    old = final.with_name(final.name + REPLACED_SUFFIX)
    if old.exists():
        shutil.rmtree(old)
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def restore_replaced_folder(final: str | Path) -> bool:
    """Undo what a kill inside `replace_folder(..., final)` left: a `final.old` is renamed back when `final` is
    missing (a pointer may name it), and removed when `final` exists (the replacement was complete). Returns whether
    it renamed one back."""
    final = Path(final)
    old = final.with_name(final.name + REPLACED_SUFFIX)
    if not old.exists():
        return False
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        return False
    os.replace(old, final)
    return True


def restore_replaced_folders(folder: str | Path) -> list[Path]:
    """`restore_replaced_folder` for every `NAME.old` in `folder`; returns the folders renamed back."""
    olds = sorted(Path(folder).glob(f"*{REPLACED_SUFFIX}")) if Path(folder).is_dir() else []
    finals = [old.with_name(old.name[: -len(REPLACED_SUFFIX)]) for old in olds]
    return [final for final in finals if restore_replaced_folder(final)]


def recover_from_a_kill(folder: str | Path) -> None:
    """Before a resumed run writes into `folder`: put back what a kill inside `replace_folder` left, then delete the
    `.NAME.tmp` leftovers (`restore_replaced_folders`, `remove_stale_temporaries`)."""
    restore_replaced_folders(folder)
    remove_stale_temporaries(folder)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def atomic_json_dump(obj: Any, path: str | Path, indent: int | None = 2) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent))


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    from safetensors.torch import save_file

    with atomic_write(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def drop_jsonl_records_after(path: str | Path, step: int, key: str = "step") -> int:
    """Rewrite a metrics log without its records of steps after `step`, and without a last line cut short; returns
    how many it dropped. A run resumed from the checkpoint of `step` logs the later steps again, and a log holding
    both would count them twice."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the record being written when the run was killed
            dropped += 1
            continue
        if isinstance(record, dict) and isinstance(record.get(key), int) and record[key] > step:
            dropped += 1
            continue
        kept.append(line + "\n")
    if dropped:
        with atomic_write(path) as tmp:
            tmp.write_text("".join(kept), encoding="utf-8")
    return dropped


def append_jsonl(record: dict[str, Any], path: str | Path) -> None:
    """Append one record and fsync, so a crash loses at most the record being written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
