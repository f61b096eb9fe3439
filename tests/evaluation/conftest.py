"""Fixtures for the CALVIN evaluation tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parents[3] / "shared" / "reference_data" / "calvin" / "eval_sequences_1000.json"


@pytest.fixture(scope="session")
def golden_sequences() -> list[dict]:
    """The official 1000 (initial_condition, sequence, robot_obs, scene_obs) entries, in get_sequences order."""
    if not GOLDEN.is_file():
        pytest.skip(f"golden CALVIN sequences not found at {GOLDEN}")
    return json.loads(GOLDEN.read_text())
