import pytest
import torch

from video_models.builders import build_unet
from video_models.checkpointing import configure_gradient_checkpointing, unet_layers
from video_models.edm import micro_conditioning, video_diffusion_loss
from vpp_core.config import load_config


def _grads(mode: str) -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    cfg = load_config("video_conf/tiny.yaml").model.unet
    unet = build_unet({**cfg, "block_out_channels": [32, 32, 32, 32]}).train()
    configure_gradient_checkpointing(unet, mode)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 16, 4, 8, 8, generator=g)
    loss = video_diffusion_loss(
        unet,
        latents,
        torch.randn(1, 20, 64, generator=g),
        micro_conditioning(1, 7, 127, 0, "cpu", torch.float32),
        0.18215,
        generator=g,
    )
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["blocks", "layers", "attentions", "resnets"])
def test_checkpointing_gives_identical_gradients(mode):
    loss_plain, grads_plain = _grads("none")
    loss_ckpt, grads_ckpt = _grads(mode)
    assert loss_plain == loss_ckpt
    assert grads_plain.keys() == grads_ckpt.keys()
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("mode, kinds", [("layers", ("resnets", "attentions")), ("attentions", ("attentions",)),
                                         ("resnets", ("resnets",))])
def test_layer_checkpointing_wraps_the_chosen_layers(mode, kinds):
    from diffusers.models.resnet import SpatioTemporalResBlock

    cfg = load_config("video_conf/tiny.yaml").model.unet
    unet = build_unet({**cfg, "block_out_channels": [32, 32, 32, 32]})
    configure_gradient_checkpointing(unet, mode)
    wrapped = unet_layers(unet, kinds)
    assert len(wrapped) > 4
    for layer in unet_layers(unet, ("resnets", "attentions")):
        assert getattr(layer.forward, "__vpp_block_checkpointed__", False) == (layer in wrapped)
    assert any(isinstance(m, SpatioTemporalResBlock) for m in wrapped) == ("resnets" in kinds)
    with pytest.raises(ValueError, match="layers"):
        configure_gradient_checkpointing(unet, "rows")
