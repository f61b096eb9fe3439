"""FNV-1 32-bit hash, drop-in for ``pyhash.fnv1_32()(s)`` as used by CALVIN (calvin_reference.md §4).

pyhash's variant differs from textbook FNV-1 in two ways that matter for reproducing CALVIN's reset states:

* the start value is 0 (not the usual offset basis 2166136261), and
* a Python ``str`` is hashed as its UTF-16-LE bytes.

Each byte: ``h = (h * 16777619) mod 2**32`` then ``h ^= byte`` (multiply first, then XOR: FNV-1, not FNV-1a).
"""

from __future__ import annotations

FNV1_32_PRIME = 0x01000193
FNV1_32_OFFSET_BASIS = 0x811C9DC5  # textbook start value; NOT what pyhash/CALVIN use
_MASK32 = 0xFFFFFFFF


def fnv1_32_bytes(data: bytes, seed: int = 0) -> int:
    h = seed & _MASK32
    for byte in data:
        h = (h * FNV1_32_PRIME) & _MASK32
        h ^= byte
    return h


def fnv1_32(value: str | bytes, seed: int = 0) -> int:
    """pyhash.fnv1_32()(value): str is hashed as UTF-16-LE bytes, bytes as given; start value `seed` (0)."""
    data = value.encode("utf-16-le") if isinstance(value, str) else bytes(value)
    return fnv1_32_bytes(data, seed)
