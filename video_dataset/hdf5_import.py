"""Importer for the RobotEra teleop HDF5 layout (the original `step1_prepare_latent.py`, vpp_reference §2.1).

Every value the original hard-coded is an option here (defaults = the original's values):

  file layout   {raw_dir}/{subfolder}/*.hdf5 (sorted; a running file index across subfolders in sorted order)
  cameras       /observations/images/{cam_high, cam_left, cam_right} -> camera indices 0, 1, 2
  images        raw uint8 (T, H, W, 3) arrays, or encoded JPEG/PNG rows when the root attribute `compress` is true
  colour        compressed rows are decoded the way OpenCV does (BGR channel order), which the original kept;
                `bgr_to_rgb=True` reverses the channel order of the frames (compressed or raw)
  text          /text[0] (bytes decoded as UTF-8); `text` overrides it for every file (the original overwrote it
                with "place white bag in left and black bag in right")
  split         "val" if file_index % val_every == val_offset (50, 4) else "train"
  episode id    episode_id_stride * file_index (5 * file_num; the original's single temporal phase j = 0)
  subsampling   every `frame_step`-th frame from 0 (50 Hz -> 10 Hz)
  geometry      black letterbox to 4:3, then bilinear resize to resolution x resolution
  state         concatenation of slices, default arm_end_pose[:7], hand_qpos[:12], arm_end_pose[7:], hand_qpos[12:]
                (right arm, right hand, left arm, left hand; 38-D), with hand_qpos 24-D and arm_end_pose 14-D checked
  action        /action, subsampled, stored as is

Writes videos/{split}/{id}/{cam}.mp4 (uint8, `fps`), latent_videos/{split}/{id}/{cam}.pt (when a VAE is given) and
annotation/{split}/{id}.json (last, atomically: an existing json marks the episode finished).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from video_dataset.latent_prep import ENCODING_KEY, EncodeOptions, PrepareReport, encoding_record, episode_generator
from video_dataset.transforms import preprocess_frames, to_uint8_frames
from vpp_core.io import atomic_json_dump, atomic_torch_save
from vpp_core.video_io import write_mp4

if TYPE_CHECKING:
    import h5py
    from diffusers import AutoencoderKLTemporalDecoder

DEFAULT_STATE_SPEC = "arm_end_pose[:7],hand_qpos[:12],arm_end_pose[7:],hand_qpos[12:]"
_SPEC_RE = re.compile(r"^\s*([A-Za-z0-9_/]+)\s*(?:\[\s*(-?\d*)\s*:\s*(-?\d*)\s*\])?\s*$")


@dataclass
class Hdf5ImportOptions:
    cameras: tuple[str, ...] = ("cam_high", "cam_left", "cam_right")
    subfolders: tuple[str, ...] | None = None  # None: every subfolder of raw_dir (the original forced two)
    frame_step: int = 5
    val_every: int = 50
    val_offset: int = 4
    episode_id_stride: int = 5
    text: str | None = None
    bgr_to_rgb: bool = False
    letterbox: bool = True
    antialias: bool = True  # the original resized without antialiasing; pass False to reproduce it
    resolution: int = 256
    fps: int = 10
    state_spec: str = DEFAULT_STATE_SPEC
    check_dims: dict[str, int] = field(default_factory=lambda: {"hand_qpos": 24, "arm_end_pose": 14})
    observation_group: str = "observations"
    action_key: str = "action"
    text_key: str = "text"
    task: str = "robot_trajectory_prediction"
    sample: bool = True
    chunk_size: int = 64
    seed: int = 0


def parse_state_spec(spec: str) -> list[tuple[str, slice]]:
    """ "a[:7],b[12:],c" -> [("a", slice(None, 7)), ("b", slice(12, None)), ("c", slice(None))]."""
    parts = []
    for item in spec.split(","):
        m = _SPEC_RE.match(item)
        if not m:
            raise ValueError(f"cannot parse state spec item {item!r} (expected name or name[start:stop])")
        name, a, b = m.groups()
        parts.append((name, slice(int(a) if a else None, int(b) if b else None)))
    return parts


def _decode_image(row) -> np.ndarray:
    """Decode one encoded image row into an RGB array (PIL), whatever trailing padding it carries."""
    from PIL import Image

    data = row.tobytes() if isinstance(row, np.ndarray) else bytes(row)
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def read_camera(f: h5py.File, options: Hdf5ImportOptions, cam: str) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of one camera, every frame (subsampling happens later)."""
    key = f"{options.observation_group}/images/{cam}"
    if key not in f:
        raise KeyError(
            f"camera dataset /{key} not found (cameras present: {list(f[options.observation_group + '/images'])})"
        )
    data = f[key]
    compressed = bool(f.attrs.get("compress", False))
    if compressed:
        # RGB as decoded by PIL, reversed to the BGR order that cv2.imdecode (used by the original) returns
        frames = np.stack([_decode_image(row)[..., ::-1] for row in data[()]])
    else:
        frames = np.asarray(data[()])
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"/{key}: expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if options.bgr_to_rgb:
        frames = frames[..., ::-1]
    return np.ascontiguousarray(frames)


def _read_text(f, options: Hdf5ImportOptions) -> str:
    if options.text is not None:
        return options.text
    if options.text_key not in f:
        raise KeyError(f"no /{options.text_key} dataset; pass a text override")
    value = f[options.text_key][()]
    first = value.flat[0] if isinstance(value, np.ndarray) else value
    text = first.decode("utf-8") if isinstance(first, bytes | np.bytes_) else str(first)
    if not text.strip():
        raise ValueError(f"/{options.text_key} is empty; pass a text override")
    return text


def read_state(f: h5py.File, options: Hdf5ImportOptions) -> np.ndarray:
    obs = f[options.observation_group]
    for name, dim in options.check_dims.items():
        if name in obs and obs[name].shape[-1] != dim:
            raise ValueError(f"/{options.observation_group}/{name} is {obs[name].shape[-1]}-D, expected {dim}")
    parts, lengths = [], {}
    for name, sl in parse_state_spec(options.state_spec):
        if name not in obs:
            raise KeyError(
                f"state source /{options.observation_group}/{name} not found (state_spec {options.state_spec!r})"
            )
        parts.append(np.asarray(obs[name][()], dtype=np.float64)[:, sl])
        lengths[f"/{options.observation_group}/{name}"] = len(parts[-1])
    if len(set(lengths.values())) > 1:
        found = ", ".join(f"{k} {n}" for k, n in lengths.items())
        raise ValueError(f"state sources have different frame counts: {found}")
    return np.concatenate(parts, axis=1)


def check_frame_counts(
    actions: np.ndarray, states: np.ndarray, cams: Sequence[np.ndarray], options: Hdf5ImportOptions
) -> None:
    """Actions, states and every camera must have one row per recorded frame (checked before subsampling, which could
    hide a difference): otherwise the annotation would pair frames with the wrong states and actions."""
    counts = {f"/{options.action_key}": len(actions), f"states (/{options.observation_group})": len(states)}
    counts.update({f"/{options.observation_group}/images/{cam}": len(frames)
                   for cam, frames in zip(options.cameras, cams)})
    if len(set(counts.values())) > 1:
        raise ValueError(f"frame counts differ: {', '.join(f'{k} {n}' for k, n in counts.items())}")


def list_hdf5_files(raw_dir: Path, subfolders: Sequence[str] | None) -> list[Path]:
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"raw data folder not found: {raw_dir}")
    folders = [raw_dir / s for s in subfolders] if subfolders else sorted(p for p in raw_dir.iterdir() if p.is_dir())
    if not folders:
        folders = [raw_dir]
    files = []
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"subfolder not found: {folder}")
        files.extend(sorted(p for p in folder.iterdir() if p.suffix in (".hdf5", ".h5")))
    return files


def import_hdf5(
    raw_dir: str | Path,
    out_dir: str | Path,
    vae: AutoencoderKLTemporalDecoder | None = None,
    options: Hdf5ImportOptions | None = None,
    annotation_name: str = "annotation",
    overwrite: bool = False,
    progress: bool = True,
) -> PrepareReport:
    """Convert teleop HDF5 episodes into the stage-1 layout (videos, latents when `vae` is given, annotation json)."""
    import h5py
    from tqdm.auto import tqdm

    from video_models.pipeline import encode_frames

    options = options or Hdf5ImportOptions()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    parse_state_spec(options.state_spec)  # fail before touching any file
    files = list_hdf5_files(raw_dir, options.subfolders)
    enc = EncodeOptions(
        resolution=options.resolution,
        letterbox=options.letterbox,
        antialias=options.antialias,
        sample=options.sample,
        chunk_size=options.chunk_size,
        seed=options.seed,
    )
    record = encoding_record(vae, enc) if vae is not None else None
    report = PrepareReport()
    bar = tqdm(list(enumerate(files)), desc="importing hdf5", unit="episode", disable=not progress)
    for file_num, path in bar:
        split = "val" if file_num % options.val_every == options.val_offset else "train"
        episode = options.episode_id_stride * file_num
        out_json = out_dir / annotation_name / split / f"{episode}.json"
        if out_json.is_file() and not overwrite:
            report.skipped.append(str(path))
            continue
        try:
            with h5py.File(path, "r") as f:
                text = _read_text(f, options)
                actions = np.asarray(f[options.action_key][()], dtype=np.float64)
                states = read_state(f, options)
                cams = [read_camera(f, options, cam) for cam in options.cameras]
            check_frame_counts(actions, states, cams, options)
        except Exception as exc:  # h5py raises OSError/KeyError/ValueError for broken or foreign files
            report.failed.append((str(path), f"{type(exc).__name__}: {exc}"))
            continue
        step = options.frame_step
        actions, states, cams = actions[::step], states[::step], [frames[::step] for frames in cams]
        videos, latents = [], []
        for k, frames in enumerate(cams):
            pixels = preprocess_frames(
                frames, options.resolution, letterbox=options.letterbox, antialias=options.antialias
            )
            rel_video = f"videos/{split}/{episode}/{k}.mp4"
            write_mp4(out_dir / rel_video, to_uint8_frames(pixels, (-1.0, 1.0)), fps=options.fps)
            videos.append({"video_path": rel_video})
            if vae is not None:
                rel_latent = f"latent_videos/{split}/{episode}/{k}.pt"
                z = encode_frames(
                    vae,
                    pixels,
                    sample=enc.sample,
                    chunk_size=enc.chunk_size,
                    generator=episode_generator(enc.seed, f"{split}/{episode}/{k}"),
                )
                atomic_torch_save(z, out_dir / rel_latent)
                latents.append({"latent_video_path": rel_latent})
        ann = {
            "task": options.task,
            "texts": [text],
            "videos": videos,
            "episode_id": episode,
            "video_length": int(len(actions)),
        }
        if latents:
            ann["latent_videos"] = latents
            ann[ENCODING_KEY] = record
        ann["states"] = states.tolist()
        ann["actions"] = actions.tolist()
        atomic_json_dump(ann, out_json)
        report.encoded.append(str(path))
        bar.set_postfix(done=len(report.encoded), failed=len(report.failed))
    return report
