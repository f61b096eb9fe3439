"""Rotation helpers in plain numpy (no pybullet client needed, so the oracle runs on recorded infos).

Conventions are pybullet's and CALVIN's: quaternions are (x, y, z, w); Euler angles are extrinsic x-y-z
(roll, pitch, yaw), i.e. R = Rz(yaw) @ Ry(pitch) @ Rx(roll) — the same as scipy's ``as_euler("xyz")``.
"""

from __future__ import annotations

import numpy as np


def wrap_angle(a):
    """Wrap to [-pi, pi)."""
    return (np.asarray(a, dtype=np.float64) + np.pi) % (2 * np.pi) - np.pi


def quat_to_matrix(q) -> np.ndarray:
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_euler(m) -> np.ndarray:
    """Extrinsic xyz Euler angles (roll, pitch, yaw) of a rotation matrix."""
    m = np.asarray(m, dtype=np.float64)
    sy = -m[2, 0]
    pitch = np.arcsin(np.clip(sy, -1.0, 1.0))
    if abs(sy) < 1 - 1e-9:
        roll = np.arctan2(m[2, 1], m[2, 2])
        yaw = np.arctan2(m[1, 0], m[0, 0])
    else:  # gimbal lock: put everything into yaw
        roll = 0.0
        yaw = np.arctan2(-m[0, 1], m[1, 1])
    return np.array([roll, pitch, yaw])


def relative_rotation_euler_deg(q_start, q_end) -> np.ndarray:
    """Euler xyz (degrees) of ``end * start^-1`` — what CALVIN's rotate_object predicate inspects."""
    rel = quat_to_matrix(q_end) @ quat_to_matrix(q_start).T
    return np.degrees(matrix_to_euler(rel))


def yaw_of_quat(q) -> float:
    """Heading of the body x axis projected on the table plane."""
    m = quat_to_matrix(q)
    return float(np.arctan2(m[1, 0], m[0, 0]))
