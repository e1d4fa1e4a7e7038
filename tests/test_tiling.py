"""Tiling: even spans, exact partition of unity, tiled == whole image for a local network, no seams."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from irtool.restoration.tiling import layout_note, pad_to_multiple, plan_tiles, span_weights, tile_spans, tiled_forward


@pytest.mark.parametrize(
    "length,tile,overlap,multiple",
    [(1200, 1024, 32, 8), (257, 64, 16, 1), (1000, 128, 32, 8), (64, 64, 16, 8), (130, 64, 60, 8)],
)
def test_spans_cover_evenly_and_weights_sum_to_one(length, tile, overlap, multiple):
    spans = tile_spans(length, tile, overlap, multiple)
    sizes = {end - start for start, end in spans}
    assert len(sizes) == 1 and max(sizes) <= max(tile, multiple)
    assert spans[0][0] == 0 and spans[-1][1] == length
    for (_s0, e0), (s1, _e1) in zip(spans, spans[1:]):
        assert s1 < e0, "neighbours overlap"
        assert e0 - s1 >= min(overlap, tile // 4)
    total = torch.zeros(length, dtype=torch.float64)
    for (start, end), weight in zip(spans, span_weights(spans)):
        total[start:end] += weight
    assert torch.allclose(total, torch.ones(length, dtype=torch.float64), atol=1e-12)


def test_an_image_just_over_the_tile_size_is_split_in_halves_not_a_sliver():
    assert tile_spans(1200, 1024, 32, 8) == [(0, 616), (584, 1200)]


def test_a_layout_with_more_tiles_than_the_size_asks_for_is_explained_with_the_overlap_that_avoids_it():
    note = layout_note(160, 240, 128, 32, 8)
    assert note is not None and "3x2 tiles of 104x96" in note and "--tile-overlap 16 gives 2x2" in note
    fewer = int(note.split("--tile-overlap ")[1].split()[0])
    assert len(plan_tiles(160, 240, 128, fewer, 8)) == 4  # the advice holds
    assert layout_note(160, 240, 128, 16, 8) is None
    assert layout_note(100, 100, 128, 32, 8) is None  # one tile
    assert layout_note(5000, 7000, 512, 32, 8) is None  # 15x11 instead of 14x10: close enough to say nothing


def local_net(seed: int = 0) -> nn.Module:
    """Three 3x3 convs: receptive field radius 3, well within a quarter of a 16 px overlap."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(8, 3, 3, padding=1),
    )


@pytest.mark.parametrize("height,width,tile,batch", [(200, 136, 64, 3), (96, 250, 48, 1), (64, 64, 64, 2)])
def test_tiled_equals_whole_for_a_local_network(height, width, tile, batch):
    net = local_net()
    x = torch.rand(1, 3, height, width)
    with torch.no_grad():
        whole = net(x)
        tiled, grid = tiled_forward(net, x, tile, 16, 8, batch=batch)
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().max().item() < 1e-5
    assert len(grid) >= (1 if tile >= max(height, width) else 2)


def test_blending_leaves_no_seam_where_tiles_disagree():
    """Each tile's output is offset by its own mean (a global op): pasted tiles would show steps, blended ones don't."""
    x = torch.linspace(0, 1, 512).repeat(1, 3, 64, 1)  # a smooth horizontal ramp
    per_tile = lambda t: t + t.mean(dim=(1, 2, 3), keepdim=True)
    overlap = 32
    blended, grid = tiled_forward(per_tile, x, 128, overlap, 8, batch=4)
    pasted = torch.zeros_like(x)
    for y0, y1, x0, x1 in grid.boxes():
        pasted[..., y0:y1, x0:x1] = per_tile(x[..., y0:y1, x0:x1])
    jump = lambda img: img.diff(dim=-1).abs().max().item()
    slope = jump(x)
    step = jump(pasted) - slope
    assert step > 20 * slope  # the seams are real
    # blended, a step is spread as sin² over half the overlap: its steepest part is step * pi / overlap per pixel
    assert jump(blended) <= slope + step * torch.pi / overlap * 1.05
    assert jump(blended) < 0.15 * jump(pasted)


def test_pad_to_multiple_reflects_and_small_images_replicate():
    x = torch.arange(30.0).reshape(1, 1, 5, 6)
    padded = pad_to_multiple(x, 8)
    assert padded.shape[-2:] == (8, 8)
    assert torch.equal(padded[..., :5, :6], x)
    assert torch.equal(padded[..., 5, :6], x[..., 3, :])  # reflection of the row above the border
    tiny = pad_to_multiple(torch.rand(1, 1, 2, 3), 8)
    assert tiny.shape[-2:] == (8, 8)


def test_plan_tiles_boxes_cover_the_image():
    grid = plan_tiles(100, 300, 64, 16, 8)
    covered = torch.zeros(100, 300, dtype=torch.bool)
    for y0, y1, x0, x1 in grid.boxes():
        covered[y0:y1, x0:x1] = True
    assert covered.all() and len(grid) == len(grid.rows) * len(grid.cols)
