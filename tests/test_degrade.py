"""Synthetic degradations: exact official noise, seeded, shape/dtype/alpha kept, levels that mean something."""

from __future__ import annotations

import numpy as np
import pytest

from irtool.degrade import KINDS, LEVELS, degrade, resolve_level


def photo(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w, yy / h, 0.5 + 0.3 * np.sin(xx / 5.0)], axis=2)
    return np.clip(base * 200 + 30 + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)


def test_noise_on_uint8_is_the_official_test_degradation():
    """MoCE-IR/PromptIR: np.random.seed(0) once, then clip(clean + randn(*shape) * sigma, 0, 255).astype(uint8)."""
    clean = [photo(seed=1), photo(32, 40, seed=2)]
    np.random.seed(0)
    expected = [np.clip(c + np.random.randn(*c.shape) * 25, 0, 255).astype(np.uint8) for c in clean]
    shared = np.random.RandomState(0)
    got = [degrade(c, "noise", 25, seed=shared) for c in clean]
    assert all(np.array_equal(g, e) for g, e in zip(got, expected))
    assert np.array_equal(degrade(clean[0], "noise", "medium", seed=0), expected[0])


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_seeded_and_keeps_shape_dtype_and_alpha(kind):
    rgba = np.dstack([photo(), np.arange(48 * 64, dtype=np.uint8).reshape(48, 64)])
    a = degrade(rgba, kind, seed=7)
    assert a.shape == rgba.shape and a.dtype == np.uint8
    assert np.array_equal(a[..., 3], rgba[..., 3])
    assert np.array_equal(a, degrade(rgba, kind, seed=7))
    assert not np.array_equal(a[..., :3], rgba[..., :3])
    for image in (photo().astype(np.uint16) * 257, photo()[..., 0], photo().astype(np.float32) / 255):
        out = degrade(image, kind, seed=3)
        assert out.shape == image.shape and out.dtype == image.dtype


@pytest.mark.parametrize("kind", KINDS)
def test_heavier_levels_change_the_image_more(kind):
    clean = photo(64, 64).astype(np.float64)
    errors = [
        np.mean((degrade(clean.astype(np.uint8), kind, level, seed=5) - clean) ** 2)
        for level in ("light", "medium", "heavy")
    ]
    assert errors[0] < errors[1] < errors[2], errors


def test_levels_by_name_number_or_text_and_errors():
    assert resolve_level("noise", "heavy") == LEVELS["noise"]["heavy"] == 50
    assert resolve_level("blur", "9") == 9.0 and resolve_level("haze", 1.0) == 1.0
    assert resolve_level("jpeg") == LEVELS["jpeg"]["medium"]
    for kind, level in (("snow", 1), ("noise", "extreme"), ("jpeg", 0), ("lowlight", 2), ("noise", -1)):
        with pytest.raises(ValueError):
            degrade(photo(), kind, level)


@pytest.mark.parametrize("kind,level", [("blur", 15), ("blur", "heavy"), ("defocus", 4), ("defocus", 2.5)])
def test_blur_kernel_is_the_kernel_degrade_convolves_with(kind, level):
    import cv2

    from irtool.degrade import blur_kernel

    clean = photo(64, 64).astype(np.float32) / 255
    kernel = blur_kernel(kind, level, seed=11)
    assert kernel.ndim == 2 and kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1
    assert kernel.sum() == pytest.approx(1.0, abs=1e-5) and kernel.min() >= 0
    expected = cv2.filter2D(clean, -1, kernel, borderType=cv2.BORDER_REFLECT)
    np.testing.assert_allclose(degrade(clean, kind, level, seed=11), np.clip(expected, 0, 1), atol=1e-6)
    if kind == "blur":  # the angle follows the seed
        assert not np.allclose(blur_kernel(kind, level, seed=12), kernel)
    with pytest.raises(ValueError, match="no blur kernel"):
        blur_kernel("noise", 25)


def test_defocus_is_a_disk_whose_size_is_the_radius():
    from irtool.degrade import disk_kernel

    for radius in (2, 4, 6):
        k = disk_kernel(radius)
        centre = k.shape[0] // 2
        row = k[centre]
        assert row.sum() / row.max() == pytest.approx(2 * radius, abs=0.3)  # the disk's diameter, in px
        np.testing.assert_allclose(k, k.T, atol=1e-7)  # round, not a line
