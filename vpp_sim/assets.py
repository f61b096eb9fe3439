"""Scene geometry of the built-in tabletop, written as URDF from primitive boxes and spheres.

Everything the simulator loads except the Franka Panda (which comes from ``pybullet_data``) is generated here, so
the geometry has one source: the numbers below are used by the URDF writer, the scene sampler, the expert and the
tests. World frame: x to the right (as seen by the robot), y away from the robot, z up; the table top is at z = 0.

The ``table`` URDF mirrors the link layout of CALVIN's playtable, so link indices are the same as in calvin_env:
``button_link 0, switch_link 1, slide_link 2, drawer_link 3, led_link 4, light_link 5, plank_link 6, base_link -1``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------------------------------------------------------
# Layout constants (metres)
# ---------------------------------------------------------------------------------------------------------------
ROBOT_BASE_POS = (0.0, -0.6, 0.0)
ROBOT_BASE_YAW = 1.5707963267948966  # the Panda's x axis points along world +y

TABLE_HALF = (0.72, 0.52, 0.025)  # table top box half extents
TABLE_CENTER = (0.0, -0.12, -0.025)  # top surface at z = 0

# Sliding cabinet at the back: open front (y = CAB_Y0), shelf plank at table height, top board.
CAB_X = (-0.36, 0.36)
CAB_Y = (0.10, 0.32)
CAB_TOP_Z = 0.18  # underside of the top board
CAB_BOARD = 0.02
PLANK_TOP_Z = 0.01  # blocks inside the cabinet rest on the plank
# Sliding door: panel in front of the opening, moves along -x (joint 0 = right, 0.28 = left).
DOOR_WIDTH = 0.36
DOOR_Y = (0.075, 0.09)
DOOR_Z = (0.012, 0.172)
DOOR_X0 = 0.17  # door centre x at joint 0
SLIDE_RANGE = (0.0, 0.28)
DOOR_HANDLE_SIZE = (0.02, 0.09, 0.10)  # sticks out of the door front towards the robot
DOOR_HANDLE_Z = 0.11  # handle centre height

# Drawer unit on the right of the table; the drawer pulls out towards the robot (-y).
DRAWER_CARCASS_X = (0.36, 0.62)
DRAWER_CARCASS_Y = (-0.20, 0.08)
DRAWER_CARCASS_TOP = 0.12  # top of the carcass top board
DRAWER_RANGE = (0.0, 0.22)
DRAWER_FRONT_Y = -0.205  # centre of the front panel (closed)
DRAWER_HANDLE_Z = 0.1675  # centre of the handle bar, on posts above the front panel
DRAWER_X_CENTER = 0.49
DRAWER_FLOOR_Z = 0.015  # top of the drawer's bottom plate

# Push button with an LED on the cabinet; switch lever that drives a lightbulb.
BUTTON_POS = (-0.34, -0.26)  # xy of the button
BUTTON_BASE_H = 0.03
BUTTON_CAP_H = 0.02
BUTTON_RANGE = (0.0, 0.02)
SWITCH_POS = (-0.45, -0.06)  # xy of the lever at joint 0
SWITCH_BASE_H = 0.02
SWITCH_LEVER = (0.016, 0.016, 0.07)  # lever stick size, it stands on the housing
SWITCH_RANGE = (0.0, 0.088)  # the lever slides along +y
LED_POS = (-0.26, 0.21, CAB_TOP_Z + CAB_BOARD)
LIGHT_POS = (0.22, 0.21, CAB_TOP_Z + CAB_BOARD)

# Blocks: (long side x, short side y, height z) half extents; fingers close across the short side.
BLOCK_HALF = {
    "block_red": (0.0325, 0.0225, 0.0225),
    "block_blue": (0.025, 0.0225, 0.0225),
    "block_pink": (0.04, 0.0225, 0.0225),
}
BLOCK_RGBA = {
    "block_red": (0.85, 0.12, 0.12, 1.0),
    "block_blue": (0.15, 0.3, 0.85, 1.0),
    "block_pink": (0.95, 0.45, 0.75, 1.0),
}
BLOCK_MASS = 0.08
BLOCK_NAMES = ("block_red", "block_blue", "block_pink")  # order of scene_obs (CALVIN scene D: red, blue, pink)

LED_ON_RGBA = (0.1, 1.0, 0.1, 1.0)
LED_OFF_RGBA = (0.05, 0.2, 0.05, 1.0)
LIGHT_ON_RGBA = (1.0, 0.95, 0.3, 1.0)
LIGHT_OFF_RGBA = (0.45, 0.42, 0.3, 1.0)

TABLE_LINKS = {
    "base_link": -1,
    "button_link": 0,
    "switch_link": 1,
    "slide_link": 2,
    "drawer_link": 3,
    "led_link": 4,
    "light_link": 5,
    "plank_link": 6,
}

WOOD = (0.72, 0.55, 0.38, 1.0)
DARK_WOOD = (0.5, 0.36, 0.24, 1.0)
GREY = (0.6, 0.6, 0.62, 1.0)
WHITE = (0.92, 0.92, 0.9, 1.0)


@dataclass(frozen=True)
class Box:
    center: tuple[float, float, float]
    half: tuple[float, float, float]
    rgba: tuple[float, float, float, float]
    collide: bool = True


def _box_xml(b: Box, material: str) -> str:
    size = " ".join(f"{2 * h:.5f}" for h in b.half)
    xyz = " ".join(f"{c:.5f}" for c in b.center)
    out = (
        f'    <visual><origin xyz="{xyz}"/><geometry><box size="{size}"/></geometry>'
        f'<material name="{material}"><color rgba="{" ".join(f"{c:.3f}" for c in b.rgba)}"/></material></visual>\n'
    )
    if b.collide:
        out += f'    <collision><origin xyz="{xyz}"/><geometry><box size="{size}"/></geometry></collision>\n'
    return out


def _link_xml(name: str, boxes: list[Box], mass: float = 0.0, extra: str = "") -> str:
    inertial = (
        f'    <inertial><mass value="{mass}"/><inertia ixx="0.001" ixy="0" ixz="0" iyy="0.001" iyz="0" izz="0.001"/>'
        "</inertial>\n"
    )
    body = "".join(_box_xml(b, f"{name}_m{i}") for i, b in enumerate(boxes))
    return f'  <link name="{name}">\n{inertial}{body}{extra}  </link>\n'


def _span(lo: float, hi: float) -> tuple[float, float]:
    return (lo + hi) / 2, (hi - lo) / 2


def _box_from_bounds(x, y, z, rgba, collide=True) -> Box:
    cx, hx = _span(*x)
    cy, hy = _span(*y)
    cz, hz = _span(*z)
    return Box((cx, cy, cz), (hx, hy, hz), rgba, collide)


def table_urdf() -> str:
    """The fixed playtable: table top, cabinet with sliding door, drawer unit, button + LED, switch + lightbulb."""
    base: list[Box] = [Box(TABLE_CENTER, TABLE_HALF, WOOD)]
    # table legs (visual only, they make the static view read as a table)
    for sx in (-1, 1):
        for sy in (-1, 1):
            base.append(
                Box(
                    (sx * (TABLE_HALF[0] - 0.05), TABLE_CENTER[1] + sy * (TABLE_HALF[1] - 0.05), -0.4),
                    (0.03, 0.03, 0.35),
                    DARK_WOOD,
                    collide=False,
                )
            )
    # cabinet: side walls, back wall, top board (the floor is the plank link)
    x0, x1 = CAB_X
    y0, y1 = CAB_Y
    base.append(_box_from_bounds((x0 - 0.02, x0), (y0, y1), (0.0, CAB_TOP_Z + CAB_BOARD), DARK_WOOD))
    base.append(_box_from_bounds((x1, x1 + 0.02), (y0, y1), (0.0, CAB_TOP_Z + CAB_BOARD), DARK_WOOD))
    base.append(_box_from_bounds((x0, x1), (y1 - 0.02, y1), (0.0, CAB_TOP_Z), DARK_WOOD))
    base.append(_box_from_bounds((x0 - 0.02, x1 + 0.02), (y0, y1), (CAB_TOP_Z, CAB_TOP_Z + CAB_BOARD), DARK_WOOD))
    # door rails (top and bottom), in front of the opening
    rail_z = (CAB_TOP_Z - 0.006, CAB_TOP_Z + CAB_BOARD)
    base.append(_box_from_bounds((x0 - 0.02, x1 + 0.02), (DOOR_Y[1], y0), rail_z, DARK_WOOD))
    # drawer carcass: side walls, back, top board
    dx0, dx1 = DRAWER_CARCASS_X
    dy0, dy1 = DRAWER_CARCASS_Y
    top = DRAWER_CARCASS_TOP
    base.append(_box_from_bounds((dx0, dx0 + 0.02), (dy0, dy1), (0.0, top), WHITE))
    base.append(_box_from_bounds((dx1 - 0.02, dx1), (dy0, dy1), (0.0, top), WHITE))
    base.append(_box_from_bounds((dx0, dx1), (dy1 - 0.02, dy1), (0.0, top), WHITE))
    base.append(_box_from_bounds((dx0, dx1), (dy0, dy1), (top - 0.02, top), WHITE))
    # button housing
    bx, by = BUTTON_POS
    base.append(_box_from_bounds((bx - 0.04, bx + 0.04), (by - 0.04, by + 0.04), (0.0, BUTTON_BASE_H), GREY))
    # switch housing: a low rail along y the lever slides on
    sx, sy = SWITCH_POS
    base.append(
        _box_from_bounds((sx - 0.03, sx + 0.03), (sy - 0.03, sy + SWITCH_RANGE[1] + 0.03), (0.0, SWITCH_BASE_H), GREY)
    )

    links = [_link_xml("base_link", base)]
    joints = []

    # 0: button cap, pressed down along -z
    cap = Box((0.0, 0.0, BUTTON_CAP_H / 2), (0.022, 0.022, BUTTON_CAP_H / 2), (0.85, 0.1, 0.1, 1.0))
    links.append(_link_xml("button_link", [cap], mass=0.02))
    joints.append(
        _joint_xml("base__button", "prismatic", "base_link", "button_link", (bx, by, BUTTON_BASE_H), (0, 0, -1),
                   BUTTON_RANGE)
    )
    # 1: switch lever, slides along +y
    lever_half = tuple(s / 2 for s in SWITCH_LEVER)
    lever = Box((0.0, 0.0, lever_half[2]), lever_half, (0.2, 0.2, 0.2, 1.0))
    links.append(_link_xml("switch_link", [lever], mass=0.02))
    joints.append(
        _joint_xml("base__switch", "prismatic", "base_link", "switch_link", (sx, sy, SWITCH_BASE_H), (0, 1, 0),
                   SWITCH_RANGE)
    )
    # 2: sliding door (with its handle), slides along -x
    door_half = (DOOR_WIDTH / 2, (DOOR_Y[1] - DOOR_Y[0]) / 2, (DOOR_Z[1] - DOOR_Z[0]) / 2)
    door = Box((0.0, 0.0, 0.0), door_half, (0.35, 0.55, 0.7, 1.0))
    hs = DOOR_HANDLE_SIZE
    handle_c = (0.0, -(DOOR_Y[1] - DOOR_Y[0]) / 2 - hs[1] / 2, DOOR_HANDLE_Z - (DOOR_Z[0] + DOOR_Z[1]) / 2)
    handle = Box(handle_c, tuple(s / 2 for s in hs), GREY)
    links.append(_link_xml("slide_link", [door, handle], mass=0.5))
    joints.append(
        _joint_xml(
            "base__slide",
            "prismatic",
            "base_link",
            "slide_link",
            (DOOR_X0, (DOOR_Y[0] + DOOR_Y[1]) / 2, (DOOR_Z[0] + DOOR_Z[1]) / 2),
            (-1, 0, 0),
            SLIDE_RANGE,
        )
    )
    # 3: drawer tray with front panel and a bar handle on posts above it
    links.append(_link_xml("drawer_link", _drawer_boxes(), mass=0.5))
    joints.append(
        _joint_xml("base__drawer", "prismatic", "base_link", "drawer_link", (DRAWER_X_CENTER, 0.0, 0.0), (0, -1, 0),
                   DRAWER_RANGE)
    )
    # 4: LED, 5: lightbulb (fixed, their colour shows the logical state)
    led = Box((0.0, 0.0, 0.012), (0.025, 0.025, 0.012), LED_OFF_RGBA, collide=False)
    links.append(_link_xml("led_link", [led], mass=0.0))
    joints.append(_joint_xml("base__led", "fixed", "base_link", "led_link", LED_POS))
    bulb_extra = (
        '    <visual><origin xyz="0 0 0.045"/><geometry><sphere radius="0.035"/></geometry>'
        '<material name="bulb"><color rgba="0.45 0.42 0.3 1"/></material></visual>\n'
    )
    socket = Box((0.0, 0.0, 0.006), (0.02, 0.02, 0.006), GREY, collide=False)
    links.append(_link_xml("light_link", [socket], mass=0.0, extra=bulb_extra))
    joints.append(_joint_xml("base__light", "fixed", "base_link", "light_link", LIGHT_POS))
    # 6: plank (the cabinet floor the blocks stand on)
    plank = _box_from_bounds((x0, x1), (y0 - 0.01, y1 - 0.02), (0.0, PLANK_TOP_Z), (0.62, 0.47, 0.32, 1.0))
    links.append(_link_xml("plank_link", [plank], mass=0.0))
    joints.append(_joint_xml("base__plank", "fixed", "base_link", "plank_link", (0.0, 0.0, 0.0)))

    return '<?xml version="1.0"?>\n<robot name="playtable">\n' + "".join(links) + "".join(joints) + "</robot>\n"


def _drawer_boxes() -> list[Box]:
    """Drawer tray in the drawer_link frame (x relative to DRAWER_X_CENTER, y and z world at joint 0)."""
    hx = (DRAWER_CARCASS_X[1] - DRAWER_CARCASS_X[0]) / 2 - 0.025  # inner half width of the tray
    y_back = DRAWER_CARCASS_Y[1] - 0.025
    y_front = DRAWER_FRONT_Y + 0.01
    wall_top = 0.085
    boxes = [
        _box_from_bounds((-hx, hx), (y_front, y_back), (0.005, DRAWER_FLOOR_Z), WHITE),  # bottom
        _box_from_bounds((-hx, -hx + 0.01), (y_front, y_back), (0.005, wall_top), WHITE),  # side walls
        _box_from_bounds((hx - 0.01, hx), (y_front, y_back), (0.005, wall_top), WHITE),
        _box_from_bounds((-hx, hx), (y_back - 0.01, y_back), (0.005, wall_top), WHITE),  # back wall
        # front panel, a bit wider than the opening and reaching above the carcass top
        _box_from_bounds((-hx - 0.02, hx + 0.02), (DRAWER_FRONT_Y - 0.01, DRAWER_FRONT_Y + 0.01), (0.005, 0.13),
                         (0.4, 0.6, 0.45, 1.0)),
    ]
    # handle: two posts and a bar along x
    for px in (-0.05, 0.05):
        boxes.append(_box_from_bounds((px - 0.006, px + 0.006), (DRAWER_FRONT_Y - 0.006, DRAWER_FRONT_Y + 0.006),
                                      (0.13, DRAWER_HANDLE_Z), GREY))
    boxes.append(_box_from_bounds((-0.065, 0.065), (DRAWER_FRONT_Y - 0.0075, DRAWER_FRONT_Y + 0.0075),
                                  (DRAWER_HANDLE_Z - 0.0075, DRAWER_HANDLE_Z + 0.0075), GREY))
    return boxes


def _joint_xml(name, jtype, parent, child, xyz, axis=(1, 0, 0), limits=(0.0, 0.0)) -> str:
    xyz_s = " ".join(f"{c:.5f}" for c in xyz)
    out = f'  <joint name="{name}" type="{jtype}">\n    <parent link="{parent}"/>\n    <child link="{child}"/>\n'
    out += f'    <origin xyz="{xyz_s}" rpy="0 0 0"/>\n'
    if jtype != "fixed":
        out += f'    <axis xyz="{axis[0]} {axis[1]} {axis[2]}"/>\n'
        out += f'    <limit lower="{limits[0]}" upper="{limits[1]}" effort="100" velocity="1.0"/>\n'
        out += '    <dynamics damping="1.0" friction="0.0"/>\n'
    return out + "  </joint>\n"


def block_urdf(name: str) -> str:
    hx, hy, hz = BLOCK_HALF[name]
    r, g, b, a = BLOCK_RGBA[name]
    size = f"{2 * hx:.5f} {2 * hy:.5f} {2 * hz:.5f}"
    ixx = BLOCK_MASS / 3 * (hy**2 + hz**2)
    iyy = BLOCK_MASS / 3 * (hx**2 + hz**2)
    izz = BLOCK_MASS / 3 * (hx**2 + hy**2)
    return (
        f'<?xml version="1.0"?>\n<robot name="{name}">\n  <link name="base_link">\n'
        f'    <contact><lateral_friction value="1.0"/><rolling_friction value="0.0001"/>'
        f'<spinning_friction value="0.001"/></contact>\n'
        f'    <inertial><mass value="{BLOCK_MASS}"/>'
        f'<inertia ixx="{ixx:.3e}" ixy="0" ixz="0" iyy="{iyy:.3e}" iyz="0" izz="{izz:.3e}"/></inertial>\n'
        f'    <visual><geometry><box size="{size}"/></geometry>'
        f'<material name="{name}"><color rgba="{r} {g} {b} {a}"/></material></visual>\n'
        f'    <collision><geometry><box size="{size}"/></geometry></collision>\n'
        "  </link>\n</robot>\n"
    )


def panda_lowpoly_urdf() -> str:
    """pybullet_data's Panda with its collision meshes also used as visuals.

    The visual meshes have ~100k triangles, which makes CPU rendering 3x slower; the collision meshes (~3k) look
    the same at 200x200.
    """
    import pybullet_data

    root = Path(pybullet_data.getDataPath()) / "franka_panda"
    text = (root / "panda.urdf").read_text()
    text = text.replace("package://meshes/visual/", "package://meshes/collision/")
    return text.replace("package://meshes/", str(root / "meshes") + "/")


def write_assets(directory: str | os.PathLike | None = None) -> dict[str, str]:
    """Write the URDF files (idempotently) and return {name: path}.

    The default directory is a per-content cache folder under the system temp dir, so several processes share it
    and a change of geometry never reads a stale file.
    """
    texts = {"table": table_urdf(), "panda": panda_lowpoly_urdf(), **{n: block_urdf(n) for n in BLOCK_NAMES}}
    if directory is None:
        digest = hashlib.sha1("".join(texts[k] for k in sorted(texts)).encode()).hexdigest()[:12]
        directory = Path(tempfile.gettempdir()) / f"vpp_sim_assets_{digest}"
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, text in texts.items():
        path = directory / f"{name}.urdf"
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(text)
            os.replace(tmp, path)
        paths[name] = str(path)
    return paths
