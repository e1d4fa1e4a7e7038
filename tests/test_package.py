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
    for name, entry in top["models"].items():
        assert entry["arch"] in ("moce_ir", "lora_ir"), name
        assert entry["files"] and all("filename" in f for f in entry["files"]), name


def test_public_api_is_lazy_and_complete():
    assert callable(irtool.load_model)
    assert "load_model" in dir(irtool)
    assert issubclass(irtool.CheckpointError, irtool.IrtoolError)


@pytest.mark.parametrize("old", ["irtool.io", "irtool.evaluate", "irtool.datasets", "irtool.download"])
def test_module_paths_from_before_the_layers_are_gone(old):
    # not yet released: no import hook keeps old paths alive (each now lives in its layer's package)
    run = subprocess.run([sys.executable, "-c", f"import {old}"], capture_output=True, text=True)
    assert run.returncode == 1 and f"No module named '{old}'" in run.stderr
