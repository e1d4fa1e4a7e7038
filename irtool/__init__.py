"""irtool: all-in-one image restoration (MoCE-IR, LoRA-IR) from the command line and from Python.

    >>> import irtool
    >>> model = irtool.load_model("MoCE_IR_S_AIO3")        # or a .ckpt / .pth / .safetensors path
    >>> results = irtool.restore("rainy.jpg", model=model)  # arrays and reports (degradation, experts, ...)

The public API is resolved lazily, so `import irtool` (and `irtool --help`) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import CheckpointError, ImageError, IrtoolError, UnsafeCheckpointError, WeightsNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    from .loading import load_model
    from .restoration.engine import restore

__all__ = [
    "__version__",
    "load_model",
    "restore",
    "IrtoolError",
    "CheckpointError",
    "UnsafeCheckpointError",
    "WeightsNotFoundError",
    "ImageError",
]

_LAZY = {"load_model": ("irtool.loading", "load_model"), "restore": ("irtool.restoration.engine", "restore")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'irtool' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
