"""irtool.images.jpeg_trace: JPEG's quantisation found in decoded pixels, and the engine's use of it for names."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from restore_fixtures import photo, tiny_checkpoint

from irtool.images.jpeg_trace import NAMED_QUALITY, THRESHOLD, jpeg_trace


def textured(height: int = 256, width: int = 256, seed: int = 0) -> np.ndarray:
    """A photo-like uint8 image that never went through JPEG: gradients and edges plus fine grain."""
    base = photo(height, width, seed).astype(np.float64)
    grain = np.random.default_rng(seed + 1).normal(0, 6.0, base.shape)
    return np.clip(base + grain, 0, 255).astype(np.uint8)


def encoded(image: np.ndarray, fmt: str, **options) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **options)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


@pytest.mark.parametrize("quality", [15, 30, 50, 70])
@pytest.mark.parametrize("subsampling", [0, 2])  # 4:4:4 and 4:2:0
def test_a_jpeg_is_found_and_its_quality_estimated(quality, subsampling):
    trace = jpeg_trace(encoded(textured(seed=quality), "JPEG", quality=quality, subsampling=subsampling))
    assert trace is not None and trace.compressed, trace
    assert abs(trace.quality - quality) <= 3, trace  # libjpeg's table scaling read back from the steps
    assert trace.phase == (0, 0)


@pytest.mark.parametrize("seed", range(4))
def test_images_that_never_went_through_jpeg_are_not_taken_for_one(seed):
    image = textured(seed=seed)
    for candidate in (image, encoded(image, "PNG"), encoded(image, "WEBP", quality=25)):
        trace = jpeg_trace(candidate)
        assert trace is None or trace.score < THRESHOLD, trace


def test_the_grid_is_found_when_a_flip_or_crop_moved_it():
    jpeg = encoded(textured(250, 262, seed=3), "JPEG", quality=30)  # sides not multiples of 8
    for moved, phase in ((jpeg[:, ::-1], (0, 262 % 8)), (jpeg[5:, 3:], (3, 5))):
        trace = jpeg_trace(moved)
        assert trace is not None and trace.compressed and trace.phase == phase, trace


def test_sample_types_agree_and_flat_or_tiny_images_say_nothing():
    jpeg = encoded(textured(seed=5), "JPEG", quality=40)
    as_uint8 = jpeg_trace(jpeg)
    as_float = jpeg_trace(jpeg.astype(np.float32) / 255)
    as_uint16 = jpeg_trace(jpeg.astype(np.uint16) * 257)
    assert as_uint8 is not None and as_float is not None and as_uint16 is not None
    assert as_uint8.steps == as_float.steps == as_uint16.steps
    assert abs(as_uint8.score - as_float.score) < 1e-6 and abs(as_uint8.score - as_uint16.score) < 1e-6
    assert jpeg_trace(np.full((128, 128, 3), 90, np.uint8)) is None
    odd = jpeg.astype(np.float32) / 255
    odd[::7, ::5] = np.nan
    odd[3::11] = np.inf
    trace = jpeg_trace(odd)  # non-finite samples (odd float files) neither raise nor read as JPEG on their own
    assert trace is None or np.isfinite(trace.score)
    assert jpeg_trace(jpeg[:10, :10]) is None
    gray = jpeg_trace(encoded(textured(seed=6)[..., 0], "JPEG", quality=40))
    assert gray is not None and gray.compressed


def test_the_engine_names_a_jpeg_where_the_router_cannot(tmp_path):
    """A tiny model without a calibration names nothing ("unknown"); a coarse JPEG is still named, a PNG of the
    same photo is not, and a fine JPEG (above NAMED_QUALITY) is left unnamed."""
    from irtool.restoration import engine

    weights = tiny_checkpoint(tmp_path)
    clean = textured(96, 128, seed=7)
    images = [encoded(clean, "JPEG", quality=25), clean, encoded(clean, "JPEG", quality=min(100, NAMED_QUALITY + 12))]
    results = engine.restore(images, weights=str(weights), device="cpu")
    names = [r.report.degradation for r in results]
    assert names == ["jpeg", "unknown", "unknown"], names
    assert 0 < results[0].report.confidence <= 1
