"""ShardedAdamW in a process group of one: the same steps as plain AdamW, a checkpoint in plain AdamW's layout, and a
resume that continues exactly. On CUDA with the fused kernel (as the stage-1 trainer runs it) this is a GPU test:
after a resume the step counts must be back on the parameters' device. Two processes: tests/stage1."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

from vpp_core.sharded_optimizer import ShardedAdamW


@pytest.fixture
def one_process_group(request, tmp_path):
    backend = request.param
    if backend == "nccl" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    dist.init_process_group(backend, init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    yield backend
    dist.destroy_process_group()


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    optimizer.step()


@pytest.mark.parametrize(
    "one_process_group",
    [pytest.param("gloo", id="cpu-foreach"), pytest.param("nccl", id="cuda-fused", marks=pytest.mark.gpu)],
    indirect=True,
)
def test_sharded_adamw_steps_saves_and_resumes_as_adamw(one_process_group):
    device = torch.device("cuda" if one_process_group == "nccl" else "cpu")
    kwargs = {"lr": 1e-2, "weight_decay": 0.01, "fused": device.type == "cuda", "foreach": device.type == "cpu"}
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)).to(device)
    reference = copy.deepcopy(model)
    sharded, plain = ShardedAdamW(model.parameters(), **kwargs), torch.optim.AdamW(reference.parameters(), **kwargs)
    x = torch.randn(5, 8, device=device)
    for _ in range(3):
        _step(model, sharded, x)
        _step(reference, plain, x)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters()))

    saved = sharded.state_dict()
    expected = plain.state_dict()
    assert saved["state"].keys() == expected["state"].keys()
    assert all(torch.equal(saved["state"][i][k].cpu(), expected["state"][i][k].cpu())
               for i in expected["state"] for k in ("exp_avg", "exp_avg_sq", "step"))
    assert sharded.local_state_numel() == sum(t.numel() for s in expected["state"].values() for t in s.values())

    resumed = ShardedAdamW(model.parameters(), **kwargs)
    resumed.load_state_dict(saved)
    for param, state in resumed.optim.state.items():
        assert state["step"].device == (param.device if device.type == "cuda" else torch.device("cpu"))
    _step(model, resumed, x)
    _step(reference, plain, x)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters()))
