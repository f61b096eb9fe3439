"""The GPU benchmark harnesses run end to end on the CPU at small sizes and report what they were asked for."""

import json
import sys

import pytest


def run_harness(module, argv, monkeypatch, capsys) -> dict:
    monkeypatch.setattr(sys, "argv", [module.__file__, *argv])
    module.main()
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("size, latent", [("tiny", 8), ("small_sim", 16)])
def test_stage1_step_sizes(size, latent, monkeypatch, capsys):
    from benchmarks import stage1_step

    out = run_harness(stage1_step, ["--size", size, "--device", "cpu", "--batch", "1", "--warmup", "0", "--iters", "1",
                                    "--precision", "fp32", "--checkpointing", "none", "--profile", "5"],
                      monkeypatch, capsys)
    assert out["settings"]["latent"] == [16, 4, latent, latent]
    assert out["step"]["median_ms"] > 0 and out["samples_per_s"] > 0
    assert set(out["profile"]) == {"gpu_ms_per_call", "kernels"}  # CPU: no GPU kernels to list, but the block exists


def test_policy_inference_reports_cudnn_exactness(monkeypatch, capsys):
    import torch

    from benchmarks import policy_step

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    out = run_harness(policy_step, ["--tiny", "--device", "cpu", "--mode", "inference", "--warmup", "0", "--iters", "1",
                                    "--cudnn-benchmark"], monkeypatch, capsys)
    assert out["settings"]["size"] == "tiny" and out["time"]["median_ms"] > 0
    # the CPU has no cuDNN, so the comparison with cuDNN's default choice must come out exact
    assert out["exactness"]["max_abs_diff_vs_default_cudnn_eager_same_generator"] == 0.0
    assert torch.backends.cudnn.benchmark is True  # the harness restores the setting it benchmarked with
