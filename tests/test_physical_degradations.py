"""benchmarks/physical_degradations.py: the independent generator's determinism, layout and each kind's physics."""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from restore_fixtures import photo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import physical_degradations as phys  # noqa: E402

CLEAN = photo(48, 64, seed=3)


def flat(value: int, size: int = 128) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


@pytest.mark.parametrize("kind", phys.KINDS)
@pytest.mark.parametrize("draw", ["standard", "random"])
def test_each_kind_is_seeded_uint8_rgb_of_the_input_shape(kind, draw):
    a = phys.degrade(CLEAN, kind, seed=5, draw=draw)
    b = phys.degrade(CLEAN, kind, seed=5, draw=draw)
    assert a.image.dtype == np.uint8 and a.image.shape == CLEAN.shape
    np.testing.assert_array_equal(a.image, b.image)
    assert a.params == b.params
    assert not np.array_equal(a.image, CLEAN)
    others = [phys.degrade(CLEAN, kind, seed=s, draw=draw) for s in (6, 7, 8)]
    # another seed draws other parameters or other noise (JPEG and WebP standards are fixed for some seeds)
    assert any(not np.array_equal(o.image, a.image) for o in others) or kind == "webp"


def test_bad_input_and_names_are_refused():
    with pytest.raises(ValueError, match="uint8 RGB"):
        phys.degrade(CLEAN.astype(np.float32), "noise")
    with pytest.raises(ValueError, match="unknown kind"):
        phys.degrade(CLEAN, "snow")
    with pytest.raises(ValueError, match="no parameter"):
        phys.degrade(CLEAN, "haze", sigma=3.0)


@pytest.mark.parametrize("style", phys.DEPTH_STYLES)
def test_haze_with_beta_zero_is_the_photo_and_haze_grows_with_beta(style):
    np.testing.assert_array_equal(phys.degrade(CLEAN, "haze", 1, beta=0.0, depth_style=style).image, CLEAN)
    light = phys.degrade(CLEAN, "haze", 1, beta=0.5, depth_style=style).image.astype(float)
    heavy = phys.degrade(CLEAN, "haze", 1, beta=3.0, depth_style=style).image.astype(float)
    airlight = np.array(phys.degrade(CLEAN, "haze", 1, depth_style=style).params["airlight"]) * 255
    # more scattering: every pixel closer to the airlight, and the contrast lower
    assert np.abs(heavy - airlight).mean() < np.abs(light - airlight).mean()
    assert heavy.std() < light.std()


def test_haze_is_strongest_where_the_depth_map_is_far():
    out = phys.degrade(flat(20), "haze", 0, beta=2.0, depth_style="ramp", near=0.0).image.astype(float)
    assert out[:8].mean() > out[-8:].mean() + 40  # the top (far) is washed towards the airlight, the bottom is not


def test_depth_maps_span_zero_to_one():
    rng = np.random.default_rng(0)
    for style in phys.DEPTH_STYLES:
        d = phys.depth_map((40, 50), style, rng, CLEAN[:40, :50])
        assert d.shape == (40, 50) and d.min() == 0.0 and d.max() == pytest.approx(1.0)


@pytest.mark.parametrize("length", [3.0, 9.5, 15.0, 31.0])
@pytest.mark.parametrize("angle", [0.0, 33.0, 90.0, 135.0])
def test_motion_kernel_sums_to_one_is_centred_and_lies_along_its_angle(length, angle):
    k = phys.motion_kernel(length, angle).astype(np.float64)
    assert k.sum() == pytest.approx(1.0, abs=1e-6) and k.shape[0] % 2 == 1 and (k >= 0).all()
    c = k.shape[0] // 2
    yy, xx = np.mgrid[0 : k.shape[0], 0 : k.shape[1]] - c
    x, y = xx.astype(float), -yy.astype(float)  # y up, as the angle is measured
    assert (k * x).sum() == pytest.approx(0, abs=1e-6) and (k * y).sum() == pytest.approx(0, abs=1e-6)
    theta = math.radians(angle)
    along = x * math.cos(theta) + y * math.sin(theta)
    across = -x * math.sin(theta) + y * math.cos(theta)
    # a uniform segment of length L has variance L^2 / 12 along it; the bilinear splat of a point at a uniform
    # sub-pixel offset f adds f (1 - f), 1/6 px^2 on average, spread over the two directions
    assert (k * along**2).sum() == pytest.approx(length**2 / 12 + 1 / 6, rel=0.02, abs=0.05)
    assert (k * across**2).sum() < 0.2


@pytest.mark.parametrize("radius", [1.0, 2.5, 4.0, 7.3])
def test_disk_kernel_sums_to_one_and_covers_the_disk_area(radius):
    k = phys.disk_kernel(radius).astype(np.float64)
    assert k.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-7)  # point-symmetric: correlation = convolution
    # weights are area shares of one pixel: (area inside) / (total area); the centre is a full pixel
    area = 1.0 / k.max()
    assert area == pytest.approx(math.pi * radius**2, rel=0.04)


def test_blur_keeps_a_flat_image_flat_at_the_borders():
    # BORDER_REFLECT_101: no dark or wrapped band along the edges
    for kind in ("blur", "defocus"):
        out = phys.degrade(flat(180, 64), kind, 2).image
        assert np.abs(out.astype(int) - 180).max() <= 1


def test_blur_is_in_linear_light():
    # a black/white edge blurred in linear light: the mid-edge pixel is brighter than the sRGB average
    edge = np.zeros((32, 32, 3), np.uint8)
    edge[:, 16:] = 255
    out = phys.degrade(edge, "blur", 0, length=9.0, angle=0.0)
    row = out.image[16, :, 0].astype(float)
    expected = phys.linear_to_srgb(np.array(0.5)) * 255  # half the light reaches the pixel on the edge's centre line
    assert np.abs(row - expected).min() < 12 and row[12] < row[20]
    assert out.kernel is not None and out.kernel.sum() == pytest.approx(1.0, abs=1e-6)


def test_low_light_is_darker_and_noisier_and_the_exposure_orders_it():
    means = [phys.degrade(CLEAN, "lowlight", 2, exposure=e).image.mean() for e in (0.03, 0.1, 0.4)]
    assert means[0] < means[1] < means[2] < CLEAN.mean()
    std = phys.degrade(CLEAN, "lowlight", 2).image.mean() / CLEAN.mean()
    assert std < 0.3  # the standard setting keeps well under a third of the photo's brightness
    # shot noise: a flat grey varies; without noise sources and with a unit tone curve it is a pure exposure change
    noisy = phys.degrade(flat(128), "lowlight", 0, exposure=0.2, gamma=1.0, black_level=0.0, wb_gains=(1, 1, 1))
    assert noisy.image.std() > 1
    quiet = phys.low_light(flat(128), np.random.default_rng(0), exposure=0.2, full_well=1e12)
    expected = phys.linear_to_srgb(phys.srgb_to_linear(np.array(128 / 255)) * 0.2) * 255
    assert np.abs(quiet.astype(float) - expected).max() <= 0.5


def test_jpeg_and_webp_come_from_real_encoders():
    from PIL import Image

    big = photo(64, 64, seed=9)
    for encoder in ("pillow", "opencv"):
        errors = {}
        for sub in ("4:4:4", "4:2:0"):
            out = phys.jpeg(big, quality=50, subsampling=sub, encoder=encoder)
            assert out.shape == big.shape and out.dtype == np.uint8
            errors[sub] = np.abs(out.astype(float) - big).mean()
        assert errors["4:2:0"] > errors["4:4:4"]  # halved chroma costs more than full chroma at one quality
    coarse = np.abs(phys.jpeg(big, quality=10).astype(float) - big).mean()
    fine = np.abs(phys.jpeg(big, quality=90).astype(float) - big).mean()
    assert coarse > fine > 0
    # the result is what a decoder gives back for the encoder's bytes
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, format="JPEG", quality=25, subsampling=2)
    np.testing.assert_array_equal(phys.degrade(big, "jpeg", 2).image, np.asarray(Image.open(buffer).convert("RGB")))
    w = phys.webp(big, quality=25)
    assert w.shape == big.shape and 0 < np.abs(w.astype(float) - big).mean()


def test_rain_only_adds_light_and_falls_along_its_angle():
    dark = flat(40, 96)
    out = phys.degrade(dark, "rain", 1, angle=0.0, density=3.0)
    assert (out.image.astype(int) >= 40).all()  # screen blend: light is added, never taken
    streaks = out.image[..., 0].astype(float) - 40
    # vertical fall: the streak layer varies much more across columns than down rows
    assert np.abs(np.diff(streaks, axis=1)).mean() > 2 * np.abs(np.diff(streaks, axis=0)).mean()

    def change(a, dy, dx):
        return np.abs(a[8 + dy : -8 + dy, 8 + dx : -8 + dx] - a[8:-8, 8:-8]).mean()

    # the smear follows the fall: drops drawn as dots, smeared 9 px, change least along (dx, dy) = (sin 25, cos 25)
    dots = phys.degrade(dark, "rain", 1, angle=25.0, density=1.0, length=(0.5, 0.5), smear=9.0).image[..., 0]
    assert 1.5 * change(dots.astype(float), 3, 1) < change(dots.astype(float), 3, -1)
    streaks = phys.degrade(dark, "rain", 1, angle=25.0, density=3.0).image[..., 0].astype(float)
    assert change(streaks, 3, 1) < change(streaks, 3, -1)
    veiled = phys.degrade(dark, "rain", 1, veil=0.1).image
    assert veiled.mean() > out.image.mean()


@pytest.mark.parametrize("value", [60, 128, 190])
def test_gaussian_noise_std_matches_sigma_on_a_flat_image(value):
    out = phys.degrade(flat(value, 256), "noise", 0, channel_factors=(1.0, 1.0, 1.0)).image.astype(float)
    assert out.std() == pytest.approx(25.0, rel=0.03)  # flat away from 0 and 255: clipping does not bite
    assert out.mean() == pytest.approx(value, abs=0.5)
    factors = (0.8, 1.0, 1.2)
    split = phys.degrade(flat(value, 256), "noise", 0, channel_factors=factors).image.astype(float)
    for c, f in enumerate(factors):
        assert split[..., c].std() == pytest.approx(25.0 * f, rel=0.03)


def test_poisson_gaussian_noise_grows_with_brightness_and_is_25_at_mid_grey():
    mid = phys.degrade(flat(128, 256), "noise", 1).image.astype(float)  # odd seed: the Poisson-Gaussian standard
    assert phys.degrade(flat(128, 256), "noise", 1).params["model"] == "poisson-gaussian"
    assert mid.std() == pytest.approx(25.0 * math.sqrt(128 / 255 / 0.5 * 2 / 3 + 1 / 3), rel=0.04)
    dark = phys.degrade(flat(30, 256), "noise", 1).image.astype(float)
    assert dark.std() < mid.std()
    clipped = phys.degrade(flat(250, 64), "noise", 0, sigma=60.0).image
    assert clipped.max() == 255 and clipped.dtype == np.uint8  # clipped to the 8-bit range, not wrapped
