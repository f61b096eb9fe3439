"""The ten planned decoder steps of one action chunk (CALVIN's DiT at full size), each variant replayed as one CUDA
graph: eager, compiled (`torch.compile`, as `compile_action_head` runs them) and the fused Triton kernels
(`policy_models.diffusion.fused_decoder`), with the fused kernels' GPU time per launch.

    python benchmarks/decoder_steps.py --batch 1
    python benchmarks/decoder_steps.py --batch 8 --launch '{"residual": {"BK": 256}}'   # other launch settings

The steps chain as in the sampler (each step's actions feed the next), without the DDIM update's own arithmetic.
Float32 with TF32 matrix products, as the evaluator runs the action head. CUDA only.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import emit, environment, graph_replay_ms
from policy_models.diffusion import fused_decoder
from policy_models.diffusion.dit import DiffusionTransformer


def fused_kernel_times(fn: Callable[[], torch.Tensor], iters: int = 5) -> dict[str, dict[str, float]]:
    """GPU time per launch and launches per call of each fused kernel (eager calls under the profiler)."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    names = ("ln_linear_kernel", "attention_residual_kernel", "linear_residual_kernel")
    return {e.key: {"us_per_launch": e.device_time_total / e.count, "launches_per_call": e.count / iters}
            for e in prof.key_averages() if e.key in names and e.count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--replays", type=int, default=400)
    parser.add_argument("--launch", type=json.loads, default={},
                        help="JSON: settings merged into fused_decoder.LAUNCH, e.g. '{\"hidden\": {\"BN\": 32}}'")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("the fused decoder's kernels need a CUDA device")
    for kernel, settings in args.launch.items():
        fused_decoder.LAUNCH[kernel].update(settings)
    torch.set_float32_matmul_precision("high")
    device = torch.device("cuda")
    torch.manual_seed(0)
    dit = DiffusionTransformer().to(device).eval()
    context = torch.randn(args.batch, 225, dit.embed_dim, device=device)
    sigmas = torch.linspace(80.0, 0.05, 10, device=device)
    actions = torch.randn(args.batch, 10, dit.action_dim, device=device)

    def steps() -> torch.Tensor:
        plan = dit.plan_decoding(context, sigmas)
        x = actions
        for i in range(len(sigmas)):
            x = dit.decode_planned(plan, i, x) * 0.5 + x * 0.5
        return x

    result = {"benchmark": "decoder_steps", "settings": {**vars(args), "launch": fused_decoder.LAUNCH},
              "environment": environment()}
    with torch.no_grad():
        result["eager_ms"], eager = graph_replay_ms(steps, args.replays)
        result["compiled_ms"], compiled = graph_replay_ms(torch.compile(steps, dynamic=False), args.replays)
        dit.fused_decoding = True
        result["fused_ms"], fused = graph_replay_ms(steps, args.replays)
        result["fused_kernels"] = fused_kernel_times(steps)
    result["max_abs_diff_fused_vs_eager"] = float((fused - eager).abs().max())
    result["max_abs_diff_compiled_vs_eager"] = float((compiled - eager).abs().max())
    emit(result)


if __name__ == "__main__":
    main()
