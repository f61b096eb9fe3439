"""Shared inputs for the policy tests."""

import numpy as np


def calvin_obs(batch: int = 1, seed: int = 0) -> dict:
    """Random uint8 observations of the CALVIN cameras (200x200 static, 84x84 gripper), batched."""
    rng = np.random.default_rng(seed)
    return {"rgb_obs": {"rgb_static": rng.integers(0, 256, (batch, 200, 200, 3), dtype=np.uint8),
                        "rgb_gripper": rng.integers(0, 256, (batch, 84, 84, 3), dtype=np.uint8)}}
