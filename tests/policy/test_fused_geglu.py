"""The fused GEGLU (video_models.fused_geglu) on the CPU: its Triton kernel runs in Triton's interpreter
(TRITON_INTERPRET=1, set before triton is imported, hence a subprocess) against the unfused layer, and the switch
refuses what the kernel cannot run. The CUDA runs are in test_fused_geglu_gpu.py."""

import textwrap

import pytest
import torch
from diffusers.models.activations import GEGLU
from diffusers.models.attention import FeedForward

from video_models.fused_geglu import FusedGEGLU, geglu_linear, use_fused_geglu

from .helpers import run_in_triton_interpreter

# odd sizes on purpose: rows that do not fill the last block of programs (wrapped loads, masked store), reduction
# widths that are not a multiple of BK (masked loads), with and without bias; then a diffusers FeedForward whose
# GEGLU is switched to the fused layer
INTERPRETED = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from diffusers.models.attention import FeedForward
    from video_models.fused_geglu import geglu_linear, geglu_linear_launch, use_fused_geglu

    def reference(x, w, b):
        # the unfused layer's rounding: the projection stored in half precision, the gating computed in float32
        h, g = F.linear(x.float(), w.float(), None if b is None else b.float()).half().float().chunk(2, -1)
        return (h * F.gelu(g)).half()

    torch.manual_seed(0)
    worst = 0.0
    launches = [dict(BM=32, BN=32, BK=32, GROUP_M=2, num_warps=4, num_stages=2),
                dict(BM=16, BN=16, BK=64, GROUP_M=8, num_warps=4, num_stages=1)]
    for m, k, n, bias in [(50, 48, 40, True), (64, 64, 32, False), (130, 96, 72, True)]:
        x = torch.randn(m, k).half()
        w = (torch.randn(2 * n, k) * k ** -0.5).half()
        b = (torch.randn(2 * n) * 0.1).half() if bias else None
        ref = reference(x, w, b).float()
        for launch in launches:
            out = geglu_linear_launch(x, w, b, launch).float()
            worst = max(worst, float((out - ref).abs().max() / ref.abs().max()))
    x = torch.randn(2, 3, 5, 48).half()  # leading dimensions are kept
    w, b = (torch.randn(80, 48) * 0.15).half(), torch.zeros(80).half()
    out = geglu_linear(x, w, b)
    assert out.shape == (2, 3, 5, 40), out.shape
    worst = max(worst, float((out.float() - reference(x, w, b).float()).abs().max()
                             / reference(x, w, b).float().abs().max()))

    ff = FeedForward(48, activation_fn="geglu").half()
    x = torch.randn(2, 7, 48).half()
    with torch.no_grad():
        ref = ff(x).float()
        assert use_fused_geglu(ff) == 1
        worst = max(worst, float((ff(x).float() - ref).abs().max() / ref.abs().max()))
    print("worst relative difference", worst)
    assert worst < 2e-3, worst
''')


def test_fused_geglu_kernel_equals_the_unfused_layer_in_the_interpreter():
    run_in_triton_interpreter(INTERPRETED)


def test_fused_geglu_refuses_the_cpu_and_float32(monkeypatch):
    pytest.importorskip("triton", reason="triton is a dev dependency on Linux x86-64 (pip install -e '.[dev]')")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ff = FeedForward(16, activation_fn="geglu").half()
    with pytest.raises(ValueError, match="CUDA device"):
        use_fused_geglu(ff)
    assert type(ff.net[0]) is GEGLU  # nothing half switched
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        use_fused_geglu(FeedForward(16, activation_fn="geglu"))
    with pytest.raises(ValueError, match="expected \\(2N, 16\\)"):
        geglu_linear(torch.zeros(2, 16).half(), torch.zeros(9, 16).half(), None)


def test_fused_geglu_of_no_rows_launches_nothing():
    pytest.importorskip("triton", reason="triton is a dev dependency on Linux x86-64 (pip install -e '.[dev]')")
    out = geglu_linear(torch.zeros(2, 0, 16).half(), torch.zeros(8, 16).half(), None)  # no kernel runs on the CPU
    assert out.shape == (2, 0, 4) and out.dtype == torch.float16


def test_fused_geglu_switch_keeps_parameters_and_refuses_gradients(monkeypatch):
    pytest.importorskip("triton", reason="triton is a dev dependency on Linux x86-64 (pip install -e '.[dev]')")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    ff = torch.nn.Sequential(FeedForward(16, activation_fn="geglu"), FeedForward(16, activation_fn="geglu")).half()
    state = {k: v.clone() for k, v in ff.state_dict().items()}
    proj = ff[0].net[0].proj
    assert use_fused_geglu(ff) == 2
    assert all(type(f.net[0]) is FusedGEGLU for f in ff)
    assert ff[0].net[0].proj is proj
    assert state.keys() == ff.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in ff.state_dict().items())
    with pytest.raises(RuntimeError, match="no backward"):
        ff(torch.randn(1, 2, 16).half())  # parameters require grad, grad mode on
    assert use_fused_geglu(ff, False) == 2
    assert all(type(f.net[0]) is GEGLU for f in ff)
