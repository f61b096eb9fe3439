"""Shared pieces of the benchmark harnesses: timing, memory, environment description."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from vpp_core.config import FLOAT32_MATMUL_PRECISIONS
from vpp_core.memory import peak_memory_record


def environment() -> dict[str, Any]:
    import diffusers
    import transformers

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        # the caching allocator's settings change host time per call (expandable segments: +28 ms per graphed chunk)
        "cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
    }
    if not torch.cuda.is_available():
        env["cpu_threads"] = torch.get_num_threads()
    return env


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> dict[str, float]:
    """Median / p90 / mean wall time in ms of `fn` after `warmup` untimed calls (CUDA-synchronised), and the median
    host time: until `fn` returns, before the device finishes. Host time near the wall time means the host, not the
    GPU, sets the pace (Python work between launches)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times, host = [], []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        host.append((time.perf_counter() - start) * 1000)
        synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "p90_ms": times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))],
        "mean_ms": statistics.fmean(times),
        "host_median_ms": statistics.median(host),
        "iters": iters,
    }


def peak_memory_gib(device: torch.device) -> float | None:
    return peak_memory_record(device).get("peak_memory_gib")


def peak_reserved_gib(device: torch.device) -> float | None:
    """The most memory the caching allocator held (allocated plus its cached free blocks): what a smaller GPU must
    have room for, where `peak_memory_gib` counts only the tensors."""
    return peak_memory_record(device).get("peak_reserved_gib")


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result, indent=2, default=str))


# the smaller model sizes the harnesses build besides the full one: size name -> video model yaml
SMALL_VIDEO_CONFIGS = {"tiny": "video_conf/tiny.yaml", "small_sim": "video_conf/small_sim.yaml"}


# scaled_dot_product_attention backends by name -> the process-wide switch that allows or forbids each
SDPA_BACKENDS = {
    "cudnn": torch.backends.cuda.enable_cudnn_sdp,
    "flash": torch.backends.cuda.enable_flash_sdp,
    "efficient": torch.backends.cuda.enable_mem_efficient_sdp,
    "math": torch.backends.cuda.enable_math_sdp,
}


def add_backend_arguments(parser) -> None:
    """Flags every GPU harness shares: cuDNN autotuning, the allowed attention kernels, a kernel-level profile and
    a report of host-device syncs in the timed function."""
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="torch.backends.cudnn.benchmark = True: time every convolution algorithm once per shape "
                             "and keep the fastest (same math, other kernels)")
    parser.add_argument("--float32-matmul-precision", default="high", choices=FLOAT32_MATMUL_PRECISIONS,
                        help="torch.set_float32_matmul_precision for the float32 matrix products (the action head): "
                             "high = TF32, the evaluator's and the trainers' default; highest = full float32")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also run the timed function under torch.profiler and report its N most expensive "
                             "GPU kernels (not part of the timing)")
    parser.add_argument("--profile-launchers", action="store_true",
                        help="with --profile: also list the host operations (with input shapes) that launched each "
                             "listed kernel")
    parser.add_argument("--sdpa-backends", default=None, metavar="LIST",
                        help="comma-separated scaled_dot_product_attention backends torch may choose from ("
                             f"{', '.join(SDPA_BACKENDS)}); the others are switched off. Default: all")
    parser.add_argument("--sync-report", action="store_true",
                        help="also run the timed function once more and list the source lines where the host waited "
                             "for the GPU (torch.cuda.set_sync_debug_mode; CUDA only)")
    parser.add_argument("--inductor-config", action="append", default=[], metavar="KEY=VALUE",
                        help="set torch._inductor.config KEY (dotted for sub-configs, e.g. triton.max_tiles) to the "
                             "Python literal VALUE before anything compiles, e.g. combo_kernels=True; repeatable")


def inductor_settings(items: list[str]) -> dict[str, Any]:
    """`--inductor-config` items as {key: value}, each key checked against torch._inductor.config and each value a
    Python literal, so a typo fails before minutes of compiling rather than being ignored."""
    import ast

    from torch._inductor import config as inductor_config

    known = inductor_config.get_config_copy() if items else {}
    settings: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--inductor-config: expected KEY=VALUE, got {item!r}")
        if key not in known:
            raise SystemExit(f"--inductor-config: torch._inductor.config has no {key!r}")
        try:
            settings[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise SystemExit(f"--inductor-config: {key}'s value must be a Python literal (True, 64, 'name'), "
                             f"got {text!r}") from None
    return settings


def configure_backends(args) -> None:
    from torch._inductor import config as inductor_config

    for key, value in inductor_settings(args.inductor_config).items():
        *path, name = key.split(".")
        target = inductor_config
        for part in path:  # sub-configs such as inductor_config.triton
            target = getattr(target, part)
        setattr(target, name, value)
    torch.set_float32_matmul_precision(args.float32_matmul_precision)
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    if args.sdpa_backends is not None:
        allowed = {name.strip() for name in args.sdpa_backends.split(",") if name.strip()}
        unknown = allowed - set(SDPA_BACKENDS)
        if unknown or not allowed:
            raise SystemExit(f"--sdpa-backends: expected names from {sorted(SDPA_BACKENDS)}, "
                             f"got {args.sdpa_backends!r}")
        for name, enable in SDPA_BACKENDS.items():
            enable(name in allowed)


def kernel_profile(fn: Callable[[], Any], device: torch.device, top: int, iters: int = 3,
                   launchers: bool = False) -> dict[str, Any]:
    """GPU time per kernel over `iters` calls of `fn`, grouped by kernel name: where a step's time goes. With
    `launchers`, also which host operations (name and input shapes) launched each of the listed kernels."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities, record_shapes=launchers) as prof:
        for _ in range(iters):
            fn()
        synchronize(device)
    events = [e for e in prof.key_averages() if is_device_work(e)]
    total_us = sum(e.self_device_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_device_time_total, reverse=True)
    device_ops, host_ops = [], []
    for e in prof.events():
        if is_device_work(e):
            device_ops.append((e.time_range.start, e.time_range.end, e.name))
        elif e.device_type != torch.autograd.DeviceType.CUDA:
            host_ops.append((e.time_range.start, e.time_range.end, e.name))
    kernels = [{"name": e.key[:120], "ms_per_call": e.self_device_time_total / 1000 / iters,
                "share": e.self_device_time_total / total_us, "calls": e.count // iters}
               for e in events[:top]]
    result = {"gpu_ms_per_call": total_us / 1000 / iters, "kernels": kernels,
              "kinds": kernel_kinds([(e.key, e.self_device_time_total, e.count) for e in events], iters),
              "timeline": device_timeline(device_ops, iters, host_ops)}
    if launchers:
        result["launchers"] = kernel_launchers(prof.events(), [k["name"] for k in kernels], iters)
    return result


# (kind, substrings of the kernel name), matched in this order: the first kind with a matching substring wins.
# Inductor's generated kernels are named after every op they fused ("triton_poi_fused_convolution_silu"), so they are
# matched first; cuDNN's layout transposes before its convolutions.
KERNEL_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("fused elementwise and norms (triton)", ("triton_",)),
    ("layout transposes", ("nchwToNhwc", "nhwcToNchw")),
    ("attention", ("fmha", "sdpa", "flash", "attention", "Attention")),
    ("convolutions", ("fprop", "dgrad", "wgrad", "conv", "Conv")),
    ("matrix products", ("nvjet", "gemm", "gemv", "Gemv", "splitKreduce")),
    ("multi-tensor (optimizer, gradient norms)", ("multi_tensor_apply",)),
    ("copies and fills", ("copy", "Memcpy", "Memset", "fill")),
    ("other elementwise", ("elementwise_kernel", "reduce_kernel")),
)


def kernel_kind(name: str) -> str:
    """Which kind of work a kernel is, from its name (KERNEL_KINDS; "other" when nothing matches)."""
    for kind, substrings in KERNEL_KINDS:
        if any(s in name for s in substrings):
            return kind
    return "other"


def kernel_kinds(kernels: list[tuple[str, float, int]], iters: int) -> dict[str, dict[str, float]]:
    """GPU time and launches per call by kernel kind, over every kernel (name, total microseconds, launches), not
    only the listed top ones: how much a faster kernel of one kind could buy at most. Largest kind first."""
    kinds: dict[str, dict[str, float]] = {}
    for name, total_us, count in kernels:
        entry = kinds.setdefault(kernel_kind(name), {"ms_per_call": 0.0, "launches_per_call": 0})
        entry["ms_per_call"] += total_us / 1000 / iters
        entry["launches_per_call"] += count // iters
    return dict(sorted(kinds.items(), key=lambda item: -item[1]["ms_per_call"]))


def kernel_launchers(events: Any, kernel_names: list[str], iters: int, per_kernel: int = 4) -> dict[str, Any]:
    """For each kernel name (cut to 120 characters, as `kernel_profile` lists them), the host operations that
    launched it, with their input shapes, and their share of its GPU time, largest first. Kernel names alone do not
    say which layer a generic kernel (a cuDNN layout transpose, an elementwise multiply) belongs to."""
    by_kernel: dict[str, Counter] = {name: Counter() for name in kernel_names}
    for event in events:
        for kernel in getattr(event, "kernels", ()):
            launched = by_kernel.get(kernel.name[:120])
            if launched is not None:
                launched[f"{event.name} {list(event.input_shapes or [])}"] += kernel.duration
    return {name: [{"op": op, "ms_per_call": us / 1000 / iters, "share": us / sum(launched.values())}
                   for op, us in launched.most_common(per_kernel)]
            for name, launched in by_kernel.items() if launched}


def is_device_work(event: Any) -> bool:
    """A kernel, copy or memset on the GPU. The profiler also lists the GPU-side spans of annotated host regions
    (`DistributedDataParallel.forward`, `Optimizer.step#AdamW.step`): they cover the kernels and the gaps between
    them, so counting them as work hides idle time and double-counts kernel time (before session 10 the harnesses
    did: docs/PERFORMANCE.md)."""
    return event.device_type == torch.autograd.DeviceType.CUDA and not getattr(event, "is_user_annotation", False)


def host_syncs(fn: Callable[[], Any], device: torch.device) -> list[dict[str, Any]] | None:
    """The source lines at which one call of `fn` made the host wait for the GPU (`.item()`, a blocking copy
    from pageable memory, ...), most frequent first. A sync in the middle of a step idles the GPU: the kernels after it
    are launched one at a time behind an empty queue. None off CUDA, where nothing is asynchronous."""
    if device.type != "cuda":
        return None
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    lines = Counter(f"{w.filename}:{w.lineno}" for w in caught
                    if "called a synchronizing CUDA operation" in str(w.message))
    return [{"where": where, "count": count} for where, count in lines.most_common()]


Interval = tuple[float, float, str]  # (start_us, end_us, name) of one profiled operation


def device_timeline(ops: list[Interval], iters: int, host_ops: list[Interval] = (),
                    largest: int = 10) -> dict[str, Any] | None:
    """Where the device sits idle between its operations (kernels, copies), and what the host was doing meanwhile.

    Kernel time alone does not explain a wall time; the gaps between consecutive device operations do. Many gaps of a
    few microseconds mean per-launch latency (fewer, larger kernels help); a few long ones mean the device waits for
    the host (a sync, a copy, Python work between launches): for those, the host operations (`host_ops`) that cover
    most of each gap are listed, innermost first. Returns None when no device operation was recorded."""
    if not ops:
        return None
    ops = sorted(ops)
    busy_us = gap_us = 0.0
    covered_to = ops[0][0]
    gaps = []  # (length_us, operation before, operation after, end_us)
    previous = ops[0][2]
    for start, end, name in ops:
        if start > covered_to:
            gaps.append((start - covered_to, previous, name, start))
            gap_us += start - covered_to
            covered_to = start
        if end > covered_to:
            busy_us += end - covered_to
            covered_to = end
            previous = name
    lengths = [g[0] for g in gaps]
    return {
        "device_ops_per_call": len(ops) / iters,
        "span_ms_per_call": (covered_to - ops[0][0]) / 1000 / iters,
        "busy_ms_per_call": busy_us / 1000 / iters,
        "idle_ms_per_call": gap_us / 1000 / iters,
        "idle_gaps_per_call": {f"over_{t}us": sum(1 for g in lengths if g > t) / iters for t in (2, 10, 100, 1000)},
        "idle_ms_per_call_in_gaps_over_100us": sum(g for g in lengths if g > 100) / 1000 / iters,
        "median_gap_us": statistics.median(lengths) if lengths else 0.0,
        "largest_gaps": [{"us": round(length, 1), "after": before[:80], "before": after[:80],
                          "host": _host_ops_during(host_ops, end - length, end)}
                         for length, before, after, end in sorted(gaps, reverse=True)[:largest]],
    }


def _host_ops_during(host_ops: list[Interval], start: float, end: float, top: int = 4) -> list[dict[str, Any]]:
    """The host operations that overlap at least a third of [start, end], shortest (innermost) first."""
    covering = []
    for op_start, op_end, name in host_ops:
        overlap = min(op_end, end) - max(op_start, start)
        if overlap >= (end - start) / 3:
            covering.append((op_end - op_start, name))
    return [{"name": name[:80], "us": round(length, 1)} for length, name in sorted(covering)[:top]]


def add_temporal_context_argument(parser) -> None:
    """`--per-position-temporal-context`, for the harnesses that build the SVD U-Net (`per_position_temporal_context`
    applies it)."""
    parser.add_argument("--per-position-temporal-context", action="store_true",
                        help="measurement: the U-Net's temporal cross-attention projects the text context once per "
                             "position, as diffusers' forward does (before session 14), not once per clip")


def per_position_temporal_context(unet: torch.nn.Module) -> int:
    """Measurement control: diffusers' own `TransformerSpatioTemporalModel.forward` and SDPA processor again, which
    copy the temporal cross-attention's text context for every position and project each copy (as before session
    14; video_models.temporal_context). Call it before checkpointing or compiling the U-Net. Returns how many
    transformers were changed."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from video_models.temporal_context import uses_shared_temporal_context

    changed = 0
    for module in unet.modules():
        if uses_shared_temporal_context(module):
            del module.__dict__["forward"]
            for block in module.temporal_transformer_blocks:
                block.attn2.set_processor(AttnProcessor2_0())
            changed += 1
    return changed


def graph_replay_ms(fn: Callable[[], torch.Tensor], replays: int) -> tuple[float, torch.Tensor]:
    """Median GPU time of one replay of `fn` captured as a CUDA graph (timed in groups of 20 replays)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # compiles and warms up outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    times = []
    for _ in range(max(1, replays // 20)):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 20)
    return statistics.median(times), out.clone()
