"""Quality check of a stage-1 model: PSNR / SSIM of predicted clips against ground truth, compared with a
copy-first-frame baseline computed on the same clips in the same run.

Metrics are computed on frames 1..F-1 (frame 0 is the condition) in [0, 1] RGB. Ground truth is the VAE decoding of
the clip's latents, so the numbers measure prediction, not VAE reconstruction error.

  PSNR   10 log10(1 / MSE) per frame, averaged over frames and clips.
  SSIM   Wang et al. 2004: 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, data range 1, valid-mode filtering,
         per channel then averaged (the usual "gaussian_weights=True" SSIM).
  motion ratio   sum_t mean|pred_t - pred_0| / sum_t mean|gt_t - gt_0| over all clips: ~0 for a model that freezes
                 the first frame, ~1 for one that moves as much as reality.

Verdict ("ready for stage 2") — all of, per data set:
  * PSNR(model) >= PSNR(copy-first-frame) - 1.0 dB, and SSIM(model) >= SSIM(copy) - 0.05: the prediction stays
    as close to the truth as doing nothing does. Copying the first frame is a strong pixel baseline on robot videos
    (mostly static scene), and a diffusion sample is penalised for every plausible-but-different detail, so we do
    not demand beating it; a model that drifts, smears or hallucinates a different scene falls well below it
    (an untrained or broken model is typically 5-15 dB below);
  * motion ratio >= 0.25: the model predicts movement instead of freezing the first frame (which would pass the
    first rule trivially). Checked only where the ground truth moves (gt motion > 1e-3).
The margins are arguments of the CLI; they are heuristics chosen to separate "broken / not yet trained" from "usable
as a feature extractor", not a statement about the paper's model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from transformers import CLIPTextModelWithProjection, PreTrainedTokenizerBase

    from video_dataset.dataset_mix import MixRules
    from video_models.pipeline import TextVideoPipeline
    from video_models.prediction import PredictionSettings


def _as_frames(x: torch.Tensor) -> torch.Tensor:
    """(..., C, H, W) -> (N, C, H, W) float64."""
    return x.reshape(-1, *x.shape[-3:]).double()


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, eps: float = 1e-10) -> torch.Tensor:
    """Per-image PSNR in dB for (..., C, H, W) tensors; returns a tensor of shape (...)."""
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch {tuple(pred.shape)} vs {tuple(target.shape)}")
    mse = (_as_frames(pred) - _as_frames(target)).pow(2).mean(dim=(1, 2, 3))
    return (10 * torch.log10(data_range**2 / (mse + eps))).reshape(pred.shape[:-3])


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Per-image SSIM for (..., C, H, W) tensors (mean over channels and valid window positions)."""
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch {tuple(pred.shape)} vs {tuple(target.shape)}")
    x, y = _as_frames(pred), _as_frames(target)
    c = x.shape[1]
    size = min(window_size, x.shape[-1], x.shape[-2])
    size -= 1 - size % 2  # odd
    w = gaussian_window(size, sigma).to(x.device).expand(c, 1, size, size)

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=c)

    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x**2
    var_y = filt(y * y) - mu_y**2
    cov = filt(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.mean(dim=(1, 2, 3)).reshape(pred.shape[:-3])


@dataclass
class ClipMetrics:
    """Sums over clips, so several batches can be accumulated before `summary()`."""

    psnr_sum: float = 0.0
    ssim_sum: float = 0.0
    copy_psnr_sum: float = 0.0
    copy_ssim_sum: float = 0.0
    pred_motion: float = 0.0
    gt_motion: float = 0.0
    frames: int = 0
    clips: int = 0

    def add(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        """pred, gt: (B, F, 3, H, W) in [0, 1]; frame 0 is the condition and is excluded."""
        if pred.shape != gt.shape or pred.dim() != 5 or pred.shape[1] < 2:
            raise ValueError(f"expected matching (B, F>=2, 3, H, W) videos, got {tuple(pred.shape)}, {tuple(gt.shape)}")
        pred, gt = pred.double().cpu(), gt.double().cpu()
        later_p, later_g = pred[:, 1:], gt[:, 1:]
        copy = gt[:, :1].expand_as(later_g)
        self.psnr_sum += float(psnr(later_p, later_g).sum())
        self.ssim_sum += float(ssim(later_p, later_g).sum())
        self.copy_psnr_sum += float(psnr(copy, later_g).sum())
        self.copy_ssim_sum += float(ssim(copy, later_g).sum())
        self.pred_motion += float((later_p - pred[:, :1]).abs().mean(dim=(2, 3, 4)).sum())
        self.gt_motion += float((later_g - gt[:, :1]).abs().mean(dim=(2, 3, 4)).sum())
        self.frames += later_p.shape[0] * later_p.shape[1]
        self.clips += pred.shape[0]

    def summary(self) -> dict[str, float]:
        n = max(self.frames, 1)
        return {
            "clips": self.clips,
            "psnr": self.psnr_sum / n,
            "ssim": self.ssim_sum / n,
            "copy_first_frame_psnr": self.copy_psnr_sum / n,
            "copy_first_frame_ssim": self.copy_ssim_sum / n,
            "gt_motion": self.gt_motion / n,
            "motion_ratio": self.pred_motion / self.gt_motion if self.gt_motion > 0 else float("nan"),
        }


@dataclass
class Thresholds:
    psnr_margin_db: float = 1.0
    ssim_margin: float = 0.05
    min_motion_ratio: float = 0.25
    min_gt_motion: float = 1e-3


def judge(summary: dict[str, float], t: Thresholds) -> tuple[bool, list[str]]:
    """(passes, reasons for failing) for one data set's summary."""
    reasons = []
    if summary["psnr"] < summary["copy_first_frame_psnr"] - t.psnr_margin_db:
        reasons.append(
            f"PSNR {summary['psnr']:.2f} dB is more than {t.psnr_margin_db} dB below copy-first-frame "
            f"({summary['copy_first_frame_psnr']:.2f} dB)"
        )
    if summary["ssim"] < summary["copy_first_frame_ssim"] - t.ssim_margin:
        reasons.append(
            f"SSIM {summary['ssim']:.3f} is more than {t.ssim_margin} below copy-first-frame "
            f"({summary['copy_first_frame_ssim']:.3f})"
        )
    if summary["gt_motion"] > t.min_gt_motion and not summary["motion_ratio"] >= t.min_motion_ratio:
        reasons.append(
            f"motion ratio {summary['motion_ratio']:.2f} < {t.min_motion_ratio}: the prediction barely moves"
        )
    return not reasons, reasons


def thresholds_dict(t: Thresholds) -> dict[str, float]:
    return asdict(t)


def evaluate_datasets(
    pipe: TextVideoPipeline,
    tokenizer: PreTrainedTokenizerBase,
    text_encoder: CLIPTextModelWithProjection,
    settings: PredictionSettings,
    dataset_dir: str | Path,
    datasets: list[str],
    *,
    split: str = "val",
    num_clips: int = 16,
    batch_size: int = 4,
    camera: int = 0,
    mix_rules: MixRules | Mapping | None = None,
    thresholds: Thresholds | None = None,
    output_dir: str | Path | None = None,
    grid_clips: int = 8,
    progress: bool = True,
) -> dict:
    """Predict `num_clips` evenly spaced validation clips per data set (from their latents) and score them.

    Returns {"datasets": {name: summary + passes + reasons}, "ready": bool, "thresholds": ...}; writes
    {output_dir}/{name}_grid.mp4 (ground truth over prediction for the first `grid_clips` clips) when given.
    """
    import numpy as np
    from tqdm.auto import tqdm

    from video_dataset.dataset_mix import DatasetMix
    from video_models.pipeline import decode_latents
    from video_models.prediction import make_sample_grid, predict
    from vpp_core.video_io import write_mp4

    thresholds = thresholds or Thresholds()
    vsf = pipe.vae_scale_factor
    latent_shape = (pipe.unet.config.out_channels, settings.height // vsf, settings.width // vsf)
    report: dict = {"datasets": {}, "thresholds": thresholds_dict(thresholds)}
    for name in datasets:
        data = DatasetMix(
            dataset_dir,
            name,
            None,
            split,
            sequence_length=settings.num_frames,
            rules=mix_rules,
            latent_shape=latent_shape,
            seed=int(settings.seed),
        )
        total = data.num_clips(name)
        ids = np.unique(np.floor(np.linspace(0, total - 1, min(num_clips, total))).astype(int))
        metrics = ClipMetrics()
        grid_gt, grid_pred = [], []
        generator = torch.Generator().manual_seed(int(settings.seed))
        for start in tqdm(range(0, len(ids), batch_size), desc=f"predicting {name}", disable=not progress):
            items = [data.clip(0, int(i), camera) for i in ids[start : start + batch_size]]
            latents = torch.stack([it["latent"] for it in items])
            pred = predict(
                pipe,
                tokenizer,
                text_encoder,
                None,
                [it["text"] for it in items],
                settings,
                generator,
                first_latents=latents[:, 0],
                num_frames=latents.shape[1],
            )
            gt = decode_latents(pipe.vae, latents, settings.decode_chunk_size)
            pred_t = torch.from_numpy(pred).permute(0, 1, 4, 2, 3).float() / 255
            gt_u8 = gt.mul(255).round().to(torch.uint8)
            metrics.add(pred_t, gt_u8.float() / 255)
            if len(grid_gt) < grid_clips:
                grid_gt.extend(gt_u8.permute(0, 1, 3, 4, 2).numpy())
                grid_pred.extend(pred)
        summary = metrics.summary()
        passes, reasons = judge(summary, thresholds)
        report["datasets"][name] = {**summary, "passes": passes, "reasons": reasons}
        if output_dir is not None and grid_gt:
            k = min(grid_clips, len(grid_gt))
            write_mp4(
                Path(output_dir) / f"{name}_grid.mp4",
                make_sample_grid(np.stack(grid_gt[:k]), np.stack(grid_pred[:k])),
                fps=int(settings.output_fps),
            )
    report["ready"] = all(d["passes"] for d in report["datasets"].values())
    return report


def format_report(report: dict) -> str:
    lines = [
        f"{'data set':<16} {'clips':>5} {'PSNR':>7} {'copy PSNR':>9} {'SSIM':>6} {'copy SSIM':>9} "
        f"{'motion':>7}  verdict"
    ]
    for name, d in report["datasets"].items():
        lines.append(
            f"{name:<16} {d['clips']:>5} {d['psnr']:>7.2f} {d['copy_first_frame_psnr']:>9.2f} {d['ssim']:>6.3f} "
            f"{d['copy_first_frame_ssim']:>9.3f} {d['motion_ratio']:>7.2f}  {'ok' if d['passes'] else 'FAIL'}"
        )
        lines.extend(f"    - {r}" for r in d["reasons"])
    verdict = "READY for stage 2" if report["ready"] else "NOT READY for stage 2"
    lines.append(f"{verdict} (thresholds: {report['thresholds']})")
    return "\n".join(lines)
