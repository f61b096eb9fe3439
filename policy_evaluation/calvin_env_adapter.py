"""The real CALVIN simulator (calvin_env) behind the evaluator's EvalEnv / TaskOracle interface.

calvin_env is imported lazily: nothing here needs it until an env is built. What building does
(calvin_reference.md §1):

* `calvin_env.envs.play_table_env.get_env(<calvin_abc_dir>/validation, show_gui=False, obs_space=...)` with the
  observation space limited to rgb_static and rgb_gripper, so the tactile camera (and tacto) is not needed.
  `get_env` reads only `<dir>/.hydra/merged_config.yaml` from the dataset.
* EGL rendering (what the dataset was rendered with) when available: the merged config's `env.use_egl` is kept
  when EGL is usable and turned off (pybullet's TinyRenderer) otherwise, or set explicitly with `use_egl`.
  Pick the EGL device with the `EGL_VISIBLE_DEVICES` environment variable.
* `PlayTableSimEnv.__init__` logs the git hash of the calvin_env checkout and raises outside a git checkout: the hash
  lookup is wrapped so it returns "unknown" instead.
* One live env per process in EGL mode (a closed env's `__del__` would disconnect a newer env that reused client 0):
  `CalvinEnvFactory` keeps one env per process and `close_calvin_env` disconnects it safely.
* The oracle is `calvin_env.envs.tasks.Tasks` built from policy_conf/tasks/new_playtable_tasks.yaml.

Versions: mees/calvin (and VPP) pin calvin_env at 1431a46; HEAD 797142c fixes the LED-button reset bug (at 1431a46
a sequence that starts with the LED on needs two presses for turn_off_led). See INSTALL_HINT.
"""

from __future__ import annotations

import ctypes.util
import importlib
import importlib.util
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policy_evaluation.env_interface import EvalEnv, TaskOracle

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TASKS_YAML = REPO_ROOT / "policy_conf" / "tasks" / "new_playtable_tasks.yaml"
OBS_SPACE = {
    "rgb_obs": ["rgb_static", "rgb_gripper"],
    "depth_obs": [],
    "state_obs": ["robot_obs"],
    "actions": ["rel_actions"],
    "language": ["language"],
}

INSTALL_HINT = """\
calvin_env (the CALVIN simulator) is not installed; no PyPI package provides it. Install it from source:
    git clone --recursive https://github.com/mees/calvin.git
    pip install -e calvin/calvin_env        # editable: calvin_env finds its assets in calvin_env/data next to it
    pip install rich                        # imported by the pinned calvin_env commit
(tacto is only needed for the tactile camera, which this evaluator does not use.)
Version note: mees/calvin pins calvin_env at 1431a46, which the published CALVIN numbers (VPP's included) were
presumably produced with. calvin_env HEAD (797142c) fixes a reset bug of the LED button: at 1431a46 a sequence that
starts with the LED on needs two button presses for turn_off_led, at HEAD one. Scores differ slightly between the two;
report which one you used (`git -C calvin/calvin_env rev-parse HEAD`).
Without CALVIN, `--env sim` evaluates on the built-in simulator."""


class CalvinSetupError(RuntimeError):
    """calvin_env is missing or the dataset folder is not usable; the message says what to do."""


def import_calvin_env() -> Any:
    try:
        return importlib.import_module("calvin_env")
    except ImportError as exc:
        raise CalvinSetupError(f"{INSTALL_HINT}\n(import error: {exc})") from exc


def validation_dir(calvin_abc_dir: str | Path) -> Path:
    """<calvin_abc_dir>/validation, after checking that its .hydra/merged_config.yaml exists."""
    root = Path(calvin_abc_dir).expanduser()
    val = root / "validation"
    cfg = val / ".hydra" / "merged_config.yaml"
    if not cfg.is_file():
        raise CalvinSetupError(
            f"CALVIN env config not found: {cfg}\n"
            "--calvin_abc_dir must be the dataset root (e.g. task_ABC_D) whose validation/.hydra/merged_config.yaml "
            "describes the evaluation scene; it is the only dataset file the simulator reads."
        )
    return val


def egl_available() -> bool:
    """libEGL can be found and pybullet ships its eglRenderer plugin."""
    return ctypes.util.find_library("EGL") is not None and importlib.util.find_spec("eglRenderer") is not None


def _patch_git_hash() -> None:
    pte = importlib.import_module("calvin_env.envs.play_table_env")
    original = getattr(pte, "get_git_commit_hash", None)
    if original is None or getattr(original, "_vpp_patched", False):
        return

    def safe_hash(*args: Any, **kwargs: Any) -> str:
        try:
            return original(*args, **kwargs)
        except Exception:
            return "unknown"

    safe_hash._vpp_patched = True  # type: ignore[attr-defined]
    pte.get_git_commit_hash = safe_hash


def load_oracle(tasks_yaml: str | Path = DEFAULT_TASKS_YAML) -> TaskOracle:
    """calvin_env.envs.tasks.Tasks from the task yaml (hydra `_target_`)."""
    import hydra
    from omegaconf import OmegaConf

    import_calvin_env()
    path = Path(tasks_yaml)
    if not path.is_file():
        raise CalvinSetupError(f"task definition file not found: {path}")
    return hydra.utils.instantiate(OmegaConf.load(path))


_LIVE: dict[str, Any] = {}  # one env per process: {"key": ..., "env": ..., "oracle": ...}


def close_calvin_env() -> None:
    """Disconnect this process's env so that a later env does not get disconnected by the old one's __del__."""
    live = _LIVE.pop("env", None)
    _LIVE.clear()
    if live is None:
        return
    try:
        import pybullet as p

        cid = getattr(live, "cid", None)
        if cid is not None and p.isConnected(physicsClientId=cid):
            p.disconnect(physicsClientId=cid)
    except Exception:  # pragma: no cover
        pass
    live.ownsPhysicsClient = False


def make_calvin_env(
    calvin_abc_dir: str | Path, tasks_yaml: str | Path = DEFAULT_TASKS_YAML, use_egl: bool | None = None
) -> tuple[EvalEnv, TaskOracle]:
    """Build (or reuse: one per process) the CALVIN validation env and its task oracle."""
    val = validation_dir(calvin_abc_dir)
    key = f"{val.resolve()}|{Path(tasks_yaml).resolve()}|{use_egl}"
    if _LIVE.get("key") == key:
        return _LIVE["env"], _LIVE["oracle"]
    if _LIVE:
        close_calvin_env()
    import_calvin_env()
    from omegaconf import OmegaConf

    _patch_git_hash()
    pte = importlib.import_module("calvin_env.envs.play_table_env")
    render_conf = OmegaConf.load(val / ".hydra" / "merged_config.yaml")
    want_egl = egl_available() if use_egl is None else bool(use_egl)
    conf_egl = bool(OmegaConf.select(render_conf, "env.use_egl", default=False))
    if want_egl and not egl_available():
        logger.warning("use_egl requested but EGL does not look available; calvin_env may fail to load it")
    if conf_egl == want_egl:
        env = pte.get_env(val, show_gui=False, obs_space=OBS_SPACE)
    else:
        # get_env only reads <dir>/.hydra/merged_config.yaml: hand it a copy with env.use_egl changed.
        logger.info("rendering with %s", "EGL" if want_egl else "pybullet's TinyRenderer (no EGL)")
        render_conf.env.use_egl = want_egl
        with tempfile.TemporaryDirectory(prefix="calvin_conf_") as tmp:
            (Path(tmp) / ".hydra").mkdir()
            OmegaConf.save(render_conf, Path(tmp) / ".hydra" / "merged_config.yaml")
            env = pte.get_env(Path(tmp), show_gui=False, obs_space=OBS_SPACE)
    oracle = load_oracle(tasks_yaml)
    _LIVE.update(key=key, env=env, oracle=oracle)
    return env, oracle


@dataclass(frozen=True)
class CalvinEnvFactory:
    """Picklable env factory for evaluation workers (each process builds its own env)."""

    calvin_abc_dir: str
    tasks_yaml: str = str(DEFAULT_TASKS_YAML)
    use_egl: bool | None = None

    def check(self) -> None:
        """Fail fast in the parent process: dataset config and calvin_env import."""
        validation_dir(self.calvin_abc_dir)
        import_calvin_env()

    def __call__(self) -> tuple[EvalEnv, TaskOracle]:
        return make_calvin_env(self.calvin_abc_dir, self.tasks_yaml, self.use_egl)
