"""Module paths from before the package was arranged in layers, still importable with a DeprecationWarning that names
the new path (`import irtool.io` gives `irtool.images.files`). Standard library only: `import irtool` stays instant."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

#: old module -> where it lives now
MOVED = {
    "irtool.io": "irtool.images.files",
    "irtool.tiff": "irtool.images.tiff",
    "irtool.datasets": "irtool.evaluation.datasets",
    "irtool.metrics": "irtool.evaluation.metrics",
    "irtool.evaluate": "irtool.evaluation.evaluate",
    "irtool.download": "irtool.weights.download",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        # stacklevel 2 is the importing line: warn skips the import machinery's own frames
        warnings.warn(f"{spec.name} is now {new}; import that instead", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        self._specs[spec.name] = module.__spec__  # importlib overwrites it with the alias's; put back on exec
        return module

    def exec_module(self, module: ModuleType) -> None:
        """The module is the one at its new path, already run: give it back its own spec (so reload works)."""
        module.__spec__ = self._specs.pop(module.__spec__.name if module.__spec__ else "", module.__spec__)


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
