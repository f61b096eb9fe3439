"""Percentile normalisation statistics and the relative-action representation of custom robots (xbot-style).

The original (vpp_reference §9.1, §9.2, §9.5):

* statistics are the 1st and 99th percentiles (``np.percentile``, per dimension) of the current states and of the
  relative actions ``actions - current_state`` (8 future rows minus the current row, all 38 dimensions);
* ``normalize_bound``: ``2 * (x - p1) / (p99 - p1 + 1e-8) - 1`` clipped to [-1, 1];
* de-normalisation: ``(x + 1) / 2 * (p99 - p1) + p1`` (the 1e-8 is not undone, so a round trip is exact to ~1e-8
  relative, which is what the original does too).

Relative actions come in two flavours (``relative_mode``):

* ``"componentwise"`` (the original, and the default): every dimension, quaternion components included, is a plain
  difference ``target - current``; the inverse is a plain sum. Adding quaternion components does not give a unit
  quaternion; the original sent the sum to the robot as is.
* ``"compose"``: the arm poses (7-D ``xyz + quaternion`` blocks, ``pose_slices``, xbot: ``[0:7]`` right arm and
  ``[19:26]`` left arm) use a position difference plus a *rotation* delta ``q_delta = q_target * conj(q_current)``
  (Hamilton product, world-frame delta, sign chosen so that ``w >= 0``); the inverse is
  ``q_target = q_delta * q_current`` (normalised). All other dimensions stay plain differences. A model must be
  trained with the mode it is deployed with: the statistics file records it.

The quaternion memory layout is a parameter (``quat_order``: ``"xyzw"``, the ROS/scipy layout and our default, or
``"wxyz"``); the original data does not say which one the xbot teleop recorder used.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike

EPS = 1e-8
RELATIVE_MODES = ("componentwise", "compose")
QUAT_ORDERS = ("xyzw", "wxyz")
# xbot 38-D layout: right arm pose (xyz + quat) [0:7], right hand [7:19], left arm pose [19:26], left hand [26:38].
XBOT_ARM_POSE_SLICES: tuple[tuple[int, int], ...] = ((0, 7), (19, 26))
# a numpy array or a torch tensor (torch is not imported here); the result has the input's type
ArrayT = TypeVar("ArrayT")


# ----------------------------------------------------------------------------------------------------------------------
# percentile bounds and bound normalisation


def percentile_bounds(x: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension ``low``/``high`` percentiles (``np.percentile``, linear interpolation) over every leading axis."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 0 or x.shape[-1] == 0 or x.size == 0:
        raise ValueError(f"percentile_bounds needs a non-empty (..., D) array, got shape {x.shape}")
    flat = x.reshape(-1, x.shape[-1])
    return np.percentile(flat, low, axis=0), np.percentile(flat, high, axis=0)


def _as_like(bound, x):
    """Bounds as an array/tensor that broadcasts against ``x`` (numpy or torch), on x's device and dtype."""
    if _is_torch(x):
        import torch

        return torch.as_tensor(np.asarray(bound), dtype=x.dtype, device=x.device)
    return np.asarray(bound, dtype=np.result_type(np.asarray(x).dtype, np.float32))


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def normalize_bound(x: ArrayT, low: ArrayLike, high: ArrayLike, clip: bool = True) -> ArrayT:
    """``2 * (x - low) / (high - low + 1e-8) - 1``, clipped to [-1, 1]. Works on numpy arrays and torch tensors."""
    lo, hi = _as_like(low, x), _as_like(high, x)
    y = 2.0 * (x - lo) / (hi - lo + EPS) - 1.0
    if clip:
        y = y.clamp(-1.0, 1.0) if _is_torch(y) else np.clip(y, -1.0, 1.0)
    return y


def denormalize_bound(x: ArrayT, low: ArrayLike, high: ArrayLike) -> ArrayT:
    """Inverse of :func:`normalize_bound` (inside the bounds): ``(x + 1) / 2 * (high - low) + low``."""
    lo, hi = _as_like(low, x), _as_like(high, x)
    return (x + 1.0) / 2.0 * (hi - lo) + lo


# ----------------------------------------------------------------------------------------------------------------------
# statistics file


_REQUIRED = ("state_01", "state_99", "action_01", "action_99")
_OPTIONAL = ("relative_mode", "quat_order", "pose_slices", "meta")


@dataclass
class Stats:
    """1st/99th percentile bounds of states and relative actions, plus how the relative actions were formed.

    Saved as JSON ``{state_01, state_99, action_01, action_99, relative_mode, quat_order, pose_slices, meta}``; a file
    with only the four original keys (as the original ``step2_prepare_json.py`` wrote) loads as componentwise.
    """

    state_01: np.ndarray
    state_99: np.ndarray
    action_01: np.ndarray
    action_99: np.ndarray
    relative_mode: str = "componentwise"
    quat_order: str = "xyzw"
    pose_slices: tuple[tuple[int, int], ...] = XBOT_ARM_POSE_SLICES
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # -- construction / io ---------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "stats") -> Stats:
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a JSON object with keys {list(_REQUIRED)}, got {type(d).__name__}")
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise ValueError(f"{source}: missing field(s) {missing}; a stats file needs {list(_REQUIRED)}")
        unknown = sorted(set(d) - set(_REQUIRED) - set(_OPTIONAL))
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {unknown}; allowed: {list(_REQUIRED + _OPTIONAL)}")
        kwargs: dict[str, Any] = {}
        for k in _REQUIRED:
            try:
                kwargs[k] = np.asarray(d[k], dtype=np.float64).reshape(-1)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{source}: field '{k}' must be a list of numbers ({e})") from None
        for k in ("relative_mode", "quat_order", "meta"):
            if k in d:
                kwargs[k] = d[k]
        if "pose_slices" in d:
            try:
                kwargs["pose_slices"] = tuple((int(a), int(b)) for a, b in d["pose_slices"])
            except (TypeError, ValueError):
                raise ValueError(f"{source}: field 'pose_slices' must be a list of [start, stop] pairs") from None
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> Stats:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"normalisation stats file not found: {path}")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return {
            "state_01": self.state_01.tolist(),
            "state_99": self.state_99.tolist(),
            "action_01": self.action_01.tolist(),
            "action_99": self.action_99.tolist(),
            "relative_mode": self.relative_mode,
            "quat_order": self.quat_order,
            "pose_slices": [list(s) for s in self.pose_slices],
            "meta": self.meta,
        }

    def save(self, path: str | Path) -> None:
        from vpp_core.io import atomic_json_dump

        atomic_json_dump(self.to_dict(), path)

    # -- checks ----------------------------------------------------------------------------------------------------
    @property
    def state_dim(self) -> int:
        return int(self.state_01.shape[0])

    @property
    def action_dim(self) -> int:
        return int(self.action_01.shape[0])

    def validate(self) -> None:
        for lo_name, hi_name in (("state_01", "state_99"), ("action_01", "action_99")):
            lo = np.asarray(getattr(self, lo_name), dtype=np.float64).reshape(-1)
            hi = np.asarray(getattr(self, hi_name), dtype=np.float64).reshape(-1)
            setattr(self, lo_name, lo)
            setattr(self, hi_name, hi)
            if lo.shape != hi.shape or lo.size == 0:
                raise ValueError(f"'{lo_name}' and '{hi_name}' must be non-empty and of equal length, "
                                 f"got {lo.shape[0]} and {hi.shape[0]}")
            if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
                raise ValueError(f"'{lo_name}'/'{hi_name}' contain non-finite values")
            bad = np.nonzero(hi < lo)[0]
            if bad.size:
                raise ValueError(f"'{hi_name}' < '{lo_name}' at dimension(s) {bad.tolist()}")
        check_relative_mode(self.relative_mode, self.quat_order)
        self.pose_slices = tuple((int(a), int(b)) for a, b in self.pose_slices)
        if self.relative_mode == "compose":
            _check_pose_slices(self.pose_slices, self.action_dim)
        if not isinstance(self.meta, dict):
            raise ValueError(f"'meta' must be a JSON object, got {type(self.meta).__name__}")

    # -- normalisation helpers -------------------------------------------------------------------------------------
    def normalize_state(self, x: ArrayT, clip: bool = True) -> ArrayT:
        return normalize_bound(x, self.state_01, self.state_99, clip=clip)

    def denormalize_state(self, x: ArrayT) -> ArrayT:
        return denormalize_bound(x, self.state_01, self.state_99)

    def normalize_action(self, x: ArrayT, clip: bool = True) -> ArrayT:
        return normalize_bound(x, self.action_01, self.action_99, clip=clip)

    def denormalize_action(self, x: ArrayT) -> ArrayT:
        return denormalize_bound(x, self.action_01, self.action_99)


def compute_stats(states: np.ndarray, relative: np.ndarray, low: float = 1.0, high: float = 99.0,
                  **kwargs: Any) -> Stats:
    """Stats from current states (N, D) and relative actions (N, L, A) (any leading shape; last axis = dimension)."""
    s01, s99 = percentile_bounds(states, low, high)
    a01, a99 = percentile_bounds(relative, low, high)
    return Stats(state_01=s01, state_99=s99, action_01=a01, action_99=a99, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# quaternions and relative actions


def check_relative_mode(mode: str, quat_order: str = "xyzw") -> None:
    if mode not in RELATIVE_MODES:
        raise ValueError(f"relative/quaternion mode must be one of {RELATIVE_MODES}, got {mode!r}")
    if quat_order not in QUAT_ORDERS:
        raise ValueError(f"quat_order must be one of {QUAT_ORDERS}, got {quat_order!r}")


def _check_pose_slices(pose_slices: Sequence[tuple[int, int]], dim: int) -> None:
    for a, b in pose_slices:
        if b - a != 7 or a < 0 or b > dim:
            raise ValueError(f"pose slice [{a}:{b}] must be a 7-D xyz+quaternion block inside 0..{dim}")


def quat_multiply_wxyz(q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """Hamilton product q1 * q2 of (..., 4) quaternions in (w, x, y, z) layout."""
    w1, x1, y1, z1 = np.moveaxis(q1, -1, 0)
    w2, x2, y2, z2 = np.moveaxis(q2, -1, 0)
    return np.stack(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ],
        axis=-1,
    )


def _to_wxyz(q: np.ndarray, order: str) -> np.ndarray:
    return q if order == "wxyz" else q[..., [3, 0, 1, 2]]


def _from_wxyz(q: np.ndarray, order: str) -> np.ndarray:
    return q if order == "wxyz" else q[..., [1, 2, 3, 0]]


def _unit(q: np.ndarray, what: str) -> np.ndarray:
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(n < 1e-6):
        raise ValueError(f"{what}: quaternion with (near) zero norm; with relative_mode='compose' the rotation part "
                         "must be a rotation (was the model trained with componentwise deltas?)")
    return q / n


def _conj_wxyz(q: np.ndarray) -> np.ndarray:
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def _prepare(actions, state):
    actions = np.asarray(actions, dtype=np.float64)
    state = np.asarray(state, dtype=np.float64)
    if actions.ndim < 1 or state.shape[-1] != actions.shape[-1]:
        raise ValueError(f"actions (..., {actions.shape[-1] if actions.ndim else '?'}) and state "
                         f"(..., {state.shape[-1]}) must have the same last dimension")
    if state.ndim == actions.ndim - 1:  # (..., D) -> (..., 1, D)
        state = state[..., None, :]
    return actions, state


def relative_actions(actions: ArrayLike, state: ArrayLike, mode: str = "componentwise", quat_order: str = "xyzw",
                     pose_slices: Sequence[tuple[int, int]] = XBOT_ARM_POSE_SLICES) -> np.ndarray:
    """Absolute targets (..., L, D) and the current state (..., D) or (..., 1, D) -> relative actions (..., L, D)."""
    check_relative_mode(mode, quat_order)
    actions, state = _prepare(actions, state)
    rel = actions - state
    if mode == "compose":
        _check_pose_slices(pose_slices, actions.shape[-1])
        for a, _ in pose_slices:
            q_t = _unit(_to_wxyz(actions[..., a + 3:a + 7], quat_order), "target")
            q_s = _unit(_to_wxyz(state[..., a + 3:a + 7], quat_order), "state")
            q_s = np.broadcast_to(q_s, q_t.shape)
            q_d = quat_multiply_wxyz(q_t, _conj_wxyz(q_s))
            q_d = np.where(q_d[..., :1] < 0, -q_d, q_d)  # canonical sign: w >= 0 (delta near identity)
            rel[..., a + 3:a + 7] = _from_wxyz(q_d, quat_order)
    return rel


def absolute_actions(delta: ArrayLike, state: ArrayLike, mode: str = "componentwise", quat_order: str = "xyzw",
                     pose_slices: Sequence[tuple[int, int]] = XBOT_ARM_POSE_SLICES) -> np.ndarray:
    """Inverse of :func:`relative_actions`: raw (de-normalised) deltas (..., L, D) + current state -> targets.

    ``componentwise`` is the original's plain sum (quaternions are *not* re-normalised). ``compose`` returns unit
    quaternions with the sign of the current state's quaternion (no hemisphere flips between consecutive commands).
    """
    check_relative_mode(mode, quat_order)
    delta, state = _prepare(delta, state)
    out = delta + state
    if mode == "compose":
        _check_pose_slices(pose_slices, delta.shape[-1])
        for a, _ in pose_slices:
            q_d = _unit(_to_wxyz(delta[..., a + 3:a + 7], quat_order), "predicted rotation delta")
            q_s = _unit(_to_wxyz(state[..., a + 3:a + 7], quat_order), "state")
            q_s = np.broadcast_to(q_s, q_d.shape)
            q_t = quat_multiply_wxyz(q_d, q_s)
            flip = np.sum(q_t * q_s, axis=-1, keepdims=True) < 0
            q_t = np.where(flip, -q_t, q_t)
            out[..., a + 3:a + 7] = _from_wxyz(q_t, quat_order)
    return out


def axis_angle_quat_wxyz(axis: Sequence[float], angle: float) -> np.ndarray:
    """Unit quaternion (w, x, y, z) for a rotation of ``angle`` radians about ``axis`` (small helper for tests/docs)."""
    ax = np.asarray(axis, dtype=np.float64)
    ax = ax / np.linalg.norm(ax)
    return np.concatenate([[math.cos(angle / 2)], math.sin(angle / 2) * ax])
