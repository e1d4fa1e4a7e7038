"""Checkpoint files -> ready networks: safe read, canonical keys, architecture detection, strict load.

Reading never executes code: `.safetensors` through safetensors, everything else through
`torch.load(weights_only=True)`. A pickle that needs other globals is refused with the list of what it wants,
unless those are a few known-harmless ones (argparse.Namespace, numpy scalars and arrays) or the caller trusts it.
A model pickled whole (an `nn.Module` object, as some releases ship) is refused with a line saying so; trusted, it is
unpickled with stand-ins for the classes that are not installed, and its state dict is taken.

The architecture and its full config are read off the keys and shapes (see each arch's `infer_config`); the network
is then built and loaded with `strict=True`, so a checkpoint either loads exactly or is refused with one line saying
why. Everything architecture-specific comes from the spec (`irtool.archs.spec.ArchSpec`), including how a
two-file model (LoRA-IR: restoration network and CLIP router) joins its second file.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import pickle
import threading
import types
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

from .archs import ARCHS, ArchSpec, spec_of
from .devices.policy import resolve_device
from .errors import CheckpointError, ConfigGuessWarning, UnsafeCheckpointError, first_line
from .weights import catalogue as weights
from .weights.catalogue import CHECKPOINT_SUFFIXES

# Containers that wrap a state dict, in order of preference (EMA weights win over raw ones, as in BasicSR).
_WRAPPERS = ("params_ema", "params", "state_dict", "model_state_dict", "model", "net", "module")
# Prefixes that wrappers put in front of every key (Lightning's `net.`, DDP's `module.`, torch.compile's `_orig_mod.`).
_PREFIXES = ("net.", "module.", "model.", "_orig_mod.", "netG.")
# Pickled globals that build plain data only; allowed without `trust`. An explicit list of exact names, never a
# prefix: `numpy.dtypes._add_dtype_helper`, for one, sits beside the dtype classes and changes numpy's registry.
_HARMLESS_GLOBALS = frozenset(
    {
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
        "builtins.set",
        "builtins.frozenset",
        "builtins.complex",
        "builtins.slice",
    }
)
# numpy >= 1.25 pickles a dtype with its class (numpy.dtypes.Float64DType, ...): the numeric ones, by name.
_NUMPY_DTYPE_CLASSES = (
    "BoolDType",
    "Int8DType",
    "UInt8DType",
    "Int16DType",
    "UInt16DType",
    "Int32DType",
    "UInt32DType",
    "Int64DType",
    "UInt64DType",
    "Float16DType",
    "Float32DType",
    "Float64DType",
    "LongDoubleDType",
    "Complex64DType",
    "Complex128DType",
    "CLongDoubleDType",
    "ByteDType",
    "UByteDType",
    "ShortDType",
    "UShortDType",
    "IntDType",
    "UIntDType",
    "LongDType",
    "ULongDType",
    "LongLongDType",
    "ULongLongDType",
)
HARMLESS_GLOBALS = _HARMLESS_GLOBALS | {f"numpy.dtypes.{n}" for n in _NUMPY_DTYPE_CLASSES}


def _is_harmless(name: str) -> bool:
    return name in HARMLESS_GLOBALS


def _resolve_global(name: str) -> Any:
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _legacy_globals(path: Path) -> list[str]:
    """The globals a legacy (pre-1.6, not zip) torch.save file names, read off its pickle opcodes without running
    them: the file is a few pickles in a row (magic, protocol, system info, the object)."""
    with open(path, "rb") as f:
        return sorted(set(_globals_in(f, pickles=4)))


def _globals_in(stream: IO[bytes], pickles: int) -> list[str]:
    """The globals the next `pickles` pickles in `stream` name, in the order they are first used (their opcodes
    read, never run)."""
    import pickletools

    found: list[str] = []
    for _ in range(pickles):
        strings: list[str] = []
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name in (
                    "SHORT_BINUNICODE",
                    "BINUNICODE",
                    "UNICODE",
                    "BINUNICODE8",
                    "SHORT_BINSTRING",
                    "BINSTRING",
                    "STRING",
                ):
                    strings.append(str(arg))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
        except Exception:  # noqa: BLE001 - past the last pickle (tensor bytes follow) or a damaged file
            break
    return list(dict.fromkeys(found))


def _outermost_first(path: Path, names: list[str]) -> list[str]:
    """`names` in the order a zip checkpoint's pickle first uses them (the outermost object's class first); as given
    when the order cannot be read."""
    try:
        with zipfile.ZipFile(path) as archive:
            member = next(n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
            with archive.open(member) as stream:
                order = _globals_in(stream, pickles=1)
    except Exception:  # noqa: BLE001 - only the order of a message depends on it
        return names
    rank = {name: i for i, name in enumerate(order)}
    return sorted(names, key=lambda name: rank.get(name, len(rank)))


def _is_legacy(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(2)
    return head[:1] == b"\x80" and not zipfile.is_zipfile(path)


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
        raise CheckpointError(f"{path}: truncated or not a safetensors file ({first_line(exc)})") from None
    return tensors, metadata


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    """The one-line reason a pickle checkpoint cannot be read, from its first bytes."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            return CheckpointError(f"{path}: truncated checkpoint (its zip archive has no end; download it again)")
        return CheckpointError(f"{path}: corrupt checkpoint ({first_line(exc)})")
    if not head.startswith(b"\x80"):
        return CheckpointError(f"{path}: not a checkpoint (neither safetensors nor a PyTorch file)")
    return CheckpointError(f"{path}: truncated or corrupt checkpoint ({first_line(exc)})")


class _StandInUnpickler(pickle.Unpickler):
    """A trusted unpickler that stands in for classes it cannot import: a model pickled whole by a project that is
    not installed (BaryIR's `torch.load(...)["BaryIR"]`, a Lightning module of the official code) still unpickles,
    each missing class replaced by an empty `nn.Module` subclass of the same name. Such an object keeps its
    parameters, buffers and submodules, so its `state_dict()` is the original's; nothing of it is ever called."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return _stand_in(module, name)


_STAND_INS: dict[tuple[str, str], type] = {}


def _stand_in(module: str, name: str) -> type:
    key = (module, name)
    if key not in _STAND_INS:
        _STAND_INS[key] = type(name, (nn.Module,), {"__module__": module, "__qualname__": name})
    return _STAND_INS[key]


def _trusting_pickle() -> types.ModuleType:
    """A `pickle_module` for `torch.load(weights_only=False)`: the standard pickle with `_StandInUnpickler`."""
    module = types.ModuleType("pickle")
    module.__dict__.update({name: getattr(pickle, name) for name in ("dump", "Pickler", "UnpicklingError")})
    module.__dict__.update(
        Unpickler=_StandInUnpickler, load=lambda file, **kwargs: _StandInUnpickler(file, **kwargs).load()
    )
    return module


def _read_pickle(path: Path, *, trust: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = exc
    except Exception as exc:  # noqa: BLE001 - torch.load reports damaged files with many exception types
        raise _unreadable(path, exc) from None

    # Either a pickle that wants globals outside torch's weights-only set, or garbage.
    legacy = _is_legacy(path)
    try:
        if legacy:
            wanted = [g for g in _legacy_globals(path) if not g.startswith(("torch.", "collections.OrderedDict"))]
        else:
            wanted = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - any failure here means the file is not a readable pickle
        wanted = []
    if not wanted:
        raise _unreadable(path, refused) from None
    if trust:
        try:
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_trusting_pickle())
        except Exception as exc:  # noqa: BLE001 - unpickling arbitrary objects can fail in arbitrary ways
            raise CheckpointError(f"{path}: could not be unpickled even when trusted ({first_line(exc)})") from None
    unsafe = [g for g in wanted if not _is_harmless(g)]
    if any(g.startswith("torch.nn.modules.") for g in unsafe):
        own = [g for g in unsafe if not g.startswith("torch.")] or [g for g in unsafe if g.startswith("torch.nn.")]
        own = _outermost_first(path, own)
        shown = ", ".join(own[:3]) + (f" and {len(own) - 3} more" if len(own) > 3 else "")
        raise UnsafeCheckpointError(
            f"{path}: holds a pickled model object ({shown}), not a state dict; refused, unpickling it would run code "
            "from the file. If you trust its source, pass --trust-checkpoint (trust=True): irtool then takes the "
            "weights out of the object (its classes need not be installed)"
        )
    if unsafe:
        shown = ", ".join(unsafe[:5]) + (f" and {len(unsafe) - 5} more" if len(unsafe) > 5 else "")
        kind = "a legacy (pre-1.6) PyTorch checkpoint; " if legacy else ""
        raise UnsafeCheckpointError(
            f"{path}: {kind}refused, loading it would run pickled code ({shown}); if you trust its source, pass "
            "--trust-checkpoint (trust=True), or convert it once with `irtool weights convert`"
        )
    try:
        allowed = [_resolve_global(g) for g in wanted]
        if any(g.startswith("numpy.") for g in wanted):
            # numpy scalars also need their dtype classes, which the scan above does not list: the numeric ones
            import numpy.dtypes

            allowed += [getattr(numpy.dtypes, n) for n in _NUMPY_DTYPE_CLASSES if hasattr(numpy.dtypes, n)]
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise _unreadable(path, exc) from None


def canonicalize(obj: Any, path: str | Path = "checkpoint") -> dict[str, Tensor]:
    """The bare state dict inside `obj`: wrappers unwrapped, shared prefixes stripped, non-tensors dropped."""
    # a trusted pickle may hold a whole model, alone or under a key (BaryIR saves {"BaryIR": model}): its weights
    holds_weights = (Mapping, nn.Module)
    for _ in range(4):  # wrappers nest at most a few levels (e.g. {'state_dict': {'model': ...}})
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), holds_weights)), None)
        if inner is None:
            dicts = [v for v in obj.values() if isinstance(v, holds_weights)]
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
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
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
                    f"{path}: looks like {spec.title} but its config cannot be read ({first_line(exc)})"
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


#: where irtool's own models ship: their recorded configs are known to fit (tests/test_default_model.py loads them)
_PACKAGED_MODELS = Path(__file__).resolve().parent / "models"


def _packaged(path: str | Path) -> bool:
    try:
        return Path(path).resolve().parent == _PACKAGED_MODELS
    except (OSError, RuntimeError):
        return False


_INIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _uninitialised() -> Iterator[None]:
    """While a network is built for a strict `load_state_dict` (or on the meta device), `torch.nn.init`'s functions
    leave tensors as allocated: the load overwrites every parameter and buffer, so drawing random weights first is
    wasted (CLIP's ViT-B/16: 86M normal samples), and on the meta device the first `normal_` imports torch._dynamo
    (0.8 s of every start). irtool's networks set no value outside their state dict (no non-persistent buffers)."""
    init = torch.nn.init
    names = [n for n in vars(init) if n.endswith("_") and not n.startswith("_") and callable(getattr(init, n))]

    def unchanged(tensor: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return tensor

    with _INIT_LOCK:  # the functions are module globals: one build at a time swaps them
        saved = {n: getattr(init, n) for n in names}
        try:
            for n in names:
                setattr(init, n, unchanged)
            yield
        finally:
            for n, fn in saved.items():
                setattr(init, n, fn)


def _fits(spec: ArchSpec, config: Any, sd: Mapping[str, Tensor]) -> str | None:
    """Why a network of `config` cannot hold `sd` (None if it can), found on the meta device: nothing is allocated, so
    a config that claims a huge network costs nothing to refuse."""
    with torch.device("meta"), _uninitialised():
        return _mismatch(spec.build(config), sd)


def _with_fields(spec: ArchSpec, config: Any, fields: Mapping[str, Any], path: str | Path) -> Any:
    """`config` with the caller's `fields` put in (CheckpointError naming an unknown field or a bad value)."""
    known = config.to_dict()
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise CheckpointError(
            f"{path}: a {spec.title} config has no field {', '.join(unknown)} (its fields: {', '.join(known)})"
        )
    try:
        return spec.config_from_dict({**known, **fields})
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: {spec.title} config {_stated(fields)}: {first_line(exc)}") from None


def _stated(fields: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in fields.items())


def build_model(
    sd: Mapping[str, Tensor],
    metadata: Mapping[str, str] | None = None,
    path: str | Path = "checkpoint",
    config: Mapping[str, Any] | None = None,
    *,
    option: str = "config",
) -> nn.Module:
    """Build the detected network and load `sd` into it strictly (CPU, fp32, eval mode). Weights holding NaN or Inf
    are refused: they restore every image to black.

    The config comes from the shapes, then from the file's recorded `irtool.config` metadata when that fits the
    tensors, then from `config`: fields the caller states (what shapes cannot show, such as top_k or the router's
    head count). A field that changes the outputs but was neither recorded, stated, nor known from a released variant
    is assumed, with a `ConfigGuessWarning` saying how to state it (`option` names the keyword, e.g. router_config).
    """
    spec, inferred = detect(sd, path)
    # meta tensors (a key list checked for its layout, no values) have nothing to check
    broken = [
        k
        for k, v in sd.items()
        if v.is_floating_point() and v.device.type != "meta" and not bool(torch.isfinite(v).all())
    ]
    if broken:
        raise CheckpointError(
            f"{path}: {len(broken)} weight tensor(s) hold NaN or Inf values (such as {sorted(broken)[0]!r}); the file is "
            "damaged or comes from a training run that diverged"
        )
    if spec.obsolete_keys:
        sd = {k: v for k, v in sd.items() if k not in spec.obsolete_keys}
    chosen, stated = inferred, set()
    # A converted checkpoint records its full config (including what shapes cannot show, such as top_k);
    # use it when it names the same architecture and fits the tensors.
    if metadata and metadata.get("irtool.arch") == spec.name and "irtool.config" in metadata:
        try:
            recorded = spec.config_from_dict(json.loads(metadata["irtool.config"]))
            # A model shipped with irtool is built from its recorded config straight away (the strict load below still
            # checks it): the meta-device build's first division imports torch._dynamo, 1-3 s of every run's start.
            if _packaged(path) or _fits(spec, recorded, sd) is None:
                chosen, stated = recorded, set(recorded.to_dict())
        except (ValueError, TypeError, KeyError, AttributeError):
            pass
    if config:
        chosen = _with_fields(spec, chosen, config, path)
        stated |= set(config)
        problem = _fits(spec, chosen, sd)
        if problem:
            raise CheckpointError(
                f"{path}: the stated {spec.title} config {_stated(config)} does not fit its tensors: {problem}"
            )
    with _uninitialised():  # every value comes from `sd` (strict load below)
        model = spec.build(chosen)
    problem = _mismatch(model, sd)
    if problem:
        raise CheckpointError(f"{path}: {spec.title} checkpoint does not match its own structure: {problem}")
    model.load_state_dict(sd, strict=True)
    assumed = [] if inferred in spec.variants.values() else [f for f in spec.unseen_fields if f not in stated]
    if assumed:
        values = ", ".join(f"{f}={json.dumps(getattr(chosen, f))}" for f in assumed)
        warnings.warn(
            ConfigGuessWarning(
                f"{path}: {spec.title} {values} assumed (the weights do not show it); if that is wrong, state it: "
                f"{option}={{{', '.join(repr(f) + ': ...' for f in assumed)}}} (--{option.replace('_', '-')} "
                f"{assumed[0]}=VALUE)"
            ),
            stacklevel=2,
        )
    return model.eval()


# --------------------------------------------------------------------------------------------------------------------
# Devices and the public entry point


def default_source() -> tuple[Path, Path | None, str]:
    """(weights file, router file or None, how it was chosen) when the caller names no model: the manifest's default
    model, else the best official checkpoint in the cache (`irtool.weights.catalogue.default_source`)."""
    return weights.default_source(ARCHS)


#: the latest weights in a folder, by its layout: the official MoCE-IR release, then an `irtool train` run
LATEST_WEIGHTS = ("last.ckpt", "last.safetensors")
#: how a training run's state file ends (`last.state.pt`: optimizer, schedule, RNG; never weights)
TRAINING_STATE_SUFFIX = ".state.pt"


def _checkpoint_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in CHECKPOINT_SUFFIXES and p.is_file() and not p.name.endswith(TRAINING_STATE_SUFFIX)
    )


def _find_checkpoint_file(folder: Path) -> Path:
    """A checkpoint inside a folder: `last.ckpt` (the official MoCE-IR layout), `last.safetensors` (an `irtool train`
    run, beside its `last.state.pt` and maybe `best.safetensors`) or the only checkpoint file."""
    for name in LATEST_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    files = _checkpoint_files(folder)
    if len(files) == 1:
        return files[0]
    what = "no checkpoint file" if not files else f"{len(files)} checkpoint files"
    raise CheckpointError(f"{folder}: a folder with {what}; name the file")


def _is_name(source: str | Path, path: Path) -> bool:
    """Whether `source` reads as a manifest name rather than a path."""
    return (
        isinstance(source, str)
        and not any(sep in source for sep in "/\\")
        and path.suffix.lower() not in CHECKPOINT_SUFFIXES
    )


def resolve_source(source: str | Path) -> Path:
    """A path for a file, a folder or a manifest name (a name must be in the cache already). For a two-file model
    (LoRA-IR) this is its restoration network; `resolve_model_files` gives both."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _find_checkpoint_file(path)
    if path.exists():
        return path
    if _is_name(source, path):
        files = weights.resolve(str(source))
        return files.get("weights") or files.get("ir") or next(iter(files.values()))
    raise CheckpointError(f"{path}: no such file")


@dataclass(frozen=True)
class ModelFiles:
    """The files that make one model: its main checkpoint, a LoRA-IR router, and what the manifest says."""

    main: Path
    router: Path | None = None
    #: class names from the manifest entry, when loaded by name
    classes: tuple[str, ...] | None = None


def resolve_model_files(source: str | Path, router: str | Path | None = None) -> ModelFiles:
    """The files of a model given as a file, a folder or a manifest name, plus an explicit router file.

    A folder holding exactly two checkpoints, one with "router" in its name (the LoRA-IR release, or the weights
    cache's `ir.safetensors` + `router.safetensors`), gives both.
    """
    router_path = None
    if router is not None:
        router_path = Path(router).expanduser()
        if router_path.is_dir():
            router_path = _find_checkpoint_file(router_path)
        elif not router_path.is_file():
            raise CheckpointError(f"{router_path}: no such router file")
    path = Path(source).expanduser()
    if path.is_dir():
        files = _checkpoint_files(path)
        routers = [p for p in files if "router" in p.name.lower()]
        if len(files) == 2 and len(routers) == 1 and not any((path / name).is_file() for name in LATEST_WEIGHTS):
            main = next(p for p in files if p not in routers)
            return ModelFiles(main, router_path or routers[0])
        return ModelFiles(_find_checkpoint_file(path), router_path)
    if path.exists():
        return ModelFiles(path, router_path)
    if _is_name(source, path):
        found = weights.resolve(str(source))
        entry = weights.find_entry(str(source))
        classes = entry.data.get("classes") if entry is not None else None
        main = found.get("weights") or found.get("ir") or next(iter(found.values()))
        return ModelFiles(main, router_path or found.get("router"), tuple(classes) if classes else None)
    raise CheckpointError(f"{path}: no such file")


def _join(model: nn.Module, spec: ArchSpec, files: ModelFiles, trust: bool, companion_config: Any) -> nn.Module:
    """A two-file model: `model` (the main file's network) joined with its companion file's network, as the spec's
    `join` says."""
    join = spec.join
    assert join is not None
    if files.router is None:
        raise CheckpointError(f"{files.main}: {join.missing}")
    sd, metadata = read_state_dict(files.router, trust=trust)
    companion = build_model(sd, metadata, files.router, companion_config, option=f"{join.role}_config")
    got = spec_of(companion)
    if got.name != join.companion:
        raise CheckpointError(f"{files.router}: given as the {join.role} but it is a {got.title} checkpoint")
    try:
        return join.join(model, companion, files.classes)
    except ValueError as exc:
        raise CheckpointError(f"{files.router}: does not fit {files.main}: {first_line(exc)}") from None


def load_model(
    source: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    router: str | Path | None = None,
    trust: bool = False,
    config: Mapping[str, Any] | None = None,
    router_config: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Load a model of any registered architecture (MoCE-IR, LoRA-IR) ready for inference (eval mode, no gradients
    needed). Its spec (`irtool.archs.spec_of(model)`) says what it can do.

    source: a checkpoint file (`.ckpt` Lightning, `.pth`/`.pt` plain or wrapped state dict, `.safetensors`), a folder
        holding one (or LoRA-IR's two; an `irtool train` run's folder gives its `last.safetensors`), or a name from
        `weights_manifest.json` that is in the cache.
    device: "auto"/None (CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:N", "mps".
    dtype: weights dtype of the restoration network, float32 by default (reduced precision is better done with
        autocast). LoRA-IR's CLIP router runs in bfloat16 on CUDA, as the official code does, and float32 elsewhere.
    router: LoRA-IR only: the router checkpoint (`setting1_router.pth`) that goes with the network in `source`.
        Not needed for a manifest name or a folder holding both files.
    trust: allow checkpoints that need arbitrary pickled objects (runs code from the file: only for trusted files).
    config: config fields to state for the network, for what its tensors cannot show (MoCE-IR/LoRA-IR `top_k`,
        LoRA-IR `lora_scaling`), e.g. `{"top_k": 2}`; checked against the tensors. A field left to detection that it
        can only assume gives a `ConfigGuessWarning`.
    router_config: the same for LoRA-IR's CLIP router (`num_heads`, `hidden_act`), e.g. `{"num_heads": 3}`.
    """
    files = resolve_model_files(source, router)
    sd, metadata = read_state_dict(files.main, trust=trust)
    model = build_model(sd, metadata, files.main, config)
    del sd
    spec = spec_of(model)
    if not spec.standalone:
        main = next((s for s in ARCHS.values() if s.join is not None and s.join.companion == spec.name), None)
        hint = (
            main.join.alone if main is not None and main.join is not None else f"a {spec.title} alone restores nothing"
        )
        raise CheckpointError(f"{files.main}: {hint}")
    if spec.join is not None:
        model = _join(model, spec, files, trust, router_config)
    elif files.router is not None:
        raise CheckpointError(f"{files.main}: a {spec.title} checkpoint takes no router file")
    elif router_config:
        raise CheckpointError(f"{files.main}: a {spec.title} checkpoint has no router to configure")
    model.requires_grad_(False)
    dev = resolve_device(device)
    model = model.to(device=dev, dtype=dtype or torch.float32)
    if spec.join is not None and spec.join.place is not None:
        spec.join.place(model, dev)
    return model.eval()
