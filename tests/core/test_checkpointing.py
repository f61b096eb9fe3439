import pytest
import torch

from video_models.builders import build_unet
from video_models.checkpointing import configure_gradient_checkpointing
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
    return float(loss), {n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["blocks", "layers"])
def test_checkpointing_gives_identical_gradients(mode):
    loss_plain, grads_plain = _grads("none")
    loss_ckpt, grads_ckpt = _grads(mode)
    assert loss_plain == loss_ckpt
    assert grads_plain.keys() == grads_ckpt.keys()
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_layer_checkpointing_wraps_every_resnet_and_transformer():
    from video_models.checkpointing import enable_layer_checkpointing

    cfg = load_config("video_conf/tiny.yaml").model.unet
    unet = build_unet({**cfg, "block_out_channels": [32, 32, 32, 32]})
    layers = [m for b in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
              for name in ("resnets", "attentions") for m in (getattr(b, name, None) or [])]
    assert enable_layer_checkpointing(unet) == len(layers) > 10
    assert all(getattr(m.forward, "__vpp_block_checkpointed__", False) for m in layers)
    with pytest.raises(ValueError, match="layers"):
        configure_gradient_checkpointing(unet, "rows")
