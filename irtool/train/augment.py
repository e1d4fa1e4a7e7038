"""Wide training degradations (`degradations = "wide"`): families and ranges wider than any one test generator.

`irtool.degrade` is the project's benchmark generator and user-facing; training only on it taught the built-in model
that one generator's look (its rain kernel, its haze depth ramp, its low-light curve), and on photos degraded by
other code it did worse, in places worse than its input. Here each kind draws its family and parameters per sample:

| kind     | what a sample draws                                                                                      |
|----------|----------------------------------------------------------------------------------------------------------|
| noise    | Gaussian (one sigma or one per channel, 5-60 on the 0-255 scale) or Poisson-Gaussian; clipped; uint8 half the time |
| rain     | streaks: density, length 8-50 px, width, opacity, angle (vertical +-40 deg), one or two layers; screen or additive |
| haze     | depth: horizon (half), tilted ramp, low-frequency field, radial, flat; beta 0.3-2.5; airlight 0.7-1 (grey or tinted); mixed in linear light or on the encoded values |
| blur     | motion line of any angle 3-31 px, a curved shake path, or Gaussian sigma 0.6-4                           |
| defocus  | disk radius 1-8 px (sometimes softened by a small Gaussian)                                              |
| lowlight | half in linear light (exposure 0.005-0.4, shot + read noise, black level up to 0.02, sRGB-encoded, then half the time a tone gamma 1-1.8), half on the encoded values (exposure 0.03-0.6, gamma 1-3); per-channel gains, clipped, uint8 half the time |
| jpeg     | JPEG (4:4:4, 4:2:2 or 4:2:0) or WebP, quality 5-95                                                       |
| clean    | the photo itself                                                                                         |

A share `MIX_RATE` of degraded samples gets a second, milder degradation of another kind; the sample keeps its
source's label (the dominant degradation), so routing learns to name what matters most. Everything is drawn from
the generator the training set gives each sample (`np.random.default_rng([seed, epoch, index])`), so a sample is a
pure function of its key and `--resume` stays bit-exact.

Imports numpy, OpenCV and Pillow.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import cv2
import numpy as np

from ..degrade import disk_kernel

#: the kinds `sample` knows (irtool.train.presets.SYNTHETIC_TASKS)
KINDS = ("noise", "rain", "haze", "blur", "defocus", "lowlight", "jpeg", "clean")
#: share of degraded samples that get a second, milder degradation of another kind
MIX_RATE = 0.15
#: the order in which degradations happen in a camera pipeline: scene (haze, rain), optics (blur, defocus), sensor
#: (low light, noise), then the encoder (jpeg); a mixture applies its two in this order
PIPELINE = ("haze", "rain", "blur", "defocus", "lowlight", "noise", "jpeg")

Rng = np.random.Generator


def _log_uniform(rng: Rng, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def to_linear(srgb: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear light (the IEC 61966-2-1 curve)."""
    srgb = np.clip(srgb, 0.0, 1.0)
    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4).astype(np.float32)


def to_srgb(linear: np.ndarray) -> np.ndarray:
    """Linear light in [0, 1] -> sRGB-encoded values (the inverse of `to_linear`)."""
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055).astype(np.float32)


def _quantise_u8(image: np.ndarray) -> np.ndarray:
    return (np.round(np.clip(image, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# Kernels


def line_kernel(length: float, angle_deg: float, width: float = 1.0) -> np.ndarray:
    """A normalised line `length` px long at `angle_deg`, `width` px thick, drawn 4x larger and shrunk (anti-aliased)."""
    size = int(np.ceil(length + 2 * width)) + 2
    size += 1 - size % 2
    scale = 4
    big = np.zeros((size * scale, size * scale), np.float32)
    c = (size * scale - 1) / 2
    dx, dy = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    half = max(0.0, (length - 1) * scale / 2)
    p0 = (int(round(c - dx * half)), int(round(c - dy * half)))
    p1 = (int(round(c + dx * half)), int(round(c + dy * half)))
    cv2.line(big, p0, p1, 1.0, thickness=max(1, int(round(width * scale))), lineType=cv2.LINE_AA)
    kernel = cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)
    return kernel / max(float(kernel.sum()), 1e-12)


def shake_kernel(length: float, rng: Rng) -> np.ndarray:
    """A camera-shake path: a smooth random walk about `length` px long, drawn as a polyline, normalised."""
    steps = 12
    turn = rng.normal(0.0, 0.35, steps).cumsum() + rng.uniform(0, 2 * np.pi)
    seg = length / steps
    xy = np.concatenate([[[0.0, 0.0]], np.stack([np.cos(turn), np.sin(turn)], 1).cumsum(0) * seg])
    xy -= (xy.max(0) + xy.min(0)) / 2
    size = int(np.ceil(np.abs(xy).max() * 2)) + 3
    size += 1 - size % 2
    scale = 4
    big = np.zeros((size * scale, size * scale), np.float32)
    pts = np.round((xy + (size - 1) / 2) * scale + (scale - 1) / 2).astype(np.int32)
    cv2.polylines(big, [pts.reshape(-1, 1, 2)], False, 1.0, thickness=scale, lineType=cv2.LINE_AA)
    kernel = cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)
    return kernel / max(float(kernel.sum()), 1e-12)


def disk(radius: float) -> np.ndarray:
    """A normalised anti-aliased disk of `radius` px (an out-of-focus lens): irtool.degrade's point spread, which
    already draws fractional radii apart; the widening is in the radii drawn here, not in the shape."""
    return disk_kernel(radius)


def _convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT)


# --------------------------------------------------------------------------------------------------------------------
# One degradation per kind; `mild` draws the weaker range used for the second degradation of a mixture


def noise(image: np.ndarray, rng: Rng, mild: bool = False) -> np.ndarray:
    if rng.uniform() < 0.3:  # Poisson-Gaussian: variance a·x + b (shot noise grows with the signal)
        a = _log_uniform(rng, 2e-4, 2e-3 if mild else 3e-2)
        b = (rng.uniform(1, 6 if mild else 25) / 255.0) ** 2
        std = np.sqrt(np.clip(image, 0, 1) * a + b)
    else:
        high = 12.0 if mild else 60.0
        sigma = rng.uniform(5.0 if not mild else 2.0, high, 3 if rng.uniform() < 0.3 else 1) / 255.0
        std = np.broadcast_to(sigma.astype(np.float32), image.shape)
    noisy = image + rng.standard_normal(image.shape).astype(np.float32) * std
    noisy = np.clip(noisy, 0.0, 1.0)
    return _quantise_u8(noisy) if rng.uniform() < 0.5 else noisy.astype(np.float32)


def rain(image: np.ndarray, rng: Rng, mild: bool = False) -> np.ndarray:
    h, w = image.shape[:2]
    out = image
    for _ in range(1 if mild or rng.uniform() < 0.6 else 2):
        density = rng.uniform(0.3, 2.0) if mild else _log_uniform(rng, 0.5, 10.0)  # streak starts per 1000 px
        length = rng.uniform(8.0, 50.0)
        width = rng.uniform(0.6, 2.2)
        angle = 90.0 + rng.uniform(-40.0, 40.0)
        opacity = rng.uniform(0.15, 0.5) if mild else rng.uniform(0.25, 1.0)
        drops = (rng.uniform(0.0, 1.0, (h, w)) < density / 1000.0).astype(np.float32)
        drops *= rng.uniform(0.5, 1.0, (h, w)).astype(np.float32)
        kernel = line_kernel(length, angle, width)
        streaks = cv2.filter2D(drops, -1, kernel / kernel.max(), borderType=cv2.BORDER_CONSTANT)
        streaks = cv2.GaussianBlur(streaks, (0, 0), rng.uniform(0.3, 1.2))
        tint = rng.uniform(0.85, 1.0, 3).astype(np.float32)  # streaks a little off white
        streaks = np.clip(streaks * opacity, 0.0, 1.0)[..., None] * tint[None, None]
        if rng.uniform() < 0.5:
            out = 1.0 - (1.0 - out) * (1.0 - streaks)  # screen: lightens, never past white
        else:
            out = np.clip(out + streaks * rng.uniform(0.5, 1.0), 0.0, 1.0)  # additive, clipped
    return out.astype(np.float32)


def _depth(h: int, w: int, rng: Rng) -> np.ndarray:
    """A depth map in [0, 1] from one of several families."""
    # half of the scenes have the commonest outdoor layout (far at the top), the rest one of the other families
    family = 0 if rng.uniform() < 0.5 else int(rng.integers(1, 5))
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    yy, xx = yy / max(h - 1, 1), xx / max(w - 1, 1)
    if family == 0:  # horizon: far at the top
        depth = 1.0 - yy
    elif family == 1:  # a tilted plane
        a = rng.uniform(0, 2 * np.pi)
        depth = np.cos(a) * xx + np.sin(a) * yy
    elif family == 2:  # low-frequency random field
        cells = int(rng.integers(2, 7))
        depth = cv2.resize(rng.uniform(0, 1, (cells, cells)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    elif family == 3:  # radial: near at a point, far around it (a tunnel, a road)
        cy, cx = rng.uniform(0.2, 0.8, 2)
        depth = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    else:  # flat: uniform fog
        depth = np.full((h, w), rng.uniform(0.3, 0.8), np.float32)
    lo, hi = float(depth.min()), float(depth.max())
    depth = (depth - lo) / (hi - lo) if hi - lo > 1e-6 else np.clip(depth, 0, 1)
    if family != 4 and rng.uniform() < 0.5:  # roughen with a field
        field = cv2.resize(rng.uniform(0, 1, (4, 4)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        depth = np.clip(0.75 * depth + 0.25 * field, 0.0, 1.0)
    return depth.astype(np.float32)


def haze(image: np.ndarray, rng: Rng, mild: bool = False) -> np.ndarray:
    h, w = image.shape[:2]
    # beta and airlight in the ranges of RESIDE-style synthesis (airlight 0.7-1.0): a first fine-tune with beta up to
    # 3 and grey airlight down to 0.55 (scenes with transmission down to ~0.05) lost 3-4 dB of haze removal on the
    # held-out photos within 300 steps
    beta = rng.uniform(0.2, 0.6) if mild else rng.uniform(0.3, 2.5)
    lo = rng.uniform(0.0, 0.3)
    depth = lo + (1.0 - lo) * _depth(h, w, rng)
    t = np.exp(-beta * depth)[..., None]
    grey = rng.uniform(0.7, 1.0)
    tint = rng.uniform(-0.05, 0.05, 3) if rng.uniform() < 0.5 else np.zeros(3)
    airlight = np.clip(grey + tint, 0.0, 1.0).astype(np.float32)[None, None]
    if rng.uniform() < 0.5:  # Koschmieder's law in linear light, as the scene's radiance mixes with the airlight
        return to_srgb(to_linear(image) * t + to_linear(airlight) * (1.0 - t))
    return np.clip(image * t + airlight * (1.0 - t), 0.0, 1.0).astype(np.float32)  # on the encoded values


def blur(image: np.ndarray, rng: Rng, mild: bool = False) -> np.ndarray:
    if mild:
        return cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 1.0), borderType=cv2.BORDER_REFLECT)
    family = rng.uniform()
    if family < 0.6:
        kernel = line_kernel(rng.uniform(3.0, 31.0), rng.uniform(0.0, 180.0), rng.uniform(0.8, 1.5))
    elif family < 0.8:
        kernel = shake_kernel(rng.uniform(5.0, 31.0), rng)
    else:
        return cv2.GaussianBlur(image, (0, 0), rng.uniform(0.6, 4.0), borderType=cv2.BORDER_REFLECT)
    return _convolve(image, kernel)


def defocus(image: np.ndarray, rng: Rng, mild: bool = False) -> np.ndarray:
    out = _convolve(image, disk(rng.uniform(0.7, 1.5) if mild else rng.uniform(1.0, 8.0)))
    if rng.uniform() < 0.3:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.3, 1.0), borderType=cv2.BORDER_REFLECT)
    return out


def lowlight(image: np.ndarray, rng: Rng, mild: bool = False) -> np.ndarray:
    if rng.uniform() < 0.5:
        return _lowlight_linear(image, rng, mild)
    # on the encoded values: a darkening curve (exposure, gamma) with noise added after it
    exposure = rng.uniform(0.5, 0.8) if mild else _log_uniform(rng, 0.03, 0.6)
    gamma = rng.uniform(1.0, 1.3) if mild else rng.uniform(1.0, 3.0)
    gains = rng.uniform(0.8, 1.2, 3).astype(np.float32) if rng.uniform() < 0.5 else np.ones(3, np.float32)
    black = rng.uniform(0.0, 0.03) if rng.uniform() < 0.5 else 0.0
    dark = exposure * np.power(np.clip(image, 0.0, 1.0), gamma) * gains[None, None] + black
    shot = _log_uniform(rng, 1e-4, 3e-3)  # variance per unit signal
    read = rng.uniform(0.002, 0.03 if not mild else 0.01)
    std = np.sqrt(np.clip(dark, 0, 1) * shot + read**2)
    out = np.clip(dark + rng.standard_normal(image.shape).astype(np.float32) * std, 0.0, 1.0)
    return _quantise_u8(out) if rng.uniform() < 0.5 else out.astype(np.float32)


def _lowlight_linear(image: np.ndarray, rng: Rng, mild: bool) -> np.ndarray:
    """A camera's short exposure: light scaled in linear light, shot + read noise there, then sRGB-encoded (the
    encoding's steep start lifts the shadows' noise)."""
    exposure = rng.uniform(0.25, 0.5) if mild else _log_uniform(rng, 0.005, 0.4)
    gains = rng.uniform(0.8, 1.2, 3).astype(np.float32) if rng.uniform() < 0.5 else np.ones(3, np.float32)
    # a pedestal the processing leaves in (a black level not subtracted): 0.02 in linear light is about 0.15 once
    # encoded, a grey veil over the shadows
    black = rng.uniform(0.0, 0.02 if not mild else 0.003) if rng.uniform() < 0.5 else 0.0
    light = to_linear(image) * exposure * gains[None, None]
    shot = _log_uniform(rng, 1e-5, 1e-3)  # variance per unit of linear signal
    read = rng.uniform(0.0003, 0.004 if not mild else 0.001)
    std = np.sqrt(np.clip(light, 0, 1) * shot + read**2)
    out = to_srgb(light + rng.standard_normal(image.shape).astype(np.float32) * std + black)
    if rng.uniform() < 0.5:  # a camera's darker low-light rendering: a tone gamma on the encoded values
        out = np.power(out, rng.uniform(1.0, 1.3 if mild else 1.8)).astype(np.float32)
    return _quantise_u8(out) if rng.uniform() < 0.5 else out


def jpeg(image: np.ndarray, rng: Rng, mild: bool = False) -> np.ndarray:
    from PIL import Image

    quality = int(rng.integers(60, 96) if mild else rng.integers(5, 96))
    pil = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
    buffer = io.BytesIO()
    if rng.uniform() < 0.75:
        pil.save(buffer, format="JPEG", quality=quality, subsampling=int(rng.integers(0, 3)))  # 4:4:4, 4:2:2, 4:2:0
    else:
        pil.save(buffer, format="WEBP", quality=quality, method=int(rng.integers(0, 5)))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return (np.asarray(decoded.convert("RGB"), dtype=np.float32) / 255.0).astype(np.float32)


DEGRADATIONS: dict[str, Callable[..., np.ndarray]] = {
    "noise": noise,
    "rain": rain,
    "haze": haze,
    "blur": blur,
    "defocus": defocus,
    "lowlight": lowlight,
    "jpeg": jpeg,
}


def sample(image: np.ndarray, kind: str, rng: Rng, mix_rate: float = MIX_RATE) -> tuple[np.ndarray, str]:
    """`image` (HxWx3 float32 in [0, 1], not written to) with a `kind` degradation drawn from its wide family, and
    its label (`kind`: a mixture keeps the dominant degradation's name). "clean" returns a copy of the photo."""
    if kind not in KINDS:
        raise ValueError(f"unknown degradation {kind!r}; one of {', '.join(KINDS)}")
    if kind == "clean":
        return np.array(image, dtype=np.float32, copy=True), kind
    steps = [(kind, False)]
    if rng.uniform() < mix_rate:
        others = [k for k in PIPELINE if k != kind and not {k, kind} <= {"blur", "defocus"}]
        steps.append((others[int(rng.integers(0, len(others)))], True))
        steps.sort(key=lambda s: PIPELINE.index(s[0]))
    out = np.asarray(image, dtype=np.float32)
    for name, mild in steps:
        out = DEGRADATIONS[name](out, rng, mild)
    return np.ascontiguousarray(out, dtype=np.float32), kind
