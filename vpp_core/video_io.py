"""Video reading and writing with PyAV (mp4/h264, webm/vp9, anything FFmpeg decodes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vpp_core.io import atomic_write


class VideoReadError(RuntimeError):
    """A video is missing, corrupt or has no decodable frames. Carries the path so batch jobs can report and skip."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read video {self.path}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int


def _open(path: Path):
    import av

    if not path.is_file():
        raise VideoReadError(path, "file does not exist")
    try:
        return av.open(str(path))
    except Exception as exc:  # PyAV raises InvalidDataError, FFmpegError, ... for broken files
        raise VideoReadError(path, f"{type(exc).__name__}: {exc}") from exc


def read_video(path: str | Path, indices: Sequence[int] | None = None) -> np.ndarray:
    """Decode a video to uint8 RGB frames (T, H, W, 3); `indices` selects frames (repeats allowed)."""
    path = Path(path)
    container = _open(path)
    frames: list[np.ndarray] = []
    try:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
    except VideoReadError:
        raise
    except Exception as exc:
        raise VideoReadError(path, f"decoding failed after {len(frames)} frames: {exc}") from exc
    finally:
        container.close()
    if not frames:
        raise VideoReadError(path, "no decodable frames")
    video = np.stack(frames)
    if indices is None:
        return video
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= len(video)):
        raise VideoReadError(path, f"frame index out of range: max {int(idx.max())} for {len(video)} frames")
    return video[idx]


def video_info(path: str | Path) -> VideoInfo:
    """Frame count (decoded, so exact even when the container header lies), fps and size."""
    video = read_video(path)
    container = _open(Path(path))
    try:
        rate = container.streams.video[0].average_rate
        fps = float(rate) if rate else 0.0
    finally:
        container.close()
    return VideoInfo(num_frames=len(video), fps=fps, height=video.shape[1], width=video.shape[2])


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 10, crf: int = 18) -> None:
    """Write uint8 RGB frames (T, H, W, 3) as h264 mp4, atomically. Odd sizes are padded by one pixel (yuv420p)."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_mp4 expects (T, H, W, 3) frames, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"write_mp4 expects uint8 frames, got {frames.dtype}")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path = Path(path)
    with atomic_write(path) as tmp:
        container = av.open(str(tmp), mode="w", format="mp4")
        try:
            stream = container.add_stream("libx264", rate=int(fps))
            stream.height, stream.width = frames.shape[1], frames.shape[2]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf)}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        finally:
            container.close()
