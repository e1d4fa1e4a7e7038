"""AdaIR test weights and inputs that the golden script (tests/data/make_adair_golden.py) and the tests both rebuild.

The weights are a recipe, not a file: each tensor is a function of (seed, its key) alone, drawn with numpy's PCG64
(whose stream numpy keeps stable), so the 28.8M-parameter released config needs no 115 MB golden file, and the
official network and irtool's receive the very same numbers through their identical keys.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch

#: the official commit the golden data was made from (github.com/c-yn/AdaIR)
OFFICIAL_COMMIT = "ccb8b98e49614e07badd0641e5163fa7635c2f02"
#: recipe seed of the golden weights (every config)
GOLDEN_SEED = 24


def recipe_weights(shapes: Mapping[str, Sequence[int]], seed: int = GOLDEN_SEED) -> dict[str, torch.Tensor]:
    """Float32 weights for every key of `shapes`, none at an initial value (ones, zeros or a default init):
    conv and linear weights N(0, 1/fan_in), attention temperatures 1 + 2|N|, LayerNorm scales and the AFLB's output
    scale `para2` 1 + 0.2 N, its attention scale `para1` (0 at init) 0.5 + 0.2 N, biases 0.1 N; the output conv's
    weights a tenth of the rule, so that outputs stay near the image as a trained network's do."""
    out = {}
    for key in sorted(shapes):
        shape = tuple(int(s) for s in shapes[key])
        noise = np.random.default_rng([seed, zlib.crc32(key.encode())]).standard_normal(shape, dtype=np.float32)
        if key.endswith("temperature"):
            value = 1 + 2 * np.abs(noise)
        elif key.endswith("para1"):
            value = 0.5 + 0.2 * noise
        elif key.endswith(("para2", "body.weight")):
            value = 1 + 0.2 * noise
        elif key.endswith("bias") or len(shape) < 2:
            value = 0.1 * noise
        else:
            # the last conv 10x smaller: the residual a restoration network adds to its input is small
            value = noise / np.sqrt(np.prod(shape[1:])) * (0.1 if key == "output.weight" else 1.0)
        out[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    return out


def golden_image(height: int, width: int, seed: int) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1]: smooth gradients, stripes and PCG64 noise (the same on every machine)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    base = np.stack([xx, yy, (xx + yy) / 2]) * (0.4 + 0.5 * rng.random())
    stripes = 0.5 + 0.5 * np.sin(xx * (5 + 20 * rng.random()) * np.pi + yy * 7)
    noise = 0.08 * rng.standard_normal((3, height, width))
    image = np.clip(0.6 * base + 0.3 * stripes + noise, 0, 1).astype(np.float32)
    return torch.from_numpy(image)[None]
