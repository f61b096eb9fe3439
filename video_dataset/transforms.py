"""Frame preprocessing shared by latent preparation, make_prediction and the quality check.

uint8 RGB frames (T, H, W, 3) -> float (T, 3, R, R) in [-1, 1]: optional black letterbox to 4:3 (the teleop importer's
geometry, vpp_reference §2.1), then a bilinear resize to R x R (aspect ratio is *not* kept: the released models were
trained on squashed 640x480 -> 256x256 frames), with antialiasing by default (torchvision's `Resize(antialias=True)` in
make_prediction; the original teleop script resized without it, `antialias=False` reproduces that).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def letterbox_to_4_3(frames: np.ndarray) -> np.ndarray:
    """Pad (T, H, W, 3) frames with black to a 4:3 (W:H) canvas, image centred.

    The original only handled frames wider than 4:3 (canvas height int(0.75 W), image pasted vertically centred);
    taller frames are padded left and right instead of failing.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"expected frames (T, H, W, C), got shape {frames.shape}")
    t, h, w, c = frames.shape
    target_h = int(0.75 * w)
    if h <= target_h:
        canvas = np.zeros((t, target_h, w, c), dtype=frames.dtype)
        top = (target_h - h) // 2
        canvas[:, top : top + h] = frames
        return canvas
    target_w = int(round(h * 4 / 3))
    canvas = np.zeros((t, h, target_w, c), dtype=frames.dtype)
    left = (target_w - w) // 2
    canvas[:, :, left : left + w] = frames
    return canvas


def to_model_range(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (T, 3, H, W) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def resize_frames(
    x: torch.Tensor, size: int | tuple[int, int], antialias: bool = True, chunk: int = 64
) -> torch.Tensor:
    """Bilinear resize of float frames (T, C, H, W) to `size` (align_corners False), in chunks to bound memory."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    out = [
        F.interpolate(x[i : i + chunk], size=size, mode="bilinear", align_corners=False, antialias=antialias)
        for i in range(0, x.shape[0], chunk)
    ]
    return torch.cat(out)


def preprocess_frames(
    frames: np.ndarray, resolution: int | tuple[int, int], letterbox: bool = False, antialias: bool = True
) -> torch.Tensor:
    """uint8 RGB (T, H, W, 3) -> float32 (T, 3, R, R) in [-1, 1], ready for the VAE."""
    if letterbox:
        frames = letterbox_to_4_3(frames)
    return resize_frames(to_model_range(frames), resolution, antialias=antialias).clamp_(-1, 1)


def to_uint8_frames(x: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """float frames (..., 3, H, W) in `value_range` -> uint8 numpy (..., H, W, 3)."""
    lo, hi = value_range
    y = ((x.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1).mul(255).round().to(torch.uint8)
    return y.movedim(-3, -1).numpy()


def select_frames(num_frames: int, count: int, start: int = 0, skip: int = 1, whole_clip: bool = False) -> np.ndarray:
    """Frame ids for a prediction clip (make_prediction §5.2): `count` linspace frames over the whole video when
    `whole_clip`, else start, start+skip, ... with the last frame repeated when the video is too short. That padding
    (the original's, §5.2) is for clips that start inside the video and run past its end; a start outside the video
    would give a clip of one repeated frame (or, negative, frames counted from the end), so it is an error."""
    if num_frames < 1:
        raise ValueError("video has no frames")
    if whole_clip:
        return np.floor(np.linspace(0, num_frames - 1, count)).astype(np.int64)
    if not 0 <= start < num_frames:
        raise ValueError(f"start index {start} is outside the video's {num_frames} frames (valid: 0..{num_frames - 1})")
    ids = start + skip * np.arange(count, dtype=np.int64)
    return np.minimum(ids, num_frames - 1)
