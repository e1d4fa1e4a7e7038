"""Whether an image went through JPEG compression, read off its pixels: the quantisation JPEG leaves in its 8x8 DCT.

A JPEG decoder rebuilds each 8x8 luma block from DCT coefficients that were rounded to multiples of a step (the
quantisation table, scaled by the quality). Transform the decoded image's blocks again, on the same grid, and the
coefficients still sit near those multiples; a photo that never went through JPEG (or through a much finer one) has
no such comb. This is the classical test of JPEG compression history (Fan and de Queiroz, IEEE TIP 2003), and it
tells what the routers cannot: a clean photo and a JPEG of it route alike in the built-in model (see
irtool.restoration.calibration), so their names come from here.

Only coarse steps count (>= MIN_STEP on the low frequencies, about quality 85 and below): a fine JPEG is not a
degradation worth naming. The grid is found, not assumed at the origin: a flipped or rotated JPEG keeps its blocks
but moves their phase.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the low-frequency luma coefficients tested, with libjpeg's quality-50 table entry for each (ITU T.81, Annex K)
_POSITIONS = ((0, 1, 11), (1, 0, 12), (1, 1, 12), (0, 2, 10), (2, 0, 14))
MIN_STEP = 3
MAX_STEP = 120
#: coefficients the test needs per position (beyond the zero bin) to say anything
MIN_SAMPLES = 24
#: the comb's strength (mean cosine, 1: every coefficient on a multiple of the step) from which an image is a JPEG;
#: measured on the 80 project photos at quality 25: JPEGs 0.69-1.00, everything else (clean, noise, haze, blur, low
#: light, rain, WebP; both generators, random draws) at most 0.44
THRESHOLD = 0.6
#: the lowest quality at which irtool names an image "jpeg": above it, JPEG's loss is hard to see
NAMED_QUALITY = 80
#: the centre region examined (px, a multiple of 8): enough blocks for the statistics, bounded time on large photos
REGION = 512

_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class JpegTrace:
    score: float  #: 0-1: how closely the coefficients sit on multiples of their steps (median over positions)
    steps: tuple[int, ...]  #: the quantisation step found at each tested position
    quality: int  #: libjpeg quality that gives such steps (approximate)
    phase: tuple[int, int]  #: (row, column) offset of the block grid

    @property
    def compressed(self) -> bool:
        return self.score >= THRESHOLD


def _dct_matrix(n: int = 8) -> np.ndarray:
    k = np.arange(n)
    m = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix()


def _luma(image: np.ndarray) -> np.ndarray:
    """Luma on JPEG's 0-255 scale from (H, W, 3) or (H, W) samples: uint8, uint16 or float in [0, 1]."""
    x = np.asarray(image)
    if x.dtype == np.uint8:
        scale = 1.0
    elif x.dtype == np.uint16:
        scale = 255.0 / 65535.0
    else:
        scale = 255.0
    x = np.nan_to_num(x.astype(np.float64) * scale, nan=0.0, posinf=255.0, neginf=0.0)  # odd float files
    return x[..., :3] @ _LUMA if x.ndim == 3 else x


def _centre(y: np.ndarray) -> np.ndarray:
    """The centre REGION of `y` (rows and columns), cut at multiples of 8 from the origin so the block grid keeps
    its phase."""
    h, w = y.shape[:2]
    top = max(0, (h - REGION) // 2) // 8 * 8
    left = max(0, (w - REGION) // 2) // 8 * 8
    return y[top : top + REGION, left : left + REGION]


def _grid_phase(y: np.ndarray) -> tuple[int, int]:
    """(row, column) phase where differences across block edges are largest (blocking); (0, 0) when too small."""
    phase = []
    for axis in (0, 1):
        d = np.abs(np.diff(y, axis=axis)).mean(axis=1 - axis)
        n = len(d) // 8 * 8
        if n < 16:
            return 0, 0
        profile = d[:n].reshape(-1, 8).mean(axis=0)  # profile[p]: the edge between p and p + 1 of each block
        phase.append((int(np.argmax(profile)) + 1) % 8)
    return phase[0], phase[1]


def _comb(coefficients: np.ndarray) -> tuple[float, int] | None:
    """(strength, step) of the best comb of multiples through the coefficients, or None when too few."""
    best: list[tuple[float, int]] = []
    for step in range(MIN_STEP, MAX_STEP + 1):
        away = coefficients[np.abs(coefficients) > 0.6 * step]  # the zero bin fits any step: left out
        if away.size < MIN_SAMPLES:
            break
        best.append((float(np.cos(2 * np.pi * away / step).mean()), step))
    if not best:
        return None
    top = max(s for s, _ in best)
    # a comb at step q also fits q/2, q/3 (more loosely): the largest step that fits about as well is the true one
    return top, max(step for s, step in best if s >= top - 0.05)


def _trace_at(y: np.ndarray, phase: tuple[int, int]) -> JpegTrace | None:
    y = y[phase[0] :, phase[1] :] - 128.0
    h, w = y.shape[0] // 8 * 8, y.shape[1] // 8 * 8
    if h < 16 or w < 16:
        return None
    blocks = y[:h, :w].reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3).reshape(-1, 8, 8)
    coefficients = _DCT @ blocks @ _DCT.T
    found = [(_comb(coefficients[:, u, v]), base) for u, v, base in _POSITIONS]
    usable = [(c, base) for c, base in found if c is not None]
    if len(usable) < 2:  # a flat image: too little texture to tell
        return None
    score = float(np.median([c[0] for c, _ in usable]))
    steps = tuple(c[1] for c, _ in usable)
    # libjpeg: table = base * scale / 100, scale = 5000 / q below quality 50, 200 - 2 q from 50
    scales = [100.0 * c[1] / base for c, base in usable]
    scale = float(np.median(scales))
    quality = 5000.0 / scale if scale > 100 else (200.0 - scale) / 2
    return JpegTrace(score, steps, int(round(min(100.0, max(1.0, quality)))), phase)


def jpeg_trace(image: np.ndarray) -> JpegTrace | None:
    """The JPEG quantisation found in `image` ((H, W, 3) or (H, W); uint8, uint16 or float in [0, 1]), or None when
    the image is too small or too flat to tell. `.compressed` says whether it is coarse enough to name."""
    y = _luma(_centre(np.asarray(image)))
    candidates = {(0, 0), _grid_phase(y)}
    traces = [t for t in (_trace_at(y, p) for p in sorted(candidates)) if t is not None]
    return max(traces, key=lambda t: t.score) if traces else None
