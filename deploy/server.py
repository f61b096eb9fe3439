"""Websocket + msgpack policy server (openpi style) around any object with ``predict_action_chunk`` + ``embodiment``.

Protocol (one websocket connection, binary msgpack messages, ndarrays as in deploy/wire.py):

* on connect the server sends its metadata: cameras, expected image shapes, state/action dims, chunk length, how the
  actions are expressed, limits, whether a token is required, server + protocol version;
* request ``{"observation": {"rgb_obs": {cam: uint8 (H, W, 3)}, "state_obs": float (D,) or (1, D)},
  "instruction": str, "token": str (only when the server has one)}``;
* reply ``{"actions": float32 (chunk_length, action_dim), "server_timing": {"infer_ms", "wait_ms", "total_ms"}}``
  or ``{"error": {"field": "observation.rgb_obs.cam", "message": "..."}}``; after an error the connection stays
  usable and the server keeps serving everybody else.

Inference runs on one worker thread under a lock (the model is not re-entrant); the event loop keeps reading,
validating and answering errors for other clients meanwhile, and a client that disappears mid-request only loses
its own reply. With normalisation stats (xbot-style checkpoints) the raw state is normalised before the policy and
the actions are de-normalised afterwards: the reply then holds *relative* actions in the robot's units, which the
robot adds to the state it sent (see deploy/robot_loop_example.py, policy_models.normalization.absolute_actions).

    python -m deploy.server --checkpoint RUN/checkpoints/step_0010000 --video_model_path SVD --clip_model_path CLIP
    python -m deploy.server --fake          # a fake policy, to try clients and robot loops without a model

The default bind address is 127.0.0.1; serving on a network (``--host 0.0.0.0``) should use ``--token`` (or the
``VPP_POLICY_TOKEN`` environment variable) and a trusted network or an SSH tunnel: the transport is plain ws://.
At most ``--max_clients`` connections are open at once (more are closed with code 1013 and the reason);
``--idle_timeout_s`` closes connections that stay silent that long, and ``--infer_timeout_s`` answers with an error
when a chunk takes longer (both off by default).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import hmac
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from deploy import PROTOCOL_VERSION, __version__
from deploy.wire import WireError, packb, unpackb

if TYPE_CHECKING:
    from policy_models.normalization import Stats

log = logging.getLogger("deploy.server")

REQUEST_KEYS = ("observation", "instruction", "token")
OBSERVATION_KEYS = ("rgb_obs", "state_obs")
STATE_DTYPES = (np.float32, np.float64)


class RequestError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def embodiment_value(embodiment: Any, key: str, default: Any = None) -> Any:
    """Read ``key`` from an embodiment given as an object, a dict or an OmegaConf node."""
    if isinstance(embodiment, Mapping):
        return embodiment.get(key, default)
    return getattr(embodiment, key, default)


def _shape_list(shape: Sequence[int | None] | None) -> list[int | None]:
    return [None, None, 3] if shape is None else [int(s) if s is not None else None for s in shape]


class PolicyServer:
    """Serve ``policy`` (``predict_action_chunk(obs, instruction)``, ``embodiment``) over websockets.

    Args:
        stats: :class:`policy_models.normalization.Stats` to normalise the state in and de-normalise the actions
            out; ``"auto"`` (default): the stats the policy carries (``load_policy`` attaches stats.json), if any;
            ``None``: pass states and actions through unchanged.
        image_shapes: ``{camera: (H, W, 3)}`` to require exact image sizes (default: the embodiment's
            ``image_shapes`` if it has one, else any ``(H, W, 3)`` uint8 image up to ``max_image_side``).
        token: shared secret every request must carry (``None``: no token).
        max_request_bytes: larger requests get an error reply; requests beyond twice that size close the
            connection (websocket close code 1009) without being buffered.
        max_clients: connections beyond this many at once are closed at once with code 1013 ("try again later")
            and a reason naming the limit, so idle or forgotten clients cannot pile up without bound.
        idle_timeout_s: close a connection that sends nothing for this long (code 1000, reason "idle"); ``None``
            (default) keeps idle connections open, since a robot may wait minutes between episodes.
        infer_timeout_s: answer a request with an error when no chunk came within this long (queue included); a
            request still queued then is dropped, and while the model has been busy with one request for longer,
            new requests are answered with an error at once instead of queueing behind a model that may hang.
            ``None`` (default): wait for the model however long it takes.
    """

    def __init__(self, policy: Any, *, stats: Any = "auto", host: str = "127.0.0.1", port: int = 8000,
                 token: str | None = None, max_request_bytes: int = 32 * 2**20,
                 image_shapes: Mapping[str, Sequence[int]] | None = None, max_image_side: int = 4096,
                 max_instruction_chars: int = 2048, max_clients: int = 16, idle_timeout_s: float | None = None,
                 infer_timeout_s: float | None = None, name: str = "vpp-policy"):
        emb = getattr(policy, "embodiment", None)
        if emb is None or not hasattr(policy, "predict_action_chunk"):
            raise TypeError("policy must have `predict_action_chunk(obs, instruction)` and an `embodiment`")
        self.policy = policy
        self.cameras = [str(c) for c in embodiment_value(emb, "cameras", [])]
        if not self.cameras:
            raise ValueError("policy.embodiment.cameras is empty")
        self.action_dim = int(embodiment_value(emb, "action_dim"))
        self.chunk_length = int(embodiment_value(emb, "chunk_length"))
        self.state_dim = int(embodiment_value(emb, "state_dim", 0) or 0)
        shapes = image_shapes if image_shapes is not None else embodiment_value(emb, "image_shapes", None)
        self.image_shapes = {c: (tuple(int(s) for s in shapes[c]) if shapes and c in shapes else None)
                             for c in self.cameras}
        for cam, shp in self.image_shapes.items():
            if shp is not None and (len(shp) != 3 or shp[2] != 3):
                raise ValueError(f"image_shapes[{cam}] must be (H, W, 3), got {shp}")
        if isinstance(stats, str) and stats == "auto":
            stats = stats_of(policy)
        self.stats = stats
        self.resolution = getattr(policy, "resolution", None)
        if stats is not None:
            if stats.action_dim != self.action_dim:
                raise ValueError(f"stats have {stats.action_dim} action dims, the policy {self.action_dim}")
            if self.state_dim and stats.state_dim != self.state_dim:
                raise ValueError(f"stats have {stats.state_dim} state dims, the policy {self.state_dim}")
        self.host, self.port, self.token, self.name = host, int(port), token, name
        self.max_request_bytes = int(max_request_bytes)
        self.max_image_side = int(max_image_side)
        self.max_instruction_chars = int(max_instruction_chars)
        if int(max_clients) < 1:
            raise ValueError(f"max_clients must be at least 1, got {max_clients}")
        for key, value in (("idle_timeout_s", idle_timeout_s), ("infer_timeout_s", infer_timeout_s)):
            if value is not None and not value > 0:
                raise ValueError(f"{key} must be positive or None, got {value}")
        self.max_clients = int(max_clients)
        self.idle_timeout_s = None if idle_timeout_s is None else float(idle_timeout_s)
        self.infer_timeout_s = None if infer_timeout_s is None else float(infer_timeout_s)
        self._busy_since: float | None = None  # time.monotonic() when the running request reached the model
        self.clients_connected = 0
        self._lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-infer")
        self.requests_served = 0
        self.requests_rejected = 0

    # ------------------------------------------------------------------------------------------------------------------
    @property
    def metadata(self) -> dict[str, Any]:
        md: dict[str, Any] = {
            "server": self.name,
            "server_version": __version__,
            "protocol_version": PROTOCOL_VERSION,
            "cameras": list(self.cameras),
            "image_shapes": {c: _shape_list(s) for c, s in self.image_shapes.items()},
            "image_dtype": "uint8",
            "model_resolution": self.resolution if isinstance(self.resolution, int) else None,
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "chunk_length": self.chunk_length,
            "max_request_bytes": self.max_request_bytes,
            "max_instruction_chars": self.max_instruction_chars,
            "max_clients": self.max_clients,
            "idle_timeout_s": self.idle_timeout_s,
            "infer_timeout_s": self.infer_timeout_s,
            "token_required": self.token is not None,
            "request_keys": {"observation": {"rgb_obs": list(self.cameras),
                                             **({"state_obs": [self.state_dim]} if self.state_dim else {})},
                             "instruction": "str", "token": "str (when token_required)"},
        }
        if self.stats is not None:
            md["actions"] = "relative to the sent state, de-normalised (robot units)"
            md["relative_mode"] = self.stats.relative_mode
            md["quat_order"] = self.stats.quat_order
            md["pose_slices"] = [list(s) for s in self.stats.pose_slices]
        else:
            md["actions"] = "as produced by the policy"
        return md

    # ------------------------------------------------------------------------------------------------------------------
    def validate(self, request: Any) -> tuple[dict[str, Any], str]:
        """Check a decoded request against the metadata; returns (policy observation, instruction)."""
        if not isinstance(request, dict):
            raise RequestError("request", f"expected a map with keys {list(REQUEST_KEYS[:2])}, "
                                          f"got {type(request).__name__}")
        if self.token is not None:
            tok = request.get("token")
            if not isinstance(tok, str) or not hmac.compare_digest(tok.encode(), self.token.encode()):
                raise RequestError("token", "missing or invalid token")
        for key in request:
            if key not in REQUEST_KEYS:
                raise RequestError(str(key), f"unknown request key; allowed: {list(REQUEST_KEYS)}")
        obs = request.get("observation")
        if obs is None:
            raise RequestError("observation", "missing")
        if not isinstance(obs, dict):
            raise RequestError("observation", f"expected a map, got {type(obs).__name__}")
        for key in obs:
            if key not in OBSERVATION_KEYS or (key == "state_obs" and not self.state_dim):
                allowed = ["rgb_obs"] + (["state_obs"] if self.state_dim else [])
                raise RequestError(f"observation.{key}", f"unknown observation key; allowed: {allowed}")
        rgb = obs.get("rgb_obs")
        if not isinstance(rgb, dict):
            raise RequestError("observation.rgb_obs", "missing or not a map of camera name -> image")
        for cam in rgb:
            if cam not in self.image_shapes:
                raise RequestError(f"observation.rgb_obs.{cam}", f"unknown camera; expected {self.cameras}")
        images = {}
        for cam in self.cameras:
            field = f"observation.rgb_obs.{cam}"
            img = rgb.get(cam)
            if img is None:
                raise RequestError(field, "missing camera image")
            if not isinstance(img, np.ndarray):
                raise RequestError(field, f"expected an ndarray, got {type(img).__name__}")
            if img.dtype != np.uint8:
                raise RequestError(field, f"expected dtype uint8, got {img.dtype}")
            expected = self.image_shapes[cam]
            if expected is not None and img.shape != expected:
                raise RequestError(field, f"expected shape {expected}, got {img.shape}")
            if img.ndim != 3 or img.shape[2] != 3 or not (0 < img.shape[0] <= self.max_image_side
                                                          and 0 < img.shape[1] <= self.max_image_side):
                raise RequestError(field, f"expected shape (H, W, 3) with 0 < H, W <= {self.max_image_side}, "
                                          f"got {img.shape}")
            images[cam] = img[None]  # (1, H, W, 3)
        policy_obs: dict[str, Any] = {"rgb_obs": images}
        if self.state_dim:
            field = "observation.state_obs"
            state = obs.get("state_obs")
            if state is None:
                raise RequestError(field, f"missing (this policy needs a ({self.state_dim},) state)")
            if not isinstance(state, np.ndarray):
                raise RequestError(field, f"expected an ndarray, got {type(state).__name__}")
            if state.dtype not in STATE_DTYPES:
                raise RequestError(field, f"expected dtype float32 or float64, got {state.dtype}")
            if state.shape not in ((self.state_dim,), (1, self.state_dim)):
                raise RequestError(field, f"expected shape ({self.state_dim},) or (1, {self.state_dim}), "
                                          f"got {state.shape}")
            if not np.all(np.isfinite(state)):
                raise RequestError(field, "contains NaN or inf")
            if np.abs(state).max(initial=0.0) > np.finfo(np.float32).max:  # would become inf as float32
                raise RequestError(field, "has values beyond the float32 range")
            state = state.reshape(1, self.state_dim).astype(np.float32)
            if self.stats is not None:
                state = self.stats.normalize_state(state).astype(np.float32)
            policy_obs["state_obs"] = _to_torch_if_available(state)
        instruction = request.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            raise RequestError("instruction", "missing or not a non-empty string")
        if len(instruction) > self.max_instruction_chars:
            raise RequestError("instruction", f"longer than {self.max_instruction_chars} characters")
        return policy_obs, instruction

    def infer(self, policy_obs: dict[str, Any], instruction: str,
              queued_at: float | None = None) -> tuple[np.ndarray, dict[str, float]]:
        """Run the policy (thread-safe); returns ((chunk_length, action_dim) float32, timing). `queued_at`
        (time.perf_counter) is when the request was handed to the worker, so that `wait_ms` includes its queue."""
        t_wait = time.perf_counter() if queued_at is None else queued_at
        with self._lock:
            t0 = time.perf_counter()
            self._busy_since = time.monotonic()
            try:
                with _no_grad():
                    out = self.policy.predict_action_chunk(policy_obs, instruction)
                if hasattr(out, "detach"):  # the copy to the host waits for the GPU: infer_ms includes its work
                    out = out.detach().float().cpu().numpy()
            finally:
                self._busy_since = None
            t1 = time.perf_counter()
        actions = np.asarray(out, dtype=np.float32)
        if actions.shape == (1, self.chunk_length, self.action_dim):
            actions = actions[0]
        if actions.shape != (self.chunk_length, self.action_dim):
            raise RuntimeError(f"policy returned actions of shape {actions.shape}, expected "
                               f"(1, {self.chunk_length}, {self.action_dim})")
        if self.stats is not None:
            actions = np.asarray(self.stats.denormalize_action(actions), dtype=np.float32)
        if not np.all(np.isfinite(actions)):  # never send a robot NaN or inf targets
            raise RuntimeError("the policy returned non-finite actions")
        return actions, {"wait_ms": (t0 - t_wait) * 1e3, "infer_ms": (t1 - t0) * 1e3}

    def warm_up(self, instruction: str = "warm up") -> float:
        """Answer one blank request (black frames of each camera's `image_shapes`, else of the model's resolution; a
        zero state) through the request path, and return the seconds it took. With a compiled policy the first chunk
        compiles for minutes at full size, far beyond a client's reply timeout; warmed up before serving, the first
        client only waits for the CUDA graph of its own frame sizes, if those differ."""
        frames = {}
        for cam, shape in self.image_shapes.items():
            if shape is None and not isinstance(self.resolution, int):
                raise ValueError(f"cannot warm up: camera {cam!r} has no image_shapes and the policy no resolution")
            frames[cam] = np.zeros(shape or (self.resolution, self.resolution, 3), dtype=np.uint8)
        observation: dict[str, Any] = {"rgb_obs": frames}
        if self.state_dim:
            observation["state_obs"] = np.zeros(self.state_dim, dtype=np.float32)
        request = {"observation": observation, "instruction": instruction, "token": self.token}
        t0 = time.perf_counter()
        self.infer(*self.validate(request))
        return time.perf_counter() - t0

    async def handle_message(self, message: bytes | str) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            if isinstance(message, str):
                raise RequestError("request", "expected a binary msgpack message, got a text frame")
            if len(message) > self.max_request_bytes:
                raise RequestError("request", f"{len(message)} bytes exceed max_request_bytes="
                                              f"{self.max_request_bytes} (see the image shapes in the metadata)")
            try:
                request = unpackb(message, what="request")
            except WireError as e:
                raise RequestError(e.field or "request", e.message) from None
            policy_obs, instruction = self.validate(request)
        except RequestError as e:
            log.info("rejected request: %s", e)
            return self._reject(e.field, e.message)
        busy_since = self._busy_since
        if self.infer_timeout_s is not None and busy_since is not None:
            busy_s = time.monotonic() - busy_since
            if busy_s > self.infer_timeout_s:
                return self._reject("policy", f"the model has been running one request for {busy_s:.0f} s, beyond "
                                              f"infer_timeout_s={self.infer_timeout_s:g}; it may hang (restart the "
                                              "server if this persists)")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self.infer, policy_obs, instruction, time.perf_counter())
        done, _ = await asyncio.wait({future}, timeout=self.infer_timeout_s)
        if not done:
            future.cancel()  # drops the request if it is still queued; a running chunk finishes unseen
            log.error("no chunk within infer_timeout_s=%g s", self.infer_timeout_s)
            return self._reject("policy",
                                f"no chunk within infer_timeout_s={self.infer_timeout_s:g} s (queue included)")
        try:
            actions, timing = future.result()
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except BaseException as e:  # the model failed (even with SystemExit): answer, log, keep serving
            log.exception("inference failed")
            return self._reject("policy", f"inference failed: {type(e).__name__}: {e}")
        self.requests_served += 1
        timing["total_ms"] = (time.perf_counter() - t0) * 1e3
        return {"actions": actions, "server_timing": timing}

    def _reject(self, field: str, message: str) -> dict[str, Any]:
        """The error reply for a request that gets no chunk, counted in `requests_rejected`."""
        self.requests_rejected += 1
        return {"error": {"field": field, "message": message}}

    async def _handler(self, ws: ServerConnection) -> None:
        peer = ws.remote_address
        if self.clients_connected >= self.max_clients:  # one event loop: no other handler runs in between
            log.warning("refused client %s: %d clients connected (max_clients=%d)", peer, self.clients_connected,
                        self.max_clients)
            await ws.close(1013, f"server busy: {self.clients_connected} clients connected (max_clients="
                                 f"{self.max_clients}); try again later")
            return
        self.clients_connected += 1
        log.info("client connected: %s (%d of at most %d)", peer, self.clients_connected, self.max_clients)
        try:
            await ws.send(packb(self.metadata))
            while True:
                try:
                    message = await asyncio.wait_for(ws.recv(), self.idle_timeout_s)
                except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11
                    log.info("closing client %s: idle for %.0f s", peer, self.idle_timeout_s)
                    await ws.close(1000, f"idle for {self.idle_timeout_s:g} s (idle_timeout_s)")
                    return
                reply = await self.handle_message(message)
                await ws.send(packb(reply))
        except ConnectionClosedOK:
            log.info("client %s disconnected", peer)
        except ConnectionClosed as e:
            log.info("client %s gone (%s)", peer, e)
        finally:
            self.clients_connected -= 1

    def serve(self):
        """The websockets server (an async context manager); bound port in ``.sockets[0].getsockname()[1]``."""
        transport_limit = max(2 * self.max_request_bytes, self.max_request_bytes + 2**20)
        return serve(self._handler, self.host, self.port, max_size=transport_limit, compression=None,
                     server_header=f"{self.name}/{__version__}")

    async def serve_forever(self) -> None:
        async with self.serve() as server:
            addrs = ", ".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in server.sockets)
            log.info("serving %s on ws://%s (token %s)", self.name, addrs, "required" if self.token else "off")
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # main thread, unix only
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, server.close)
            await server.serve_forever()
            log.info("server stopped (requests served: %d, rejected: %d)", self.requests_served,
                     self.requests_rejected)

    def start_in_thread(self) -> ServerThread:
        return ServerThread(self)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


class ServerThread:
    """Run a :class:`PolicyServer` on its own event loop in a background thread (tests, benchmarks, examples)."""

    def __init__(self, server: PolicyServer, start_timeout: float = 10.0):
        self.server = server
        self.port: int | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="policy-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(start_timeout):
            raise TimeoutError("policy server did not start")
        if self._error is not None:
            raise RuntimeError(f"policy server failed to start: {self._error}") from self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as e:  # noqa: BLE001 - reported to the starting thread
            self._error = e
            self._ready.set()
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with self.server.serve() as ws_server:
            self.port = ws_server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def stop(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
        self.server.close()

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _to_torch_if_available(x: np.ndarray):
    torch = sys.modules.get("torch")
    return torch.from_numpy(x) if torch is not None else x


@contextlib.contextmanager
def _no_grad():
    torch = sys.modules.get("torch")
    if torch is None:
        yield
    else:
        with torch.inference_mode():
            yield


# ----------------------------------------------------------------------------------------------------------------------
# command line


def stats_of(policy: Any) -> Stats | None:
    """The normalisation stats a policy carries (``load_policy`` attaches stats.json as ``policy.stats``), or None."""
    stats = getattr(policy, "stats", None)
    if stats is None or hasattr(stats, "normalize_state"):
        return stats
    from policy_models.normalization import Stats

    where = getattr(policy, "checkpoint_dir", None)
    return Stats.from_dict(dict(stats), source=f"{where}/stats.json" if where else "policy.stats")


def add_server_args(p: argparse.ArgumentParser) -> None:
    from vpp_core.config import AUTO, COMPILE_MODES_WITHOUT_CUDA_GRAPHS, FLOAT32_MATMUL_PRECISIONS, switch_argument

    p.add_argument("--checkpoint", help="stage-2 checkpoint folder (config.yaml, model.safetensors, stats.json)")
    p.add_argument("--video_model_path", default=None, help="stage-1 video model folder (default: from the config)")
    p.add_argument("--clip_model_path", default=None, help="CLIP text model folder (default: from the config)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--use_ema", action="store_true", help="load ema.safetensors instead of model.safetensors")
    p.add_argument("--cudnn_benchmark", action="store_true",
                   help="CUDA: cuDNN picks the fastest convolution algorithms (faster chunks; may round differently)")
    p.add_argument("--compile", nargs="?", const="default", default=AUTO,
                   choices=[AUTO, "none", *COMPILE_MODES_WITHOUT_CUDA_GRAPHS], metavar="MODE",
                   help="torch.compile the video model's passes and the action head (auto, the default: default on "
                   "CUDA, none elsewhere; none; default; max-autotune-no-cudagraphs). Compiling takes minutes, before "
                   "the server listens; the chunks are then faster, close to eager but not bit-identical")
    p.add_argument("--short_query_attention", default=AUTO, type=switch_argument, metavar="{auto,true,false}",
                   help="the U-Net's 16-frame attention on the memory-efficient kernel (auto: on CUDA; same attention, "
                   "other rounding)")
    p.add_argument("--float32_matmul_precision", default="high", choices=FLOAT32_MATMUL_PRECISIONS,
                   help="float32 matrix products of the action head: high = TF32 tensor cores (default), highest = "
                   "full float32, medium = bfloat16")
    p.add_argument("--fused_decoder", nargs="?", const=True, default=AUTO, type=switch_argument,
                   metavar="{auto,true,false}",
                   help="the sampler's decoder steps as Triton kernels (auto: on CUDA where they run; true: on, or an "
                   "error). 0.6-0.9 ms less per chunk at batch 1 on an H100; close to the eager decoder, not "
                   "bit-identical")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=os.environ.get("VPP_POLICY_TOKEN"),
                   help="shared secret required in every request (default: $VPP_POLICY_TOKEN, else none)")
    p.add_argument("--max_request_mb", type=float, default=32.0, help="largest accepted request (MiB)")
    p.add_argument("--max_clients", type=int, default=16,
                   help="connections at once; more are closed at once with code 1013 and the reason (default 16)")
    p.add_argument("--idle_timeout_s", type=float, default=None,
                   help="close connections silent for this many seconds (default: never; a robot may idle between "
                   "episodes)")
    p.add_argument("--infer_timeout_s", type=float, default=None,
                   help="answer with an error when no chunk came within this many seconds, and refuse new requests "
                   "while the model is stuck that long in one (default: wait however long it takes)")


def _input_errors() -> tuple[type[Exception], ...]:
    """The project's errors for a wrong checkpoint, model folder or config. Their messages name the path or key, so
    the command line shows them as one line; imported here, not at the top, because they pull in torch."""
    from policy_models.checkpoints import CheckpointError
    from policy_models.config import PolicyConfigError
    from video_models.builders import ModelFolderError
    from vpp_core.config import ConfigError

    return CheckpointError, ConfigError, ModelFolderError, PolicyConfigError


def _exit_with_error(message: str) -> NoReturn:
    """End the command as the other entry scripts do on a user's mistake: one `error:` line and exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _load_policy(args: argparse.Namespace) -> tuple[Any, str | None]:
    """The checkpoint's policy on its inference fast path, and the compile mode it was given (None: eager)."""
    # heavy: only when serving a model. Inference runs under the server's lock, so the first request's graph
    # capture overlaps no other CUDA work
    import torch

    from policy_models.checkpoints import load_inference_policy
    from vpp_core.config import compile_setting, resolve_compile_setting

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    compile_mode = resolve_compile_setting(compile_setting(args.compile, "--compile"), torch.device(device).type)
    policy = load_inference_policy(args.checkpoint, args.video_model_path, args.clip_model_path, device,
                                   use_ema=args.use_ema, cudnn_benchmark=args.cudnn_benchmark,
                                   compile_mode=compile_mode, short_query_attention=args.short_query_attention,
                                   float32_matmul_precision=args.float32_matmul_precision,
                                   fused_decoder=args.fused_decoder)
    return policy, compile_mode


def _load_policy_or_exit(args: argparse.Namespace) -> tuple[Any, str | None]:
    """`_load_policy`, ending the command with a one-line error when the checkpoint, a model folder or the config is
    wrong: a traceback would bury the message that names the path."""
    if not args.checkpoint:
        _exit_with_error("--checkpoint is required (or --fake)")
    try:
        return _load_policy(args)
    except _input_errors() as exc:
        _exit_with_error(str(exc))


def run_server_from_args(args: argparse.Namespace, fake: bool = False) -> None:
    """Serve until interrupted; a wrong checkpoint, model folder or config ends it with an `error:` line, exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if fake:
        from deploy.fake_policy import FakePolicy

        policy, compile_mode = FakePolicy(), None
    else:
        policy, compile_mode = _load_policy_or_exit(args)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.token:
        log.warning("serving on %s without a token: anyone who can reach this port can drive the policy", args.host)
    server = PolicyServer(policy, host=args.host, port=args.port, token=args.token,
                          max_request_bytes=int(args.max_request_mb * 2**20), max_clients=args.max_clients,
                          idle_timeout_s=args.idle_timeout_s, infer_timeout_s=args.infer_timeout_s)
    if not fake and compile_mode is not None:
        log.info("compiling the policy (%s) on a blank request before serving: minutes at full size (--compile none "
                 "serves at once, with slower chunks)", compile_mode)
        log.info("warmed up in %.1f s", server.warm_up())
    try:
        asyncio.run(server.serve_forever())
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_args(p)
    p.add_argument("--fake", action="store_true", help="serve deploy.fake_policy.FakePolicy (no model needed)")
    args = p.parse_args(argv)
    run_server_from_args(args, fake=args.fake)


if __name__ == "__main__":
    main()
