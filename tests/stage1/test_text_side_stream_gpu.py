"""On CUDA the stage-1 text encoding does not wait for the work queued on the main stream (run with
`pytest -m gpu tests/stage1`): transformers' CLIP text tower reads its padding mask on the host, which on the main
stream would wait for the whole training step queued before it (vpp_core.side_stream)."""

import pytest
import torch

from video_models.builders import load_text_encoder, make_tiny_video_model_folders
from video_models.text_conditioning import encode_text
from vpp_core.side_stream import SideStream

pytestmark = pytest.mark.gpu

TEXTS = ["pick up the red block", "open the drawer", "push the sliding door to the left"]


@pytest.fixture(scope="module")
def text_tower(tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    _, clip = make_tiny_video_model_folders(tmp_path_factory.mktemp("side_stream_models"))
    tokenizer, encoder = load_text_encoder(clip, device="cuda")
    return tokenizer, encoder.eval()


def _encode(tokenizer, encoder):
    with torch.no_grad():
        return encode_text(TEXTS, tokenizer, encoder, cross_attention_dim=64)


def _busy_main_stream():
    """Queue about half a second of GPU sleep on the current stream (10^9 cycles at about 2 GHz)."""
    torch.cuda._sleep(1_000_000_000)


def test_text_encoding_on_the_main_stream_waits_for_queued_work(text_tower):
    """The premise: on the main stream, encoding the text makes the host wait for everything queued before it."""
    tokenizer, encoder = text_tower
    _encode(tokenizer, encoder)
    torch.cuda.synchronize()
    _busy_main_stream()
    _encode(tokenizer, encoder)
    assert torch.cuda.current_stream().query(), "encode_text returned before the queued work had finished"


def test_side_stream_encoding_returns_before_queued_work_and_gives_the_same_tensor(text_tower):
    tokenizer, encoder = text_tower
    expected = _encode(tokenizer, encoder)
    side = SideStream("cuda")
    side.run(lambda: _encode(tokenizer, encoder))
    torch.cuda.synchronize()
    _busy_main_stream()
    emb = side.run(lambda: _encode(tokenizer, encoder))
    assert not torch.cuda.current_stream().query(), "the side stream waited for the main stream's queued work"
    doubled = emb * 2  # queued on the main stream: must see the side stream's result
    torch.cuda.synchronize()
    assert torch.equal(emb, expected)
    assert torch.equal(doubled, expected * 2)
