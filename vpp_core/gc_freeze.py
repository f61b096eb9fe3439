"""Keep Python's full garbage collections from pausing long training loops.

`torch.compile` leaves millions of Python objects alive: traced graphs, guards, generated code. Every full
(generation-2) collection walks all of them. In the stage-1 trainer on the H100 machine such a collection took
0.8-1.1 s and came every 20 s or so, and while it runs the host issues no kernels, so the GPU waits: about 5% of the
training time (docs/PERFORMANCE.md, session 14).

`gc.freeze()` moves every object alive at that moment into a generation the collector never scans. Objects made
later are collected as before, and reference counting still frees frozen objects nobody refers to any more; only
reference cycles among the frozen objects wait until `gc.unfreeze()`. Freezing once the first training step has run
(compiling is done by then) therefore leaves the collections only the objects the loop itself makes.
"""

from __future__ import annotations

import gc
from types import TracebackType


class FrozenHeap:
    """Context manager for a training loop: `freeze_once()` after its first step freezes the objects alive then
    (after a full collection, so no garbage is frozen); leaving the context unfreezes them, so a process that goes
    on after training (a notebook, a test session) collects as usual again."""

    def __init__(self) -> None:
        self.frozen = False

    def freeze_once(self) -> None:
        if not self.frozen:
            gc.collect()
            gc.freeze()
            self.frozen = True

    def __enter__(self) -> FrozenHeap:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.frozen:
            gc.unfreeze()
            self.frozen = False
