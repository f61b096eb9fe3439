"""A tiny generation: CALVIN files with the right keys and shapes, the CALVIN loader reads it, the stage-1 layout,
resume after an interruption."""

import json

import numpy as np
import pytest
import yaml

pytest.importorskip("pybullet")  # the simulator; a declared dependency, but minimal images may lack it

import vpp_sim.generate as gen
from vpp_sim.generate import generate, main

TASKS = ["turn_on_led", "push_pink_block_right"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("simdata") / "ds"
    mp = pytest.MonkeyPatch()
    # interrupt after all episodes were simulated (before anything is laid out) ...
    mp.setattr(gen, "layout", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        generate(out, episodes_per_task=1, seed=0, val_fraction=0.5, tasks=TASKS)
    mp.undo()
    assert len(list((out / ".work" / "episodes").glob("*.npz"))) == 2
    # ... and resume: nothing is simulated again
    import vpp_sim.demos

    mp.setattr(vpp_sim.demos, "run_expert_episode", lambda *a, **k: pytest.fail("resume re-simulated an episode"))
    summary = generate(out, episodes_per_task=1, seed=0, val_fraction=0.5, tasks=TASKS)
    mp.undo()
    assert summary["episodes"] == {"train": 1, "val": 1} and summary["failed"] == []
    return out


def test_calvin_split_files(dataset):
    for split in ("training", "validation"):
        d = dataset / split
        ids = np.load(d / "ep_start_end_ids.npy")
        lens = np.load(d / "ep_lens.npy")
        assert ids.shape == (1, 2) and ids[0, 0] == 0 and lens[0] == ids[0, 1] + 1
        assert ids[0, 1] >= 50  # calvin's loader asserts end >= max_window_size
        frames = sorted(d.glob("episode_*.npz"))
        assert len(frames) == lens[0] and frames[0].name == "episode_0000000.npz"
        with np.load(frames[0]) as z:
            shapes = {k: (z[k].shape, z[k].dtype) for k in z.files}
        assert shapes == {
            "actions": ((7,), np.float64), "rel_actions": ((7,), np.float64), "robot_obs": ((15,), np.float64),
            "scene_obs": ((24,), np.float64), "rgb_static": ((200, 200, 3), np.uint8),
            "rgb_gripper": ((84, 84, 3), np.uint8),
        }
        lang = np.load(d / "lang_annotations" / "auto_lang_ann.npy", allow_pickle=True).item()
        assert lang["info"]["indx"] == [tuple(ids[0])]
        assert lang["language"]["task"][0] in TASKS and isinstance(lang["language"]["ann"][0], str)
        assert lang["language"]["emb"].shape == (1, 1, 384)
        assert np.load(d / "scene_info.npy", allow_pickle=True).item() == {"vpp_sim_tabletop": [0, int(ids[0, 1])]}
        stats = yaml.safe_load((d / "statistics.yaml").read_text())
        assert len(stats["robot_obs"][0]["mean"]) == 15 and len(stats["scene_obs"][0]["std"]) == 24
        assert stats["robot_obs"][0]["_target_"].endswith("NormalizeVector") and len(stats["act_max_bound"]) == 7
    emb = np.load(dataset / "validation" / "lang_annotations" / "embeddings.npy", allow_pickle=True).item()
    assert emb["turn_on_led"]["ann"] == ["press the button to turn on the led light"]
    assert not (dataset / ".work").exists()


def test_rel_actions_replay_the_recording(dataset):
    """rel_actions are the exact commands: replaying them from frame 0 reproduces the recorded states."""
    from vpp_sim.env import TabletopEnv

    d = dataset / "training"
    n = int(np.load(d / "ep_lens.npy")[0])
    recs = [dict(np.load(d / f"episode_{t:07d}.npz")) for t in range(n)]
    env = TabletopEnv(seed=0, cameras=())
    try:
        env.reset(robot_obs=recs[0]["robot_obs"], scene_obs=recs[0]["scene_obs"])
        for t in range(min(n - 1, 40)):
            obs, *_ = env.step(recs[t]["rel_actions"])
            np.testing.assert_allclose(obs["robot_obs"], recs[t + 1]["robot_obs"], atol=1e-3)
            np.testing.assert_allclose(env.target_pos, recs[t]["actions"][:3], atol=1e-4)
    finally:
        env.close()


def test_calvin_loader_reads_it(dataset):
    from policy_models.datasets.calvin import CalvinDataset

    ds = CalvinDataset(dataset / "training")
    lens = int(np.load(dataset / "training" / "ep_lens.npy")[0])
    assert len(ds) == lens - 21
    sample = ds[0]
    assert sample["actions"].shape == (10, 7)
    assert sample["lang_text"] == np.load(dataset / "training" / "lang_annotations" / "auto_lang_ann.npy",
                                          allow_pickle=True).item()["language"]["ann"][0]


def test_stage1_video_layout(dataset):
    from vpp_core.video_io import read_video

    for split, calvin in (("train", "training"), ("val", "validation")):
        ann = json.loads((dataset / "annotation" / split / "0.json").read_text())
        n = int(np.load(dataset / calvin / "ep_lens.npy")[0])
        assert ann["task"] == "robot_trajectory_prediction" and len(ann["texts"]) == 1
        assert ann["video_length"] == n and len(ann["state"]) == n and len(ann["actions"]) == n
        assert [v["video_path"] for v in ann["videos"]] == [f"videos/{split}/0/0.mp4", f"videos/{split}/0/1.mp4"]
        assert ann["latent_videos"][1]["latent_video_path"] == f"latent_videos/{split}/0/1.pt"
        video = read_video(dataset / ann["videos"][0]["video_path"])
        assert video.shape == (n, 256, 256, 3)


def test_cli_errors(dataset, capsys):
    assert main(["--output", str(dataset), "--episodes-per-task", "1", "--tasks", "turn_on_led"]) == 2
    assert "already holds a finished dataset" in capsys.readouterr().err
    assert main(["--output", str(dataset / "x"), "--episodes-per-task", "1", "--tasks", "stack_block"]) == 2
    assert "no script" in capsys.readouterr().err
