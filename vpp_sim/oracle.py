"""Task oracle: CALVIN's base predicates (calvin_env/envs/tasks.py) over get_info() dicts.

The predicates, their arguments and thresholds are those of ``new_playtable_tasks.yaml`` (all 34 tasks); they only
read the info dicts, so they run on any env that fills them like calvin_env does (this simulator included).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from vpp_sim.geometry import relative_rotation_euler_deg

BLOCKS = ("block_red", "block_blue", "block_pink")


def _contacts(info: dict, obj: str) -> tuple:
    return info["scene_info"]["movable_objects"][obj]["contacts"]


def _pos(info: dict, obj: str) -> np.ndarray:
    return np.asarray(info["scene_info"]["movable_objects"][obj]["current_pos"], dtype=np.float64)


def rotate_object(start, end, obj_name, z_degrees, x_y_threshold=30, z_threshold=180):
    """Relative rotation end*start^-1 about z beyond z_degrees, small tilt, moved <= 0.1 m, resting on something."""
    start_orn = start["scene_info"]["movable_objects"][obj_name]["current_orn"]
    end_orn = end["scene_info"]["movable_objects"][obj_name]["current_orn"]
    x, y, z = relative_rotation_euler_deg(start_orn, end_orn)
    if np.linalg.norm(_pos(end, obj_name) - _pos(start, obj_name)) > 0.1:
        return False
    robot_uid = start["robot_info"]["uid"]
    end_contacts = {c[2] for c in _contacts(end, obj_name)}
    if not (end_contacts - {robot_uid}):
        return False
    if abs(x) > x_y_threshold or abs(y) > x_y_threshold:
        return False
    if z_degrees > 0:
        return z_degrees < z < z_threshold
    return z_degrees > z > -z_threshold


def push_object(start, end, obj_name, x_direction, y_direction):
    robot_uid = start["robot_info"]["uid"]
    start_contacts = {(c[2], c[4]) for c in _contacts(start, obj_name) if c[2] != robot_uid}
    end_contacts = {(c[2], c[4]) for c in _contacts(end, obj_name) if c[2] != robot_uid}
    if not start_contacts or not end_contacts or (start_contacts - end_contacts):
        return False
    diff = _pos(end, obj_name) - _pos(start, obj_name)
    if x_direction > 0:
        return diff[0] > x_direction
    if x_direction < 0:
        return diff[0] < x_direction
    if y_direction > 0:
        return diff[1] > y_direction
    if y_direction < 0:
        return diff[1] < y_direction
    return False


def lift_object(start, end, obj_name, z_direction, surface_body=None, surface_link=None):
    """Raised by more than z_direction, touching only the robot at the end, resting on the surface at start."""
    robot_uid = start["robot_info"]["uid"]
    start_contacts = {(c[2], c[4]) for c in _contacts(start, obj_name)}
    end_contacts = {c[2] for c in _contacts(end, obj_name)}
    surface_criterion = True
    if surface_body:
        fixed = start["scene_info"]["fixed_objects"][surface_body]
        if surface_link is None:
            surface_criterion = fixed["uid"] in {c[0] for c in start_contacts}
        else:
            surface_criterion = (fixed["uid"], fixed["links"][surface_link]) in start_contacts
    dz = _pos(end, obj_name)[2] - _pos(start, obj_name)[2]
    return bool(dz > z_direction and end_contacts == {robot_uid} and surface_criterion)


def place_object(start, end, dest_body, dest_link=None):
    robot_uid = start["robot_info"]["uid"]
    robot_contacts_start = {c[2] for c in start["robot_info"]["contacts"]}
    robot_contacts_end = {c[2] for c in end["robot_info"]["contacts"]}
    if len(robot_contacts_start) != 1:
        return False
    obj_uid = next(iter(robot_contacts_start))
    if obj_uid in robot_contacts_end:
        return False
    names = [k for k, v in start["scene_info"]["movable_objects"].items() if v["uid"] == obj_uid]
    if not names:
        return False
    obj_name = names[0]
    if {c[2] for c in _contacts(start, obj_name)} != {robot_uid}:
        return False
    dest = end["scene_info"]["fixed_objects"][dest_body]
    end_contacts = _contacts(end, obj_name)
    if dest_link is None:
        return dest["uid"] in {c[2] for c in end_contacts}
    return (dest["uid"], dest["links"][dest_link]) in {(c[2], c[4]) for c in end_contacts}


def push_object_into(start, end, obj_names, src_body, src_link, dest_body, dest_link):
    robot_uid = start["robot_info"]["uid"]
    src = start["scene_info"]["fixed_objects"][src_body]
    dest = end["scene_info"]["fixed_objects"][dest_body]
    src_pair = (src["uid"], src["links"][src_link])
    dest_pair = (dest["uid"], dest["links"][dest_link])
    for obj in obj_names:
        start_c = {(c[2], c[4]) for c in _contacts(start, obj)}
        end_c = {(c[2], c[4]) for c in _contacts(end, obj)}
        if robot_uid in {c[0] for c in start_c} or robot_uid in {c[0] for c in end_c}:
            continue
        if len(start_c) == 1 and src_pair in start_c and dest_pair in end_c:
            return True
    return False


def move_door_rel(start, end, joint_name, threshold):
    diff = end["scene_info"]["doors"][joint_name]["current_state"] - start["scene_info"]["doors"][joint_name][
        "current_state"
    ]
    if threshold < 0:
        return diff < threshold
    return diff > threshold


def toggle_light(start, end, light_name, start_state, end_state):
    return (
        start["scene_info"]["lights"][light_name]["logical_state"] == start_state
        and end["scene_info"]["lights"][light_name]["logical_state"] == end_state
    )


def _block_contact_names(info, obj):
    uids = {v["uid"]: k for k, v in info["scene_info"]["movable_objects"].items()}
    return {c[2] for c in _contacts(info, obj)}, uids


def stack_objects(start, end):
    for obj in BLOCKS:
        start_uids, names = _block_contact_names(start, obj)
        end_uids, _ = _block_contact_names(end, obj)
        block_uids = set(names) - {start["scene_info"]["movable_objects"][obj]["uid"]}
        if start_uids & block_uids:
            continue
        vel = np.asarray(end["scene_info"]["movable_objects"][obj]["current_lin_vel"])
        if end_uids and end_uids <= block_uids and np.all(np.abs(vel) < 1):
            return True
    return False


def unstack_objects(start, end):
    for obj in BLOCKS:
        start_uids, names = _block_contact_names(start, obj)
        end_uids, _ = _block_contact_names(end, obj)
        block_uids = set(names) - {start["scene_info"]["movable_objects"][obj]["uid"]}
        vel = np.asarray(start["scene_info"]["movable_objects"][obj]["current_lin_vel"])
        if start_uids and start_uids <= block_uids and np.all(np.abs(vel) < 1) and not (end_uids & block_uids):
            return True
    return False


PREDICATES = {
    "rotate_object": rotate_object,
    "push_object": push_object,
    "lift_object": lift_object,
    "place_object": place_object,
    "push_object_into": push_object_into,
    "move_door_rel": move_door_rel,
    "toggle_light": toggle_light,
    "stack_objects": stack_objects,
    "unstack_objects": unstack_objects,
}


def _calvin_task_specs() -> dict[str, tuple]:
    specs: dict[str, tuple] = {}
    for color in ("red", "blue", "pink"):
        block = f"block_{color}"
        specs[f"rotate_{color}_block_right"] = ("rotate_object", block, -60)
        specs[f"rotate_{color}_block_left"] = ("rotate_object", block, 60)
        specs[f"push_{color}_block_right"] = ("push_object", block, 0.1, 0)
        specs[f"push_{color}_block_left"] = ("push_object", block, -0.1, 0)
    specs["move_slider_left"] = ("move_door_rel", "base__slide", 0.15)
    specs["move_slider_right"] = ("move_door_rel", "base__slide", -0.15)
    specs["open_drawer"] = ("move_door_rel", "base__drawer", 0.12)
    specs["close_drawer"] = ("move_door_rel", "base__drawer", -0.12)
    for color in ("red", "blue", "pink"):
        block = f"block_{color}"
        specs[f"lift_{color}_block_table"] = ("lift_object", block, 0.05, "table", "base_link")
        specs[f"lift_{color}_block_slider"] = ("lift_object", block, 0.03, "table", "plank_link")
        specs[f"lift_{color}_block_drawer"] = ("lift_object", block, 0.05, "table", "drawer_link")
    specs["place_in_slider"] = ("place_object", "table", "plank_link")
    specs["place_in_drawer"] = ("place_object", "table", "drawer_link")
    specs["stack_block"] = ("stack_objects",)
    specs["unstack_block"] = ("unstack_objects",)
    specs["turn_on_lightbulb"] = ("toggle_light", "lightbulb", 0, 1)
    specs["turn_off_lightbulb"] = ("toggle_light", "lightbulb", 1, 0)
    specs["turn_on_led"] = ("toggle_light", "led", 0, 1)
    specs["turn_off_led"] = ("toggle_light", "led", 1, 0)
    specs["push_into_drawer"] = ("push_object_into", BLOCKS, "table", "base_link", "table", "drawer_link")
    return specs


CALVIN_TASK_SPECS = _calvin_task_specs()


class TaskOracle:
    """``get_task_info(start, end)`` and ``get_task_info_for_set(start, end, task_filter)`` as in calvin_env."""

    def __init__(self, tasks: Iterable[str] | None = None):
        names = list(CALVIN_TASK_SPECS) if tasks is None else list(tasks)
        unknown = [t for t in names if t not in CALVIN_TASK_SPECS]
        if unknown:
            raise KeyError(f"TaskOracle: unknown task names {unknown}; known: {sorted(CALVIN_TASK_SPECS)}")
        self.tasks = {t: CALVIN_TASK_SPECS[t] for t in names}

    def check(self, task: str, start_info: dict, end_info: dict) -> bool:
        try:
            name, *args = self.tasks[task]
        except KeyError:
            raise KeyError(f"TaskOracle: task {task!r} is not one of {sorted(self.tasks)}") from None
        return bool(PREDICATES[name](start_info, end_info, *args))

    def get_task_info(self, start_info: dict, end_info: dict) -> set[str]:
        return {t for t in self.tasks if self.check(t, start_info, end_info)}

    def get_task_info_for_set(self, start_info: dict, end_info: dict, task_filter: Iterable[str]) -> set[str]:
        return {t for t in task_filter if self.check(t, start_info, end_info)}
