"""torch.compile the SVD U-Net one layer at a time ("regional" compilation) for stage-1 training.

Compiling the whole U-Net hands the choice of what to keep for the backward pass to inductor's partitioner, which
ignores the layer checkpointing: at batch 6 the compiled step needed 59 GiB against 30 GiB eager (docs/PERFORMANCE.md).
Compiling each ResNet and transformer on its own, inside its checkpointing wrapper, keeps one saved tensor per layer
as in eager mode while the kernels inside each layer are fused. Layers of the same shape share one compiled graph, so
it also compiles faster: about 5 minutes on an H100 machine against 9 for the whole U-Net.

Under DistributedDataParallel (`accelerate launch` on several GPUs), dynamo by default (`optimize_ddp`) cuts every
graph it compiles at the boundaries of DDP's 25 MB all-reduce buckets, so that each bucket's all-reduce can start
before the graph's backward pass ends. The U-Net's larger layers span several buckets and lose their fusion across
the cuts: on one H100, in a one-process DDP group, the default stage-1 step took 595 ms with the cuts and 449 ms
without (docs/PERFORMANCE.md, session 12). Compiled one layer at a time, the gradients already become ready layer by
layer, so the all-reduces overlap the backward pass without the cuts; `compile_unet_layers` therefore turns them off.
Dynamo reads the setting when it compiles, inside the first calls, and a scoped switch around every layer call cost
10-220 µs of host time per call, so it is switched off for the whole process; the stage-1 trainer compiles nothing
else.

The step launches about 10,000 kernels, and with inductor's Python wrappers the host could take longer to launch
them than the GPU to run them (host 382-451 ms against 383-390 ms of kernels per step on the H100). `cpp_wrapper`
launches the compiled layers' kernels from generated C++ instead: the same kernels, so the same numbers. In the
benchmark step the host then took 364 ms, and under one-process DDP the step took 415 against 462 ms. The trainer's
`compile_cpp_wrapper` (auto in the full-size configs) switches it on for the whole process: given to torch.compile as
a per-graph inductor option, it broke the lazily compiled backward graphs of the trainer's GPU test on torch 2.11
("CudaKernelParamCache not populated"); switched on for the process, that test passes.
"""

from __future__ import annotations

import torch

from video_models.checkpointing import checkpointed, is_checkpointed, unet_layers


def _is_layer_compiled(forward) -> bool:
    return getattr(forward, "__vpp_layer_compiled__", False)


def compile_unet_layers(unet: torch.nn.Module, mode: str, cpp_wrapper: bool = False,
                        ddp_graph_cuts: bool = False) -> int:
    """Compile every ResNet and transformer of every down/mid/up block with `torch.compile(mode=mode)`.

    A layer that is wrapped in layer checkpointing stays wrapped, with the compiled forward inside, so the backward
    pass recomputes the compiled forward. Only calls with gradients enabled go through the compiled layers:
    validation and sample generation (no grad, other shapes) run the eager layers and never compile. Shapes are
    static (`dynamic=False`): layers with other channel counts get graphs of their own instead of one
    dynamic-shape graph for all. `cpp_wrapper` switches inductor's C++ kernel-launch wrapper on for the process.
    Unless `ddp_graph_cuts` (for measurements), dynamo's cutting of compiled graphs at DDP's bucket boundaries is
    switched off for the process. See the module docstring for both. Returns the number of compiled layers.
    Idempotent.
    """
    layers = unet_layers(unet)
    # one frame cache per layer class holds a graph for every distinct layer shape; the default limit (8) would
    # silently send the rest back to eager mode
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * len(layers))
    if not ddp_graph_cuts:
        torch._dynamo.config.optimize_ddp = False
    if cpp_wrapper:
        from torch._inductor import config as inductor_config

        inductor_config.cpp_wrapper = True
    for layer in layers:
        if _is_layer_compiled(layer.forward):
            continue
        wrapped = is_checkpointed(layer.forward)
        eager = layer.forward.__wrapped__ if wrapped else layer.forward
        compiled = torch.compile(eager, mode=mode, dynamic=False)
        train_forward = checkpointed(compiled) if wrapped else compiled
        layer.forward = _grad_dispatch(train_forward, eager)
    return len(layers)


def _grad_dispatch(train_forward, eager_forward):
    def forward(*args, **kwargs):
        return (train_forward if torch.is_grad_enabled() else eager_forward)(*args, **kwargs)

    forward.__vpp_layer_compiled__ = True
    return forward
