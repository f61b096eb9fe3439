"""A fingerprint of a module's weights, to tell whether data was made by the same model as the one at hand."""

from __future__ import annotations

import hashlib

import torch


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over every tensor of the module's state dict (names, dtypes, shapes and bytes). The dtype is part of
    it: the same weights loaded in another precision fingerprint differently."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().contiguous().view(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()
