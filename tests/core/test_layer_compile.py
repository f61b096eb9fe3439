"""Stage-1 U-Net compiled layer by layer inside the activation checkpointing (video_models.layer_compile)."""

import pytest
import torch
from torch._inductor import config as inductor_config

from video_models.builders import build_unet
from video_models.checkpointing import configure_gradient_checkpointing, unet_layers
from video_models.edm import micro_conditioning, video_diffusion_loss
from video_models.layer_compile import compile_unet_layers
from vpp_core.config import load_config


def _tiny_unet(width: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = load_config("video_conf/tiny.yaml").model.unet
    return build_unet({**cfg, "block_out_channels": [width] * 4}).train()


def _loss(unet: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return video_diffusion_loss(unet, torch.randn(1, 16, 4, 8, 8, generator=g), torch.randn(1, 20, 64, generator=g),
                                micro_conditioning(1, 7, 127, 0, "cpu", torch.float32), 0.18215, generator=g)


def _grads(unet: torch.nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss = _loss(unet)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None}


@pytest.fixture
def counting_compile(monkeypatch):
    """torch.compile with a real backend (the argument of the returned setter), counting the calls of every compiled
    function and recording the settings it was compiled with."""
    real_compile = torch.compile
    record = {"settings": [], "calls": 0}

    def use(backend: str):
        def fake_compile(fn, **settings):
            record["settings"].append(settings)
            compiled = real_compile(fn, **{**settings, "backend": backend, "mode": None})

            def counted(*args, **kwargs):
                record["calls"] += 1
                return compiled(*args, **kwargs)

            return counted

        monkeypatch.setattr(torch, "compile", fake_compile)
        return record

    return use


@pytest.mark.parametrize("checkpointing, calls_per_layer", [("layers", 2), ("none", 1)])
def test_layers_compile_inside_the_checkpointing_and_match_eager(counting_compile, checkpointing, calls_per_layer):
    """With layer checkpointing, the backward pass recomputes each layer through its compiled forward (two calls per
    layer per step); without it, one. Under no_grad the eager layers run and nothing is compiled. Dynamo's "eager"
    backend keeps the math, so loss and gradients equal the plain U-Net's exactly."""
    reference = _tiny_unet()
    configure_gradient_checkpointing(reference, checkpointing)
    ref_loss, ref_grads = _grads(reference)

    record = counting_compile("eager")
    unet = _tiny_unet()
    configure_gradient_checkpointing(unet, checkpointing)
    layers = unet_layers(unet)
    assert compile_unet_layers(unet, "default") == len(layers)
    assert compile_unet_layers(unet, "default") == len(layers)  # idempotent: nothing compiled twice
    assert record["settings"] == [{"mode": "default", "dynamic": False}] * len(layers)
    with torch.no_grad():
        _loss(unet)
    assert record["calls"] == 0

    loss, grads = _grads(unet)
    assert record["calls"] == calls_per_layer * len(layers)
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=0, atol=0, msg=name)


def test_cpp_wrapper_switch(counting_compile):
    """`cpp_wrapper=True` switches inductor's C++ kernel-launch wrapper on for the process (restored here), and the
    layers compile with the mode asked for; without it the switch is left alone."""
    record = counting_compile("eager")
    with inductor_config.patch(cpp_wrapper=False):
        compile_unet_layers(_tiny_unet(), "default")
        assert inductor_config.cpp_wrapper is False
        unet = _tiny_unet()
        compile_unet_layers(unet, "default", cpp_wrapper=True)
        assert inductor_config.cpp_wrapper is True
    assert record["settings"][-1] == {"mode": "default", "dynamic": False}


@pytest.mark.slow
@pytest.mark.parametrize("cpp_wrapper", [False, True])
def test_layers_compile_with_inductor_on_cpu(counting_compile, cpp_wrapper):
    """The real code generator (inductor) for every layer shape of the tiny U-Net, fused forward and backward,
    recomputed inside the checkpointing, with Python or C++ kernel-launch wrappers: gradients close to eager's (not
    bit-identical: fused kernels reorder sums). Slow: about 5 minutes of code generation on a 2-core CPU with a cold
    inductor cache (15 s warm)."""
    reference = _tiny_unet()
    configure_gradient_checkpointing(reference, "layers")
    ref_loss, ref_grads = _grads(reference)

    record = counting_compile("inductor")
    unet = _tiny_unet()
    configure_gradient_checkpointing(unet, "layers")
    with inductor_config.patch(cpp_wrapper=False):  # restored afterwards
        compile_unet_layers(unet, "default", cpp_wrapper=cpp_wrapper)
        loss, grads = _grads(unet)
    assert record["calls"] == 2 * len(unet_layers(unet))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-5)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.parametrize("ddp_graph_cuts", [True, False])
def test_compiled_layers_are_not_cut_under_ddp(ddp_graph_cuts, monkeypatch, tmp_path):
    """Under DistributedDataParallel, dynamo's default (`optimize_ddp`) cuts every compiled layer into one graph
    per all-reduce bucket of its parameters, so the layers lose fusion across the cuts (at full size, the 25 MB
    buckets cut the layers of one forward pass into 85 graphs instead of 18; the step took 595 instead of 449 ms).
    `compile_unet_layers` switches the cuts off; `ddp_graph_cuts=True` keeps them for measurements. Here the layers
    are widened and the buckets shrunk to 1 MB so that the tiny U-Net's layers would be cut too."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None, **kw: real_compile(fn, backend=counting_backend, **kw))
    unet = _tiny_unet(width=128)
    with torch._dynamo.config.patch(optimize_ddp=True):  # torch's default; restored afterwards
        compile_unet_layers(unet, "default", ddp_graph_cuts=ddp_graph_cuts)
        assert torch._dynamo.config.optimize_ddp is ddp_graph_cuts
        layers = unet_layers(unet)
        torch._dynamo.reset()
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
        try:
            _loss(DistributedDataParallel(unet, bucket_cap_mb=1))
        finally:
            dist.destroy_process_group()
            torch._dynamo.reset()
    if ddp_graph_cuts:
        assert len(graphs) > len(layers)  # more graphs than layers: layers were cut
    else:
        assert len({type(layer) for layer in layers}) <= len(graphs) <= len(layers)  # at most one graph per layer
