"""In-process deploy wrapper for xbot-style robots (vpp_reference §9.5), with the original's method names.

    agent = XbotAgent(checkpoint_dir, video_model_path, clip_model_path, device="cuda:0")  # compiles: minutes
    delta = agent.run_3image(img_high, img_left, img_right, "place the bag", state)   # (1, 8, 38) normalised
    targets = agent.calculate_absolute_action(delta, state)                           # (8, 38) robot units

Differences from the original: the config comes from the checkpoint folder (the original composed
``conf/VPP_xbot_train.yaml``, a folder that does not exist), the statistics from its ``stats.json``, and
``calculate_absolute_action`` can compose quaternions properly for models trained with composed rotation deltas.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from deploy.images import letterbox_4x3
from deploy.server import embodiment_value, stats_of
from policy_models.normalization import Stats, absolute_actions, check_relative_mode

IMAGE_SIZE = 256  # step1_prepare_latent wrote 256 x 256 training videos (bilinear, no antialias, after letterboxing)

log = logging.getLogger(__name__)


class XbotAgent:
    """Load a stage-2 checkpoint (or take an injected ``policy``) and run it on three camera images + a 38-D state.

    Args:
        checkpoint_dir: stage-2 checkpoint folder (``config.yaml``, ``model.safetensors``, ``stats.json``).
        video_model_path / clip_model_path: stage-1 video model and CLIP text model folders (override the config).
        device: torch device (default ``cuda:0`` if available, else ``cpu``).
        policy: an already built policy (``predict_action_chunk`` + ``embodiment``); skips loading (tests).
        stats: a :class:`Stats`, a dict or a path; default ``{checkpoint_dir}/stats.json``.
        letterbox: pad uint8 frames to 4:3 before resizing, as the training videos were (default True).
        compile_mode / float32_matmul_precision / short_query_attention / fused_decoder: as the policy server's
            flags of these names (a loaded checkpoint runs the server's fast path: on CUDA one CUDA graph per chunk,
            TF32, the short-query attention kernels and compiled passes by default; ``compile_mode=None`` starts at
            once, with slower chunks; ``fused_decoder="auto"`` runs the decoder's Triton kernels where they can run).
        warm_up: answer one blank chunk before returning (:meth:`warm_up`). Default: when this agent compiled the
            policy, so that the minutes of compiling pass here rather than inside the robot's loop.
    """

    def __init__(self, checkpoint_dir: str | Path | None = None, video_model_path: str | None = None,
                 clip_model_path: str | None = None, device: str | None = None, *, policy: Any = None,
                 stats: Stats | dict | str | Path | None = None, use_ema: bool = False, dtype: Any = None,
                 letterbox: bool = True, compile_mode: str | None = "auto", float32_matmul_precision: str = "high",
                 short_query_attention: bool | str = "auto", fused_decoder: bool | str = "auto",
                 warm_up: bool | None = None):
        if device is None:
            device = "cuda:0" if torch.cuda.is_available() else "cpu"
        self.compile_mode: str | None = None  # how this agent compiled the policy it loaded (None: not compiled)
        if policy is None:
            if checkpoint_dir is None:
                raise ValueError("XbotAgent needs checkpoint_dir (or an injected policy=)")
            from policy_models.checkpoints import load_inference_policy
            from vpp_core.config import compile_setting, resolve_compile_setting

            compile_mode = resolve_compile_setting(compile_setting(compile_mode, "compile_mode"),
                                                   torch.device(device).type)
            self.compile_mode = compile_mode
            policy = load_inference_policy(str(checkpoint_dir), video_model_path, clip_model_path, device,
                                           use_ema=use_ema, compile_mode=compile_mode,
                                           float32_matmul_precision=float32_matmul_precision,
                                           short_query_attention=short_query_attention,
                                           fused_decoder=fused_decoder, dtype=dtype)
        self.policy = policy
        self.device = device
        emb = policy.embodiment
        self.cameras = list(embodiment_value(emb, "cameras", []))
        self.action_dim = int(embodiment_value(emb, "action_dim"))
        self.chunk_length = int(embodiment_value(emb, "chunk_length"))
        self.state_dim = int(embodiment_value(emb, "state_dim", 0) or 0)
        if len(self.cameras) != 3:  # checked before the stats: a CALVIN checkpoint has none, and that is not the cause
            raise ValueError(f"run_3image needs a 3-camera policy; this one is for embodiment "
                             f"{embodiment_value(emb, 'name', '?')!r} with cameras {self.cameras}")
        if stats is None:
            stats = stats_of(policy)  # load_policy attaches the checkpoint's stats.json
        if stats is None:
            ckpt = getattr(policy, "checkpoint_dir", None) or checkpoint_dir
            if ckpt is None:
                raise ValueError("no normalisation stats: pass stats= or a checkpoint_dir holding stats.json")
            stats = Path(ckpt) / "stats.json"
            if not stats.is_file():
                raise FileNotFoundError(f"{stats} not found: xbot-style checkpoints carry the state/action "
                                        "percentiles there (written by step2_prepare_json.py + the trainer)")
        if isinstance(stats, (str, Path)):
            stats = Stats.load(stats)
        elif isinstance(stats, dict):
            stats = Stats.from_dict(stats)
        self.stats: Stats = stats

        if self.stats.action_dim != self.action_dim or (self.state_dim and self.stats.state_dim != self.state_dim):
            raise ValueError(f"stats dims (state {self.stats.state_dim}, action {self.stats.action_dim}) do not match "
                             f"the policy (state {self.state_dim}, action {self.action_dim})")
        self.letterbox = letterbox
        # the original attribute names
        self.action_01, self.action_99 = self.stats.action_01, self.stats.action_99
        self.state_01, self.state_99 = self.stats.state_01, self.stats.state_99
        if warm_up is None:
            warm_up = self.compile_mode is not None
        if warm_up:
            if self.compile_mode is not None:
                log.info("compiling the policy (%s) on a blank chunk: minutes at full size (compile_mode=None starts "
                         "at once, with slower chunks)", self.compile_mode)
            log.info("warmed up in %.1f s", self.warm_up())

    def warm_up(self, instruction: str = "warm up") -> float:
        """Run one chunk on black frames and a zero state, and return the seconds it took. The policy compiles (when
        asked to) and captures its CUDA graph on its first chunk; every frame is resized to the same size before the
        policy, so after this the robot's first chunk runs as fast as the rest."""
        black = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        t0 = time.perf_counter()
        self.run_3image(black, black, black, instruction, np.zeros(self.stats.state_dim))
        return time.perf_counter() - t0

    # ------------------------------------------------------------------------------------------------------------------
    def _policy_device(self):
        dev = getattr(self.policy, "device", None)
        return torch.device(dev) if isinstance(dev, (str, torch.device)) else torch.device("cpu")

    def preprocess_image(self, image: Any, name: str = "image") -> torch.Tensor:
        """(1, 1, 3, H, W) / (1, 3, H, W) / (3, H, W) float in [-1, 1], or uint8 (H, W, 3) / (1, H, W, 3)
        -> float32 (1, 3, 256, 256) in [-1, 1], prepared like the training videos (the policy then resizes to
        its video model's resolution). The frame goes to the policy's device first (as uint8, where it is one), and
        the conversion and the resize run there: on the CPU, three 480 x 640 frames took 8.6 ms of each call on a
        2-core machine."""
        device = self._policy_device()
        if isinstance(image, torch.Tensor):
            x = image.detach()
        else:
            x = torch.from_numpy(np.ascontiguousarray(image))
        if x.dtype == torch.uint8:
            arr = x.cpu().numpy()
            while arr.ndim > 3 and arr.shape[0] == 1:
                arr = arr[0]
            if arr.ndim != 3 or arr.shape[2] != 3:
                raise ValueError(f"{name}: uint8 images must be (H, W, 3) (or with leading 1-axes), "
                                 f"got {tuple(image.shape)}")
            if self.letterbox:
                arr = letterbox_4x3(arr)
            x = torch.from_numpy(np.ascontiguousarray(arr)).to(device).permute(2, 0, 1).float().div(127.5).sub(1.0)
        elif x.is_floating_point():
            while x.ndim > 3 and x.shape[0] == 1:
                x = x[0]
            if x.ndim != 3 or x.shape[0] != 3:
                raise ValueError(f"{name}: float images must be (1, 1, 3, H, W), (1, 3, H, W) or (3, H, W), "
                                 f"got {tuple(image.shape)}")
            x = x.to(device).float()
            lo, hi = float(x.min()), float(x.max())
            if lo < -1.01 or hi > 1.01:
                raise ValueError(f"{name}: float images must be in [-1, 1], got range [{lo:.3g}, {hi:.3g}] "
                                 "(pass uint8 (H, W, 3) frames for 0..255 data)")
        else:
            raise ValueError(f"{name}: unsupported dtype {x.dtype} (use uint8 HWC or float in [-1, 1])")
        x = x[None]
        if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
        return x

    def _state(self, state: Any) -> np.ndarray:
        s = np.asarray(state.cpu() if isinstance(state, torch.Tensor) else state, dtype=np.float64)
        if s.size != self.stats.state_dim:
            raise ValueError(f"state: expected {self.stats.state_dim} values ((1, 1, {self.stats.state_dim}) raw), "
                             f"got shape {s.shape}")
        if not np.all(np.isfinite(s)):
            raise ValueError("state: contains NaN or inf")
        return s.reshape(self.stats.state_dim)

    @torch.inference_mode()
    def run_3image(self, image1: Any, image2: Any, image3: Any, text: str, state: Any) -> np.ndarray:
        """Images of cam_high, cam_left, cam_right + instruction + raw state (1, 1, 38) -> (1, 8, 38) numpy
        *normalised relative* actions (feed them to :meth:`calculate_absolute_action`)."""
        rgb = {cam: self.preprocess_image(img, f"image{i + 1}")
               for i, (cam, img) in enumerate(zip(self.cameras, (image1, image2, image3)))}
        obs: dict[str, Any] = {"rgb_obs": rgb}
        if self.state_dim:
            norm = self.stats.normalize_state(self._state(state)).astype(np.float32)
            obs["state_obs"] = torch.from_numpy(norm).reshape(1, -1).to(self._policy_device())
        out = self.policy.predict_action_chunk(obs, text)
        out = out.detach().float().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out, np.float32)
        expected = (1, self.chunk_length, self.action_dim)
        if out.shape != expected:
            raise RuntimeError(f"policy returned actions of shape {out.shape}, expected {expected}")
        return out.astype(np.float32)

    def calculate_absolute_action(self, delta: Any, state: Any, quaternion_mode: str | None = None,
                                  quat_order: str | None = None) -> np.ndarray:
        """Normalised relative actions (1, 8, 38) or (8, 38) + raw state -> absolute targets (8, 38).

        ``quaternion_mode="componentwise"`` is the original: de-normalise and add every dimension, quaternion
        components included (the sum is not a unit quaternion; the original sent it as is). ``"compose"`` treats
        the arm rotation deltas as quaternions, ``q_target = q_delta * q_state``, and is only meaningful for a model
        trained on composed deltas (``step2_prepare_json.py --quaternion_mode compose``). Default: the mode recorded
        in the stats; asking for another mode is an error, because the deltas would be misread.
        """
        mode = quaternion_mode or self.stats.relative_mode
        order = quat_order or self.stats.quat_order
        check_relative_mode(mode, order)
        if mode != self.stats.relative_mode:
            raise ValueError(f"quaternion_mode={mode!r} but this model's actions were built with "
                             f"relative_mode={self.stats.relative_mode!r} (see stats.json); converting them with "
                             "another mode would misread the rotation deltas")
        if mode == "compose" and order != self.stats.quat_order:
            raise ValueError(f"quat_order={order!r} but the stats were computed with quat_order="
                             f"{self.stats.quat_order!r}")
        d = np.asarray(delta.cpu() if isinstance(delta, torch.Tensor) else delta, dtype=np.float64)
        if d.shape not in ((1, self.chunk_length, self.action_dim), (self.chunk_length, self.action_dim)):
            raise ValueError(f"delta: expected shape (1, {self.chunk_length}, {self.action_dim}), got {d.shape}")
        raw = self.stats.denormalize_action(d.reshape(self.chunk_length, self.action_dim))
        return absolute_actions(raw, self._state(state), mode, order, self.stats.pose_slices)

    caculate_absolute_action = calculate_absolute_action  # the original (misspelled) name
