"""What restore reads from a routing calibration: the file, where calibrations live, which one serves a set of
weights, and the classifier that names a routing's degradation (see irtool.calibrate, which makes them).

A calibration file records the fingerprint of the weights it was made with (sha256 over the state dict's names,
dtypes, shapes and bytes, so it survives conversion between .ckpt and .safetensors); a calibration whose fingerprint
does not match is never used. `irtool calibrate` writes to the user's data folder (`user_calibration_dir()`:
$IRTOOL_HOME/calibrations, else the platformdirs user data dir + /calibrations) as
`<weights stem>.<fingerprint16>.calibration.json`, never into the installed package. Restore prefers such a user
calibration of these weights over one shipped beside the weights (`<weights file>.calibration.json`, the built-in
model's); the calibration in use says where it came from (`Calibration.path`).

Imports numpy, torch, platformdirs (when the user folder is asked for) and irtool.errors.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import IrtoolError

if TYPE_CHECKING:
    from ..archs.spec import ArchSpec

FORMAT = "irtool.calibration"
VERSION = 1
SUFFIX = ".calibration.json"
FEATURE = "router-softmax"
#: how many hex digits of the weights' fingerprint a user calibration's file name carries
NAME_DIGITS = 16


class CalibrationError(IrtoolError):
    """A calibration cannot be made, read or used."""


def calibration_path(weights: str | Path) -> Path:
    """Where a calibration shipped with a weights file lies: `<weights file>.calibration.json`, beside it."""
    weights = Path(weights)
    return weights.with_name(weights.name + SUFFIX)


def user_calibration_dir() -> Path:
    """The user's calibrations: $IRTOOL_HOME/calibrations, else the platformdirs user data dir + /calibrations."""
    home = os.environ.get("IRTOOL_HOME")
    if home:
        return Path(home).expanduser() / "calibrations"
    import platformdirs

    return Path(platformdirs.user_data_dir("irtool")) / "calibrations"


def user_calibration_path(weights: str | Path, fingerprint: str) -> Path:
    """Where `irtool calibrate` puts a calibration by default: `<weights stem>.<fingerprint16>.calibration.json` in
    the user's folder (the fingerprint keeps calibrations of different weights with one file name apart)."""
    return user_calibration_dir() / f"{Path(weights).stem}.{fingerprint[:NAME_DIGITS]}{SUFFIX}"


def fingerprint(model: nn.Module) -> str:
    """sha256 over the state dict (sorted names, dtypes, shapes, bytes): the same weights in any container agree."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def signatures(routing: Any) -> np.ndarray:
    """(B, L*E) routing signatures: per MoCE layer, the softmax of the clean router logits."""
    logits = routing.logits
    if logits is None:
        raise CalibrationError("this routing has no router logits (it was imposed, not decided)")
    return torch.softmax(logits.float(), dim=-1).reshape(logits.shape[0], -1).cpu().numpy().astype(np.float64)


# --------------------------------------------------------------------------------------------------------------------
# The classifier


@dataclass
class Calibration:
    """A fitted routing-signature classifier for one set of weights."""

    classes: list[str]
    centroids: np.ndarray  #: (C, D)
    scale: np.ndarray  #: (D,)
    temperature: float
    reject_distance: float  #: beyond this (mean squared scaled) distance to every centroid: "unknown"
    fingerprint: str
    arch: str = "moce_ir"
    feature: str = FEATURE
    layers: int = 0
    experts: int = 0
    accuracy: float | None = None  #: leave-one-photo-out
    per_class_accuracy: dict[str, float] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    #: classes whose leave-one-photo-out accuracy is below this are answered "unknown" (their names are guesses)
    min_accuracy: float = 0.0
    #: the file it was read from or saved to (not stored in the file): what inspect and the report name
    path: Path | None = field(default=None, compare=False)

    @property
    def dims(self) -> int:
        return self.centroids.shape[1]

    def distances(self, features: np.ndarray) -> np.ndarray:
        """(B, C) mean squared scaled distance of each signature to each centroid."""
        diff = (features[:, None, :] - self.centroids[None]) / self.scale
        return (diff**2).mean(axis=-1)

    @property
    def unreliable(self) -> list[str]:
        """The classes answered "unknown": held-out accuracy below `min_accuracy`."""
        return [c for c in self.classes if self.per_class_accuracy.get(c, 1.0) < self.min_accuracy]

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        return softmax(-self.distances(features) * self.dims / (2.0 * self.temperature))

    def predict(self, features: np.ndarray) -> list[tuple[str, float | None]]:
        """Per signature: (class name, confidence), or ("unknown", None) when far from every class."""
        if features.shape[1] != self.dims:
            return [("unknown", None)] * features.shape[0]
        dist = self.distances(features)
        probs = softmax(-dist * self.dims / (2.0 * self.temperature))
        unreliable = set(self.unreliable)
        out: list[tuple[str, float | None]] = []
        for d, p in zip(dist, probs):
            best = int(np.argmax(p))
            if d[best] > self.reject_distance or self.classes[best] in unreliable:
                out.append(("unknown", None))
            else:
                out.append((self.classes[best], float(p[best])))
        return out

    def classify(self, routing: Any) -> list[tuple[str, float | None]]:
        return self.predict(signatures(routing))

    # -- files

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "arch": self.arch,
            "feature": self.feature,
            "weights_fingerprint": self.fingerprint,
            "layers": self.layers,
            "experts": self.experts,
            "classes": self.classes,
            "centroids": np.round(self.centroids, 6).tolist(),
            "scale": np.round(self.scale, 6).tolist(),
            "temperature": self.temperature,
            "reject_distance": self.reject_distance,
            "accuracy": self.accuracy,
            "per_class_accuracy": self.per_class_accuracy,
            "min_accuracy": self.min_accuracy,
            "unreliable": self.unreliable,
            "confusion": self.confusion,
            "info": self.info,
        }

    def save(self, path: str | Path, *, overwrite: bool = True) -> Path:
        """Write the file atomically; CalibrationError when it exists and `overwrite` is False, or cannot be written."""
        from ..images.files import write_bytes_atomic

        path = Path(path)
        data = (json.dumps(self.to_dict(), indent=1) + "\n").encode()
        write_bytes_atomic(path, data, overwrite=overwrite, error=CalibrationError)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CalibrationError(f"{path}: no such calibration file") from None
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"{path}: not a readable calibration file ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CalibrationError(f"{path}: not an irtool calibration file")
        if data.get("version") != VERSION or data.get("feature") != FEATURE:
            raise CalibrationError(f"{path}: calibration version {data.get('version')} is not supported; recalibrate")
        try:
            centroids = np.asarray(data["centroids"], dtype=np.float64)
            scale = np.asarray(data["scale"], dtype=np.float64)
            calibration = cls(
                classes=[str(c) for c in data["classes"]],
                centroids=centroids,
                scale=scale,
                temperature=float(data["temperature"]),
                reject_distance=float(data["reject_distance"]),
                fingerprint=str(data["weights_fingerprint"]),
                arch=str(data.get("arch", "moce_ir")),
                layers=int(data.get("layers", 0)),
                experts=int(data.get("experts", 0)),
                accuracy=data.get("accuracy"),
                per_class_accuracy=dict(data.get("per_class_accuracy", {})),
                confusion=list(data.get("confusion", [])),
                info=dict(data.get("info", {})),
                min_accuracy=float(data.get("min_accuracy", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"{path}: damaged calibration file ({exc})") from None
        if (
            centroids.ndim != 2
            or centroids.shape[0] != len(calibration.classes)
            or scale.shape != (centroids.shape[1],)
        ):
            raise CalibrationError(f"{path}: damaged calibration file (inconsistent shapes)")
        calibration.path = path
        return calibration


def softmax(scores: np.ndarray) -> np.ndarray:
    scores = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(axis=-1, keepdims=True)


def find_calibration(
    weights: str | Path | None, model: nn.Module, explicit: str | Path | None = None
) -> tuple[Calibration | None, str | None]:
    """The calibration to use with `model` loaded from `weights`, and a warning when one was found but not usable.

    explicit: a calibration file the user named; it must match the weights (else CalibrationError).
    Without it, in this order, the first made for these weights (same fingerprint): the user's calibration of these
    weights (`user_calibration_path`, then any other in the user's folder with their fingerprint in its name),
    `<weights>.calibration.json` beside the weights, another calibration in the weights' folder.
    """
    if explicit is not None:
        calibration = Calibration.load(explicit)
        if calibration.fingerprint != fingerprint(model):
            raise CalibrationError(
                f"{explicit}: made for other weights (fingerprint differs); run `irtool calibrate` for these"
            )
        return calibration, None
    folder = user_calibration_dir()
    candidates = sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []
    beside = calibration_path(weights) if weights is not None else None
    if beside is not None:
        # a calibration made on last.ckpt still serves weights.safetensors imported from it (same folder)
        candidates += [beside] + sorted(p for p in beside.parent.glob(f"*{SUFFIX}") if p != beside)
    candidates = [p for p in candidates if p.is_file()]
    if not candidates:
        return None, None
    mine = fingerprint(model)
    tag = f".{mine[:NAME_DIGITS]}{SUFFIX}"
    yours = [p for p in candidates if p.parent == folder and p.name.endswith(tag)]
    if weights is not None:  # the file named for these weights first
        yours.sort(key=lambda p: p != user_calibration_path(weights, mine))
    problem = None
    for candidate in yours + [p for p in candidates if p.parent != folder]:
        try:
            calibration = Calibration.load(candidate)
        except CalibrationError as exc:
            problem = problem or f"{exc}; degradations are named 'unknown'"
            continue
        if calibration.fingerprint == mine:
            return calibration, None
        if candidate == beside:
            problem = (
                f"{beside}: made for other weights, ignored (run `irtool calibrate` again); degradations are named "
                "'unknown'"
            )
    return None, problem


def calibration_in_use(spec: ArchSpec, calibration: Calibration | None) -> str:
    """One line for `irtool inspect` and the report: which calibration names this model's degradations."""
    if spec.capabilities.classifier is not None:
        return f"none needed ({spec.title} names degradations with its own classifier)"
    if spec.capabilities.routing is None:
        return "none (the network does not route)"
    if calibration is None:
        return "none: degradations are named 'unknown' (irtool calibrate makes one)"
    return str(calibration.path) if calibration.path is not None else "given in Python (no file)"


# --------------------------------------------------------------------------------------------------------------------
# "unknown" explained to the user, from what the calibration file records


#: a kind is confused with another when, held out, it was named as that one at least this often
CONFUSED_SHARE = 0.2


def confusable_groups(calibration: Calibration) -> list[list[str]]:
    """The kinds `calibration` cannot tell apart, in groups (`[["clean", "jpeg"], ["blur", "defocus"]]`): each kind
    answered "unknown" (`unreliable`) with the kinds its held-out images were named as at least `CONFUSED_SHARE` of
    the time (else the one it was named as most), groups sharing a kind merged. In the calibration's class order."""
    classes, confusion = calibration.classes, calibration.confusion
    links: list[set[str]] = []
    for name in calibration.unreliable:
        row = confusion[classes.index(name)] if len(confusion) == len(classes) else []
        total = sum(row)
        wrong = {classes[j]: n for j, n in enumerate(row) if classes[j] != name and n > 0}
        partners = {c for c, n in wrong.items() if n >= CONFUSED_SHARE * total}
        if not partners and wrong:
            partners = {max(wrong, key=lambda c: wrong[c])}
        links.append({name, *partners})
    groups: list[set[str]] = []
    for link in links:
        touching = [g for g in groups if g & link]
        merged = link.union(*touching)
        groups = [g for g in groups if not g & link] + [merged]
    order = {c: i for i, c in enumerate(classes)}
    return sorted((sorted(g, key=order.__getitem__) for g in groups), key=lambda g: order[g[0]])


def unknown_explanation(calibration: Calibration | None) -> str:
    """One line saying why a degradation is named "unknown" with this calibration (None: the model has none)."""
    if calibration is None:
        return "unknown: these weights have no routing calibration, so no degradation is named (run `irtool calibrate`)"
    far = "an image whose routing is unlike every kind the calibration learnt is unknown too"
    groups = confusable_groups(calibration)
    if not groups:
        return f"unknown: {far}"

    told = ", ".join(" / ".join(g) for g in groups)
    from ..images.jpeg_trace import NAMED_QUALITY

    jpeg = (
        f" (a JPEG of quality {NAMED_QUALITY} or below is still named, from the quantisation in its pixels)"
        if any("jpeg" in g for g in groups)
        else ""
    )
    return (
        f"unknown: the calibration cannot tell these kinds apart: {told} (their routing looks alike: "
        f"held out, {', '.join(calibration.unreliable)} were named right under {calibration.min_accuracy:.0%} of the "
        f"time), so it does not guess between them{jpeg}; {far}"
    )
