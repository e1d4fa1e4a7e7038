"""Training losses, per sample, so the loop can weight them per task and across processes.

Every function returns one value per image (shape (B,)); the official batch means are the means of these (all images
of a batch have the same size). Computed in float32 whatever the autocast precision.

- L1: mean |pred - gt| (MoCE-IR, PromptIR, Art).
- FFT-L1: mean |rfft2(pred) - rfft2(gt)| over the stacked real and imaginary parts (MoCE-IR's `FFTLoss`).
- identity hinge: max(0, L1(pred, gt) - L1(lq, gt)), what the network made worse than its input (irtool's: what it
  cannot restore it should leave alone; on clean -> clean pairs it is the L1 itself, so those count twice).
- PSNR loss: 10/ln10 · log(mean (pred - gt)² + 1e-8), i.e. minus the PSNR in dB for data range 1 (LoRA-IR's `PSNRLoss`,
  NAFNet's before it).

Imports torch only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def l1(pred: Tensor, gt: Tensor) -> Tensor:
    """(B,) mean absolute error per image."""
    return (pred.float() - gt.float()).abs().flatten(1).mean(dim=1)


def fft_l1(pred: Tensor, gt: Tensor) -> Tensor:
    """(B,) mean absolute difference of the 2-D real FFTs per image (real and imaginary parts alike)."""
    diff = torch.fft.rfft2(pred.float()) - torch.fft.rfft2(gt.float())
    return torch.view_as_real(diff).abs().flatten(1).mean(dim=1)


def psnr_loss(pred: Tensor, gt: Tensor) -> Tensor:
    """(B,) 10/ln10 · log(MSE + 1e-8) per image: minus the PSNR (dB, data range 1), lower is better."""
    mse = (pred.float() - gt.float()).pow(2).flatten(1).mean(dim=1)
    return (10.0 / math.log(10.0)) * torch.log(mse + 1e-8)


def identity_hinge(pred: Tensor, lq: Tensor, gt: Tensor) -> Tensor:
    """(B,) max(0, L1(pred, gt) - L1(lq, gt)) per image: how much worse than its input the output is."""
    return torch.relu(l1(pred, gt) - l1(lq, gt).detach())


PIXEL_LOSSES = {"l1": l1, "psnr": psnr_loss}


def task_sums(values: Tensor, task_ids: Tensor, num_tasks: int) -> tuple[Tensor, Tensor]:
    """Per-task sum of `values` (B,) and per-task sample count, both (num_tasks,) float64 (no gradient)."""
    ids = task_ids.to(values.device, torch.long)
    sums = torch.zeros(num_tasks, dtype=torch.float64, device=values.device).index_add_(
        0, ids, values.detach().double()
    )
    counts = torch.bincount(ids, minlength=num_tasks).to(torch.float64)
    return sums, counts
