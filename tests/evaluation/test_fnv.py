"""FNV-1 32 as pyhash.fnv1_32 (start value 0, UTF-16-LE bytes), checked from the definition."""

from policy_evaluation.fnv import FNV1_32_OFFSET_BASIS, fnv1_32, fnv1_32_bytes

PRIME = 16777619


def _by_hand(data: bytes, h: int = 0) -> int:
    for b in data:
        h = (h * PRIME) % 2**32
        h ^= b
    return h


def test_empty_string_is_start_value():
    assert fnv1_32("") == 0
    assert fnv1_32_bytes(b"", seed=FNV1_32_OFFSET_BASIS) == 0x811C9DC5


def test_single_character_worked_by_hand():
    # "a" -> UTF-16-LE bytes 0x61 0x00: h = (0 * p) ^ 0x61 = 0x61; h = (0x61 * p) mod 2^32 ^ 0x00
    assert fnv1_32("a") == (0x61 * PRIME) % 2**32 == 1627429043
    # "ab" continues: ((0x61 * p) * p) ^ 0x62, then * p ^ 0x00
    h = ((((0x61 * PRIME) % 2**32) * PRIME) % 2**32) ^ 0x62
    assert fnv1_32("ab") == (h * PRIME) % 2**32


def test_multiply_then_xor_not_fnv1a():
    # FNV-1a would XOR first: for "a" that gives (0 ^ 0x61) * p, then * p again for the 0x00 byte
    fnv1a = ((0x61 * PRIME) % 2**32 * PRIME) % 2**32
    assert fnv1_32("a") != fnv1a


def test_textbook_vectors_with_offset_basis():
    # standard FNV-1 32 test vectors (offset basis start, raw bytes)
    assert fnv1_32_bytes(b"a", seed=FNV1_32_OFFSET_BASIS) == 0x050C5D7E
    assert fnv1_32_bytes(b"foobar", seed=FNV1_32_OFFSET_BASIS) == 0x31F0B262


def test_calvin_example_string():
    s = "dict_values([1, 1, 'left', 'open', 'slider_left', 'table', 'slider_right', 0])"
    assert fnv1_32(s) == _by_hand(s.encode("utf-16-le"))
    assert fnv1_32(s) == 2138410836
    assert 0 <= fnv1_32(s) < 2**32
    # str and its UTF-16-LE bytes hash the same; UTF-8 bytes do not
    assert fnv1_32(s.encode("utf-16-le")) == fnv1_32(s)
    assert fnv1_32(s.encode("utf-8")) != fnv1_32(s)
