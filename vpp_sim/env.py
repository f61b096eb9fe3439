"""The built-in tabletop simulator with calvin_env's interface (PlayTableSimEnv semantics).

``TabletopEnv.reset(robot_obs=None, scene_obs=None) -> obs``, ``step(action) -> (obs, 0, False, info)``,
``get_obs()``, ``get_info()``. Physics at 240 Hz with 8 substeps per step (30 Hz control); 7-D relative actions
(position x 0.02 m, Euler x 0.05 rad) are added to an internal target pose that accumulates across steps and is
re-initialised by ``reset``; gripper -1 closes, +1 opens (asserted). See docs/SIMULATOR.md for every deviation.
"""

from __future__ import annotations

import numpy as np
import pybullet as pb
import pybullet_data
from numpy.typing import ArrayLike
from pybullet_utils.bullet_client import BulletClient

from vpp_sim import assets as A

ACTION_REPEAT = 8  # 240 Hz physics / 30 Hz control
BULLET_TIME_STEP = 1.0 / 240.0
MAX_REL_POS = 0.02
MAX_REL_ORN = 0.05

ARM_JOINTS = list(range(7))
FINGER_JOINTS = [9, 10]
TCP_LINK = 11  # panda_grasptarget
HAND_LINK = 8
ARM_FORCE = 200.0
ARM_MAX_VELOCITY = 2.0
FINGER_OPEN = 0.04
FINGER_FORCE_OPEN = 10.0
FINGER_FORCE_CLOSE = 60.0
# Franka joint limits, as calvin_env clips the IK solution
JOINT_LOWER = np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973])
JOINT_UPPER = np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973])

# Neutral pose: TCP above the middle of the table, pointing down, fingers spread along world x.
NEUTRAL_TCP_POS = np.array([0.0, -0.25, 0.3])
NEUTRAL_JOINTS = np.array([0.0, -0.592405, 0.0, -2.710236, 0.0, 2.117688, 0.785359])

# The internal target position is clipped to this box (calvin_env does not clip; documented deviation).
WORKSPACE_LOW = np.array([-0.65, -0.6, -0.005])
WORKSPACE_HIGH = np.array([0.72, 0.36, 0.6])

BUTTON_THRESHOLD = (A.BUTTON_RANGE[0] + A.BUTTON_RANGE[1]) / 2
SWITCH_THRESHOLD = (A.SWITCH_RANGE[0] + A.SWITCH_RANGE[1]) / 2

# Static camera (fixed), gripper camera (attached to the hand).
STATIC_EYE = (1.0, -1.2, 1.6)
STATIC_TARGET = (-0.02, -0.06, 0.0)
STATIC_FOV = 36.0
GRIPPER_FOV = 75.0
GRIPPER_CAM_OFFSET = (0.06, 0.0, 0.025)  # in the hand frame (hand z points towards the fingers)
GRIPPER_CAM_LOOK = (0.0, 0.0, 0.22)

SCENE_OBS_DIM = 24
ROBOT_OBS_DIM = 15


class TabletopEnv:
    """Franka Panda on a table with three blocks, a sliding door, a drawer, a button + LED and a switch + bulb."""

    def __init__(
        self,
        seed: int = 0,
        cameras: tuple[str, ...] = ("static", "gripper"),
        static_size: int = 200,
        gripper_size: int = 84,
        asset_dir: str | None = None,
    ):
        for cam in cameras:
            if cam not in ("static", "gripper"):
                raise ValueError(f"TabletopEnv: unknown camera {cam!r}; choose from 'static', 'gripper'")
        self.cameras = tuple(cameras)
        self.static_size = int(static_size)
        self.gripper_size = int(gripper_size)
        self.seed = int(seed)
        self.np_random = np.random.default_rng(self.seed)
        self.p = BulletClient(connection_mode=pb.DIRECT)
        self._load(A.write_assets(asset_dir))
        self._initial_state = self.p.saveState()
        self.target_pos = np.zeros(3)
        self.target_orn = np.zeros(3)
        self.gripper_action = 1.0
        self.led_state = 0
        self.light_state = 0
        self._button_pressed = False
        self._switch_on = False
        self.reset()

    # ------------------------------------------------------------------------------------------------ loading
    def _load(self, paths: dict[str, str]) -> None:
        p = self.p
        p.setPhysicsEngineParameter(deterministicOverlappingPairs=1)
        p.setTimeStep(BULLET_TIME_STEP)
        p.setGravity(0, 0, -9.8)
        p.setAdditionalSearchPath(pybullet_data.getDataPath())
        self.table_uid = p.loadURDF(paths["table"], useFixedBase=True, flags=pb.URDF_USE_INERTIA_FROM_FILE)
        self.robot_uid = p.loadURDF(
            paths["panda"],
            basePosition=A.ROBOT_BASE_POS,
            baseOrientation=pb.getQuaternionFromEuler((0, 0, A.ROBOT_BASE_YAW)),
            useFixedBase=True,
        )
        self.block_uids = {}
        for name in A.BLOCK_NAMES:
            self.block_uids[name] = p.loadURDF(paths[name], basePosition=(0, 0, 0.5))
        # the robot is mounted on the table: its base never reports a contact with it
        for link in (-1, 0):
            p.setCollisionFilterPair(self.robot_uid, self.table_uid, link, -1, 0)
        for j in FINGER_JOINTS:
            p.changeDynamics(self.robot_uid, j, lateralFriction=1.5, spinningFriction=0.002)
        for link in (7, HAND_LINK, *FINGER_JOINTS):
            p.changeVisualShape(self.robot_uid, link, rgbaColor=(0.3, 0.3, 0.32, 1.0))
        # passive joints of the table: friction motors (doors, switch) and a spring for the button
        self.joint_ids = {}
        for j in range(p.getNumJoints(self.table_uid)):
            self.joint_ids[p.getJointInfo(self.table_uid, j)[1].decode()] = j
        self._ik_rest = list(NEUTRAL_JOINTS) + [FINGER_OPEN, FINGER_OPEN]
        self._static_view = pb.computeViewMatrix(STATIC_EYE, STATIC_TARGET, (0, 0, 1))
        self._static_proj = pb.computeProjectionMatrixFOV(STATIC_FOV, 1.0, 0.01, 10.0)
        self._gripper_proj = pb.computeProjectionMatrixFOV(GRIPPER_FOV, 1.0, 0.01, 2.0)

    def _set_passive_motors(self) -> None:
        p = self.p
        t = self.table_uid
        for name, force in (("base__slide", 4.0), ("base__drawer", 4.0), ("base__switch", 2.0)):
            p.setJointMotorControl2(t, self.joint_ids[name], pb.VELOCITY_CONTROL, targetVelocity=0, force=force)
        p.setJointMotorControl2(
            t, self.joint_ids["base__button"], pb.POSITION_CONTROL, targetPosition=0.0, force=4.0, positionGain=0.2
        )

    def close(self) -> None:
        if getattr(self, "p", None) is not None:
            try:
                self.p.disconnect()
            except Exception:  # already disconnected, or pybullet torn down at interpreter exit
                pass
            self.p = None

    def __del__(self):
        self.close()

    # ------------------------------------------------------------------------------------------------ reset
    def reset(self, robot_obs: np.ndarray | None = None, scene_obs: np.ndarray | None = None) -> dict:
        """Reset scene then robot (calvin_env order), take one physics step, return the observation."""
        p = self.p
        p.restoreState(self._initial_state)
        self._set_passive_motors()
        if scene_obs is None:
            scene_obs = self.sample_scene_obs()
        self._reset_scene(_as_vector(scene_obs, SCENE_OBS_DIM, "scene_obs"))
        if robot_obs is None:
            joints, width, grip = NEUTRAL_JOINTS, 2 * FINGER_OPEN, 1.0
        else:
            robot_obs = _as_vector(robot_obs, ROBOT_OBS_DIM, "robot_obs")
            joints, width = robot_obs[7:14], robot_obs[6]
            grip = 1.0 if robot_obs[14] >= 0 else -1.0
        self._reset_robot(np.asarray(joints, dtype=np.float64), float(width), grip)
        p.stepSimulation()
        self._update_switch_logic()
        return self.get_obs()

    def _reset_scene(self, scene_obs: np.ndarray) -> None:
        p = self.p
        t = self.table_uid
        lo, hi = A.SLIDE_RANGE
        p.resetJointState(t, self.joint_ids["base__slide"], float(np.clip(scene_obs[0], lo, hi)))
        lo, hi = A.DRAWER_RANGE
        p.resetJointState(t, self.joint_ids["base__drawer"], float(np.clip(scene_obs[1], lo, hi)))
        p.resetJointState(t, self.joint_ids["base__button"], float(np.clip(scene_obs[2], *A.BUTTON_RANGE)))
        p.resetJointState(t, self.joint_ids["base__switch"], float(np.clip(scene_obs[3], *A.SWITCH_RANGE)))
        # calvin_env HEAD semantics: lights take scene_obs[4:6]; the button's toggle state follows the LED
        self.light_state = int(scene_obs[4] > 0.5)
        self.led_state = int(scene_obs[5] > 0.5)
        self._button_pressed = scene_obs[2] > BUTTON_THRESHOLD
        self._switch_on = scene_obs[3] > SWITCH_THRESHOLD
        self._update_light_colours()
        for i, name in enumerate(A.BLOCK_NAMES):
            pos = scene_obs[6 + 6 * i : 9 + 6 * i]
            orn = pb.getQuaternionFromEuler(scene_obs[9 + 6 * i : 12 + 6 * i])
            p.resetBasePositionAndOrientation(self.block_uids[name], pos, orn)
            p.resetBaseVelocity(self.block_uids[name], (0, 0, 0), (0, 0, 0))

    def _reset_robot(self, joints: np.ndarray, width: float, gripper_action: float) -> None:
        p = self.p
        r = self.robot_uid
        for j, q in zip(ARM_JOINTS, joints):
            p.resetJointState(r, j, float(q))
            p.setJointMotorControl2(
                r, j, pb.POSITION_CONTROL, targetPosition=float(q), force=ARM_FORCE, maxVelocity=ARM_MAX_VELOCITY
            )
        finger = float(np.clip(width / 2, 0.0, FINGER_OPEN))
        for j in FINGER_JOINTS:
            p.resetJointState(r, j, finger)
        self.gripper_action = gripper_action
        self._apply_gripper(gripper_action)
        pos, orn = self.tcp_pose()
        self.target_pos = pos.copy()
        self.target_orn = orn.copy()

    def sample_scene_obs(self) -> np.ndarray:
        """A random scene (reset without scene_obs): doors closed, lights off, blocks on the table, no overlap."""
        from vpp_sim.tasks import sample_table_positions

        scene = np.zeros(SCENE_OBS_DIM)
        xy = sample_table_positions(self.np_random, len(A.BLOCK_NAMES))
        for i, name in enumerate(A.BLOCK_NAMES):
            scene[6 + 6 * i : 9 + 6 * i] = (xy[i][0], xy[i][1], A.BLOCK_HALF[name][2])
            scene[11 + 6 * i] = self.np_random.uniform(-np.pi, np.pi)
        return scene

    # ------------------------------------------------------------------------------------------------ step
    def step(self, action: ArrayLike) -> tuple[dict, int, bool, dict]:
        action = np.array(action, dtype=np.float64).reshape(-1)
        if action.shape != (7,) or not np.all(np.isfinite(action)):
            raise ValueError(f"TabletopEnv.step: action must be 7 finite numbers (relative), got {action!r}")
        if action[6] not in (-1.0, 1.0):
            raise ValueError(f"TabletopEnv.step: gripper action must be -1 (close) or +1 (open), got {action[6]}")
        self.target_pos, self.target_orn = self.target_after(action)
        self.gripper_action = float(action[6])
        self._apply_arm(self.target_pos, self.target_orn)
        self._apply_gripper(self.gripper_action)
        for _ in range(ACTION_REPEAT):
            self.p.stepSimulation()
            self._update_switch_logic()  # per substep, so that a quick tap is not missed
        obs = self.get_obs()
        return obs, 0, False, self.get_info()

    def target_after(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The internal target pose (position, Euler orientation) that `step(action)` would set from the current one."""
        pos = np.clip(self.target_pos + action[:3] * MAX_REL_POS, WORKSPACE_LOW, WORKSPACE_HIGH)
        return pos, self.target_orn + action[3:6] * MAX_REL_ORN

    def solve_ik(self, pos: ArrayLike, orn_euler: ArrayLike, iterations: int = 60) -> np.ndarray:
        """Arm joints that put the TCP at (pos, Euler orn); the current robot state is left unchanged."""
        p = self.p
        r = self.robot_uid
        saved = [p.getJointState(r, j)[:2] for j in ARM_JOINTS]
        for j, q in zip(ARM_JOINTS, NEUTRAL_JOINTS):
            p.resetJointState(r, j, float(q))
        quat = pb.getQuaternionFromEuler(list(orn_euler))
        for _ in range(iterations):
            q = p.calculateInverseKinematics(
                r, TCP_LINK, list(pos), quat, lowerLimits=[-7.0] * 9, upperLimits=[7.0] * 9, jointRanges=[7.0] * 9,
                restPoses=self._ik_rest, maxNumIterations=50, residualThreshold=1e-5,
            )
            q = np.clip(np.asarray(q[:7]), JOINT_LOWER, JOINT_UPPER)
            for j, qj in zip(ARM_JOINTS, q):
                p.resetJointState(r, j, float(qj))
        for j, (q0, v0) in zip(ARM_JOINTS, saved):
            p.resetJointState(r, j, q0, v0)
        return q

    def _apply_arm(self, pos: np.ndarray, orn_euler: np.ndarray) -> None:
        p = self.p
        q = p.calculateInverseKinematics(
            self.robot_uid,
            TCP_LINK,
            pos.tolist(),
            pb.getQuaternionFromEuler(orn_euler.tolist()),
            lowerLimits=[-7.0] * 9,
            upperLimits=[7.0] * 9,
            jointRanges=[7.0] * 9,
            restPoses=self._ik_rest,
            maxNumIterations=50,
            residualThreshold=1e-4,
        )
        q = np.clip(np.asarray(q[:7]), JOINT_LOWER, JOINT_UPPER)
        for j, qj in zip(ARM_JOINTS, q):
            p.setJointMotorControl2(
                self.robot_uid, j, pb.POSITION_CONTROL, targetPosition=float(qj), force=ARM_FORCE,
                maxVelocity=ARM_MAX_VELOCITY,
            )

    def _apply_gripper(self, gripper_action: float) -> None:
        target, force = (FINGER_OPEN, FINGER_FORCE_OPEN) if gripper_action > 0 else (0.0, FINGER_FORCE_CLOSE)
        for j in FINGER_JOINTS:
            self.p.setJointMotorControl2(self.robot_uid, j, pb.POSITION_CONTROL, targetPosition=target, force=force)

    def _update_switch_logic(self) -> None:
        """Button: each new press past mid-travel toggles the LED. Switch: above mid-travel = bulb on."""
        t = self.table_uid
        changed = False
        pressed = self.p.getJointState(t, self.joint_ids["base__button"])[0] > BUTTON_THRESHOLD
        if pressed and not self._button_pressed:
            self.led_state = 1 - self.led_state
            changed = True
        self._button_pressed = pressed
        on = self.p.getJointState(t, self.joint_ids["base__switch"])[0] > SWITCH_THRESHOLD
        if on != self._switch_on:
            self.light_state = int(on)
            changed = True
        self._switch_on = on
        if changed:
            self._update_light_colours()

    def _update_light_colours(self) -> None:
        t = self.table_uid
        led = A.LED_ON_RGBA if self.led_state else A.LED_OFF_RGBA
        light = A.LIGHT_ON_RGBA if self.light_state else A.LIGHT_OFF_RGBA
        self.p.changeVisualShape(t, A.TABLE_LINKS["led_link"], rgbaColor=led)
        self.p.changeVisualShape(t, A.TABLE_LINKS["light_link"], shapeIndex=-1, rgbaColor=light)

    # ------------------------------------------------------------------------------------------------ observations
    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        s = self.p.getLinkState(self.robot_uid, TCP_LINK, computeForwardKinematics=True)
        return np.array(s[4]), np.array(pb.getEulerFromQuaternion(s[5]))

    def get_robot_obs(self) -> np.ndarray:
        pos, orn = self.tcp_pose()
        joints = [s[0] for s in self.p.getJointStates(self.robot_uid, ARM_JOINTS + FINGER_JOINTS)]
        width = joints[7] + joints[8]
        return np.concatenate([pos, orn, [width], joints[:7], [self.gripper_action]]).astype(np.float64)

    def get_scene_obs(self) -> np.ndarray:
        p = self.p
        t = self.table_uid
        joints = [p.getJointState(t, self.joint_ids[n])[0] for n in ("base__slide", "base__drawer", "base__button",
                                                                      "base__switch")]
        out = [*joints, float(self.light_state), float(self.led_state)]
        for name in A.BLOCK_NAMES:
            pos, orn = p.getBasePositionAndOrientation(self.block_uids[name])
            out.extend(pos)
            out.extend(pb.getEulerFromQuaternion(orn))
        return np.asarray(out, dtype=np.float64)

    def render(self) -> dict[str, np.ndarray]:
        images = {}
        if "static" in self.cameras:
            images["rgb_static"] = self._render(self.static_size, self._static_view, self._static_proj)
        if "gripper" in self.cameras:
            s = self.p.getLinkState(self.robot_uid, HAND_LINK, computeForwardKinematics=True)
            pos, rot = np.array(s[4]), np.array(pb.getMatrixFromQuaternion(s[5])).reshape(3, 3)
            eye = pos + rot @ np.array(GRIPPER_CAM_OFFSET)
            target = pos + rot @ np.array(GRIPPER_CAM_LOOK)
            up = rot @ np.array([1.0, 0.0, 0.0])
            view = pb.computeViewMatrix(eye.tolist(), target.tolist(), up.tolist())
            images["rgb_gripper"] = self._render(self.gripper_size, view, self._gripper_proj)
        return images

    def _render(self, size: int, view, proj) -> np.ndarray:
        _, _, rgba, _, _ = self.p.getCameraImage(
            size, size, view, proj, renderer=pb.ER_TINY_RENDERER, flags=pb.ER_NO_SEGMENTATION_MASK, shadow=0,
            lightDirection=(0.4, -0.5, 1.0),
        )
        return np.asarray(rgba, dtype=np.uint8).reshape(size, size, 4)[:, :, :3].copy()

    def get_obs(self) -> dict:
        return {"rgb_obs": self.render(), "robot_obs": self.get_robot_obs(), "scene_obs": self.get_scene_obs()}

    def get_info(self) -> dict:
        """calvin_env-like info: robot_info and scene_info (contacts are pybullet contact tuples)."""
        p = self.p
        pos, orn = self.tcp_pose()
        robot_obs = self.get_robot_obs()
        robot_info = {
            "tcp_pos": pos,
            "tcp_orn": orn,
            "gripper_opening_width": robot_obs[6],
            "arm_joint_states": robot_obs[7:14],
            "gripper_action": self.gripper_action,
            "uid": self.robot_uid,
            "contacts": p.getContactPoints(bodyA=self.robot_uid),
        }
        movable = {}
        for name, uid in self.block_uids.items():
            bpos, born = p.getBasePositionAndOrientation(uid)
            lin, ang = p.getBaseVelocity(uid)
            movable[name] = {
                "current_pos": np.array(bpos),
                "current_orn": np.array(born),
                "current_lin_vel": np.array(lin),
                "current_ang_vel": np.array(ang),
                "contacts": p.getContactPoints(bodyA=uid),
                "uid": uid,
            }
        t = self.table_uid
        js = {n: p.getJointState(t, j)[0] for n, j in self.joint_ids.items()}
        scene_info = {
            "fixed_objects": {
                "table": {"uid": t, "contacts": p.getContactPoints(bodyA=t), "links": dict(A.TABLE_LINKS)}
            },
            "movable_objects": movable,
            "doors": {
                "base__slide": {"current_state": js["base__slide"]},
                "base__drawer": {"current_state": js["base__drawer"]},
            },
            "buttons": {"base__button": {"joint_state": js["base__button"], "logical_state": self.led_state}},
            "switches": {"base__switch": {"joint_state": js["base__switch"], "logical_state": int(self._switch_on)}},
            "lights": {"lightbulb": {"logical_state": self.light_state}, "led": {"logical_state": self.led_state}},
        }
        return {"robot_info": robot_info, "scene_info": scene_info}


def _as_vector(x, dim: int, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if arr.shape != (dim,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"TabletopEnv.reset: {name} must be {dim} finite numbers, got shape {arr.shape}")
    return arr
