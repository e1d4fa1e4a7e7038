"""Pictures for the HTML reports: downscaled previews as data URIs, error heat-maps, crops and the side-by-side
comparison figure saved as PNG. Arrays in are (H, W, 3) uint8 RGB or float32 in [0, 1].

Imports numpy, OpenCV and Pillow (for the figure's labels) only.
"""

from __future__ import annotations

import base64
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np

#: longest side of an embedded preview, px
PREVIEW_SIDE = 720
#: error (mean absolute, on 0-1) that saturates the heat-map
HEAT_RANGE = 0.25
#: heat-map colours from no error to HEAT_RANGE and above (dark blue, purple, orange, pale yellow)
_HEAT_STOPS = np.array([[13, 8, 60], [120, 28, 109], [230, 90, 40], [252, 255, 164]], dtype=np.float32)


def as_uint8(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB from uint8/uint16 or float [0, 1] pixels (float rounded, as irtool writes PNGs)."""
    from ..images import pixels

    if rgb.dtype == np.uint8:
        return rgb
    return pixels.from_float(pixels.to_float(rgb), np.uint8)


def downscale(rgb: np.ndarray, side: int = PREVIEW_SIDE) -> np.ndarray:
    """`rgb` with its longer side at most `side` px (area averaging); smaller images are left as they are."""
    h, w = rgb.shape[:2]
    if max(h, w) <= side:
        return rgb
    scale = side / max(h, w)
    return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def encode(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 85) -> bytes:
    """PNG or JPEG bytes of a uint8 RGB array."""
    bgr = cv2.cvtColor(as_uint8(rgb), cv2.COLOR_RGB2BGR)
    if fmt == "png":
        ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    else:
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"could not encode a {rgb.shape} preview as {fmt}")
    return data.tobytes()


def data_uri(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 85) -> str:
    mime = "image/png" if fmt == "png" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(encode(rgb, fmt, quality)).decode("ascii")


def preview_uri(rgb: np.ndarray, side: int = PREVIEW_SIDE) -> str:
    """A downscaled JPEG preview as a data URI (PNG for tiny images, where JPEG blocks would show)."""
    small = downscale(as_uint8(rgb), side)
    return data_uri(small, "png" if max(small.shape[:2]) <= 128 else "jpeg")


def display_size(width: int, height: int, least: int = 480) -> tuple[int, int, bool]:
    """(width, height, pixelated) to show a preview at: small images are enlarged by a whole factor (pixels kept
    sharp) until their longer side reaches `least`; others at their own size (the page shrinks them to fit)."""
    longer = max(width, height)
    factor = max(1, least // longer) if longer < least else 1
    return width * factor, height * factor, factor > 1


def error_map(output: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(H, W) float32 mean absolute error over the colour channels, on 0-1."""
    diff = np.abs(as_uint8(output).astype(np.float32) - as_uint8(truth).astype(np.float32)) / 255.0
    return diff.mean(axis=2)


def heatmap(output: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """uint8 RGB picture of |output - truth|: dark where they agree, bright yellow at HEAT_RANGE and above."""
    t = np.clip(error_map(output, truth) / HEAT_RANGE, 0.0, 1.0) * (len(_HEAT_STOPS) - 1)
    low = np.minimum(t.astype(np.int64), len(_HEAT_STOPS) - 2)
    frac = (t - low)[..., None]
    rgb = _HEAT_STOPS[low] * (1 - frac) + _HEAT_STOPS[low + 1] * frac
    return rgb.round().astype(np.uint8)


def worst_window(output: np.ndarray, truth: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the size x size window (clipped to the image) where `output` departs most from `truth`:
    where a reader should look."""
    h, w = truth.shape[:2]
    cw, ch = min(size, w), min(size, h)
    err = error_map(output, truth).astype(np.float64)
    integral = np.pad(err.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = integral[ch:, cw:] - integral[:-ch, cw:] - integral[ch:, :-cw] + integral[:-ch, :-cw]
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(x), int(y), cw, ch


def crop(rgb: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = rect
    return rgb[y : y + h, x : x + w]


def clip_rect(rect: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int, int] | None:
    """The part of `rect` inside a width x height image, or None when nothing of it is."""
    x, y, w, h = rect
    x0, y0, x1, y1 = max(0, x), max(0, y), min(width, x + w), min(height, y + h)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1 - x0, y1 - y0


def figure(panels: list[tuple[np.ndarray, str, str]], path: str | Path, *, cell: int = 256) -> Path:
    """A paper-style figure: the same crop from each source side by side, each scaled (nearest, so pixels stay
    visible) to `cell` px on its longer side, with a title and a caption (e.g. the PSNR) under it. Written as PNG."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    pad, text_h = 8, 34
    scaled = []
    for rgb, _, _ in panels:
        h, w = rgb.shape[:2]
        scale = cell / max(h, w)
        scaled.append(
            cv2.resize(
                as_uint8(rgb), (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_NEAREST
            )
        )
    height = max(s.shape[0] for s in scaled)
    width = sum(s.shape[1] for s in scaled) + pad * (len(scaled) + 1)
    canvas = Image.new("RGB", (width, height + text_h + 2 * pad), "white")
    draw = ImageDraw.Draw(canvas)
    x = pad
    for image, (_, title, caption) in zip(scaled, panels):
        canvas.paste(Image.fromarray(image), (x, pad))
        for line, text in enumerate((title, caption)):
            tw = draw.textlength(text, font=font)
            draw.text((x + (image.shape[1] - tw) / 2, pad + height + 4 + 14 * line), text, fill="black", font=font)
        x += image.shape[1] + pad
    path = Path(path)
    buf = BytesIO()
    canvas.save(buf, format="PNG")
    from ..images.files import write_bytes_atomic

    write_bytes_atomic(path, buf.getvalue(), overwrite=True)
    return path
