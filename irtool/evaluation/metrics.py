"""PSNR and SSIM as the published all-in-one papers computed them, one named protocol each, in torch.

Every protocol reproduces one official evaluation script, so that a number printed by irtool can be put next to
the paper's. They differ in colour space, quantisation, SSIM window and covariance, data range and crop:

| protocol   | reproduces                                              | space          | SSIM window            |
|------------|---------------------------------------------------------|----------------|------------------------|
| `moce`     | MoCE-IR `src/test.py`                                   | RGB float [0,1]| Gaussian σ 1.5, 11×11, sample covariance |
| `promptir` | PromptIR / AdaIR / AirNet `utils/val_utils.compute_psnr_ssim` (scikit-image 0.19.3, `multichannel=True`) | RGB float [0,1] | uniform 7×7, sample covariance |
| `y`        | BasicSR `calculate_psnr` / `calculate_ssim` with `test_y_channel=True` (LoRA-IR and Histoformer training YAMLs) | BT.601 Y of uint8 RGB, [0, 255] | Gaussian σ 1.5, 11×11, population covariance |
| `lorair`   | LoRA-IR `Setting1/compute_psnr_ssim.py` (= Histoformer `Allweather/compute_psnr.py`) | its "Y" of uint8 PNGs, [0, 1], R and B weights swapped | uniform 11×11, sample covariance |

All of them average SSIM over the image after dropping a (window-1)/2 border, exactly as scikit-image does, and
the RGB ones average over the three channels. Values agree with scikit-image 0.26 run on the same arrays to better
than 1e-4 dB and 1e-5 SSIM (tests/test_metrics.py). Computation is float64 on the tensors' device (CPU for MPS,
which has no float64); scikit-image computes SSIM in float32 for the float32 arrays the official scripts pass it,
which moves the fifth decimal at most.

Inputs are torch tensors (C, H, W) or (B, C, H, W), or numpy arrays (H, W, C) as images are read; float values are
in [0, 1], uint8 values in [0, 255]. Imports torch (and numpy for array inputs).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import IrtoolError

# BT.601 luma as MATLAB's rgb2ycbcr computes it (BasicSR `bgr2ycbcr`, the papers' "Y channel"): weights for R, G, B
# on [0, 255] values, plus an offset of 16.
BT601_Y = (65.481, 128.553, 24.966)


class MetricError(IrtoolError):
    """Two images cannot be compared (shapes differ, too small for the SSIM window, ...)."""


@dataclass(frozen=True)
class Protocol:
    """How one paper's test script turns (restored, ground truth) into PSNR and SSIM."""

    name: str
    title: str
    reproduces: str  #: the official script this protocol equals
    space: str  #: "rgb" (three channels) or "y" (one luma channel)
    quantize: bool  #: restored image rounded to uint8 first (the script read PNGs, or used BasicSR's tensor2img)
    data_range: float  #: 1.0 for [0, 1] values, 255.0 for [0, 255]
    ssim_window: str  #: "gaussian" or "uniform"
    ssim_size: int  #: window side in pixels
    sample_covariance: bool  #: N-1 normalisation (scikit-image's default) or N (Wang et al. 2004)
    crop_multiple: int | None  #: centre-crop input and ground truth to a multiple of this before inference
    y_weights: tuple[float, float, float] | None = None  #: luma weights applied to (R, G, B) for space "y"
    notes: str = ""

    def describe(self) -> dict[str, Any]:
        return asdict(self)


PROTOCOLS: dict[str, Protocol] = {
    "moce": Protocol(
        name="moce",
        title="MoCE-IR (RGB float, Gaussian SSIM)",
        reproduces="eduardzamfir/MoCE-IR src/test.py: skimage peak_signal_noise_ratio(data_range=1) and "
        "structural_similarity(channel_axis=2, gaussian_weights=True, data_range=1.0) on float32 RGB clamped to [0, 1]",
        space="rgb",
        quantize=False,
        data_range=1.0,
        ssim_window="gaussian",
        ssim_size=11,
        sample_covariance=True,
        crop_multiple=16,
        notes="inputs and ground truth centre-cropped to a multiple of 16 (crop_img(base=16)); no padding, no tiling",
    ),
    "promptir": Protocol(
        name="promptir",
        title="PromptIR (RGB float, 7x7 uniform SSIM)",
        reproduces="va1shn9v/PromptIR utils/val_utils.py compute_psnr_ssim: skimage peak_signal_noise_ratio("
        "data_range=1) and structural_similarity(data_range=1, multichannel=True) under scikit-image 0.19.3, i.e. "
        "a 7x7 uniform window with sample covariance per RGB channel",
        space="rgb",
        quantize=False,
        data_range=1.0,
        ssim_window="uniform",
        ssim_size=7,
        sample_covariance=True,
        crop_multiple=16,
        notes="inputs and ground truth centre-cropped to a multiple of 16; newer scikit-image ignores multichannel= "
        "and fails (PromptIR issue #35): this is the 0.19.3 result",
    ),
    "y": Protocol(
        name="y",
        title="Y channel (BT.601 on uint8, Gaussian SSIM)",
        reproduces="BasicSR calculate_psnr / calculate_ssim(test_y_channel=True, crop_border=N): restored image "
        "rounded to uint8, Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 on [0, 255], 11x11 Gaussian (sigma 1.5) "
        "SSIM with population covariance (Wang et al. 2004)",
        space="y",
        quantize=True,
        data_range=255.0,
        ssim_window="gaussian",
        ssim_size=11,
        sample_covariance=False,
        crop_multiple=None,
        y_weights=BT601_Y,
        notes="full images (the network pads internally); optional border crop",
    ),
    "lorair": Protocol(
        name="lorair",
        title="LoRA-IR / Histoformer script (swapped-Y, 11x11 uniform SSIM)",
        reproduces="shallowdream204/LoRA-IR Setting1/compute_psnr_ssim.py (the same as sunshangquan/Histoformer "
        "Allweather/compute_psnr.py): PNGs read with cv2 (BGR) but converted with the RGB luma weights, so R and B "
        "swap; PSNR data_range=1 and structural_similarity(win_size=11, data_range=1) on that float 'Y'",
        space="y",
        quantize=True,
        data_range=1.0,
        ssim_window="uniform",
        ssim_size=11,
        sample_covariance=True,
        crop_multiple=None,
        y_weights=(BT601_Y[2], BT601_Y[1], BT601_Y[0]),
        notes="reproduces the script's R/B swap on purpose; use `y` for the textbook BT.601 luma",
    ),
}


def get_protocol(protocol: str | Protocol) -> Protocol:
    if isinstance(protocol, Protocol):
        return protocol
    try:
        return PROTOCOLS[protocol]
    except KeyError:
        raise IrtoolError(f"--protocol {protocol}: unknown (known: {', '.join(PROTOCOLS)})") from None


# --------------------------------------------------------------------------------------------------------------------
# Input handling


def _as_batch(image: Any) -> Tensor:
    """(B, C, H, W) tensor from a tensor (C, H, W)/(B, C, H, W) or a numpy array (H, W)/(H, W, C)/(B, H, W, C)."""
    if not isinstance(image, Tensor):
        import numpy as np

        from ..images.tensors import channels_first

        image = channels_first(np.asarray(image))  # the sample type is kept: uint8 is quantized differently
    if image.ndim == 2:
        image = image[None]
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4:
        raise MetricError(f"expected an image (C, H, W) or a batch (B, C, H, W), got shape {tuple(image.shape)}")
    if image.device.type == "mps":  # MPS has no float64
        image = image.cpu()
    return image


def _to_unit_float(image: Tensor) -> Tensor:
    """Float64 in [0, 1]. uint8 goes through float32 first, as torchvision's ToTensor makes the official tensors.
    (The protocols fix this arithmetic, in torch on the metric's device: not irtool.images.pixels, which is numpy.)"""
    if image.dtype == torch.uint8:
        return (image.to(torch.float32) / 255).to(torch.float64)
    return image.to(torch.float64).clamp(0, 1)


def _to_uint8_values(image: Tensor) -> Tensor:
    """Float64 holding uint8 values. Floats are clamped to [0, 1] and rounded as BasicSR's tensor2img does."""
    if image.dtype == torch.uint8:
        return image.to(torch.float64)
    return (image.to(torch.float32).clamp(0, 1) * 255.0).round().to(torch.float64)


def _luma(values: Tensor, weights: tuple[float, float, float]) -> Tensor:
    """(B, 1, H, W) luma on [0, 255] from (B, 3, H, W) values on [0, 255]."""
    w = torch.tensor(weights, dtype=values.dtype, device=values.device).view(1, 3, 1, 1)
    return (values * w).sum(dim=1, keepdim=True) / 255.0 + 16.0


def prepare(image: Any, protocol: str | Protocol, *, crop_border: int = 0) -> Tensor:
    """The float64 (B, C, H, W) array the protocol's metrics see for `image` (restored or ground truth)."""
    p = get_protocol(protocol)
    batch = _as_batch(image)
    if p.space == "rgb":
        out = _to_uint8_values(batch) / 255.0 if p.quantize else _to_unit_float(batch)
    else:
        if batch.shape[1] != 3:
            raise MetricError(f"protocol {p.name} needs RGB images, got {batch.shape[1]} channels")
        out = _luma(_to_uint8_values(batch), p.y_weights or BT601_Y)
        if p.data_range == 1.0:
            out = out / 255.0
    if crop_border:
        out = out[..., crop_border:-crop_border, crop_border:-crop_border]
    return out


# --------------------------------------------------------------------------------------------------------------------
# PSNR and SSIM on prepared arrays


def psnr_prepared(x: Tensor, y: Tensor, data_range: float) -> Tensor:
    """PSNR per image of two prepared (B, C, H, W) arrays: 10 log10(range^2 / MSE), MSE over all values (skimage)."""
    mse = (x - y).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse)


def _window_1d(kind: str, size: int, sigma: float, device: torch.device) -> Tensor:
    if kind == "uniform":
        return torch.full((size,), 1.0 / size, dtype=torch.float64, device=device)
    # scipy.ndimage.gaussian_filter's kernel: exp(-x^2 / 2 sigma^2) on [-r, r], normalised (r = int(3.5 sigma + 0.5))
    radius = (size - 1) // 2
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    k = torch.exp(-0.5 * x * x / sigma**2)
    return k / k.sum()


def ssim_prepared(
    x: Tensor,
    y: Tensor,
    *,
    window: str = "gaussian",
    size: int = 11,
    sample_covariance: bool = True,
    data_range: float = 1.0,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Mean SSIM per image of two prepared (B, C, H, W) arrays, equal to skimage's structural_similarity.

    skimage filters the whole image with reflection at the borders and then averages the SSIM map without a
    (size-1)/2 border; that interior is exactly a 'valid' convolution, so no padding is needed here. Channels are
    averaged (channel_axis). Computed one channel at a time to bound memory on large images.
    """
    if x.shape != y.shape:
        raise MetricError(f"images differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    h, w = x.shape[-2:]
    if h < size or w < size:
        raise MetricError(f"image of {w}x{h} px is smaller than the {size}x{size} SSIM window")
    k = _window_1d(window, size, sigma, x.device)
    kv, kh = k.view(1, 1, size, 1), k.view(1, 1, 1, size)
    cov_norm = size * size / (size * size - 1) if sample_covariance else 1.0
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    per_channel = []
    for c in range(x.shape[1]):
        a, b = x[:, c : c + 1], y[:, c : c + 1]
        stack = torch.cat([a, b, a * a, b * b, a * b], dim=0)  # (5B, 1, H, W)
        filtered = F.conv2d(F.conv2d(stack, kv), kh)
        ux, uy, uxx, uyy, uxy = filtered.chunk(5, dim=0)
        vx = cov_norm * (uxx - ux * ux)
        vy = cov_norm * (uyy - uy * uy)
        vxy = cov_norm * (uxy - ux * uy)
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        per_channel.append(s.flatten(1).mean(dim=1))
    return torch.stack(per_channel, dim=1).mean(dim=1)


# --------------------------------------------------------------------------------------------------------------------
# Public entry points


def psnr(restored: Any, target: Any, protocol: str | Protocol = "moce", *, crop_border: int = 0) -> Tensor:
    """PSNR per image (a (B,) float64 tensor) under `protocol`."""
    p = get_protocol(protocol)
    x, y = prepare(restored, p, crop_border=crop_border), prepare(target, p, crop_border=crop_border)
    if x.shape != y.shape:
        raise MetricError(f"images differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    return psnr_prepared(x, y.to(x.device), p.data_range)


def ssim(restored: Any, target: Any, protocol: str | Protocol = "moce", *, crop_border: int = 0) -> Tensor:
    """SSIM per image (a (B,) float64 tensor) under `protocol`."""
    p = get_protocol(protocol)
    x, y = prepare(restored, p, crop_border=crop_border), prepare(target, p, crop_border=crop_border)
    return ssim_prepared(
        x,
        y.to(x.device),
        window=p.ssim_window,
        size=p.ssim_size,
        sample_covariance=p.sample_covariance,
        data_range=p.data_range,
    )


def psnr_ssim(
    restored: Any, target: Any, protocol: str | Protocol = "moce", *, crop_border: int = 0
) -> tuple[float, float]:
    """(PSNR, SSIM) of one image pair as Python floats; PSNR is inf for identical images."""
    p = get_protocol(protocol)
    x, y = prepare(restored, p, crop_border=crop_border), prepare(target, p, crop_border=crop_border)
    if x.shape[0] != 1 or y.shape[0] != 1:
        raise MetricError("psnr_ssim compares one image pair; use psnr() / ssim() for batches")
    y = y.to(x.device)
    if x.shape != y.shape:
        raise MetricError(f"images differ in shape: {tuple(x.shape[1:])} vs {tuple(y.shape[1:])}")
    p_value = float(psnr_prepared(x, y, p.data_range)[0])
    s_value = float(
        ssim_prepared(
            x, y, window=p.ssim_window, size=p.ssim_size, sample_covariance=p.sample_covariance, data_range=p.data_range
        )[0]
    )
    return (p_value if math.isfinite(p_value) else math.inf), s_value
