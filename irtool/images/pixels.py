"""Stored samples <-> float values in [0, 1]: the one scaling between 8/16-bit integers and floats.

- `to_float(samples)`: uint8 / 255, uint16 / 65535, divided in float32 (as torchvision's ToTensor does for uint8,
  so the papers' inputs come out bit for bit); float samples are clipped to [0, 1] with NaN as 0.
- `from_float(values, dtype)`: the inverse: clip to [0, 1] (NaN as 0, +Inf as 1), scale by 255 or 65535 in float32
  and round half to even; float32 output is only clipped. Every uint8 and uint16 value survives the round trip.
- `gray_to_rgb` and `luma`: one colour channel <-> three (BT.601 luma, as OpenCV's RGB2GRAY computes it).

Numpy only; the tensor side is irtool.images.tensors.
"""

from __future__ import annotations

import numpy as np

#: the integer sample types and the value that stands for 1.0
INTEGER_SCALES: dict[np.dtype, float] = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def scale_of(dtype: np.dtype | type) -> float:
    """The value that stands for 1.0 in samples of `dtype`: 255, 65535, or 1.0 for floats."""
    return INTEGER_SCALES.get(np.dtype(dtype), 1.0)


def to_float(samples: np.ndarray) -> np.ndarray:
    """Samples of any shape as float32 in [0, 1]: integers scaled, floats clipped (NaN as 0). A new array."""
    scale = INTEGER_SCALES.get(samples.dtype)
    if scale is not None:
        return samples.astype(np.float32) / np.float32(scale)
    return np.clip(np.nan_to_num(samples.astype(np.float32), nan=0.0), 0.0, 1.0)


def from_float(values: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """Float values (any shape) as samples of `dtype` (uint8, uint16 or float32): see the module docstring."""
    dtype = np.dtype(dtype)
    values = np.clip(np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    scale = INTEGER_SCALES.get(dtype)
    if scale is None:
        return values.astype(dtype)
    return np.rint(values * np.float32(scale)).astype(dtype)


def gray_to_rgb(values: np.ndarray) -> np.ndarray:
    """(H, W) -> (H, W, 3) with the channel repeated; (H, W, 3) is returned as it is."""
    return np.repeat(values[..., None], 3, axis=2) if values.ndim == 2 else values


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of (..., 3) RGB, as OpenCV's RGB2GRAY computes it."""
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


__all__ = ["INTEGER_SCALES", "scale_of", "to_float", "from_float", "gray_to_rgb", "luma"]
