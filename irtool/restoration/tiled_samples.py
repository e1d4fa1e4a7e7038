"""Restoring images too large for a whole-image pass: tiles straight from the decoded 8/16-bit samples.

The whole-image path holds float32 copies of the input and output (12 bytes a pixel each) besides the network's
activations; for a 12000x12000 photo that alone is 3.5 GB. Here only the decoded samples (3 bytes a pixel at 8-bit
RGB) and the restored samples in the same type are held in full. Tiles are cut from the samples (padded to the
model's size multiple by its spec's rule, exactly as `tiling.pad_to_multiple` pads the whole canvas), converted to
float one batch at a time, and blended row of tiles by row of tiles into a float32 band a tile high; rows that no later tile
touches are normalised, clamped, converted (luma for gray images) and quantized into the output straight away.
The blending weights and the shared routing (the whole image, area-downscaled to `route_size`, computed here band
by band) are those of `tiling.tiled_forward` and `Restorer._forward`, so the two paths agree to within one step
of the output's quantization.

Imports numpy, torch, irtool.restoration.tiling and irtool.images (pixels, tensors).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ..images import pixels
from ..images.tensors import from_tensor, to_tensor
from .tiling import plan_tiles, span_weights

#: the tile side used when an image is too large for a whole pass and no --tile was given
AUTO_TILE = 512


def _as_float(samples: np.ndarray) -> np.ndarray:
    """(h, w[, 3]) samples -> (h, w, 3) float32 in [0, 1], as `io.float_rgb` converts them."""
    return pixels.gray_to_rgb(pixels.to_float(samples))


def padded_index(length: int, padded: int, reflect: bool) -> np.ndarray:
    """Source index of every position of a side padded at its end from `length` to `padded`, as F.pad's "reflect"
    (mirror without repeating the edge) or "replicate" mode maps it."""
    index = np.arange(padded)
    tail = index >= length
    index[tail] = 2 * (length - 1) - index[tail] if reflect else length - 1
    return index


def area_downscale(samples: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(nh, nw, 3) float32: the samples area-averaged to `size` exactly as F.interpolate(mode="area") (adaptive
    average pooling) does it, a few source rows at a time."""
    h, w = samples.shape[:2]
    nh, nw = size
    c0 = np.array([(j * w) // nw for j in range(nw)])
    c1 = np.array([-((-(j + 1) * w) // nw) for j in range(nw)])
    out = np.empty((nh, nw, 3), np.float32)
    for i in range(nh):
        r0, r1 = (i * h) // nh, -((-(i + 1) * h) // nh)
        rows = _as_float(samples[r0:r1]).astype(np.float64).mean(axis=0)  # (w, 3)
        sums = np.concatenate([np.zeros((1, 3)), np.cumsum(rows, axis=0)])
        out[i] = ((sums[c1] - sums[c0]) / (c1 - c0)[:, None]).astype(np.float32)
    return out


def restore_tiled(
    samples: np.ndarray,
    gray: bool,
    run: Callable[[Tensor], Tensor],
    *,
    tile: int,
    overlap: int,
    multiple: int,
    batch: int,
    device: torch.device,
    out_dtype: np.dtype,
    padding: str = "reflect",
    map_batches: Callable[[Callable[[list[int]], np.ndarray], list[list[int]]], list[np.ndarray]] | None = None,
) -> tuple[np.ndarray, int, tuple[int, int]]:
    """Restore (H, W[, 3]) samples tile by tile with `run` ((N, 3, th, tw) float -> same), returning the restored
    samples in `out_dtype` ((H, W, 3) RGB, or (H, W) BT.601 luma for a gray image), the tile count and tile size.
    padding: the spec's rule for the canvas beyond H x W, "reflect" or "zeros".
    map_batches: how to restore the batches of one row of tiles (e.g. on several threads); one after another when
        None. They are blended in order either way, so the result does not depend on it."""
    h, w = samples.shape[:2]
    hp, wp = h + (-h % multiple), w + (-w % multiple)
    zeros = padding == "zeros"
    reflect = (hp - h) < h and (wp - w) < w  # as tiling.pad_to_multiple chooses
    rows_index, cols_index = padded_index(h, hp, reflect), padded_index(w, wp, reflect)
    grid = plan_tiles(hp, wp, tile, overlap, multiple)
    row_w = [r.numpy().astype(np.float32) for r in span_weights(list(grid.rows))]
    col_w = [c.numpy().astype(np.float32) for c in span_weights(list(grid.cols))]
    row_sum = np.zeros(hp, np.float32)
    for (y0, y1), weight in zip(grid.rows, row_w):
        row_sum[y0:y1] += weight
    col_sum = np.zeros(wp, np.float32)
    for (x0, x1), weight in zip(grid.cols, col_w):
        col_sum[x0:x1] += weight
    out = np.empty((h, w) if gray else (h, w, 3), out_dtype)

    def finish(band: np.ndarray, y0: int, y1: int) -> None:
        """Rows [y0, y1) of the canvas are complete: normalise, crop, clamp, convert and quantize them."""
        y1 = min(y1, h)
        if y1 <= y0:
            return
        rgb = band[: y1 - y0, :w] / (row_sum[y0:y1, None, None] * col_sum[None, :w, None]).clip(1e-12)
        if gray:  # luma of what the colour output would have held (from_float clips the colour itself)
            rgb = pixels.luma(np.clip(np.nan_to_num(rgb, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0))
        out[y0:y1] = pixels.from_float(rgb, out_dtype)

    band: np.ndarray | None = None
    band_y0 = 0
    boxes_per_row = len(grid.cols)
    for r, ((y0, y1), rw) in enumerate(zip(grid.rows, row_w)):
        fresh = np.zeros((y1 - y0, wp, 3), np.float32)
        if band is not None:  # what the previous row of tiles left in the rows they share
            carried = band[y0 - band_y0 :]
            fresh[: carried.shape[0]] = carried
        band, band_y0 = fresh, y0
        ri = rows_index[y0:y1]

        def cut(c: int, y0: int = y0, y1: int = y1, ri: np.ndarray = ri) -> np.ndarray:
            x0, x1 = grid.cols[c]
            tile = _as_float(samples[np.ix_(ri, cols_index[x0:x1])])
            if zeros:  # the canvas beyond the image is black, not mirrored
                tile[max(0, h - y0) :] = 0.0
                tile[:, max(0, w - x0) :] = 0.0
            return tile

        def restored(cols: list[int], cut: Callable[[int], np.ndarray] = cut) -> np.ndarray:
            tiles = np.stack([cut(c) for c in cols])
            return from_tensor(run(to_tensor(tiles, device)), clamp=False)  # blended first, clamped in `finish`

        batches = [list(range(first, min(first + batch, boxes_per_row))) for first in range(0, boxes_per_row, batch)]
        results = map_batches(restored, batches) if map_batches is not None else map(restored, batches)
        for cols, result in zip(batches, results):
            for k, c in enumerate(cols):
                x0, x1 = grid.cols[c]
                band[:, x0:x1] += result[k] * (rw[:, None] * col_w[c][None, :])[..., None]
        done_to = grid.rows[r + 1][0] if r + 1 < len(grid.rows) else y1
        finish(band[: done_to - y0], y0, done_to)
    return out, len(grid), grid.tile_size


__all__ = ["AUTO_TILE", "restore_tiled", "area_downscale", "padded_index"]
