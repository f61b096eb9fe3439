"""Optimizer groups and hyper-parameters, LR schedules, EMA, the sharded resumable sampler, config composition."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from train_helpers import CONF

from policy_models.training.config import compose_config
from policy_models.training.ema import EMA
from policy_models.training.optim import build_optimizer, build_scheduler, tri_stage_factor
from policy_models.training.sampler import ShardedEpochSampler


def test_tri_stage_key_steps():
    sched = {"type": "tri_stage", "total_steps": 50000, "phase_ratio": [0.02, 0.08, 0.9], "init_lr_scale": 0.1,
             "final_lr_scale": 1e-6}
    lr = 1e-4
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=lr)
    s = build_scheduler(opt, sched)
    real = []
    for _ in range(1200):  # the scheduler attached to the optimizer gives the lr of the closed form
        real.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step()
    lrs = [lr * tri_stage_factor(i, 50000, [0.02, 0.08, 0.9], 0.1, 1e-6) for i in range(50002)]
    assert real == pytest.approx(lrs[:1200], rel=1e-12)
    assert lrs[0] == pytest.approx(1e-5)                      # warmup starts at init_lr_scale * lr
    assert lrs[500] == pytest.approx(1e-5 + 0.5 * (1e-4 - 1e-5))  # linear
    assert lrs[1000] == pytest.approx(lr)                     # end of warmup
    assert lrs[3000] == pytest.approx(lr) and lrs[4999] == pytest.approx(lr)  # hold (1000..4999)
    assert lrs[5000] == pytest.approx(lr)                     # cosine starts at the peak
    mid = 5000 + 22500
    assert lrs[mid] == pytest.approx(1e-10 + (lr - 1e-10) * 0.5)  # half way: cos(pi/2) = 0
    q = 5000 + 11250
    assert lrs[q] == pytest.approx(1e-10 + (lr - 1e-10) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lrs[50000] == pytest.approx(1e-10, abs=1e-16)      # end of decay: final_lr_scale * lr
    assert lrs[50001] == pytest.approx(1e-10, abs=1e-16)      # then constant
    assert all(a >= b for a, b in zip(lrs[5000:50001], lrs[5001:50001]))


def test_constant_schedule_and_ratio_check():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-4)
    s = build_scheduler(opt, {"type": "constant"})
    for _ in range(10):
        opt.step()
        s.step()
    assert opt.param_groups[0]["lr"] == 1e-4
    with pytest.raises(ValueError, match="phase_ratio"):
        tri_stage_factor(0, 100, [0.5, 0.6, 0.1], 0.1, 0.1)
    with pytest.raises(ValueError, match="lr_scheduler.type"):
        build_scheduler(opt, {"type": "linear"})


def test_optimizer_only_trainable_and_hparams():
    m = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    m[1].weight.requires_grad_(False)
    opt = build_optimizer(m, {"lr": 1e-4, "betas": [0.9, 0.9], "weight_decay": 0.05})
    params = [p for g in opt.param_groups for p in g["params"]]
    assert len(params) == 3 and all(p.requires_grad for p in params)
    g = opt.param_groups[0]
    assert g["lr"] == 1e-4 and g["betas"] == (0.9, 0.9) and g["weight_decay"] == 0.05 and g["eps"] == 1e-8
    assert isinstance(opt, torch.optim.AdamW)


def test_ema_math_and_swap():
    p = nn.Parameter(torch.tensor([1.0, 2.0]))
    ema = EMA([("w", p)], decay=0.9)
    with torch.no_grad():
        p.copy_(torch.tensor([2.0, 4.0]))
    ema.update([("w", p)])
    torch.testing.assert_close(ema.state_dict()["w"], torch.tensor([1.1, 2.2]))
    with ema.swapped_into([("w", p)]):
        torch.testing.assert_close(p.detach(), torch.tensor([1.1, 2.2]))
    torch.testing.assert_close(p.detach(), torch.tensor([2.0, 4.0]))
    with pytest.raises(KeyError, match="missing"):
        ema.load_state_dict({"v": torch.zeros(2)})


def test_ema_warmup_schedule_forgets_the_initial_weights():
    p = nn.Parameter(torch.zeros(1))
    plain = EMA([("w", p)], decay=0.999)
    warm = EMA([("w", p)], decay=0.999, warmup_power=2 / 3)
    assert warm.decay_at(0) == 0.0  # the first update copies the weights, as the original's callback does
    assert warm.decay_at(3000) == pytest.approx(1 - 3001 ** (-2 / 3)) and warm.decay_at(10**9) == 0.999
    assert plain.decay_at(0) == plain.decay_at(3000) == 0.999  # default: the original's plain decay
    with torch.no_grad():
        p.fill_(1.0)  # the weights move away from their initial value 0 and stay there
    for step in range(3000):
        plain.update([("w", p)], step=step)
        warm.update([("w", p)], step=step)
    assert plain.state_dict()["w"].item() == pytest.approx(1 - 0.999**3000, rel=1e-4)  # 5% of the init is left
    assert warm.state_dict()["w"].item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="warmup_power"):
        EMA([("w", p)], warmup_power=0.0)
    warm.restart([("w", torch.full((1,), 3.0))])  # back to the given weights, settings kept
    assert warm.state_dict()["w"].item() == 3.0 and warm.warmup_power == 2 / 3 and warm.decay == 0.999


def test_sampler_shards_cover_and_resume():
    n = 23
    train = [ShardedEpochSampler(n, 4, r, shuffle=True, seed=5) for r in range(4)]
    for s in train:
        s.set_epoch(3)
    lists = [s.local_indices() for s in train]
    assert len({len(x) for x in lists}) == 1  # equal per-rank lengths (padded) for DDP
    assert set().union(*map(set, lists)) == set(range(n))
    s2 = ShardedEpochSampler(n, 4, 0, shuffle=True, seed=5)
    s2.set_epoch(3)
    assert list(s2) == lists[0]
    s2.set_epoch(3, skip=2)
    assert list(s2) == lists[0][2:] and len(s2) == len(lists[0]) - 2
    s2.set_epoch(4)
    assert list(s2) != lists[0]
    val = [ShardedEpochSampler(n, 4, r, shuffle=False, pad=False) for r in range(4)]
    got = sorted(i for s in val for i in s)
    assert got == list(range(n))  # validation: every sample exactly once


def test_calvin_training_config_original_values():
    cfg = compose_config(CONF / "VPP_Calvinabc_train.yaml",
                         ["--root_data_dir", "/d", "--video_model_path", "/v", "text_encoder_path=/c"])
    r = OmegaConf.to_container(cfg, resolve=True)
    assert r["model"]["video_model_path"] == "/v" and r["model"]["clip_model_path"] == "/c"
    assert r["dataset"]["root_data_dir"] == "/d"
    assert r["optimizer"] == {"lr": 1e-4, "betas": [0.9, 0.9], "eps": 1e-8, "weight_decay": 0.05, "impl": "auto"}
    assert r["lr_scheduler"]["type"] == "constant"
    assert r["lr_scheduler"]["total_steps"] == 50000 and r["lr_scheduler"]["phase_ratio"] == [0.02, 0.08, 0.9]
    assert r["ema"]["decay"] == 0.9999
    assert r["dataloader"]["batch_size"] == 28 and r["dataloader"]["num_workers"] == 12
    assert r["training"]["max_epochs"] == 50 and r["training"]["log_every"] == 50
    assert r["dataset"]["min_window_size"] == 21 and r["dataset"]["obs_seq_len"] == 1
    assert r["seed"] == 242
    assert r["embodiment"]["chunk_length"] == 10 and r["model"]["latent_dim"] == 384
    x = OmegaConf.to_container(compose_config(CONF / "VPP_xbot_train.yaml"), resolve=True)
    assert x["dataloader"]["batch_size"] == 18 and x["training"]["max_epochs"] == 500
    assert x["embodiment"]["action_dim"] == 38 and [g["weight"] for g in x["embodiment"]["loss_groups"]] == [2, 2, 1]


def test_training_configs_have_no_absolute_paths():
    for name in ("VPP_Calvinabc_train", "VPP_xbot_train", "tiny_calvin", "tiny_xbot"):
        text = (CONF / f"{name}.yaml").read_text()
        assert "/localssd" not in text and "/cephfs" not in text and "/home/" not in text
        cfg = OmegaConf.to_container(compose_config(CONF / f"{name}.yaml"), resolve=True)
        stack = [cfg]
        while stack:
            node = stack.pop()
            for v in node.values() if isinstance(node, dict) else node:
                if isinstance(v, (dict, list)):
                    stack.append(v)
                elif isinstance(v, str):
                    assert not v.startswith("/"), f"{name}: absolute path {v}"
