"""A run's files on disk: weights as safetensors, the training state beside them, both written atomically.

Run directory:
    config.json           the resolved TrainConfig (what `--resume` re-reads)
    last.safetensors      weights at the latest checkpoint (every `ckpt_every` steps and at the end)
    last.state.pt         training state of that checkpoint: step, optimizer, schedule, Art, RNG and sampler states
    best.safetensors      weights with the best validation PSNR so far
    log.csv, val.csv      one row per logged step / per validation
    summary.json          written at the end
    tb/                   TensorBoard events, when tensorboard is installed

The weights carry `irtool.arch`, `irtool.config` (the network config, with `with_complexity` as trained) and
`irtool.train` (preset, tasks, step, seed, ...) metadata, so `irtool.load_model(run / "best.safetensors")` needs no
other argument. The state file holds only tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(weights_only=True)`. Each file is written to a temporary name in the same folder, flushed to disk and
renamed over the old one, so a killed run leaves either the old or the new file, never half of one; the weights are
renamed first and the state file records their step, so a mismatch (a kill between the two renames) is detected.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import finite_json
from ..errors import CheckpointError, first_line
from ..images.files import file_mode

WEIGHTS = "last.safetensors"
STATE = "last.state.pt"
BEST = "best.safetensors"


def _replace_atomically(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    # the mode any new file gets under the user's umask (some writers create owner-only 0600 temp files)
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def bare_model(model: nn.Module) -> nn.Module:
    """The network inside DDP and torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None or not isinstance(inner, nn.Module):
            return model
        model = inner


def weights_metadata(model: nn.Module, train_info: Mapping[str, Any]) -> dict[str, str]:
    """safetensors metadata of an irtool network: its architecture, its config and how it was trained."""
    net: Any = bare_model(model)  # an irtool network: `arch` and `config` are class attributes, not submodules
    return {
        "format": "pt",
        "irtool.arch": str(net.arch),
        "irtool.config": json.dumps(net.config.to_dict()),
        "irtool.train": json.dumps(dict(train_info)),
    }


def save_weights(path: str | Path, model: nn.Module, train_info: Mapping[str, Any]) -> Path:
    """Write the network's weights (fp32, CPU) as safetensors with irtool's metadata, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    sd = {
        k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
        for k, v in bare_model(model).state_dict().items()
    }
    tmp = _tmp_name(path)
    save_file(sd, str(tmp), metadata=weights_metadata(model, train_info))
    _replace_atomically(tmp, path)
    return path


def save_state(path: str | Path, state: Mapping[str, Any]) -> Path:
    path = Path(path)
    tmp = _tmp_name(path)
    torch.save(dict(state), tmp)
    _replace_atomically(tmp, path)
    return path


def load_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch reports damaged files with many exception types
        raise CheckpointError(f"{path}: unreadable training state ({first_line(exc, 120)})") from None


def read_train_info(path: str | Path) -> dict[str, Any]:
    """The `irtool.train` metadata of a weights file written by a training run."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get("irtool.train", "{}"))


def write_json(path: str | Path, data: Any) -> None:
    path = Path(path)
    tmp = _tmp_name(path)
    tmp.write_text(finite_json.dumps(data, indent=2) + "\n", encoding="utf-8")  # valid JSON: a NaN loss becomes null
    _replace_atomically(tmp, path)


# --------------------------------------------------------------------------------------------------------------------
# Random number generator states, as plain tensors and numbers (weights_only-loadable)


def capture_rng(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Global torch/numpy/python (and CUDA) RNG states, plus the states of the named generators."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in (generators or {}).items():
        if name in state["generators"]:
            g.set_state(state["generators"][name])
