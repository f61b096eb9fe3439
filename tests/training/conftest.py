"""Fixtures for the stage-2 data and trainer tests: synthetic CALVIN-format data written into tmp folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from policy_models.datasets.synthetic import SyntheticCalvinSpec, write_synthetic_calvin


@pytest.fixture(scope="session")
def calvin_root_session(tmp_path_factory) -> Path:
    """Training: 2 episodes x 64 frames, segments of 32 frames every 16 (6 segments, 66 windows);
    validation: 1 episode (3 segments, 33 windows). Real CALVIN image sizes (200 / 84)."""
    root = tmp_path_factory.mktemp("calvin") / "task_D_D"
    write_synthetic_calvin(root, SyntheticCalvinSpec(episodes=2, episode_len=64, segment_len=32, segment_stride=16))
    return root


@pytest.fixture
def calvin_root(calvin_root_session, tmp_path) -> Path:
    """A private copy (tests may pack or corrupt it)."""
    dst = tmp_path / "task_D_D"
    shutil.copytree(calvin_root_session, dst)
    return dst
