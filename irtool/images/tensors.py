"""Pixels <-> the network's tensors: the one layout change between images and models.

Images are channels-last numpy arrays, (H, W, C) or a stack (N, H, W, C); networks take channels-first float
tensors, (C, H, W) or (N, C, H, W), with values in [0, 1].

- `channels_first(array)`: the layout change alone, sample type kept (the metrics tell uint8 ground truth apart).
- `to_tensor(pixels, device)`: integer samples are scaled by irtool.images.pixels (uint8 / 255, uint16 / 65535, in
  float32: the papers' ToTensor values bit for bit); float32 values are taken as they are (already in [0, 1]).
- `from_tensor(tensor)`: back to a float32 channels-last array on the CPU, clamped to [0, 1] (pass `clamp=False`
  for raw network outputs that are still to be blended, as the tiled path does).

Quantizing the floats back into a file's sample type is `pixels.from_float`; gray, alpha and the file's frame are
irtool.images.files' `Image` and `to_array`.

Imports numpy and torch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from . import pixels


def channels_first(values: np.ndarray) -> Tensor:
    """(H, W, C) -> (C, H, W), (N, H, W, C) -> (N, C, H, W), (H, W) -> (1, H, W): a contiguous CPU tensor of the same
    sample type (no scaling)."""
    if values.ndim == 2:
        values = values[..., None]
    if values.ndim not in (3, 4):
        raise ValueError(f"pixels of shape {values.shape}: expected (H, W), (H, W, C) or (N, H, W, C)")
    return torch.from_numpy(np.ascontiguousarray(values)).movedim(-1, -3).contiguous()


def to_tensor(values: np.ndarray, device: torch.device | str | None = None, *, pin: bool = False) -> Tensor:
    """(H, W, C) -> (C, H, W), (N, H, W, C) -> (N, C, H, W) float32 in [0, 1], contiguous, on `device` (default: the
    CPU). Integer samples are scaled and other floats clipped (see the module docstring); float32 is taken as given,
    without a copy (irtool's decoders make it in [0, 1]); (H, W) gray comes back as (1, H, W).
    pin: page-lock the CPU copy first, so a CUDA copy can overlap (`non_blocking`)."""
    tensor = channels_first(values if values.dtype == np.float32 else pixels.to_float(values))
    if device is None or torch.device(device).type == "cpu":
        return tensor
    if pin:
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=pin)


def from_tensor(tensor: Tensor, *, clamp: bool = True) -> np.ndarray:
    """(C, H, W) -> (H, W, C), (N, C, H, W) -> (N, H, W, C): a float32 numpy array on the CPU, clamped to [0, 1]
    unless `clamp=False`."""
    if tensor.dim() not in (3, 4):
        raise ValueError(f"a tensor of shape {tuple(tensor.shape)}: expected (C, H, W) or (N, C, H, W)")
    if clamp:
        tensor = tensor.clamp(0, 1)
    return tensor.float().movedim(-3, -1).cpu().numpy()


__all__ = ["channels_first", "to_tensor", "from_tensor"]
