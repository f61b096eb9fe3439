"""A character-level CLIP tokenizer that needs no download.

Real runs load the tokenizer of `openai/clip-vit-base-patch32`. Tests and the demo cannot download it, so they use a
CLIP BPE tokenizer whose vocabulary is the 256 byte symbols (with and without the end-of-word marker) and no merges:
every character becomes one token. It is a genuine `CLIPTokenizer`, saved and loaded with `save_pretrained` /
`AutoTokenizer.from_pretrained` exactly like the released one.
"""

from __future__ import annotations

from transformers import CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


def _byte_symbols() -> list[str]:
    """The printable stand-ins byte-level BPE uses for the 256 byte values (the GPT-2/CLIP convention)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def tiny_clip_vocab() -> dict[str, int]:
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + [BOS_TOKEN, EOS_TOKEN]
    return {tok: i for i, tok in enumerate(tokens)}


def build_tiny_clip_tokenizer() -> CLIPTokenizer:
    """A 514-token character-level CLIP tokenizer (BOS 512, EOS/pad 513)."""
    return CLIPTokenizer(vocab=tiny_clip_vocab(), merges=[])
