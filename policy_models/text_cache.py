"""Inference-only cache of text features per instruction string.

The CLIP text tower is frozen, so an instruction's features are a function of the string alone; within a CALVIN
subtask the same instruction is encoded for every chunk. Caching is exact as long as the encoder's device, dtype and
settings are unchanged, which the caller expresses as `key`: a new key empties the cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import torch


class TextFeatureCache:
    """LRU map instruction -> feature row, holding at most `size` strings (more only while one batch needs them)."""

    def __init__(self, size: int = 64):
        self.size = size
        self.rows: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.key: Hashable | None = None

    def clear(self) -> None:
        self.rows.clear()
        self.key = None

    def lookup(self, texts: Sequence[str], key: Hashable, encode: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        """Rows for `texts` stacked on dim 0; strings not cached yet are encoded once each, in one `encode` call."""
        if key != self.key:
            self.rows.clear()
            self.key = key
        missing = list(dict.fromkeys(t for t in texts if t not in self.rows))
        if missing:
            for text, row in zip(missing, encode(missing)):
                self.rows[text] = row
        for text in dict.fromkeys(texts):
            self.rows.move_to_end(text)
        out = torch.stack([self.rows[t] for t in texts], dim=0)
        while len(self.rows) > max(self.size, len(set(texts))):
            self.rows.popitem(last=False)
        return out
