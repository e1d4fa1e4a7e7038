"""Packaging facts a newcomer relies on: the manifest is valid and shipped, the public API resolves lazily."""

from __future__ import annotations

import json
from pathlib import Path

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
