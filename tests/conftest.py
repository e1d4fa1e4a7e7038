"""Shared fixtures: seeded RNGs, the golden reference folder, tiny random-weight models."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# Golden data made by running the official code (see ../shared/reference/README.md); IRTOOL_REFERENCE overrides.
REFERENCE = Path(os.environ.get("IRTOOL_REFERENCE", REPO.parent / "shared" / "reference"))


def pytest_sessionstart(session):
    """Ctrl-C tests send SIGINT to the irtool processes they start. A test runner started in the background by a shell
    without job control (`cmd &` in a script, some CI launchers) inherits SIGINT *ignored*, and so would every
    process the tests start, which then cannot be interrupted at all. Put SIGINT back to Python's default here, so
    those processes start as from a terminal."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` skip, with the reason, on machines without a CUDA GPU (`pytest -m cuda` selects them)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_everything():
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own empty weights cache, never the user's."""
    monkeypatch.setenv("IRTOOL_HOME", str(tmp_path_factory.mktemp("irtool_home")))


@pytest.fixture(scope="session")
def reference() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"golden reference data not found at {REFERENCE} (set IRTOOL_REFERENCE to its folder)")
    return REFERENCE


@pytest.fixture
def no_builtin_default(monkeypatch):
    """The manifest as if no default model shipped: for tests of what happens without one."""
    from irtool.weights import catalogue

    manifest = {**catalogue.load_manifest(), "default": None}
    monkeypatch.setattr(catalogue, "load_manifest", lambda: manifest)
    return manifest
