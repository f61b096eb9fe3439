"""Policy-server round trip on loopback: request latency (median, p90) and throughput. Prints one JSON object.

    python benchmarks/server_roundtrip.py                       # fake policy (no model time), both payloads
    python benchmarks/server_roundtrip.py --delay_ms 50         # fake policy that takes 50 ms per chunk
    python benchmarks/server_roundtrip.py --policy random       # a tiny random checkpoint per payload's embodiment
    python benchmarks/server_roundtrip.py --policy random --video_model_path W/svd --clip_model_path W/clip \
        --device cuda [--compile]                               # full-size random checkpoints on the GPU
    python benchmarks/server_roundtrip.py --checkpoint DIR --payload xbot --device cuda  # a real checkpoint

Payloads: ``calvin`` = rgb_static 200x200x3 + rgb_gripper 84x84x3 uint8, reply 10 x 7; ``xbot`` = three
256x256x3 uint8 images + a 38-D state, reply 8 x 38. "sequential" = one client, one request at a time;
"concurrent" = ``--clients`` clients in threads at once (inference is serialised on the server by design).
Checkpoints, random or given, load through the server's own path (`load_inference_policy`, with its defaults and
`--compile`), so the round trip is what `step3_deploy_real_xbot.py serve` answers. W comes from
`benchmarks/random_model_folders.py --out W`; random checkpoints: benchmarks/random_checkpoint.py.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAYLOADS = {
    "calvin": {"cameras": {"rgb_static": (200, 200, 3), "rgb_gripper": (84, 84, 3)}, "action_dim": 7,
               "chunk_length": 10, "state_dim": 0},
    "xbot": {"cameras": {"cam_high": (256, 256, 3), "cam_left": (256, 256, 3), "cam_right": (256, 256, 3)},
             "action_dim": 38, "chunk_length": 8, "state_dim": 38},
}


def _observation(spec: dict, rng: np.random.Generator) -> dict:
    obs = {"rgb_obs": {c: rng.integers(0, 256, s, dtype=np.uint8) for c, s in spec["cameras"].items()}}
    if spec["state_dim"]:
        obs["state_obs"] = rng.standard_normal(spec["state_dim"]).astype(np.float32)
    return obs


def _summary(lat_ms: list[float], wall_s: float) -> dict:
    a = np.asarray(lat_ms)
    return {"requests": int(a.size), "median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "mean_ms": float(a.mean()), "max_ms": float(a.max()), "throughput_rps": float(a.size / wall_s)}


def _client_run(port: int, obs: dict, n: int, warmup: int, out: list, infer_ms: list, barrier=None) -> float:
    """Send ``warmup`` + ``n`` requests; record the last n; return the wall time of the timed part (s)."""
    from deploy.client import PolicyClient

    with PolicyClient("127.0.0.1", port) as client:
        for _ in range(warmup):
            client.infer(obs, "pick up the red block")
        if barrier is not None:
            barrier.wait()
        t0 = time.perf_counter()
        for _ in range(n):
            r = client.infer(obs, "pick up the red block")
            out.append(r["client_timing"]["roundtrip_ms"])
            infer_ms.append(r["server_timing"]["infer_ms"])
        return time.perf_counter() - t0


def bench_payload(name: str, policy, args) -> dict:
    from deploy.server import PolicyServer
    from deploy.wire import packb

    spec = PAYLOADS[name]
    obs = _observation(spec, np.random.default_rng(0))
    result = {"request_bytes": len(packb({"observation": obs, "instruction": "pick up the red block"}))}
    server = PolicyServer(policy, host="127.0.0.1", port=0)
    if _serves_a_model(args):  # compiling (with --compile) outlasts a client's timeout
        result["warm_up_s"] = server.warm_up()
    with server.start_in_thread() as srv:
        lat, inf = [], []
        wall = _client_run(srv.port, obs, args.requests, args.warmup, lat, inf)
        result["sequential"] = {**_summary(lat, wall), "server_infer_median_ms": float(np.median(inf))}
        if args.clients > 1:
            lat_c, inf_c, threads = [], [], []
            barrier = threading.Barrier(args.clients + 1)
            per = max(1, args.requests // args.clients)
            for _ in range(args.clients):
                th = threading.Thread(target=_client_run, args=(srv.port, obs, per, 2, lat_c, inf_c, barrier))
                th.start()
                threads.append(th)
            barrier.wait()
            t1 = time.perf_counter()
            for th in threads:
                th.join()
            result["concurrent"] = {**_summary(lat_c, time.perf_counter() - t1), "clients": args.clients}
    return result


def _serves_a_model(args) -> bool:
    """A checkpoint (given or random) rather than the fake policy."""
    return args.checkpoint is not None or args.policy != "fake"


def _served_policy(name: str, args, tmp: Path):
    """The policy the server answers `name`'s payload with: the fake one, or a checkpoint loaded as the server does."""
    if not _serves_a_model(args):
        from deploy.fake_policy import FakePolicy

        spec = PAYLOADS[name]
        return FakePolicy(cameras=tuple(spec["cameras"]), action_dim=spec["action_dim"],
                          chunk_length=spec["chunk_length"], state_dim=spec["state_dim"],
                          delay_s=args.delay_ms / 1e3)
    from policy_models.checkpoints import load_inference_policy

    video, clip, checkpoint = args.video_model_path, args.clip_model_path, args.checkpoint
    if checkpoint is None:
        from benchmarks.random_checkpoint import write_random_checkpoint

        checkpoint, video, clip = write_random_checkpoint(tmp / name, name, video, clip)
    return load_inference_policy(checkpoint, video, clip, args.device, compile_mode=args.compile,
                                 fused_decoder=args.fused_decoder)


def main(argv=None) -> dict:
    from vpp_core.config import COMPILE_MODES_WITHOUT_CUDA_GRAPHS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--payload", choices=["calvin", "xbot", "both"], default="both")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--clients", type=int, default=4, help="concurrent clients for the throughput run (1: skip it)")
    p.add_argument("--policy", choices=["fake", "random"], default="fake",
                   help="fake: deploy.fake_policy (no model time); random: a random checkpoint of each payload's "
                   "embodiment (tiny models, or full size on --video_model_path and --clip_model_path)")
    p.add_argument("--delay_ms", type=float, default=0.0, help="fake policy compute time per chunk")
    p.add_argument("--checkpoint", default=None, help="serve this stage-2 checkpoint instead of the fake policy")
    p.add_argument("--video_model_path", default=None)
    p.add_argument("--clip_model_path", default=None)
    p.add_argument("--compile", nargs="?", const="default", default=None, choices=COMPILE_MODES_WITHOUT_CUDA_GRAPHS,
                   metavar="MODE", help="compile the policy, as the server does on CUDA by default (default: "
                   "the eager passes in CUDA graphs, as `serve --compile none`)")
    p.add_argument("--fused-decoder", action="store_true",
                   help="serve with the fused decoder (`serve --fused_decoder`: Triton kernels, CUDA only; the "
                   "server's default on CUDA, auto, turns it on there; without this flag the harness leaves it off)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if (args.video_model_path is None) != (args.clip_model_path is None):
        p.error("give both --video_model_path and --clip_model_path, or neither")
    if not _serves_a_model(args) and (args.compile or args.fused_decoder or args.video_model_path):
        p.error("--compile, --fused-decoder and the model folders need a model: --policy random or --checkpoint")
    if args.fused_decoder and not args.device.startswith("cuda"):
        p.error("--fused-decoder runs Triton kernels: it needs --device cuda")

    import msgpack
    import websockets

    from deploy import __version__

    results = {}
    names = ["calvin", "xbot"] if args.payload == "both" else [args.payload]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            results[name] = bench_payload(name, _served_policy(name, args, Path(tmp)), args)

    import torch

    from benchmarks.common import emit, environment, peak_memory_gib, peak_reserved_gib

    report = {
        "benchmark": "server_roundtrip",
        "settings": {"payloads": names, "requests": args.requests, "warmup": args.warmup, "clients": args.clients,
                     "policy": args.checkpoint or (f"FakePolicy(delay_ms={args.delay_ms})" if args.policy == "fake"
                                                   else "random checkpoint per payload (benchmarks/random_checkpoint.py"
                                                   f", {'tiny' if args.video_model_path is None else 'full size'})"),
                     "compile": args.compile,
                     "fused_decoder": args.fused_decoder,
                     "device": args.device,
                     "transport": "ws://127.0.0.1 (loopback), msgpack, no compression"},
        "versions": {**environment(), "numpy": np.__version__, "msgpack": ".".join(map(str, msgpack.version)),
                     "websockets": websockets.__version__, "deploy": __version__, "cpus": os.cpu_count(),
                     "platform": platform.platform(), "loadavg_1m_at_end": os.getloadavg()[0]},
        "results": results,
        # on CUDA: the peak of the whole run, over the payloads' policies built in turn in this process
        "peak_memory_gib": peak_memory_gib(torch.device(args.device)),
        "peak_reserved_gib": peak_reserved_gib(torch.device(args.device)),
    }
    emit(report)
    return report


if __name__ == "__main__":
    main()
