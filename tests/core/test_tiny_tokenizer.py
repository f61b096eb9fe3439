"""The download-free CLIP tokenizer covers whole instructions within the video model's 20 tokens, like CLIP's BPE."""

import yaml
from transformers import AutoTokenizer

from video_models.tiny_tokenizer import ANNOTATION_DIR, build_tiny_clip_tokenizer, instruction_words

PAIRS = [("push the sliding door to the left side", "push the sliding door to the right side"),
         ("press the button to turn on the led light", "press the button to turn off the led light"),
         ("pull the handle to open the drawer", "push the handle to close the drawer")]


def _ids(tokenizer, text):
    return tokenizer(text, max_length=20, padding="max_length", truncation=True).input_ids


def test_paired_instructions_differ_within_twenty_tokens():
    tokenizer = build_tiny_clip_tokenizer()
    for a, b in PAIRS:
        assert _ids(tokenizer, a) != _ids(tokenizer, b), (a, b)


def test_special_tokens_and_unknown_words():
    tokenizer = build_tiny_clip_tokenizer()
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (512, 513, 513)
    ids = tokenizer("push the qzx block").input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[:3] == ["<|startoftext|>", "push</w>", "the</w>"] and tokens[-1] == "<|endoftext|>"
    assert tokens[3:6] == ["q", "z", "x</w>"]  # unknown words fall back to characters, never to an unknown token


def test_almost_every_instruction_fits_in_twenty_tokens():
    tokenizer = build_tiny_clip_tokenizer()
    sentences = [s for path in sorted(ANNOTATION_DIR.glob("*.yaml"))
                 for group in yaml.safe_load(path.read_text()).values() for s in group]
    lengths = [len(tokenizer(s).input_ids) for s in sentences]
    assert len(sentences) > 100 and sum(n > 20 for n in lengths) <= 0.01 * len(sentences)
    assert {"drawer", "slider", "button", "left", "right"} <= set(instruction_words())


def test_tokenizer_round_trips_through_save_pretrained(tmp_path):
    tokenizer = build_tiny_clip_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for a, b in PAIRS:
        assert _ids(loaded, a) == _ids(tokenizer, a) and _ids(loaded, b) == _ids(tokenizer, b)
