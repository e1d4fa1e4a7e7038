"""Tiled inference: split an image padded to the model's size multiple into overlapping tiles, blend the results.

Padding is the spec's (`irtool.archs.spec.pad_to_multiple` and `run_padded`, re-exported here): a network's `run`
takes sides that are multiples of its size multiple and refuses others; the engine pads by the spec's rule, so whole
and tiled passes see the same canvas.

Tiles are laid out evenly (a 1200 px side with 1024 px tiles becomes two tiles of about 616 px, not 1024 + a sliver)
and all tiles of an image have the same size, so they batch and never need padding of their own. Overlaps are
blended with weights that form an exact partition of unity: across each overlap the incoming tile's weight is 0 over
the first quarter, rises as sin² over the middle half and is 1 over the last quarter (the outgoing tile's weight is the
complement). The quarter nearest each tile edge, where the tile lacked context, never reaches the output, which
removes seams (chaiNNer PR #2363 found the same), and a network whose receptive field is within a quarter of the
overlap gives exactly the whole-image result.

Imports torch and irtool.archs.spec.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..archs.spec import pad_to_multiple as pad_to_multiple  # re-exported: callers pad through tiling
from ..archs.spec import run_padded as run_padded

#: tile batches handed to `tiled_forward`'s `map_batches` at once (the inputs and outputs it holds)
MAP_WINDOW = 4


def tile_spans(length: int, tile: int, overlap: int, multiple: int = 1) -> list[tuple[int, int]]:
    """Half-open spans [start, end) of equal size covering [0, length), neighbours overlapping by at least `overlap`.

    tile: the largest tile side (rounded down to `multiple`). overlap: capped at a quarter of the tile so that only
    neighbouring tiles overlap. Every span has the same size, a multiple of `multiple` when `length` is one.
    """
    tile = max(multiple, tile - tile % multiple)
    if length <= tile:
        return [(0, length)]
    overlap = max(0, min(overlap, tile // 4))
    count = math.ceil((length - overlap) / (tile - overlap))
    size = math.ceil((length + (count - 1) * overlap) / count)
    size = min(tile, size + (-size % multiple))
    starts = [round(i * (length - size) / (count - 1)) for i in range(count)]
    return [(s, s + size) for s in starts]


def _ramp(u: Tensor) -> Tensor:
    """Weight of the incoming tile at relative position u in [0, 1] across an overlap."""
    mid = ((u - 0.25) / 0.5).clamp(0.0, 1.0)
    return torch.sin(mid * (math.pi / 2)) ** 2


def span_weights(spans: list[tuple[int, int]]) -> list[Tensor]:
    """1-D blending weights (float64) for each span; they sum to 1 at every position."""
    weights = []
    for i, (start, end) in enumerate(spans):
        pos = torch.arange(start, end, dtype=torch.float64) + 0.5
        weight = torch.ones(end - start, dtype=torch.float64)
        if i > 0:
            left_end = spans[i - 1][1]
            inside = pos < left_end
            weight[inside] *= _ramp((pos[inside] - start) / (left_end - start))
        if i < len(spans) - 1:
            right_start = spans[i + 1][0]
            inside = pos >= right_start
            weight[inside] *= 1.0 - _ramp((pos[inside] - right_start) / (end - right_start))
        weights.append(weight)
    return weights


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of an (H, W) image lie: `rows` x `cols` spans, all tiles of one size."""

    height: int
    width: int
    rows: tuple[tuple[int, int], ...]
    cols: tuple[tuple[int, int], ...]

    @property
    def tile_size(self) -> tuple[int, int]:
        return self.rows[0][1] - self.rows[0][0], self.cols[0][1] - self.cols[0][0]

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def boxes(self) -> list[tuple[int, int, int, int]]:
        """(y0, y1, x0, x1) of every tile, row by row."""
        return [(y0, y1, x0, x1) for y0, y1 in self.rows for x0, x1 in self.cols]


def plan_tiles(height: int, width: int, tile: int, overlap: int, multiple: int = 1) -> TileGrid:
    return TileGrid(
        height,
        width,
        tuple(tile_spans(height, tile, overlap, multiple)),
        tuple(tile_spans(width, tile, overlap, multiple)),
    )


def layout_note(height: int, width: int, tile: int, overlap: int, multiple: int = 1) -> str | None:
    """One line for the user when keeping `overlap` takes more tiles than `tile` alone asks for (240x160 in 128 px
    tiles with a 32 px overlap is 3x2 tiles of 104x96, not 2x2): what was laid out, and the overlap that gives the
    fewer tiles. None when the layout is the one the tile size suggests, or close to it (under a quarter more tiles:
    a large photo in 512 px tiles, where one more row is no surprise)."""
    grid = plan_tiles(height, width, tile, overlap, multiple)
    side = max(multiple, tile - tile % multiple)
    asked = [max(1, math.ceil(n / side)) for n in (height, width)]
    got = [len(grid.rows), len(grid.cols)]
    if got[0] * got[1] < 1.25 * asked[0] * asked[1]:
        return None
    fits = [(c * side - n) // (c - 1) for n, c in zip((height, width), asked) if c > 1]
    fewer = max(0, min(fits)) if fits else 0
    th, tw = grid.tile_size
    return (
        f"--tile {tile} on {width}x{height}: {got[1]}x{got[0]} tiles of {tw}x{th}, the fewest that overlap by "
        f"{min(overlap, side // 4)} px; --tile-overlap {fewer} gives {asked[1]}x{asked[0]} tiles of up to {side} px"
    )


def tiled_forward(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    tile: int,
    overlap: int,
    multiple: int = 1,
    batch: int = 1,
    map_batches: Callable[[Callable[[Tensor], Tensor], list[Tensor]], list[Tensor]] | None = None,
) -> tuple[Tensor, TileGrid]:
    """Run `fn` over overlapping tiles of one image and blend the outputs.

    fn: (N, C, th, tw) -> (N, C', th, tw), called with up to `batch` tiles at a time.
    x: (1, C, H, W); H and W should already be multiples of `multiple` (see `pad_to_multiple`).
    map_batches: how to apply `fn` to a list of tile batches (e.g. on several threads); in order, one by one, when
        None. The outputs are blended in tile order either way, so the result does not depend on it.
    Returns the blended (1, C', H, W) float32 output and the tile grid used.
    """
    if x.shape[0] != 1:
        raise ValueError("tiled_forward takes one image at a time")
    h, w = x.shape[-2:]
    grid = plan_tiles(h, w, tile, overlap, multiple)
    row_w = [r.to(x.device, torch.float32) for r in span_weights(list(grid.rows))]
    col_w = [c.to(x.device, torch.float32) for c in span_weights(list(grid.cols))]
    boxes = grid.boxes()
    out: Tensor | None = None
    norm = torch.zeros(1, 1, h, w, device=x.device, dtype=torch.float32)

    def cut(first: int) -> Tensor:
        return torch.cat([x[..., y0:y1, x0:x1] for y0, y1, x0, x1 in boxes[first : first + batch]])

    def results() -> Iterator[tuple[int, Tensor]]:
        starts = range(0, len(boxes), batch)
        if map_batches is None:  # one batch at a time: the least memory (the out-of-memory fallback relies on it)
            yield from ((first, fn(cut(first))) for first in starts)
            return
        for w in range(0, len(starts), MAP_WINDOW):  # a few batches at a time: bounded memory
            window = starts[w : w + MAP_WINDOW]
            yield from zip(window, map_batches(fn, [cut(first) for first in window]))

    for first, result in results():
        chunk = boxes[first : first + batch]
        result = result.float()
        if out is None:
            out = torch.zeros(1, result.shape[1], h, w, device=x.device, dtype=torch.float32)
        for k, (y0, y1, x0, x1) in enumerate(chunk):
            index = first + k
            weight = row_w[index // len(grid.cols)][:, None] * col_w[index % len(grid.cols)][None, :]
            out[..., y0:y1, x0:x1] += result[k : k + 1] * weight
            norm[..., y0:y1, x0:x1] += weight
    assert out is not None
    return out / norm.clamp_min(1e-12), grid
