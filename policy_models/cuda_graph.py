"""Exact CUDA-graph replay of inference computations (the DDIM sampler alone, or a whole action-chunk prediction).

At batch 1 the policy's GPU work is a few thousand small kernels, so eager inference is bound by the CPU launching
them. A captured graph replays the very kernels an eager call launches, on static copies of the inputs, with one
launch: the outputs are bit-identical to the eager call given the same inputs and the same random state.

Random numbers drawn inside a captured function come from the device's default CUDA generator, which PyTorch
registers with every capture (graph-safe Philox): each replay reads the generator's current seed and offset and then
advances it by what the graph consumed, so consecutive replays draw fresh noise and `torch.manual_seed(s)` before a
replay gives the same numbers as before the eager call. Explicit `torch.Generator` objects cannot be read by a graph
(they may live on the CPU, or be replaced on every call); callers draw with them outside and pass the noise as an input.

Rules for a captured function: shape-static tensor work on one CUDA device, no host syncs (`.item()`, python
branching on tensor values), no host-to-device copies from pageable memory; everything it reads besides its inputs
(weights, cached constants) must stay alive and in place while the graph exists.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import torch

MODES = ("off", "sampler", "chunk")

Inputs = Sequence[torch.Tensor | None]


def validate_mode(mode: str) -> str:
    """'off' (eager), 'sampler' (graph of the DDIM loop only) or 'chunk' (graph of the whole chunk prediction)."""
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"cuda_graph must be one of {MODES}, got {mode!r}")
    return mode


def input_signature(inputs: Inputs) -> tuple:
    """What a graph is specialised to: shape, dtype and device of every input (None for absent ones)."""
    return tuple(None if t is None else (tuple(t.shape), t.dtype, t.device) for t in inputs)


class StaticGraph:
    """One captured call of `fn(*inputs) -> tensor` replayed on static input buffers."""

    def __init__(self, fn: Callable[..., torch.Tensor], inputs: Inputs, device: torch.device, warmup: int = 2):
        # `fn` is kept: its closure holds tensors the graph reads (e.g. a sigma schedule)
        self.fn = fn
        self.device = device
        self.static_inputs = [None if t is None else t.clone() for t in inputs]
        self._capture(warmup)

    def _capture(self, warmup: int) -> None:
        with torch.cuda.device(self.device):
            # lazy initialisation (cuBLAS handles, autotuning, caches filled on first use) must happen before capture,
            # on a side stream as CUDA graphs require
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    self.fn(*self.static_inputs)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.output = self.fn(*self.static_inputs)

    def _replay(self) -> None:
        with torch.cuda.device(self.device):
            self.graph.replay()

    def __call__(self, inputs: Inputs) -> torch.Tensor:
        for static, t in zip(self.static_inputs, inputs):
            if static is not None:
                static.copy_(t)
        self._replay()
        # the output buffer is overwritten by the next replay
        return self.output.clone()


class GraphCache:
    """A few captured graphs, least recently used evicted first. Never copied or pickled (graphs are bound to their
    device memory): a deep copy of a policy starts with an empty cache."""

    def __init__(self, size: int = 4):
        self.size = size
        self.graphs: OrderedDict[Hashable, StaticGraph] = OrderedDict()

    def __len__(self) -> int:
        return len(self.graphs)

    def __deepcopy__(self, memo) -> GraphCache:
        return GraphCache(self.size)

    def __getstate__(self) -> dict:
        return {"size": self.size, "graphs": OrderedDict()}

    def clear(self) -> None:
        self.graphs.clear()

    def run(self, key: Hashable, fn: Callable[..., torch.Tensor], inputs: Inputs, device: torch.device) -> torch.Tensor:
        """`fn(*inputs)` from the graph captured for (`key`, input shapes); captured on first use (after `warmup`
        eager calls, which also draw from the random generator)."""
        full_key = (key, input_signature(inputs))
        graph = self.graphs.get(full_key)
        if graph is None:
            while len(self.graphs) >= self.size:
                self.graphs.popitem(last=False)
            graph = self.graphs[full_key] = StaticGraph(fn, inputs, device)
        self.graphs.move_to_end(full_key)
        return graph(inputs)
