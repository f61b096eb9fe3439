"""A small CLIP tokenizer that needs no download: byte symbols plus whole words of the instruction vocabulary.

Real runs load the tokenizer of `openai/clip-vit-base-patch32`. Tests and the demo cannot download it, so they use a
CLIP BPE tokenizer built here: the 256 byte symbols (with and without the end-of-word marker), then every word of the
project's instruction files (policy_conf/annotations: CALVIN's training phrasings and evaluation sentences), built by
chains of BPE merges: most words become one token, a few two to five. It is a genuine `CLIPTokenizer`, saved and
loaded with `save_pretrained` / `AutoTokenizer.from_pretrained` exactly like the released one.

Why words and not characters: the video model reads only the first 20 tokens of an instruction (VPP's
`max_length`), which covers a whole sentence with CLIP's word-level BPE tokens. With one token per character, 20 tokens
end after "push the sliding do", so "... to the left side" and "... to the right side" gave the video model identical
text conditioning (simulator run 4, docs/PERFORMANCE.md). Unknown words still tokenize, into characters.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import yaml
from transformers import CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
ANNOTATION_DIR = Path(__file__).resolve().parents[1] / "policy_conf" / "annotations"
END_OF_WORD = "</w>"


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


@lru_cache(maxsize=1)
def instruction_words(annotation_dir: Path = ANNOTATION_DIR) -> tuple[str, ...]:
    """Every lower-case alphabetic word of the instruction yaml files (task -> list of sentences), sorted."""
    words: set[str] = set()
    for path in sorted(annotation_dir.glob("*.yaml")):
        for sentences in (yaml.safe_load(path.read_text()) or {}).values():
            for sentence in sentences:
                words.update(re.findall(r"[a-z]+", sentence.lower()))
    return tuple(sorted(w for w in words if len(w) > 1))


def _word_merges(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """Left-to-right merge chains that build each word from its characters ("p"+"u", "pu"+"s", "pus"+"h</w>")."""
    merges: dict[tuple[str, str], None] = {}
    for word in words:
        piece = word[0]
        for i, char in enumerate(word[1:], start=1):
            char = char + END_OF_WORD if i == len(word) - 1 else char
            merges[(piece, char)] = None
            piece += char
    return list(merges)


def tiny_clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary: byte symbols (ids 0-255), byte symbols ending a word (256-511), BOS 512, EOS 513, then every
    piece the merges produce (each word's prefixes included, so any partial merge is still a known token)."""
    symbols = _byte_symbols()
    tokens = symbols + [s + END_OF_WORD for s in symbols] + [BOS_TOKEN, EOS_TOKEN]
    merges = _word_merges(instruction_words())
    known = set(tokens)
    for left, right in merges:
        if left + right not in known:
            known.add(left + right)
            tokens.append(left + right)
    return {tok: i for i, tok in enumerate(tokens)}, merges


def build_tiny_clip_tokenizer() -> CLIPTokenizer:
    """The small CLIP tokenizer above (BOS 512, EOS/pad 513; the instruction files' words mostly single tokens)."""
    vocab, merges = tiny_clip_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges)
