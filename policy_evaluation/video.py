"""Rollout videos: static-camera frames with the current instruction written above them and a green (subtask
achieved) or red (subtask failed) border, written as mp4 with vpp_core.video_io.write_mp4.

Text is drawn with PIL when it is installed (it comes with diffusers); otherwise with a built-in 3x5 bitmap font.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

GREEN = (0, 200, 0)
RED = (220, 0, 0)
GREY = (128, 128, 128)
BORDER = 4
SCALE = 2  # 200x200 static frames are shown at 400x400
CAPTION_H = 34

# 3x5 bitmap font for the fallback renderer (rows top to bottom, 3 bits each, MSB = left column)
_FONT = {
    "a": "010101111101101", "b": "110101110101110", "c": "011100100100011", "d": "110101101101110",
    "e": "111100110100111", "f": "111100110100100", "g": "011100101101011", "h": "101101111101101",
    "i": "111010010010111", "j": "001001001101010", "k": "101101110101101", "l": "100100100100111",
    "m": "101111111101101", "n": "110101101101101", "o": "010101101101010", "p": "110101110100100",
    "q": "010101101110011", "r": "110101110101101", "s": "011100010001110", "t": "111010010010010",
    "u": "101101101101111", "v": "101101101101010", "w": "101101111111101", "x": "101101010101101",
    "y": "101101010010010", "z": "111001010100111", "0": "111101101101111", "1": "010110010010111",
    "2": "110001010100111", "3": "110001010001110", "4": "101101111001001", "5": "111100110001110",
    "6": "011100111101111", "7": "111001010010010", "8": "111101111101111", "9": "111101111001110",
    "/": "001001010100100", ":": "000010000010000", ".": "000000000000010", "-": "000000111000000",
    "_": "000000000000111", " ": "000000000000000",
}  # fmt: skip


def _bitmap_text(img: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int], px: int = 2) -> None:
    for ch in text.lower():
        glyph = _FONT.get(ch, _FONT[" "])
        for r in range(5):
            for c in range(3):
                if glyph[r * 3 + c] == "1":
                    img[y + r * px : y + (r + 1) * px, x + c * px : x + (c + 1) * px] = color
        x += 4 * px
        if x + 3 * px >= img.shape[1]:
            break


def _draw_text(img: np.ndarray, lines: Sequence[str], color=(255, 255, 255)) -> np.ndarray:
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        for i, line in enumerate(lines):
            _bitmap_text(img, line, 4, 4 + i * 14, color)
        return img
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # old Pillow
        font = ImageFont.load_default()
    for i, line in enumerate(lines):
        draw.text((4, 2 + i * 15), line, fill=color, font=font)
    return np.asarray(pil).copy()


def compose_frame(frame: np.ndarray, lines: Sequence[str], border: tuple[int, int, int]) -> np.ndarray:
    """Upscaled frame with a caption band above it and a coloured border around everything."""
    frame = np.asarray(frame, dtype=np.uint8)
    big = np.repeat(np.repeat(frame, SCALE, axis=0), SCALE, axis=1)
    h, w = big.shape[:2]
    caption = np.zeros((CAPTION_H, w, 3), dtype=np.uint8)
    caption = _draw_text(caption, lines)
    body = np.concatenate([caption, big], axis=0)
    out = np.empty((body.shape[0] + 2 * BORDER, w + 2 * BORDER, 3), dtype=np.uint8)
    out[:] = border
    out[BORDER:-BORDER, BORDER:-BORDER] = body
    return out


def rollout_video_frames(
    frames: Sequence[np.ndarray],
    frame_subtask: Sequence[int],
    tasks: Sequence[str],
    instructions: dict[str, str],
    result: int,
) -> np.ndarray:
    """(T, H, W, 3) uint8: each frame captioned with 'k/5 task' and its instruction, bordered green when that
    subtask was achieved, red when it failed (grey for the reset frame)."""
    out = []
    n = len(tasks)
    for frame, k in zip(frames, frame_subtask):
        if k < 0:
            lines, colour = [f"start ({n} tasks)", ""], GREY
        else:
            lines = [f"{k + 1}/{n} {tasks[k]}", instructions.get(tasks[k], "")]
            colour = GREEN if k < result else RED
        out.append(compose_frame(frame, lines, colour))
    return np.stack(out)


def write_rollout_video(
    path: str | Path,
    frames: Sequence[np.ndarray],
    frame_subtask: Sequence[int],
    tasks: Sequence[str],
    instructions: dict[str, str],
    result: int,
    fps: int = 30,
) -> Path:
    from vpp_core.video_io import write_mp4

    path = Path(path)
    write_mp4(path, rollout_video_frames(frames, frame_subtask, tasks, instructions, result), fps=fps)
    os.chmod(path, 0o644)  # the atomic writer's temp file is 0600
    return path
