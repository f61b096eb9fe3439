"""Stage-1 fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def latent_root(tmp_path) -> Path:
    root = tmp_path / "datasets"
    root.mkdir()
    return root
