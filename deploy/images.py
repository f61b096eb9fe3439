"""Image helpers for robot-side code (numpy only)."""

from __future__ import annotations

import numpy as np


def letterbox_4x3(image: np.ndarray) -> np.ndarray:
    """Pad an (H, W, C) image with black to a 4:3 (W:H) canvas, centred (step1_prepare_latent's geometry).

    The training videos of the original xbot pipeline were made this way (canvas height ``int(0.75 * W)``, frame
    pasted vertically centred, then resized to 256x256), so frames from a camera that is not 4:3 should be
    letterboxed the same way before inference. The original only handled frames wider than 4:3; taller frames are
    padded left/right here instead.
    """
    if image.ndim != 3:
        raise ValueError(f"letterbox_4x3 expects an (H, W, C) image, got shape {image.shape}")
    h, w = image.shape[:2]
    target_h = int(0.75 * w)
    if h <= target_h:
        canvas = np.zeros((target_h, w, image.shape[2]), dtype=image.dtype)
        top = (target_h - h) // 2
        canvas[top:top + h] = image
    else:
        target_w = int(round(h / 0.75))
        canvas = np.zeros((h, target_w, image.shape[2]), dtype=image.dtype)
        left = (target_w - w) // 2
        canvas[:, left:left + w] = image
    return canvas
