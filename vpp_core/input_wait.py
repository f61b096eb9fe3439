"""How long a training loop waits for its data loader: the number that says whether a GPU is starved for input.

A low samples/s alone does not say whether the model or the data loader is the bottleneck. The time the loop spends
blocked in `next(loader)` does: the GPU runs asynchronously, so in a compute-bound loop the host blocks on kernel
launches and `next` returns at once, while in an input-bound loop `next` waits for the workers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class InputWaitMeter(Generic[T]):
    """Iterate over `iterable`, adding the seconds spent in each `next` to `waited_s` (reset it with `take()`)."""

    def __init__(self, iterable: Iterable[T]):
        self._iterable = iterable
        self.waited_s = 0.0

    def __iter__(self) -> Iterator[T]:
        iterator = iter(self._iterable)
        while True:
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                self.waited_s += time.perf_counter() - start
            yield item

    def take(self) -> float:
        """The seconds waited since the last `take()`."""
        waited, self.waited_s = self.waited_s, 0.0
        return waited
