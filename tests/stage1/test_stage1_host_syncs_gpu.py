"""The stage-1 loss queues its GPU work without waiting for the GPU (run with `pytest -m gpu tests/stage1`), although
its noise and sigmas are drawn on the CPU (a CPU generator makes resumed runs exact)."""

from pathlib import Path

import pytest
import torch

from video_models.builders import build_unet
from video_models.edm import micro_conditioning, video_diffusion_loss
from video_models.text_conditioning import drop_text_embeddings
from vpp_core.config import load_config

pytestmark = pytest.mark.gpu

TINY_VIDEO_CONF = Path(__file__).resolve().parents[2] / "video_conf" / "tiny.yaml"


def test_stage1_loss_and_step_make_no_host_device_sync(forbid_host_syncs):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    torch.manual_seed(0)
    unet = build_unet(load_config(TINY_VIDEO_CONF).model.unet).cuda().train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=5e-6, fused=True)
    latents = torch.randn(2, 16, 4, 8, 8, device="cuda")
    text = torch.randn(2, 20, unet.config.cross_attention_dim, device="cuda")
    generator = torch.Generator().manual_seed(0)

    def step():
        emb = drop_text_embeddings(text, 0.5, generator=generator)
        time_ids = micro_conditioning(2, 7, 127, 0.0, latents.device, emb.dtype)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = video_diffusion_loss(unet, latents, emb, time_ids, 0.18215, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()

    step()  # first call: lazy initialisation may synchronize once
    with forbid_host_syncs():
        step()
