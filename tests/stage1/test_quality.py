"""PSNR / SSIM and the stage-2 readiness verdict."""

from __future__ import annotations

import math

import pytest
import torch

from video_models.quality import ClipMetrics, Thresholds, gaussian_window, judge, psnr, ssim


def test_psnr_known_value():
    a = torch.zeros(2, 3, 8, 8)
    b = torch.full((2, 3, 8, 8), 0.1)
    assert psnr(a, b).tolist() == pytest.approx([20.0, 20.0])  # MSE 0.01
    assert psnr(a, b).shape == (2,)


def test_ssim_properties_and_closed_form():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=g)
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64))
    y = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert torch.allclose(ssim(x, y), ssim(y, x))
    z = (x + 0.5 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert (ssim(x, z) < ssim(x, y)).all() and (ssim(x, y) < 1).all()
    # constant images a, b: variances and covariance vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.3, 0.6, 0.01**2
    val = ssim(torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b))
    assert float(val) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1))
    w = gaussian_window()
    assert w.shape == (11, 11) and float(w.sum()) == pytest.approx(1.0) and w[5, 5] == w.max()
    # windows shrink for images smaller than 11 px instead of failing
    assert ssim(torch.rand(1, 3, 6, 6), torch.rand(1, 3, 6, 6)).shape == (1,)


def _moving(t=6, size=24):
    video = torch.zeros(2, t, 3, size, size)
    for k in range(t):
        video[:, k, :, 8:14, 2 + 3 * k : 8 + 3 * k] = 1.0
    return video + 0.1


def test_clip_metrics_and_verdict():
    gt = _moving()
    perfect, frozen = ClipMetrics(), ClipMetrics()
    perfect.add(gt, gt)
    frozen.add(gt[:, :1].expand_as(gt), gt)
    p, f = perfect.summary(), frozen.summary()
    assert p["clips"] == 2 and p["motion_ratio"] == pytest.approx(1.0) and p["ssim"] == pytest.approx(1.0)
    assert f["psnr"] == pytest.approx(f["copy_first_frame_psnr"]) and f["motion_ratio"] == 0.0
    assert p["copy_first_frame_psnr"] == pytest.approx(f["copy_first_frame_psnr"])
    assert judge(p, Thresholds()) == (True, [])
    ok, reasons = judge(f, Thresholds())
    assert not ok and "barely moves" in reasons[0]
    noisy = ClipMetrics()
    noisy.add(torch.rand(gt.shape, generator=torch.Generator().manual_seed(0)), gt)
    ok, reasons = judge(noisy.summary(), Thresholds())
    assert not ok and any("PSNR" in r for r in reasons) and any("SSIM" in r for r in reasons)
    with pytest.raises(ValueError, match="matching"):
        perfect.add(gt[:, :1], gt[:, :1])
    assert math.isfinite(p["psnr"])
