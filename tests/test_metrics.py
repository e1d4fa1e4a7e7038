"""irtool.evaluation.metrics against scikit-image on the same arrays, per protocol, as the official scripts call it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from irtool.evaluation import metrics
from irtool.evaluation.metrics import BT601_Y, MetricError

PSNR_TOL = 1e-4  # dB
SSIM_TOL = 1e-5


def _pair(h: int = 61, w: int = 83, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 ground truth with structure and a float32 "restoration" of it with errors of varying size."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w, yy / h, 0.5 + 0.5 * np.sin(xx / 5.0 + yy / 7.0)], axis=-1)
    gt = np.clip(base * 255 + rng.randn(h, w, 3) * 20, 0, 255).astype(np.uint8)
    restored = np.clip(gt / 255.0 + rng.randn(h, w, 3) * np.linspace(0.01, 0.08, w)[None, :, None], 0, 1)
    return gt, restored.astype(np.float32)


def _chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1)


@pytest.mark.parametrize("shape", [(61, 83), (48, 48), (23, 117)])
def test_moce_equals_skimage_gaussian_ssim_on_float32_rgb(shape):
    gt, restored = _pair(*shape)
    clean = (torch.from_numpy(gt).float() / 255).numpy()  # what ToTensor gives the official script
    want_psnr = sk_psnr(clean, restored, data_range=1)
    want_ssim = sk_ssim(clean, restored, channel_axis=2, gaussian_weights=True, data_range=1.0)
    got_psnr, got_ssim = metrics.psnr_ssim(_chw(restored), _chw(gt), "moce")
    assert abs(got_psnr - want_psnr) <= PSNR_TOL
    assert abs(got_ssim - want_ssim) <= SSIM_TOL
    # float64 arrays: skimage computes in float64 too, and then the agreement is at rounding level
    want64 = sk_ssim(
        clean.astype(np.float64), restored.astype(np.float64), channel_axis=2, gaussian_weights=True, data_range=1.0
    )
    assert abs(got_ssim - want64) <= 1e-9


@pytest.mark.parametrize("shape", [(61, 83), (16, 32)])
def test_promptir_equals_skimage_7x7_uniform_ssim(shape):
    gt, restored = _pair(*shape, seed=1)
    clean = (torch.from_numpy(gt).float() / 255).numpy()
    want_psnr = sk_psnr(clean, restored, data_range=1)
    # scikit-image 0.19.3's multichannel=True is channel_axis=-1 today; the window defaults to 7x7 uniform
    want_ssim = sk_ssim(clean, restored, data_range=1, channel_axis=-1)
    got_psnr, got_ssim = metrics.psnr_ssim(_chw(restored), _chw(gt), "promptir")
    assert abs(got_psnr - want_psnr) <= PSNR_TOL
    assert abs(got_ssim - want_ssim) <= SSIM_TOL


def _y(u8: np.ndarray, weights=BT601_Y) -> np.ndarray:
    return 16.0 + u8.astype(np.float64) @ np.asarray(weights) / 255.0


@pytest.mark.parametrize("crop_border", [0, 4])
def test_y_equals_skimage_wang_ssim_on_bt601_luma(crop_border):
    gt, restored = _pair(seed=2)
    restored_u8 = np.round(restored * 255).astype(np.uint8)  # BasicSR tensor2img rounds
    c = crop_border
    y_gt, y_out = _y(gt), _y(restored_u8)
    if c:
        y_gt, y_out = y_gt[c:-c, c:-c], y_out[c:-c, c:-c]
    want_psnr = sk_psnr(y_gt, y_out, data_range=255)
    want_ssim = sk_ssim(y_gt, y_out, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    # the float restoration is quantised by the protocol itself: both inputs must give the same numbers
    for candidate in (_chw(restored), restored_u8):
        got_psnr, got_ssim = metrics.psnr_ssim(candidate, gt, "y", crop_border=c)
        assert abs(got_psnr - want_psnr) <= PSNR_TOL
        assert abs(got_ssim - want_ssim) <= SSIM_TOL


def test_lorair_reproduces_the_scripts_bgr_swap_and_uniform_11x11_window():
    gt, restored = _pair(seed=3)
    restored_u8 = np.round(restored * 255).astype(np.uint8)

    def script_y(rgb_u8):  # the script: cv2.imread (BGR) -> float32 / 255 -> RGB weights -> float32 "Y" in [0, 1]
        bgr = rgb_u8[..., ::-1].astype(np.float32) / 255.0
        return ((bgr.astype(np.float64) * 255.0) @ (np.asarray(BT601_Y) / 255.0) + 16.0) / 255.0

    a, b = script_y(gt).astype(np.float32), script_y(restored_u8).astype(np.float32)
    want_psnr = sk_psnr(a, b, data_range=1)
    want_ssim = sk_ssim(a, b, win_size=11, data_range=1)
    got_psnr, got_ssim = metrics.psnr_ssim(restored_u8, gt, "lorair")
    assert abs(got_psnr - want_psnr) <= PSNR_TOL
    assert abs(got_ssim - want_ssim) <= SSIM_TOL
    # and it is not the textbook luma: the swap changes the number
    assert abs(metrics.psnr_ssim(restored_u8, gt, "y")[1] - got_ssim) > 1e-4


def test_batches_give_per_image_values():
    pairs = [_pair(seed=s) for s in range(3)]
    restored = torch.stack([_chw(r) for _, r in pairs])
    gt = torch.stack([_chw(g) for g, _ in pairs])
    batch_psnr = metrics.psnr(restored, gt, "moce")
    batch_ssim = metrics.ssim(restored, gt, "moce")
    for i in range(3):
        one = metrics.psnr_ssim(restored[i], gt[i], "moce")
        assert batch_psnr[i].item() == pytest.approx(one[0], abs=1e-12)
        assert batch_ssim[i].item() == pytest.approx(one[1], abs=1e-12)


def test_float_outputs_are_clamped_like_the_official_scripts():
    gt, restored = _pair(seed=4)
    overshoot = _chw(restored) * 1.3 - 0.1  # values outside [0, 1]
    clamped = overshoot.clamp(0, 1)
    assert metrics.psnr_ssim(overshoot, gt, "moce") == metrics.psnr_ssim(clamped, gt, "moce")


def test_identical_images_and_errors():
    gt, _ = _pair()
    p, s = metrics.psnr_ssim(gt, gt, "moce")
    assert math.isinf(p) and s == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(MetricError, match="differ in shape"):
        metrics.psnr_ssim(gt[:-1], gt, "moce")
    with pytest.raises(MetricError, match="smaller than the 11x11"):
        metrics.psnr_ssim(gt[:8, :8], gt[:8, :8], "moce")
    with pytest.raises(Exception, match="unknown"):
        metrics.get_protocol("matlab")
