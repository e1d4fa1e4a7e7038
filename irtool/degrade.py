"""Seeded synthetic degradations: noise, rain, haze, motion blur, defocus blur, low light, JPEG. Arrays in, arrays out.

    >>> noisy = degrade(clean, "noise", 25, seed=0)          # Gaussian noise, sigma 25 on the 0-255 scale
    >>> hazy = degrade(clean, "haze", "heavy", seed=1)       # a named level

`image` is (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA (alpha is left alone), as uint8, uint16 or float in [0, 1];
the result has the same shape and dtype. The same image, kind, level and seed always give the same result.

Each kind has one numeric level parameter and three named levels (`LEVELS`; "medium" is the default):

| kind     | level means                                   | light | medium | heavy |
|----------|-----------------------------------------------|-------|--------|-------|
| noise    | Gaussian sigma on the 0-255 scale             | 15    | 25     | 50    |
| rain     | rain streaks per 1000 pixels                  | 2     | 5      | 10    |
| haze     | scattering coefficient beta (t = exp(-beta·d)) | 0.8   | 1.5    | 2.5   |
| blur     | linear motion-blur length in pixels           | 7     | 15     | 25    |
| defocus  | defocus (disk) blur radius in pixels          | 2     | 4      | 6     |
| lowlight | exposure (mean brightness factor)             | 0.5   | 0.3    | 0.15  |
| jpeg     | JPEG quality                                  | 60    | 30     | 10    |

Noise on uint8 is exactly the MoCE-IR test degradation: `clip(clean + randn(H, W, C) * sigma, 0, 255)` truncated
to uint8 (`astype`, not rounding), with `randn` from numpy's legacy RandomState. MoCE-IR's test seeds the global RNG
once (`np.random.seed(0)`) and draws image after image in sorted file order; pass one `np.random.RandomState(0)` as
`seed` for every image, in that order, to reproduce its noisy inputs bit for bit. (PromptIR draws the same formula
over unsorted `os.listdir` order, so its realisation depends on the filesystem that listed the files.) An int seed makes a fresh
RandomState(seed). The other kinds are plausible synthetic stand-ins (for calibration, training on clean photos and
test images), not reproductions of any benchmark's data.

Imports numpy, OpenCV and irtool.images.pixels (the one integer <-> float scaling).
"""

from __future__ import annotations

import cv2
import numpy as np

from .images.pixels import from_float, to_float

KINDS = ("noise", "rain", "haze", "blur", "defocus", "lowlight", "jpeg")
LEVELS: dict[str, dict[str, float]] = {
    "noise": {"light": 15, "medium": 25, "heavy": 50},
    "rain": {"light": 2, "medium": 5, "heavy": 10},
    "haze": {"light": 0.8, "medium": 1.5, "heavy": 2.5},
    "blur": {"light": 7, "medium": 15, "heavy": 25},
    "defocus": {"light": 2, "medium": 4, "heavy": 6},
    "lowlight": {"light": 0.5, "medium": 0.3, "heavy": 0.15},
    "jpeg": {"light": 60, "medium": 30, "heavy": 10},
}
DEFAULT_LEVEL = "medium"
LEVEL_NAMES = ("light", "medium", "heavy")

Seed = int | np.random.RandomState | np.random.Generator


def resolve_level(kind: str, level: float | str | None = None) -> float:
    """The numeric level for a name ("light", "medium", "heavy"), a number, or a number as text."""
    if kind not in LEVELS:
        raise ValueError(f"unknown degradation {kind!r}; one of {', '.join(KINDS)}")
    if level is None:
        level = DEFAULT_LEVEL
    if isinstance(level, str):
        if level in LEVELS[kind]:
            return float(LEVELS[kind][level])
        try:
            level = float(level)
        except ValueError:
            raise ValueError(f"level {level!r} for {kind}: a number or one of {', '.join(LEVEL_NAMES)}") from None
    value = float(level)
    if (
        not np.isfinite(value)
        or value < 0
        or (kind == "jpeg" and not 1 <= value <= 100)
        or (kind == "lowlight" and not 0 < value <= 1)
    ):
        raise ValueError(f"level {level} is out of range for {kind}")
    return value


def _rng(seed: Seed) -> np.random.RandomState | np.random.Generator:
    if isinstance(seed, (np.random.RandomState, np.random.Generator)):
        return seed
    return np.random.RandomState(int(seed))


def _normal(rng: np.random.RandomState | np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.randn(*shape) if isinstance(rng, np.random.RandomState) else rng.standard_normal(shape)


def _uniform(rng: np.random.RandomState | np.random.Generator, low: float, high: float, shape=None):
    return rng.uniform(low, high, shape)


def _noise(color: np.ndarray, sigma: float, rng) -> np.ndarray:
    noise = _normal(rng, color.shape)
    if color.dtype == np.uint8:
        # The official test: float64 sum, clip, then truncation by astype.
        return np.clip(color + noise * sigma, 0, 255).astype(np.uint8)
    if color.dtype == np.uint16:
        return np.clip(color + noise * sigma * 257.0, 0, 65535).astype(np.uint16)
    return np.clip(color + noise * (sigma / 255.0), 0.0, 1.0).astype(color.dtype)


def _line_kernel(length: int, angle_deg: float) -> np.ndarray:
    """A normalised anti-aliased line of `length` px through the centre of a square kernel, at `angle_deg`."""
    length = max(1, int(round(length)))
    size = length + 2 - length % 2  # odd, with a margin for anti-aliasing
    size += 1 - size % 2
    kernel = np.zeros((size * 4, size * 4), np.float32)  # draw 4x larger, then shrink, for a smooth line
    c = (size * 4 - 1) / 2
    dx, dy = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    half = (length * 4 - 1) / 2
    p0 = (int(round(c - dx * half)), int(round(c - dy * half)))
    p1 = (int(round(c + dx * half)), int(round(c + dy * half)))
    cv2.line(kernel, p0, p1, 1.0, thickness=4, lineType=cv2.LINE_AA)
    resized = cv2.resize(kernel, (size, size), interpolation=cv2.INTER_AREA)
    return resized / max(float(resized.sum()), 1e-12)


def _rain(rgb: np.ndarray, per_thousand: float, rng) -> np.ndarray:
    h, w = rgb.shape[:2]
    drops = (_uniform(rng, 0.0, 1.0, (h, w)) < per_thousand / 1000.0).astype(np.float32)
    drops *= _uniform(rng, 0.6, 1.0, (h, w)).astype(np.float32)
    # Streak length in pixels, independent of the image size, so a crop and the whole photo get the same rain.
    length = int(round(float(_uniform(rng, 15.0, 35.0))))
    angle = 90.0 + float(_uniform(rng, -20.0, 20.0))  # near vertical, the same for the whole scene
    kernel = _line_kernel(length, angle)
    streaks = cv2.filter2D(drops, -1, kernel / kernel.max(), borderType=cv2.BORDER_CONSTANT)
    streaks = cv2.GaussianBlur(streaks, (0, 0), 0.7)
    streaks = np.clip(streaks * 0.85, 0.0, 1.0)
    streaks = streaks[..., None] if rgb.ndim == 3 else streaks
    return 1.0 - (1.0 - rgb) * (1.0 - streaks)  # screen blend: streaks lighten, never darken


def _haze(rgb: np.ndarray, beta: float, rng) -> np.ndarray:
    h, w = rgb.shape[:2]
    # A smooth synthetic depth in [0, 1]: far at the top, near at the bottom, plus low-frequency variation.
    rows = np.linspace(1.0, 0.0, h, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
    coarse = _uniform(rng, 0.0, 1.0, (4, 4)).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    depth = np.clip(0.7 * rows + 0.3 * field, 0.0, 1.0)
    transmission = np.exp(-beta * depth)
    airlight = float(_uniform(rng, 0.8, 0.95))
    transmission = transmission[..., None] if rgb.ndim == 3 else transmission
    return rgb * transmission + airlight * (1.0 - transmission)


def _blur(rgb: np.ndarray, length: float, rng) -> np.ndarray:
    angle = float(_uniform(rng, 0.0, 180.0))
    if length <= 1:
        return rgb
    return cv2.filter2D(rgb, -1, _line_kernel(int(round(length)), angle), borderType=cv2.BORDER_REFLECT)


def disk_kernel(radius: float) -> np.ndarray:
    """A normalised anti-aliased disk of `radius` px (an out-of-focus lens's point spread), drawn 4x larger, then
    shrunk, so that fractional radii differ."""
    size = 2 * int(np.ceil(radius)) + 3
    big = size * 4
    yy, xx = np.mgrid[:big, :big].astype(np.float32)
    c = (big - 1) / 2
    disk = ((xx - c) ** 2 + (yy - c) ** 2 <= (radius * 4) ** 2).astype(np.float32)
    kernel = cv2.resize(disk, (size, size), interpolation=cv2.INTER_AREA)
    return kernel / max(float(kernel.sum()), 1e-12)


def _defocus(rgb: np.ndarray, radius: float, rng) -> np.ndarray:
    if radius <= 0.5:
        return rgb
    return cv2.filter2D(rgb, -1, disk_kernel(radius), borderType=cv2.BORDER_REFLECT)


def _lowlight(rgb: np.ndarray, exposure: float, rng) -> np.ndarray:
    dark = exposure * np.power(np.clip(rgb, 0.0, 1.0), 1.4)
    # Sensor noise grows with the signal (shot noise) over a small read-noise floor.
    std = np.sqrt(dark * 0.0015 + 2e-5)
    return dark + _normal(rng, rgb.shape).astype(np.float32) * std


def _jpeg(color: np.ndarray, quality: float) -> np.ndarray:
    dtype = color.dtype
    as8 = color if dtype == np.uint8 else from_float(to_float(color), np.uint8)
    bgr = as8[..., ::-1] if as8.ndim == 3 else as8
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, int(round(quality))])
    decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else None
    if decoded is None:
        raise ValueError(f"OpenCV could not round-trip a {as8.shape} image through JPEG")
    decoded = decoded[..., ::-1] if decoded.ndim == 3 else decoded
    if dtype == np.uint8:
        return np.ascontiguousarray(decoded)
    return from_float(to_float(decoded), dtype)


def blur_kernel(kind: str, level: float | str | None = None, seed: Seed = 0) -> np.ndarray:
    """The point spread function `degrade(image, kind, level, seed)` convolves with, for "blur" (its line at the
    seed's angle) and "defocus" (a disk): what a non-blind deconvolution is given as the known kernel. An int seed
    gives the same kernel as `degrade` with that seed; a generator is advanced as `degrade` would advance it."""
    value = resolve_level(kind, level)
    if kind == "blur":
        angle = float(_uniform(_rng(seed), 0.0, 180.0))
        return _line_kernel(int(round(value)), angle) if value > 1 else np.ones((1, 1), np.float32)
    if kind == "defocus":
        return disk_kernel(value) if value > 0.5 else np.ones((1, 1), np.float32)
    raise ValueError(f"{kind} has no blur kernel (blur, defocus)")


def degrade(image: np.ndarray, kind: str, level: float | str | None = None, seed: Seed = 0) -> np.ndarray:
    """`image` with one synthetic degradation applied (see the module docstring for kinds, levels and seeds)."""
    value = resolve_level(kind, level)
    image = np.asarray(image)
    if image.dtype not in (np.uint8, np.uint16) and not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"image of {image.dtype}: use uint8, uint16 or float in [0, 1]")
    if image.ndim == 3 and image.shape[2] == 4:
        color, alpha = image[..., :3], image[..., 3:]
    elif image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3)):
        color, alpha = image, None
    else:
        raise ValueError(f"image of shape {image.shape}: expected (H, W), (H, W, 3) or (H, W, 4)")
    rng = _rng(seed)
    if kind == "noise":
        out = _noise(color, value, rng)
    elif kind == "jpeg":
        out = _jpeg(color, value)
    else:
        rgb = to_float(color)
        step = {"rain": _rain, "haze": _haze, "blur": _blur, "defocus": _defocus, "lowlight": _lowlight}[kind]
        out = from_float(step(rgb, value, rng), color.dtype)
    return out if alpha is None else np.concatenate([out, alpha], axis=2)
