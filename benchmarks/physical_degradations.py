"""A second degradation generator, written from the physics and independently of `irtool.degrade`.

    >>> from physical_degradations import degrade, standard_params, random_params
    >>> out = degrade(clean, "haze", seed=3)                          # the kind's standard test setting
    >>> out = degrade(clean, "blur", seed=3, length=21.0, angle=40.0) # one parameter set by hand
    >>> out.image, out.params, out.kernel                             # uint8 RGB, what was drawn, the PSF (blurs)

`clean` is uint8 RGB (H, W, 3); the result is uint8 RGB of the same shape. One seed gives one result: every random
draw (parameters and noise) comes from `numpy.random.default_rng([seed, <kind's salt>])`. Nothing here imports or
copies irtool's own degradations (the benchmark compares a model on both); numpy, OpenCV and Pillow only.

Light is handled as a camera does: where the physics is linear in light (exposure, shot noise, scattering, optical
blur) the sRGB values are first decoded to linear light (IEC 61966-2-1), and encoded back afterwards. Every result
is quantised to 8 bit by rounding.

Per kind: the model, its parameters' documented range (`draw="random"` draws over it), and the benchmark's
standard test setting (`draw="standard"`, the default; strength fixed or narrow, angles, maps and the like drawn):

- lowlight: the clean photo in linear light x exposure 0.02-0.5 x per-channel white-balance gains 0.8-1.2; Poisson
  shot noise (a white pixel collects `full_well` 500-10000 electrons at exposure 1), Gaussian read noise 1-6 e-; a
  black-level pedestal 0-0.02 of white that the processing leaves in; sRGB encoding, a tone gamma 1.0-1.6 (> 1: a
  camera's darker low-light rendering); 8 bit. Standard: exposure 0.03-0.05, gamma 1.2-1.4, full well 2000 e-, read
  noise 3 e-, pedestal 0.01, gains 0.9-1.1 (on the held-out 256 px crops: mean brightness 0.14-0.24 of the
  photo's, input PSNR about 5-9 dB: between irtool.degrade's medium and heavy low light in brightness, and noisier
  than either with its shot and read noise).
- haze: I = J t + A (1 - t), t = exp(-beta d), in linear light; beta 0-3; depth d in [near, 1], near 0-0.4, from a
  vertical ramp, a smooth random field, a radial map (a vanishing point) or the image's blurred luminance (bright =
  far, as sky); airlight brightness 0.6-1.0, each channel tinted +-10%. Standard: beta 1.0-1.5, the depth style
  cycling with the seed, near 0.1, airlight 0.75-0.95 tinted +-5%.
- blur (motion): an anti-aliased line PSF (16 samples per px along the segment, each splatted bilinearly), length
  3-31 px, angle 0-180 deg, convolved in linear light. Standard: length 9-15 px, any angle.
- defocus: an anti-aliased disk PSF (each pixel weighted by its area inside the circle, 8x8 points per pixel),
  radius 1-8 px, convolved in linear light. Standard: radius 3-5 px.
- jpeg: a real JPEG encoder (libjpeg through Pillow or OpenCV), quality 10-90, chroma subsampling 4:4:4, 4:2:2 or
  4:2:0. Standard: Pillow, quality 25, the subsampling cycling with the seed.
- webp: Pillow's lossy WebP (libwebp; its lossy mode is always 4:2:0), quality 10-90. Standard: quality 25.
- rain: streaks of width 1-3 px (anti-aliased, sub-pixel ends), length 8-60 px, opacity 0.2-0.9, at an angle
  within +-30 deg of vertical (each streak +-3 deg around it), density 1-12 streaks per 1000 px, the streak layer
  smeared by a motion PSF of 3-9 px along the fall, screen or additive blend with a blue-white drop colour, a veil of
  haze 0-0.15. Standard: width 1, length 12-30 px, opacity 0.4-0.8, angle +-20 deg, 4 per 1000 px, smear 5 px,
  screen, no veil.
- noise: Gaussian (sigma 5-60 of 255, each channel's sigma x 1 +- 0-0.2) or Poisson-Gaussian (20-2000 photons at
  white, read sigma 0-20 of 255); clipped to [0, 255], rounded. Standard: sigma 25 with channel factors 0.9-1.1 on
  even seeds; on odd seeds Poisson-Gaussian with the same std, 25, at mid grey (a third of the variance read noise).

Borders: the blurs convolve with OpenCV's filter2D and BORDER_REFLECT_101 (the image mirrored about its edge
pixels), so a blurred image's border carries no dark or wrapped-around band. The rain smear uses the same border.
The blur kernels are point-symmetric, so filter2D's correlation equals a convolution.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

KINDS = ("lowlight", "haze", "blur", "defocus", "jpeg", "webp", "rain", "noise")

#: each kind's own stream of random numbers, so adding a draw to one kind leaves the others' results as they were
_SALT = {kind: 7919 * (i + 1) for i, kind in enumerate(KINDS)}


@dataclass
class Degraded:
    image: np.ndarray  #: uint8 RGB
    kind: str
    params: dict[str, Any] = field(default_factory=dict)  #: every parameter the result was made with
    kernel: np.ndarray | None = None  #: the PSF (blur, defocus), float32 summing to 1, in linear light


# --------------------------------------------------------------------------------------------------------------------
# sRGB <-> linear light (IEC 61966-2-1) and 8-bit quantising


def srgb_to_linear(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(v: np.ndarray) -> np.ndarray:
    v = np.clip(np.asarray(v, np.float64), 0.0, 1.0)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055)


def to_uint8(v: np.ndarray) -> np.ndarray:
    """[0, 1] floats to 8 bit: clipped, then rounded to the nearest level."""
    return np.rint(np.clip(v, 0.0, 1.0) * 255.0).astype(np.uint8)


def _unit(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 RGB (H, W, 3), got {image.dtype} {image.shape}")
    return image.astype(np.float64) / 255.0


def _convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return cv2.filter2D(x.astype(np.float32), -1, kernel.astype(np.float32), borderType=cv2.BORDER_REFLECT_101).astype(
        np.float64
    )


# --------------------------------------------------------------------------------------------------------------------
# Point spread functions


def motion_kernel(length: float, angle_deg: float, samples_per_px: int = 16) -> np.ndarray:
    """A straight motion path of `length` px at `angle_deg` (0 = horizontal, counter-clockwise in image rows going
    up), centred: points spaced 1/samples_per_px apart along the segment, each splatted bilinearly onto the pixel
    grid (anti-aliased: a line between pixel centres shares its weight). Odd size, sums to 1."""
    if length <= 1:
        return np.ones((1, 1), np.float32)
    size = 2 * int(math.ceil(length / 2)) + 3
    c = size // 2
    n = max(2, int(math.ceil(length * samples_per_px)))
    t = np.linspace(-length / 2, length / 2, n)
    theta = math.radians(angle_deg)
    xs, ys = c + t * math.cos(theta), c - t * math.sin(theta)
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    kernel = np.zeros((size, size), np.float64)
    for dy, dx, w in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(kernel, (y0 + dy, x0 + dx), w)
    return (kernel / kernel.sum()).astype(np.float32)


def disk_kernel(radius: float, supersample: int = 8) -> np.ndarray:
    """A defocus disk of `radius` px: each pixel weighted by the share of its area inside the circle (8x8 points per
    pixel). Odd size, sums to 1."""
    if radius <= 0.5:
        return np.ones((1, 1), np.float32)
    r = int(math.ceil(radius))
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    grid = np.arange(-r, r + 1)
    fine = (grid[:, None] + offsets[None, :]).ravel()
    yy, xx = np.meshgrid(fine, fine, indexing="ij")
    inside = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    kernel = inside.reshape(2 * r + 1, supersample, 2 * r + 1, supersample).mean(axis=(1, 3))
    return (kernel / kernel.sum()).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# The degradations, each from explicit parameters


def low_light(
    clean: np.ndarray,
    rng: np.random.Generator,
    *,
    exposure: float,
    gamma: float = 1.0,
    full_well: float = 1000.0,
    read_noise: float = 0.0,
    black_level: float = 0.0,
    wb_gains: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """An under-exposed shot: scene radiance (the clean photo in linear light) x exposure x white-balance gain
    collected as electrons (`full_well`: what white collects at exposure 1; Poisson shot noise), plus Gaussian read
    noise (`read_noise` electrons), plus a
    black-level pedestal (fraction of white) the processing does not remove; then sRGB encoding, a tone gamma > 1
    (a camera's darker low-light rendering) and 8-bit quantising. read_noise=0 and a huge full well: noiseless."""
    linear = srgb_to_linear(_unit(clean)) * exposure * np.asarray(wb_gains, np.float64)
    electrons = rng.poisson(np.clip(linear, 0, None) * full_well).astype(np.float64)
    if read_noise > 0:
        electrons += rng.normal(0.0, read_noise, electrons.shape)
    signal = electrons / full_well + black_level
    return to_uint8(linear_to_srgb(signal) ** gamma)


def depth_map(
    shape: tuple[int, int], style: str, rng: np.random.Generator, clean: np.ndarray | None = None
) -> np.ndarray:
    """Relative scene depth in [0, 1] (1 = farthest) of one of four styles: "ramp" (farther towards the top, as a
    landscape; a random power and horizon), "field" (a smooth random field), "radial" (farthest at a random vanishing
    point), "luminance" (brighter = farther, as sky; the clean image's blurred luminance)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if style == "ramp":
        horizon = rng.uniform(-0.2, 0.3)  # the row (fraction of the height from the top) where depth reaches 1
        below = np.clip((yy / max(h - 1, 1) - horizon) / (1 - horizon), 0, 1)
        d = 1 - below ** rng.uniform(0.5, 2.0)  # bottom rows near, rows at and above the horizon far
    elif style == "field":
        noise = rng.standard_normal((h, w))
        sigma = max(h, w) / rng.uniform(4, 8)
        d = cv2.GaussianBlur(noise, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
    elif style == "radial":
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        d = -np.hypot(yy - cy, xx - cx)
    elif style == "luminance":
        if clean is None:
            raise ValueError("the luminance depth map needs the clean image")
        lum = srgb_to_linear(_unit(clean)) @ np.array([0.2126, 0.7152, 0.0722])
        d = cv2.GaussianBlur(lum, (0, 0), max(h, w) / 32, borderType=cv2.BORDER_REFLECT_101)
    else:
        raise ValueError(f"unknown depth style {style!r} (ramp, field, radial, luminance)")
    lo, hi = float(d.min()), float(d.max())
    return (d - lo) / (hi - lo) if hi > lo else np.zeros_like(d)


DEPTH_STYLES = ("ramp", "field", "radial", "luminance")


def haze(
    clean: np.ndarray,
    *,
    beta: float,
    depth: np.ndarray,
    airlight: tuple[float, float, float] = (0.85, 0.85, 0.85),
) -> np.ndarray:
    """Koschmieder's scattering model in linear light: I = J t + A (1 - t), t = exp(-beta d). beta=0: the photo."""
    j = srgb_to_linear(_unit(clean))
    t = np.exp(-beta * depth)[..., None]
    a = srgb_to_linear(np.asarray(airlight, np.float64))
    return to_uint8(linear_to_srgb(j * t + a * (1 - t)))


def optical_blur(clean: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Blur by a PSF in linear light (light adds up on the sensor, not sRGB values), BORDER_REFLECT_101 borders."""
    return to_uint8(linear_to_srgb(_convolve(srgb_to_linear(_unit(clean)), kernel)))


#: Pillow's `subsampling` argument per chroma layout; OpenCV's sampling-factor flags
_PIL_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}
_CV_SUBSAMPLING = {
    "4:4:4": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
    "4:2:2": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
    "4:2:0": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
}


def jpeg(clean: np.ndarray, *, quality: int, subsampling: str = "4:2:0", encoder: str = "pillow") -> np.ndarray:
    """Encoded by a real JPEG encoder (libjpeg through Pillow or OpenCV), decoded by Pillow."""
    from PIL import Image

    if subsampling not in _PIL_SUBSAMPLING:
        raise ValueError(f"unknown chroma subsampling {subsampling!r} (4:4:4, 4:2:2, 4:2:0)")
    if encoder == "pillow":
        buffer = io.BytesIO()
        Image.fromarray(clean).save(
            buffer, format="JPEG", quality=int(quality), subsampling=_PIL_SUBSAMPLING[subsampling]
        )
        data = buffer.getvalue()
    elif encoder == "opencv":
        flags = [cv2.IMWRITE_JPEG_QUALITY, int(quality), cv2.IMWRITE_JPEG_SAMPLING_FACTOR, _CV_SUBSAMPLING[subsampling]]
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(clean, cv2.COLOR_RGB2BGR), flags)
        if not ok:
            raise RuntimeError("OpenCV's JPEG encoder failed")
        data = encoded.tobytes()
    else:
        raise ValueError(f"unknown encoder {encoder!r} (pillow, opencv)")
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def webp(clean: np.ndarray, *, quality: int) -> np.ndarray:
    """Lossy WebP (libwebp through Pillow; its lossy mode is always 4:2:0), decoded by Pillow."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(clean).save(buffer, format="WEBP", quality=int(quality), method=4)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def rain(
    clean: np.ndarray,
    rng: np.random.Generator,
    *,
    density: float,
    length: tuple[float, float] = (12.0, 30.0),
    width: int = 1,
    opacity: tuple[float, float] = (0.4, 0.8),
    angle: float = 0.0,
    smear: float = 5.0,
    blend: str = "screen",
    veil: float = 0.0,
) -> np.ndarray:
    """Rain streaks: `density` per 1000 px, each a line of a random length and opacity from the ranges, `width` px
    thick (anti-aliased, sub-pixel ends), at `angle` deg from vertical (+-3 deg each); the streak layer is smeared
    by a motion PSF of `smear` px along the fall (drops move during the exposure); then blended over the photo
    ("screen": 1 - (1 - I)(1 - S), light adds but never exceeds white; "additive": I + S, clipped) with a slightly
    blue-white drop colour, and an optional veil of haze (fraction `veil` of a grey airlight)."""
    x = _unit(clean)
    h, w = x.shape[:2]
    layer = np.zeros((h, w), np.float32)
    count = int(round(density * h * w / 1000))
    shift = 4  # OpenCV's sub-pixel coordinates: 1/16 px
    for _ in range(count):
        theta = math.radians(angle + rng.uniform(-3, 3))
        n = rng.uniform(*length)
        x0, y0 = rng.uniform(-0.1 * w, 1.1 * w), rng.uniform(-0.1 * h, 1.1 * h)
        x1, y1 = x0 + math.sin(theta) * n, y0 + math.cos(theta) * n
        streak = np.zeros_like(layer)
        points = [(int(round(v * (1 << shift)))) for v in (x0, y0, x1, y1)]
        cv2.line(streak, points[:2], points[2:], float(rng.uniform(*opacity)), width, cv2.LINE_AA, shift)
        np.maximum(layer, streak, out=layer)
    if smear > 1:
        # the fall's direction (sin a, cos a) in (x, y-down) is motion_kernel's angle a + 90
        layer = _convolve(layer, motion_kernel(smear, angle + 90.0)).astype(np.float32)
    colour = np.array([0.92, 0.95, 1.0])
    s = layer[..., None].astype(np.float64) * colour
    if blend == "screen":
        out = 1 - (1 - x) * (1 - s)
    elif blend == "additive":
        out = x + s
    else:
        raise ValueError(f"unknown blend {blend!r} (screen, additive)")
    if veil > 0:
        out = out * (1 - veil) + 0.8 * veil
    return to_uint8(out)


def noise(
    clean: np.ndarray,
    rng: np.random.Generator,
    *,
    model: str = "gaussian",
    sigma: float = 25.0,
    channel_factors: tuple[float, float, float] = (1.0, 1.0, 1.0),
    photons: float = 60.0,
    read_sigma: float = 10.0,
) -> np.ndarray:
    """Sensor noise on the 0-255 scale. "gaussian": N(0, sigma x channel factor) per channel. "poisson-gaussian":
    Poisson(x photons) / photons (x in [0, 1], `photons` at white) plus N(0, read_sigma). Clipped, rounded to uint8."""
    x = _unit(clean)
    if model == "gaussian":
        out = x + rng.standard_normal(x.shape) * (sigma / 255.0) * np.asarray(channel_factors, np.float64)
    elif model == "poisson-gaussian":
        out = rng.poisson(x * photons) / photons + rng.standard_normal(x.shape) * (read_sigma / 255.0)
    else:
        raise ValueError(f"unknown noise model {model!r} (gaussian, poisson-gaussian)")
    return to_uint8(out)


# --------------------------------------------------------------------------------------------------------------------
# Parameter draws: the documented range, and the benchmark's standard setting


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def random_params(kind: str, rng: np.random.Generator) -> dict[str, Any]:
    """Parameters drawn over the kind's whole documented range (see the module docstring)."""
    if kind == "lowlight":
        return dict(
            exposure=float(np.exp(rng.uniform(math.log(0.02), math.log(0.5)))),
            gamma=_u(rng, 1.0, 1.6),
            full_well=float(np.exp(rng.uniform(math.log(500), math.log(10000)))),
            read_noise=_u(rng, 1, 6),
            black_level=_u(rng, 0, 0.02),
            wb_gains=tuple(_u(rng, 0.8, 1.2) for _ in range(3)),
        )
    if kind == "haze":
        return dict(beta=_u(rng, 0, 3), depth_style=str(rng.choice(DEPTH_STYLES)), near=_u(rng, 0, 0.4),
                    airlight=_airlight(rng, 0.6, 1.0, 0.10))  # fmt: skip
    if kind == "blur":
        return dict(length=_u(rng, 3, 31), angle=_u(rng, 0, 180))
    if kind == "defocus":
        return dict(radius=_u(rng, 1, 8))
    if kind == "jpeg":
        return dict(
            quality=int(rng.integers(10, 91)),
            subsampling=str(rng.choice(list(_PIL_SUBSAMPLING))),
            encoder=str(rng.choice(["pillow", "opencv"])),
        )
    if kind == "webp":
        return dict(quality=int(rng.integers(10, 91)))
    if kind == "rain":
        lo = _u(rng, 8, 30)
        o = _u(rng, 0.2, 0.6)
        return dict(
            density=_u(rng, 1, 12),
            length=(lo, lo + _u(rng, 0, 30)),
            width=int(rng.integers(1, 4)),
            opacity=(o, min(0.9, o + _u(rng, 0, 0.4))),
            angle=_u(rng, -30, 30),
            smear=_u(rng, 3, 9),
            blend=str(rng.choice(["screen", "additive"])),
            veil=_u(rng, 0, 0.15),
        )
    if kind == "noise":
        if rng.random() < 0.5:
            v = _u(rng, 0, 0.2)
            return dict(model="gaussian", sigma=_u(rng, 5, 60), channel_factors=tuple(_u(rng, 1 - v, 1 + v) for _ in range(3)))  # fmt: skip
        return dict(model="poisson-gaussian", photons=float(np.exp(rng.uniform(math.log(20), math.log(2000)))),
                    read_sigma=_u(rng, 0, 20))  # fmt: skip
    raise ValueError(f"unknown kind {kind!r} ({', '.join(KINDS)})")


def _airlight(rng: np.random.Generator, lo: float, hi: float, tint: float) -> tuple[float, float, float]:
    b = _u(rng, lo, hi)
    return tuple(float(np.clip(b * (1 + _u(rng, -tint, tint)), 0, 1)) for _ in range(3))  # type: ignore[return-value]


#: noise's Poisson-Gaussian standard: std 25/255 at mid grey (x = 0.5), a third of the variance from the read noise
_PG_READ = 25.0 / math.sqrt(3)
_PG_PHOTONS = 0.5 / ((25.0 / 255) ** 2 - (_PG_READ / 255) ** 2)


def standard_params(kind: str, rng: np.random.Generator, seed: int = 0) -> dict[str, Any]:
    """The benchmark's standard test setting for `kind` (fixed strength; angles, maps and similar drawn)."""
    if kind == "lowlight":
        return dict(exposure=_u(rng, 0.03, 0.05), gamma=_u(rng, 1.2, 1.4), full_well=2000.0, read_noise=3.0,
                    black_level=0.01, wb_gains=tuple(_u(rng, 0.9, 1.1) for _ in range(3)))  # fmt: skip
    if kind == "haze":
        return dict(beta=_u(rng, 1.0, 1.5), depth_style=DEPTH_STYLES[seed % len(DEPTH_STYLES)], near=0.1,
                    airlight=_airlight(rng, 0.75, 0.95, 0.05))  # fmt: skip
    if kind == "blur":
        return dict(length=_u(rng, 9, 15), angle=_u(rng, 0, 180))
    if kind == "defocus":
        return dict(radius=_u(rng, 3, 5))
    if kind == "jpeg":
        return dict(quality=25, subsampling=list(_PIL_SUBSAMPLING)[seed % 3], encoder="pillow")
    if kind == "webp":
        return dict(quality=25)
    if kind == "rain":
        return dict(density=4.0, length=(12.0, 30.0), width=1, opacity=(0.4, 0.8), angle=_u(rng, -20, 20),
                    smear=5.0, blend="screen", veil=0.0)  # fmt: skip
    if kind == "noise":
        if seed % 2 == 0:
            return dict(model="gaussian", sigma=25.0, channel_factors=tuple(_u(rng, 0.9, 1.1) for _ in range(3)))
        return dict(model="poisson-gaussian", photons=_PG_PHOTONS, read_sigma=_PG_READ)
    raise ValueError(f"unknown kind {kind!r} ({', '.join(KINDS)})")


def degrade(clean: np.ndarray, kind: str, seed: int = 0, *, draw: str = "standard", **overrides: Any) -> Degraded:
    """`clean` (uint8 RGB) with one degradation. draw="standard": the kind's standard test setting; "random": a
    draw over its whole range. `overrides` replace drawn parameters by name (e.g. beta=0.0)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} ({', '.join(KINDS)})")
    _unit(clean)  # checks the layout
    rng = np.random.default_rng([seed, _SALT[kind]])
    if draw == "standard":
        params = standard_params(kind, rng, seed)
    elif draw == "random":
        params = random_params(kind, rng)
    else:
        raise ValueError(f"unknown draw {draw!r} (standard, random)")
    unknown = set(overrides) - set(params)
    if unknown:
        raise ValueError(f"{kind} has no parameter(s) {', '.join(sorted(unknown))} ({', '.join(params)})")
    params.update(overrides)
    kernel = None
    if kind == "lowlight":
        image = low_light(clean, rng, **params)
    elif kind == "haze":
        p = dict(params)
        d = depth_map(clean.shape[:2], p.pop("depth_style"), rng, clean)
        near = p.pop("near")
        image = haze(clean, beta=p["beta"], depth=near + (1 - near) * d, airlight=p["airlight"])
    elif kind in ("blur", "defocus"):
        kernel = motion_kernel(params["length"], params["angle"]) if kind == "blur" else disk_kernel(params["radius"])
        image = optical_blur(clean, kernel)
    elif kind == "jpeg":
        image = jpeg(clean, **params)
    elif kind == "webp":
        image = webp(clean, **params)
    else:
        apply: Callable[..., np.ndarray] = {"rain": rain, "noise": noise}[kind]
        image = apply(clean, rng, **params)
    return Degraded(image, kind, params, kernel)
