"""Activation checkpointing for the SVD U-Net at block or layer granularity.

diffusers' `enable_gradient_checkpointing()` recomputes only the ResNets (and spatial transformer blocks) of the
spatio-temporal U-Net; the temporal transformer blocks keep all their activations, and at 16 frames x 32x32 latents a
batch of 6 does not fit in 80 GB. Checkpointing whole down/mid/up blocks ("blocks") keeps only each block's inputs
and recomputes one block at a time in the backward pass; checkpointing every ResNet and transformer of every block
("layers") keeps one tensor per layer instead, so the backward pass holds one layer's activations at a time rather
than a whole block's. The math is unchanged in both (same ops, same order); both cost about one extra forward pass.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import checkpoint


def checkpointed(forward):
    """`forward` run under non-reentrant activation checkpointing whenever gradients are enabled."""

    @functools.wraps(forward)
    def wrapper(*args, **kwargs):
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    wrapper.__vpp_block_checkpointed__ = True
    return wrapper


def enable_block_checkpointing(unet: torch.nn.Module) -> int:
    """Wrap every down block, the mid block and every up block of a diffusers U-Net in activation checkpointing.

    Returns the number of wrapped blocks. Idempotent."""
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    for block in blocks:
        if not is_checkpointed(block.forward):
            block.forward = checkpointed(block.forward)
    return len(blocks)


LAYER_KINDS = ("resnets", "attentions")


def unet_layers(unet: torch.nn.Module, kinds: tuple[str, ...] = LAYER_KINDS) -> list[torch.nn.Module]:
    """Every ResNet ("resnets") and/or transformer ("attentions": spatial + temporal, as diffusers pairs them) of
    every down/mid/up block."""
    return [
        layer
        for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
        for name in kinds
        for layer in getattr(block, name, None) or []
    ]


def is_checkpointed(forward) -> bool:
    """Whether `forward` is this module's checkpointing wrapper (its eager forward is `forward.__wrapped__`)."""
    return getattr(forward, "__vpp_block_checkpointed__", False)


def enable_layer_checkpointing(unet: torch.nn.Module, kinds: tuple[str, ...] = LAYER_KINDS) -> int:
    """Wrap every ResNet and/or transformer of every down/mid/up block in activation checkpointing. Returns the
    number of wrapped layers. Idempotent."""
    layers = unet_layers(unet, kinds)
    for layer in layers:
        if not is_checkpointed(layer.forward):
            layer.forward = checkpointed(layer.forward)
    return len(layers)


CHECKPOINTING_MODES = ("none", "diffusers", "blocks", "layers", "resnets", "attentions")


def configure_gradient_checkpointing(unet: torch.nn.Module, mode: str) -> None:
    """`mode`: "none", "diffusers" (ResNet-level, what the original forced on), "blocks" (whole blocks) or "layers"
    (every ResNet and transformer of every block)."""
    if mode == "none":
        return
    if mode == "diffusers":
        unet.enable_gradient_checkpointing()
    elif mode == "blocks":
        enable_block_checkpointing(unet)
    elif mode == "layers":
        enable_layer_checkpointing(unet)
    elif mode in LAYER_KINDS:
        enable_layer_checkpointing(unet, (mode,))
    else:
        raise ValueError(f"unknown gradient checkpointing mode {mode!r}; expected one of {CHECKPOINTING_MODES}")
