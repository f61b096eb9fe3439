"""Small GPU work on its own CUDA stream, so that the host can read its results without waiting for the main queue.

Both trainers encode each batch's instructions with the CLIP text tower, and transformers' CLIP reads its padding
mask on the host (twice per call). A host read synchronizes the stream the work was queued on. On the main
stream that means waiting for the whole previous training step still queued there, after which the GPU idles while
the host queues the next forward pass. Queued on a side stream, the read waits only for the text tower's own few
kernels, and the host keeps its lead over the GPU. The results are the same tensors: the same kernels run on the same
inputs, only on another queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

Result = TypeVar("Result", torch.Tensor, tuple[torch.Tensor, ...])


class SideStream:
    """Runs `fn()` on a high-priority side stream of `device` and hands its result, a tensor or a tuple of tensors, to
    the caller's stream.

    `fn` must not read tensors that the caller's stream writes after the first call: the side stream waits for the
    main stream once, before its first work (so that the weights moved to the device before are in place), and never
    again, which is the point. Frozen weights and inputs uploaded inside `fn` satisfy this. On a CPU device `fn` runs
    as it is."""

    def __init__(self, device: torch.device | str):
        self.device = device = torch.device(device)
        self.stream = torch.cuda.Stream(device, priority=-1) if device.type == "cuda" else None
        self._waited_for_main = False

    def __deepcopy__(self, memo: dict) -> SideStream:
        """A copy (of a policy, say) gets a stream of its own: CUDA streams cannot be copied."""
        return SideStream(self.device)

    def run(self, fn: Callable[[], Result]) -> Result:
        if self.stream is None:
            return fn()
        main = torch.cuda.current_stream(self.stream.device)
        if not self._waited_for_main:
            self.stream.wait_stream(main)
            self._waited_for_main = True
        with torch.cuda.stream(self.stream):
            out = fn()
        main.wait_stream(self.stream)
        for tensor in out if isinstance(out, tuple) else (out,):
            tensor.record_stream(main)  # allocated on the side stream: kept until the main stream is done with it
        return out
