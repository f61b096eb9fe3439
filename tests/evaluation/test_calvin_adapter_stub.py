"""calvin_env_adapter glue against a stub calvin_env package (the real one cannot be installed in CI)."""

import sys
import textwrap

import pytest
from omegaconf import OmegaConf

from policy_evaluation import calvin_env_adapter as cea

STUB_PTE = '''
from pathlib import Path
from omegaconf import OmegaConf

CREATED = []


def get_git_commit_hash(repo_path):
    raise RuntimeError("not a git checkout")  # what GitPython does outside a checkout


class StubEnv:
    def __init__(self, conf, obs_space):
        self.conf, self.obs_space = conf, obs_space
        self.commit = get_git_commit_hash(Path(__file__))  # PlayTableSimEnv.__init__ logs the hash
        self.cid = 0
        self.ownsPhysicsClient = True


def get_env(dataset_path, obs_space=None, show_gui=True, **kwargs):
    conf = OmegaConf.load(Path(dataset_path) / ".hydra" / "merged_config.yaml")
    keep = {key.split("_")[1] for key in obs_space["rgb_obs"] + obs_space["depth_obs"]}
    for k in set(conf.cameras.keys()) - keep:
        del conf.cameras[k]
    env = StubEnv(conf, obs_space)
    CREATED.append(env)
    return env
'''

STUB_TASKS = '''
class Tasks:
    def __init__(self, tasks):
        self.tasks = dict(tasks)

    def get_task_info_for_set(self, start_info, end_info, task_filter):
        return set()
'''


@pytest.fixture
def stub_calvin(tmp_path, monkeypatch):
    root = tmp_path / "stub"
    pkg = root / "calvin_env" / "envs"
    pkg.mkdir(parents=True)
    (root / "calvin_env" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "play_table_env.py").write_text(textwrap.dedent(STUB_PTE))
    (pkg / "tasks.py").write_text(textwrap.dedent(STUB_TASKS))
    monkeypatch.syspath_prepend(str(root))
    for name in [m for m in sys.modules if m == "calvin_env" or m.startswith("calvin_env.")]:
        monkeypatch.delitem(sys.modules, name)
    data = tmp_path / "task_ABC_D" / "validation" / ".hydra"
    data.mkdir(parents=True)
    OmegaConf.save(
        OmegaConf.create({"cameras": {"static": {"width": 200}, "gripper": {"width": 84}, "tactile": {"width": 120}},
                          "env": {"use_egl": True, "seed": 0}}),
        data / "merged_config.yaml",
    )
    cea.close_calvin_env()
    yield tmp_path / "task_ABC_D"
    cea.close_calvin_env()


def test_env_and_oracle_from_stub(stub_calvin, monkeypatch):
    monkeypatch.setattr(cea, "egl_available", lambda: True)
    env, oracle = cea.CalvinEnvFactory(str(stub_calvin))()
    assert env.commit == "unknown"  # the git-hash lookup no longer raises
    assert set(env.conf.cameras) == {"static", "gripper"}  # tactile dropped: rgb_static + rgb_gripper only
    assert env.obs_space["rgb_obs"] == ["rgb_static", "rgb_gripper"]
    assert env.conf.env.use_egl is True
    assert type(oracle).__module__ == "calvin_env.envs.tasks"
    assert len(oracle.tasks) == 34 and oracle.tasks["open_drawer"] == ["move_door_rel", "base__drawer", 0.12]
    # one env per process: the same factory call reuses it
    env2, _ = cea.CalvinEnvFactory(str(stub_calvin))()
    assert env2 is env
    import calvin_env.envs.play_table_env as pte

    assert len(pte.CREATED) == 1


def test_tinyrenderer_when_egl_is_missing(stub_calvin, monkeypatch):
    monkeypatch.setattr(cea, "egl_available", lambda: False)
    env, _ = cea.make_calvin_env(stub_calvin)
    assert env.conf.env.use_egl is False
    # asking for another configuration closes the old env first (no stale __del__ disconnecting the new one)
    env2, _ = cea.make_calvin_env(stub_calvin, use_egl=True)
    assert env2 is not env and env.ownsPhysicsClient is False and env2.conf.env.use_egl is True
