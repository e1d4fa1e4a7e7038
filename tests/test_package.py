"""Packaging facts a newcomer relies on: the manifest is valid and shipped, the public API resolves lazily."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import irtool
from irtool import weights

REPO = Path(__file__).resolve().parents[1]


def test_manifest_is_valid_json_and_the_packaged_copy_is_the_same():
    top = json.loads((REPO / "weights_manifest.json").read_text())
    assert json.loads(weights.manifest_path().read_text()) == top
    assert top["models"], "the manifest lists checkpoints"
    from irtool.archs import ARCHS

    for name, entry in top["models"].items():
        assert entry["arch"] in ARCHS and ARCHS[entry["arch"]].standalone, name
        assert entry["files"] and all("filename" in f for f in entry["files"]), name


def test_public_api_is_lazy_and_complete():
    assert callable(irtool.load_model)
    assert "load_model" in dir(irtool)
    assert issubclass(irtool.CheckpointError, irtool.IrtoolError)


@pytest.mark.parametrize(
    "old,new",
    [("irtool.io", "irtool.images.files"), ("irtool.evaluate", "irtool.evaluation.evaluate"),
     ("irtool.datasets", "irtool.evaluation.datasets"), ("irtool.download", "irtool.weights.download")],
)  # fmt: skip
def test_a_moved_module_still_imports_from_its_old_path_with_a_warning_naming_the_new(old, new, tmp_path):
    script = tmp_path / "uses_old_path.py"  # default warning filters: a DeprecationWarning shows for __main__'s line
    script.write_text(
        f"import importlib\nimport {old}\n"
        f"new = importlib.import_module({new!r})\n"
        f"print({old} is new, new.__spec__.name)\n"
        "importlib.reload(new)\n"
    )
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["True", new]  # the same module, keeping its own spec (so reload works)
    assert f"uses_old_path.py:2: DeprecationWarning: {old} is now {new}" in run.stderr
