"""Scripted expert: waypoints in TCP space turned into CALVIN 7-D relative actions.

The expert reads the simulator state (privileged: block poses, joint positions) when a task starts and during it,
plans a few waypoints (approach, contact, manipulation, retreat) and tracks them through the env's own internal
target pose, so every action it emits is a valid relative action in [-1, 1] with gripper +-1. Each task ends with
the arm raised above the scene (gripper open, except for lift_* which ends holding the block up).

Usage::

    expert = ScriptedExpert(env)
    for action in expert.actions("push_red_block_left"):
        obs, _, _, info = env.step(action)
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.typing import ArrayLike

from vpp_sim import assets as A
from vpp_sim.env import MAX_REL_ORN, MAX_REL_POS, TabletopEnv
from vpp_sim.geometry import wrap_angle, yaw_of_quat

OPEN, CLOSE = 1.0, -1.0
SAFE_Z = 0.2  # travel height above the table
RETREAT_Z = 0.24
GRASP_Z = 0.024  # TCP height to grasp a block lying on the table
PUSH_Z = 0.022
FAST, SLOW = 0.6, 0.3  # fractions of the maximal relative action
# yaw window the hand can rotate in (joint 7 limits), the centre of the comfortable range
YAW_CENTER = 0.8
YAW_FEASIBLE = (-1.9, 3.5)


class ExpertFailure(RuntimeError):
    """The expert cannot plan this task from the current state (e.g. the block is not on the table)."""


class ScriptedExpert:
    def __init__(self, env: TabletopEnv, rng: np.random.Generator | None = None, max_steps_per_move: int = 120):
        self.env = env
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.max_steps_per_move = max_steps_per_move
        self.grip = OPEN

    # ---------------------------------------------------------------------------------------------- primitives
    def move(self, pos: ArrayLike, yaw: float | None = None, grip: float | None = None, speed: float = FAST,
             tol: float = 0.006, settle: bool = True) -> Iterator[np.ndarray]:
        """Drive the env's target pose to (pos, yaw) with bounded steps, then wait until the TCP got there."""
        env = self.env
        if grip is not None:
            self.grip = grip
        pos = np.asarray(pos, dtype=np.float64)
        for _ in range(self.max_steps_per_move):
            d_pos = pos - env.target_pos
            want = np.array([np.pi, 0.0, env.target_orn[2] if yaw is None else yaw])
            d_orn = wrap_angle(want - env.target_orn)
            at_target = np.linalg.norm(d_pos) < 1e-4 and np.abs(d_orn).max() < 1e-3
            if at_target:
                if not settle or np.linalg.norm(env.tcp_pose()[0] - pos) < tol:
                    return
            a_pos = d_pos / MAX_REL_POS
            norm = np.linalg.norm(a_pos)
            if norm > speed:
                a_pos *= speed / norm
            a_orn = np.clip(d_orn / MAX_REL_ORN, -speed * 1.5, speed * 1.5)
            yield np.concatenate([a_pos, a_orn, [self.grip]])

    def hold(self, steps: int, grip: float | None = None) -> Iterator[np.ndarray]:
        if grip is not None:
            self.grip = grip
        for _ in range(steps):
            yield np.array([0, 0, 0, 0, 0, 0, self.grip], dtype=np.float64)

    def retreat(self, grip: float = OPEN) -> Iterator[np.ndarray]:
        p = self.env.target_pos
        yield from self.move((p[0], p[1], max(p[2] + 0.02, SAFE_Z)), grip=grip, speed=SLOW, settle=False)
        yield from self.move((0.6 * p[0], 0.6 * p[1] - 0.1, RETREAT_Z), grip=grip, settle=False)

    # ---------------------------------------------------------------------------------------------- state
    def _block(self, color: str) -> tuple[np.ndarray, float]:
        uid = self.env.block_uids[f"block_{color}"]
        pos, orn = self.env.p.getBasePositionAndOrientation(uid)
        return np.array(pos), yaw_of_quat(orn)

    def _grasp_yaw(self, block_yaw: float, rotation: float = 0.0) -> float:
        """Gripper yaw that closes across the block's short side; both ends of a rotation stay feasible."""
        candidates = [block_yaw + k * np.pi for k in range(-3, 4)]
        lo, hi = YAW_FEASIBLE
        ok = [c for c in candidates if lo <= min(c, c + rotation) and max(c, c + rotation) <= hi]
        pool = ok or candidates
        return min(pool, key=lambda c: abs(c + rotation / 2 - YAW_CENTER))

    def _joint(self, name: str) -> float:
        return self.env.p.getJointState(self.env.table_uid, self.env.joint_ids[name])[0]

    # ---------------------------------------------------------------------------------------------- tasks
    def actions(self, task: str) -> Iterator[np.ndarray]:
        parts = task.split("_")
        if task.startswith(("push_", "rotate_")) and task.endswith(("_right", "_left")):
            kind, color, direction = parts[0], parts[1], parts[-1]
            return self.push(color, direction) if kind == "push" else self.rotate(color, direction)
        if task.startswith("lift_") and task.endswith("_block_table"):
            return self.lift(parts[1])
        if task in ("move_slider_left", "move_slider_right"):
            return self.slide(parts[-1])
        if task in ("open_drawer", "close_drawer"):
            return self.drawer(task == "open_drawer")
        if task in ("turn_on_led", "turn_off_led"):
            return self.press_button()
        if task in ("turn_on_lightbulb", "turn_off_lightbulb"):
            return self.switch(task == "turn_on_lightbulb")
        raise ExpertFailure(f"ScriptedExpert: no script for task {task!r}")

    def push(self, color: str, direction: str) -> Iterator[np.ndarray]:
        s = 1.0 if direction == "right" else -1.0
        pos, yaw = self._block(color)
        hx, hy, _ = A.BLOCK_HALF[f"block_{color}"]
        extent_x = abs(hx * np.cos(yaw)) + abs(hy * np.sin(yaw))
        start_x = pos[0] - s * (extent_x + 0.03)
        y = pos[1]
        yaw_g = np.pi / 2 + self.rng.uniform(-0.15, 0.15)
        yield from self.move((start_x, y, SAFE_Z - 0.08), yaw_g, CLOSE)
        yield from self.move((start_x, y, PUSH_Z + 0.03), speed=SLOW)
        yield from self.move((start_x, y, PUSH_Z), speed=SLOW)
        yield from self.move((pos[0] + s * (0.13 - extent_x), y, PUSH_Z), speed=SLOW * 1.2, settle=True,
                             tol=0.01)
        yield from self.move((self.env.target_pos[0] - s * 0.02, y, PUSH_Z + 0.01), speed=SLOW, settle=False)
        yield from self.retreat()

    def _pick(self, color: str, rotation: float = 0.0) -> Iterator[np.ndarray]:
        pos, yaw = self._block(color)
        if pos[2] > 0.05:
            raise ExpertFailure(f"ScriptedExpert: the {color} block is not on the table (z={pos[2]:.3f})")
        yaw_g = self._grasp_yaw(yaw, rotation)
        yield from self.move((pos[0], pos[1], SAFE_Z - 0.06), yaw_g, OPEN)
        pos, _ = self._block(color)  # the approach may have nudged it
        yield from self.move((pos[0], pos[1], GRASP_Z + 0.04), yaw_g, speed=SLOW)
        yield from self.move((pos[0], pos[1], GRASP_Z), yaw_g, speed=SLOW)
        yield from self.hold(10, CLOSE)

    def lift(self, color: str) -> Iterator[np.ndarray]:
        yield from self._pick(color)
        p = self.env.target_pos
        yield from self.move((p[0], p[1], GRASP_Z + 0.06), speed=SLOW, settle=False)
        yield from self.move((p[0] * 0.8, p[1] - 0.03, GRASP_Z + 0.14), speed=SLOW)
        yield from self.hold(6)

    def rotate(self, color: str, direction: str) -> Iterator[np.ndarray]:
        angle = (-1.0 if direction == "right" else 1.0) * (np.pi / 2 + self.rng.uniform(-0.15, 0.15))
        yield from self._pick(color, rotation=angle)
        p = self.env.target_pos.copy()
        yaw0 = self.env.target_orn[2]
        yield from self.move((p[0], p[1], GRASP_Z + 0.03), speed=SLOW, settle=False)
        yield from self.move((p[0], p[1], GRASP_Z + 0.03), yaw0 + angle, speed=SLOW)
        yield from self.move((p[0], p[1], GRASP_Z + 0.004), speed=SLOW, settle=False)
        yield from self.hold(8, OPEN)
        yield from self.move((p[0], p[1], GRASP_Z + 0.06), speed=SLOW, settle=False)
        yield from self.retreat()

    def slide(self, direction: str) -> Iterator[np.ndarray]:
        # door centre at DOOR_X0 - joint; "left" pushes the handle towards -x (joint grows)
        s = -1.0 if direction == "left" else 1.0
        joint = self._joint("base__slide")
        handle_x = A.DOOR_X0 - joint
        y = A.DOOR_Y[0] - A.DOOR_HANDLE_SIZE[1] / 2
        z = A.DOOR_HANDLE_Z + 0.005
        start_x = handle_x - s * (A.DOOR_HANDLE_SIZE[0] / 2 + 0.03)
        travel = (0.21 if direction == "left" else -0.21)
        goal_joint = float(np.clip(joint + travel, A.SLIDE_RANGE[0] + 0.01, A.SLIDE_RANGE[1] - 0.01))
        end_x = A.DOOR_X0 - goal_joint - s * (A.DOOR_HANDLE_SIZE[0] / 2 + 0.012)
        yield from self.move((start_x, y - 0.03, SAFE_Z), np.pi / 2, CLOSE)
        yield from self.move((start_x, y, z), speed=SLOW)
        yield from self.move((end_x, y, z), speed=SLOW * 1.2, tol=0.015)
        yield from self.move((end_x + s * 0.02, y - 0.04, z + 0.02), speed=SLOW, settle=False)
        yield from self.retreat()

    def drawer(self, open_it: bool) -> Iterator[np.ndarray]:
        joint = self._joint("base__drawer")
        x = A.DRAWER_X_CENTER + self.rng.uniform(-0.02, 0.02)
        y = A.DRAWER_FRONT_Y - joint
        z = A.DRAWER_HANDLE_Z
        goal_joint = A.DRAWER_RANGE[1] - 0.01 if open_it else A.DRAWER_RANGE[0] + 0.005
        y_goal = A.DRAWER_FRONT_Y - goal_joint
        yield from self.move((x, y, SAFE_Z + 0.04), 0.0, OPEN)
        yield from self.move((x, y, z + 0.03), 0.0, speed=SLOW)
        yield from self.move((x, y, z), 0.0, speed=SLOW)
        yield from self.hold(8, CLOSE)
        yield from self.move((x, y_goal, z), speed=SLOW * 1.2, tol=0.015)
        yield from self.hold(4, OPEN)
        yield from self.move((x, y_goal, z + 0.08), speed=SLOW, settle=False)
        yield from self.retreat()

    def press_button(self) -> Iterator[np.ndarray]:
        bx, by = A.BUTTON_POS
        bx += self.rng.uniform(-0.008, 0.008)
        by += self.rng.uniform(-0.008, 0.008)
        top = A.BUTTON_BASE_H + A.BUTTON_CAP_H
        yield from self.move((bx, by, top + 0.08), np.pi / 2, CLOSE)
        yield from self.move((bx, by, top + 0.03), speed=SLOW)
        yield from self.move((bx, by, top - 0.007), speed=SLOW, tol=0.004)
        yield from self.hold(3)
        yield from self.move((bx, by, top + 0.06), speed=SLOW, settle=False)
        yield from self.retreat()

    def switch(self, turn_on: bool) -> Iterator[np.ndarray]:
        sx, sy = A.SWITCH_POS
        joint = self._joint("base__switch")
        lever_y = sy + joint
        s = 1.0 if turn_on else -1.0
        z = A.SWITCH_BASE_H + 0.045
        start_y = lever_y - s * (A.SWITCH_LEVER[1] / 2 + 0.025)
        goal = A.SWITCH_RANGE[1] if turn_on else A.SWITCH_RANGE[0]
        end_y = sy + goal - s * (A.SWITCH_LEVER[1] / 2 + 0.012)
        yield from self.move((sx, start_y, z + 0.1), np.pi / 2, CLOSE)
        yield from self.move((sx, start_y, z), speed=SLOW)
        yield from self.move((sx, end_y, z), speed=SLOW, tol=0.012)
        yield from self.move((sx, end_y - s * 0.02, z + 0.06), speed=SLOW, settle=False)
        yield from self.retreat()
