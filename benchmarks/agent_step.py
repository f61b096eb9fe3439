"""The in-process robot agent (`deploy.xbot_agent.XbotAgent`) as a robot loop calls it: three uint8 camera frames and
a 38-D state in, `run_3image` then `calculate_absolute_action`, eight absolute targets out. Prints one JSON object.

    python benchmarks/agent_step.py                                   # tiny random models on the CPU
    python benchmarks/agent_step.py --video_model_path W/svd --clip_model_path W/clip --device cuda   # full size
        [--eager] [--compile none] [--fused-decoder false]

W comes from `benchmarks/random_model_folders.py --out W`. The action head (policy_conf/model/xbot.yaml, or tiny.yaml
without the folders) gets random weights and random normalisation statistics, and is saved as a stage-2 checkpoint
(benchmarks/random_checkpoint.py), which the agent then loads the way a robot's process does. `--eager` loads the same
checkpoint with plain `load_policy` and gives it to the agent: how the agent ran before it shared the server's fast
path (session 15).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_agent(checkpoint: Path, video_model_path: str, clip_model_path: str, args):
    from deploy.xbot_agent import XbotAgent

    if args.eager:
        from policy_models.checkpoints import load_policy

        policy = load_policy(checkpoint, video_model_path=video_model_path, clip_model_path=clip_model_path,
                             device=args.device)
        return XbotAgent(checkpoint, device=args.device, policy=policy)
    kwargs = {} if args.compile is None else {"compile_mode": args.compile}  # None: the agent's default
    if args.fused_decoder is not None:  # likewise
        kwargs["fused_decoder"] = args.fused_decoder
    return XbotAgent(checkpoint, video_model_path, clip_model_path, device=args.device,
                     float32_matmul_precision=args.float32_matmul_precision, **kwargs)


def main(argv=None) -> dict:
    from vpp_core.config import FLOAT32_MATMUL_PRECISIONS, switch_argument

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video_model_path", default=None, help="full-size SVD folder (default: tiny random folders)")
    p.add_argument("--clip_model_path", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--eager", action="store_true", help="plain load_policy: no CUDA graph, TF32 or attention kernels")
    p.add_argument("--compile", default=None,
                   help="the agent's compile_mode: auto (its default: compiled on CUDA, warmed up while the agent is "
                        "built), none, default, max-autotune-no-cudagraphs")
    p.add_argument("--float32-matmul-precision", default="high", choices=FLOAT32_MATMUL_PRECISIONS)
    p.add_argument("--fused-decoder", nargs="?", const=True, default=None, type=switch_argument,
                   metavar="{auto,true,false}",
                   help="the agent's fused_decoder, the sampler's decoder steps as Triton kernels (default: the "
                        "agent's, auto: on CUDA; bare: true)")
    p.add_argument("--frame", default="480x640", help="camera frame size HxW (uint8, letterboxed by the agent)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=30)
    args = p.parse_args(argv)
    if (args.video_model_path is None) != (args.clip_model_path is None):
        p.error("give both --video_model_path and --clip_model_path, or neither (tiny random models)")
    if args.eager and (args.compile or args.fused_decoder is not None):
        p.error("--eager loads the policy without the agent's settings (drop --compile and --fused-decoder)")
    if args.fused_decoder is True and torch.device(args.device).type != "cuda":
        p.error("--fused-decoder runs Triton kernels: it needs --device cuda")
    try:
        height, width = (int(v) for v in args.frame.split("x"))
    except ValueError:
        p.error(f"--frame must be HEIGHTxWIDTH in pixels, e.g. 480x640; got {args.frame!r}")

    from benchmarks.common import emit, environment, peak_memory_gib, time_fn
    from benchmarks.random_checkpoint import write_random_checkpoint

    device = torch.device(args.device)
    tiny = args.video_model_path is None
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, video, clip = write_random_checkpoint(Path(tmp), "xbot", args.video_model_path,
                                                          args.clip_model_path)
        t0 = time.perf_counter()
        agent = build_agent(checkpoint, video, clip, args)
        build_s = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in agent.cameras]
        state = rng.standard_normal((1, 1, agent.state_dim))

        def call() -> np.ndarray:
            delta = agent.run_3image(*frames, "place the bag in the basket", state)
            return agent.calculate_absolute_action(delta, state)

        targets = call()  # an agent that did not warm up captures its CUDA graph here
        timing = time_fn(call, device, args.warmup, args.iters)
    report = {
        "benchmark": "agent_step",
        "settings": {"model": "tiny" if tiny else "xbot (full size, random weights)", "device": str(device),
                     "eager": args.eager, "compile": agent.compile_mode, "fused_decoder": agent.policy.fused_decoder,
                     "float32_matmul_precision": torch.get_float32_matmul_precision(),
                     "frame": [height, width], "cameras": agent.cameras, "chunk_length": agent.chunk_length},
        "environment": environment(),
        "agent_build_s": build_s,  # loading, and compiling on the agent's blank warm-up chunk when it compiles
        "time": timing,
        "chunks_per_s": 1000.0 / timing["median_ms"],
        "peak_memory_gib": peak_memory_gib(device),
        "targets_shape": list(targets.shape),
    }
    emit(report)
    return report


if __name__ == "__main__":
    main()
