"""Packaging facts a newcomer relies on: the manifest is valid and shipped, the public API resolves lazily."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import irtool
from irtool.weights import catalogue

REPO = Path(__file__).resolve().parents[1]


def test_manifest_is_valid_json_and_kept_once():
    top = json.loads((REPO / "weights_manifest.json").read_text())
    assert catalogue.manifest_path() == REPO / "weights_manifest.json"  # a checkout reads the top-level file
    assert not list((REPO / "irtool").rglob("weights_manifest.json")), "one copy in the source tree, at the top"
    assert top["models"], "the manifest lists checkpoints"
    from irtool.archs import ARCHS

    for name, entry in top["models"].items():
        assert entry["arch"] in ARCHS and ARCHS[entry["arch"]].standalone, name
        assert entry["files"] and all("filename" in f for f in entry["files"]), name


def test_the_build_puts_the_manifest_into_the_package(tmp_path):
    source = tmp_path / "src"  # a copy: the build writes its egg-info beside setup.py
    shutil.copytree(REPO / "irtool", source / "irtool", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "weights_manifest.json"):
        shutil.copy(REPO / name, source / name)
    lib = tmp_path / "lib"
    build = [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(lib)]
    subprocess.run(build, cwd=source, capture_output=True, check=True)
    packaged = lib / "irtool" / "weights_manifest.json"
    assert packaged.read_bytes() == (REPO / "weights_manifest.json").read_bytes()
    code = "from irtool.weights import catalogue as c; print(c.manifest_path(), len(c.load_manifest()['models']))"
    env = {**os.environ, "PYTHONPATH": str(lib)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == [str(packaged), str(len(json.loads(packaged.read_text())["models"]))]


def test_ci_lints_before_the_tests_and_runs_the_readme_test_command_verbatim():
    ci = (REPO / ".ci" / "run").read_text()
    readme_command = next(line for line in (REPO / "README.md").read_text().splitlines() if "python -m pytest" in line)
    lines = [line.strip() for line in ci.splitlines()]
    assert readme_command.strip() in lines
    for check in ("ruff check .", "ruff format --check .", "mypy"):
        assert lines.index(check) < lines.index(readme_command.strip()), f"{check} runs after the tests"


def test_public_api_is_lazy_and_complete():
    assert callable(irtool.load_model)
    assert "load_model" in dir(irtool)
    assert issubclass(irtool.CheckpointError, irtool.IrtoolError)


@pytest.mark.parametrize("old", ["irtool.io", "irtool.evaluate", "irtool.datasets", "irtool.download"])
def test_module_paths_from_before_the_layers_are_gone(old):
    # not yet released: no import hook keeps old paths alive (each now lives in its layer's package)
    run = subprocess.run([sys.executable, "-c", f"import {old}"], capture_output=True, text=True)
    assert run.returncode == 1 and f"No module named '{old}'" in run.stderr
