"""Checkpoint files -> ready networks: safe read, canonical keys, architecture detection, strict load.

Reading never executes code: `.safetensors` through safetensors, everything else through
`torch.load(weights_only=True)`. A pickle that needs other globals is refused with the list of what it wants,
unless those are a few known-harmless ones (argparse.Namespace, numpy scalars and arrays) or the caller trusts it.

The architecture and its full config are read off the keys and shapes (see each arch's `infer_config`); the network
is then built and loaded with `strict=True`, so a checkpoint either loads exactly or is refused with one line saying
why.
"""

from __future__ import annotations

import importlib
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from . import weights
from .archs import ARCHS, ArchSpec
from .errors import CheckpointError, UnsafeCheckpointError

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pth", ".pt", ".bin")

# Containers that wrap a state dict, in order of preference (EMA weights win over raw ones, as in BasicSR).
_WRAPPERS = ("params_ema", "params", "state_dict", "model_state_dict", "model", "net", "module")
# Prefixes that wrappers put in front of every key (Lightning's `net.`, DDP's `module.`, torch.compile's `_orig_mod.`).
_PREFIXES = ("net.", "module.", "model.", "_orig_mod.", "netG.")
# Pickled globals that build plain data only; allowed without `trust`.
_HARMLESS_GLOBALS = (
    "argparse.Namespace",
    "collections.OrderedDict",
    "collections.defaultdict",
    "numpy.dtype",
    "numpy.ndarray",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "pathlib.PosixPath",
    "pathlib.WindowsPath",
    "pathlib.Path",
)


def _is_harmless(name: str) -> bool:
    return name in _HARMLESS_GLOBALS or name.startswith("numpy.dtypes.")


def _resolve_global(name: str) -> Any:
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------------------------------
# Reading


def read_checkpoint(path: str | Path, *, trust: bool = False) -> tuple[Any, dict[str, str]]:
    """The raw object stored in a checkpoint file, and its safetensors metadata ({} for pickles)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file")
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
    return _read_pickle(path, trust=trust), {}


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: truncated or not a safetensors file ({_first_line(exc)})") from None
    return tensors, metadata


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    """The one-line reason a pickle checkpoint cannot be read, from its first bytes."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            return CheckpointError(f"{path}: truncated checkpoint (its zip archive has no end; download it again)")
        return CheckpointError(f"{path}: corrupt checkpoint ({_first_line(exc)})")
    if not head.startswith(b"\x80"):
        return CheckpointError(f"{path}: not a checkpoint (neither safetensors nor a PyTorch file)")
    return CheckpointError(f"{path}: truncated or corrupt checkpoint ({_first_line(exc)})")


def _read_pickle(path: Path, *, trust: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = exc
    except Exception as exc:  # noqa: BLE001 - torch.load reports damaged files with many exception types
        raise _unreadable(path, exc) from None

    # Either a pickle that wants globals outside torch's weights-only set, or garbage.
    try:
        wanted = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - any failure here means the file is not a readable pickle
        wanted = []
    if not wanted:
        raise _unreadable(path, refused) from None
    if trust:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - unpickling arbitrary objects can fail in arbitrary ways
            raise CheckpointError(f"{path}: could not be unpickled even when trusted ({_first_line(exc)})") from None
    unsafe = [g for g in wanted if not _is_harmless(g)]
    if unsafe:
        shown = ", ".join(unsafe[:5]) + (f" and {len(unsafe) - 5} more" if len(unsafe) > 5 else "")
        raise UnsafeCheckpointError(
            f"{path}: refused, loading it would run pickled code ({shown}); if you trust its source, pass "
            "--trust-checkpoint (trust=True), or convert it once with `irtool weights convert`"
        )
    try:
        allowed = [_resolve_global(g) for g in wanted]
        if any(g.startswith("numpy.") for g in wanted):
            # numpy scalars also need their dtype classes, which the scan above does not list
            import numpy.dtypes

            allowed += [getattr(numpy.dtypes, n) for n in numpy.dtypes.__all__]
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise _unreadable(path, exc) from None


def canonicalize(obj: Any, path: str | Path = "checkpoint") -> dict[str, Tensor]:
    """The bare state dict inside `obj`: wrappers unwrapped, shared prefixes stripped, non-tensors dropped."""
    for _ in range(4):  # wrappers nest at most a few levels (e.g. {'state_dict': {'model': ...}})
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            dicts = [v for v in obj.values() if isinstance(v, Mapping)]
            inner = dicts[0] if len(dicts) == 1 else None
        if inner is None:
            break
        obj = inner
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not sd:
        keys = ", ".join(repr(k) for k in list(obj)[:5])
        raise CheckpointError(f"{path}: no weights found (top-level keys: {keys or 'none'})")
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                stripped = True
    return sd


def read_state_dict(path: str | Path, *, trust: bool = False) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Canonical state dict and safetensors metadata of a checkpoint file."""
    obj, metadata = read_checkpoint(path, trust=trust)
    return canonicalize(obj, path), metadata


# --------------------------------------------------------------------------------------------------------------------
# Detection and building


def _examples(keys: list[str], n: int = 3) -> str:
    return ", ".join(repr(k) for k in sorted(keys)[:n])


def detect(sd: Mapping[str, Tensor], path: str | Path = "checkpoint") -> tuple[ArchSpec, Any]:
    """The architecture and config of a canonical state dict, from its keys and shapes alone."""
    for spec in ARCHS.values():
        if spec.detect(sd):
            try:
                return spec, spec.infer_config(sd)
            except (KeyError, ValueError, IndexError, TypeError) as exc:
                raise CheckpointError(
                    f"{path}: looks like {spec.title} but its config cannot be read ({_first_line(exc)})"
                ) from None
    titles = " or ".join(s.title for s in ARCHS.values())
    raise CheckpointError(f"{path}: not a {titles} checkpoint: {len(sd)} unexpected keys such as {_examples(list(sd))}")


def _mismatch(model: nn.Module, sd: Mapping[str, Tensor]) -> str | None:
    """None when `sd` fits `model` exactly; else a short description of the difference."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys such as {_examples(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys such as {_examples(unexpected)}")
    if shapes:
        k = sorted(shapes)[0]
        parts.append(
            f"{len(shapes)} tensors of the wrong shape such as {k!r} "
            f"({tuple(sd[k].shape)} instead of {tuple(expected[k].shape)})"
        )
    return "; ".join(parts) or None


def build_model(sd: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None, path: str | Path = "checkpoint") -> nn.Module:
    """Build the detected network and load `sd` into it strictly (CPU, fp32, eval mode)."""
    spec, config = detect(sd, path)
    # A converted checkpoint records its full config (including what shapes cannot show, such as top_k);
    # use it when it names the same architecture and fits the tensors.
    if metadata and metadata.get("irtool.arch") == spec.name and "irtool.config" in metadata:
        try:
            recorded = spec.config_from_dict(json.loads(metadata["irtool.config"]))
            if _mismatch(spec.build(recorded), sd) is None:
                config = recorded
        except (ValueError, TypeError, KeyError):
            pass
    model = spec.build(config)
    problem = _mismatch(model, sd)
    if problem:
        raise CheckpointError(f"{path}: {spec.title} checkpoint does not match its own structure: {problem}")
    model.load_state_dict(sd, strict=True)
    return model.eval()


# --------------------------------------------------------------------------------------------------------------------
# Devices and the public entry point


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`None`/"auto": CUDA, then MPS, then CPU. Otherwise the named device, checked to exist."""
    from .errors import IrtoolError

    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise IrtoolError(f"--device {device}: not a device name (auto, cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise IrtoolError(f"--device {device}: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise IrtoolError(f"--device {device}: this machine has {count} GPU(s) (cuda:0..cuda:{count - 1})")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise IrtoolError(f"--device {device}: MPS is not available on this machine")
    return dev


def _find_checkpoint_file(folder: Path) -> Path:
    """A checkpoint inside a folder: `last.ckpt` (the official MoCE-IR layout) or the only checkpoint file."""
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in CHECKPOINT_SUFFIXES and p.is_file())
    if len(files) == 1:
        return files[0]
    what = "no checkpoint file" if not files else f"{len(files)} checkpoint files"
    raise CheckpointError(f"{folder}: a folder with {what}; name the file")


def resolve_source(source: str | Path) -> Path:
    """A path for a file, a folder or a manifest name (a name must be in the cache already)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _find_checkpoint_file(path)
    if path.exists():
        return path
    if isinstance(source, str) and not any(sep in source for sep in "/\\") and not path.suffix.lower() in CHECKPOINT_SUFFIXES:
        files = weights.resolve(source)
        return files.get("weights") or next(iter(files.values()))
    raise CheckpointError(f"{path}: no such file")


def load_model(
    source: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    trust: bool = False,
) -> nn.Module:
    """Load a MoCE-IR checkpoint ready for inference (eval mode, no gradients needed).

    source: a checkpoint file (`.ckpt` Lightning, `.pth`/`.pt` plain or wrapped state dict, `.safetensors`), a folder
        holding one, or a name from `weights_manifest.json` that is in the cache.
    device: "auto"/None (CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:N", "mps".
    dtype: weights dtype, float32 by default (reduced precision is better done with autocast).
    trust: allow checkpoints that need arbitrary pickled objects (runs code from the file: only for trusted files).
    """
    path = resolve_source(source)
    sd, metadata = read_state_dict(path, trust=trust)
    model = build_model(sd, metadata, path)
    model.requires_grad_(False)
    return model.to(device=resolve_device(device), dtype=dtype or torch.float32)
