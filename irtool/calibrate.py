"""Naming degradations from MoCE-IR's routing: a small classifier over routing signatures, stored beside the weights.

MoCE-IR routes per layer, not per degradation class, so its decisions need a dictionary before they can be read as
"this photo is rainy". `calibrate` builds one: it degrades clean photos with known synthetic degradations
(irtool.degrade, seeded), routes each through the checkpoint and records its *signature*, the softmax of the clean
router logits of every MoCE layer, concatenated (L layers x E experts values). The classifier is a nearest centroid
under a shared per-feature scale (diagonal LDA): the distance to each class centroid becomes a confidence through a
softmax whose temperature is fitted on held-out images, and a signature far from every centroid is "unknown".
Accuracy is measured by leave-one-photo-out cross-validation, so it says how well unseen photos are named; a class
named right less often than `min_accuracy` there (70% by default) is reported as "unknown" rather than guessed.

A calibration file (`<weights file>.calibration.json`) records the fingerprint of the weights it was made with
(sha256 over the state dict's names, dtypes, shapes and bytes, so it survives conversion between .ckpt and
.safetensors); restore ignores a calibration whose fingerprint does not match.

Imports numpy, torch and irtool.images.tensors; the model and the way it is run (device, precision) come from the caller.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .degrade import KINDS, LEVEL_NAMES, degrade
from .errors import IrtoolError
from .images.pixels import gray_to_rgb
from .images.tensors import to_tensor

FORMAT = "irtool.calibration"
VERSION = 1
SUFFIX = ".calibration.json"
FEATURE = "router-softmax"
CLEAN = "clean"
DEFAULT_CLASSES = (CLEAN, *KINDS)
#: CC0 / public-domain photos shipped in scikit-image's wheel (see scikit-image's data/README.txt)
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "camera.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "coins.png",
    "moon.png",
)
#: floor on the per-feature scale: router probabilities that never move must not blow up the distance
_SCALE_FLOOR = 0.02


class CalibrationError(IrtoolError):
    """A calibration cannot be made, read or used."""


def calibration_path(weights: str | Path) -> Path:
    """Where the calibration of a weights file lives: `<weights file>.calibration.json`, beside it."""
    weights = Path(weights)
    return weights.with_name(weights.name + SUFFIX)


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
        return _softmax(-self.distances(features) * self.dims / (2.0 * self.temperature))

    def predict(self, features: np.ndarray) -> list[tuple[str, float | None]]:
        """Per signature: (class name, confidence), or ("unknown", None) when far from every class."""
        if features.shape[1] != self.dims:
            return [("unknown", None)] * features.shape[0]
        dist = self.distances(features)
        probs = _softmax(-dist * self.dims / (2.0 * self.temperature))
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

    def save(self, path: str | Path) -> Path:
        from .images.files import write_bytes_atomic

        path = Path(path)
        write_bytes_atomic(path, (json.dumps(self.to_dict(), indent=1) + "\n").encode(), overwrite=True)
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
        return calibration


def _softmax(scores: np.ndarray) -> np.ndarray:
    scores = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(axis=-1, keepdims=True)


def _fit_centroids(features: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    centroids = np.zeros((n_classes, features.shape[1]))
    residuals = np.zeros_like(features)
    for c in range(n_classes):
        rows = labels == c
        if rows.any():
            centroids[c] = features[rows].mean(axis=0)
            residuals[rows] = features[rows] - centroids[c]
    pooled = (residuals**2).sum(axis=0) / max(len(features) - n_classes, 1)
    return centroids, np.sqrt(pooled + _SCALE_FLOOR**2)


def fit(
    features: np.ndarray,
    labels: Sequence[str],
    groups: Sequence[int],
    *,
    fingerprint: str,
    classes: Sequence[str] | None = None,
    layers: int = 0,
    experts: int = 0,
    info: dict[str, Any] | None = None,
    min_accuracy: float = 0.0,
) -> Calibration:
    """Fit the classifier on (N, D) signatures with their class labels; `groups` (the source photo of each sample)
    drive leave-one-photo-out cross-validation, which gives the accuracy and the softmax temperature.
    min_accuracy: classes named right less often than this (held out) are answered "unknown"."""
    classes = list(classes or dict.fromkeys(labels))
    index = {name: i for i, name in enumerate(classes)}
    y = np.array([index[name] for name in labels])
    groups_arr = np.asarray(groups)
    n_classes, dims = len(classes), features.shape[1]

    # Held-out distances: each photo's samples against centroids fitted without that photo.
    held_out = np.zeros((len(features), n_classes))
    unique_groups = np.unique(groups_arr)
    if len(unique_groups) > 1:
        for g in unique_groups:
            test = groups_arr == g
            centroids, scale = _fit_centroids(features[~test], y[~test], n_classes)
            diff = (features[test][:, None, :] - centroids[None]) / scale
            held_out[test] = (diff**2).mean(axis=-1)
        predicted = held_out.argmin(axis=1)
        accuracy: float | None = float((predicted == y).mean())
        per_class = {classes[c]: float((predicted[y == c] == c).mean()) for c in range(n_classes) if (y == c).any()}
        confusion = np.zeros((n_classes, n_classes), dtype=int)
        np.add.at(confusion, (y, predicted), 1)
        # The temperature that makes held-out confidences honest (lowest negative log-likelihood). Never below 1:
        # perfectly separated classes would push it to 0 and every answer to 100 %, while the layers' signatures
        # are correlated, which makes the plain Gaussian model overconfident already.
        best_t, best_nll = 1.0, math.inf
        for t in np.logspace(0, 4, 41):
            probs = _softmax(-held_out * dims / (2.0 * t))
            nll = -np.mean(np.log(probs[np.arange(len(y)), y] + 1e-12))
            if nll < best_nll:
                best_t, best_nll = float(t), nll
        temperature = best_t
        reject = 2.0 * float(held_out.min(axis=1).max())
    else:
        accuracy, per_class, confusion, temperature, reject = None, {}, np.zeros((0, 0), int), 1.0, math.inf

    centroids, scale = _fit_centroids(features, y, n_classes)
    if not math.isfinite(reject):
        diff = (features[:, None, :] - centroids[None]) / scale
        reject = 2.0 * float((diff**2).mean(axis=-1).min(axis=1).max())
    return Calibration(
        classes=classes,
        centroids=centroids,
        scale=scale,
        temperature=temperature,
        reject_distance=max(reject, 1e-6),
        fingerprint=fingerprint,
        layers=layers,
        experts=experts,
        accuracy=accuracy,
        per_class_accuracy=per_class,
        confusion=confusion.tolist(),
        info=info or {},
        min_accuracy=min_accuracy,
    )


# --------------------------------------------------------------------------------------------------------------------
# Clean photos and the calibration run


def clean_photos(clean_dir: str | Path | None = None) -> list[Path]:
    """Clean photos to calibrate on: the images in `clean_dir` (recursively), else scikit-image's sample photos
    (`SKIMAGE_PHOTOS`, gray ones included); CalibrationError when there are none."""
    from .evaluation.datasets import clean_photos as find

    return find(clean_dir, recursive=True, error=CalibrationError, fallback=SKIMAGE_PHOTOS)[0]


def _crops(image: np.ndarray, size: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`count` square crops of side `size` (the whole image, centre-cropped to a square, when it is smaller)."""
    h, w = image.shape[:2]
    side = min(size, h, w)
    out = []
    for _ in range(count):
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
        out.append(np.ascontiguousarray(image[y : y + side, x : x + side]))
    return out


@dataclass
class Sample:
    photo: int
    label: str
    level: str | None
    array: np.ndarray


def make_samples(
    photos: Sequence[np.ndarray],
    *,
    classes: Sequence[str] = DEFAULT_CLASSES,
    levels: Sequence[str] = LEVEL_NAMES,
    size: int = 256,
    crops: int = 1,
    seed: int = 0,
) -> list[Sample]:
    """Degraded crops of every photo: each class at each level ("clean" once), seeded per photo, crop and kind."""
    rng = np.random.default_rng(seed)
    samples = []
    for p, photo in enumerate(photos):
        for c, crop in enumerate(_crops(photo, size, crops, rng)):
            for k, label in enumerate(classes):
                if label == CLEAN:
                    samples.append(Sample(p, CLEAN, None, crop))
                    continue
                for lv, level in enumerate(levels):
                    sample_seed = seed * 1_000_003 + ((p * 97 + c) * 31 + k) * 7 + lv
                    samples.append(Sample(p, label, level, degrade(crop, label, level, seed=sample_seed)))
    return samples


def calibrate(
    route: Callable[[torch.Tensor], Any],
    photos: Sequence[np.ndarray],
    *,
    fingerprint: str,
    classes: Sequence[str] = DEFAULT_CLASSES,
    levels: Sequence[str] = LEVEL_NAMES,
    size: int = 256,
    crops: int = 1,
    seed: int = 0,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    info: dict[str, Any] | None = None,
    min_accuracy: float = 0.0,
) -> Calibration:
    """Route degraded crops of clean `photos` (uint8 RGB arrays) through `route` and fit the classifier.

    route: x (B, 3, H, W) float in [0, 1] on `device` -> a routing with `.logits` (B, L, E), e.g. `model.route`.
    progress: called with (done, total) after each batch.
    """
    unknown = [c for c in classes if c != CLEAN and c not in KINDS]
    if unknown:
        raise CalibrationError(f"unknown degradation(s) {', '.join(unknown)}; choose from {', '.join(DEFAULT_CLASSES)}")
    if len(photos) < 2:
        raise CalibrationError("calibration needs at least 2 clean photos (to measure accuracy on unseen ones)")
    started = time.perf_counter()
    samples = make_samples(photos, classes=classes, levels=levels, size=size, crops=crops, seed=seed)
    features: list[np.ndarray | None] = [None] * len(samples)
    layers = experts = done = 0
    for group in _same_size_groups(samples, range(len(samples))):  # equal sizes stack into batches
        for first in range(0, len(group), batch_size):
            sub = group[first : first + batch_size]
            routing = route(to_tensor(np.stack([_as_rgb(samples[i].array) for i in sub]), device))
            layers, experts = int(routing.logits.shape[1]), int(routing.logits.shape[2])
            for i, row in zip(sub, signatures(routing)):
                features[i] = row
            done += len(sub)
            if progress:
                progress(done, len(samples))
    matrix = np.stack(features)  # type: ignore[arg-type]
    meta = dict(info or {})
    meta.update(
        {
            "irtool": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "photos": len(photos),
            "samples": len(samples),
            "levels": list(levels),
            "size": size,
            "crops": crops,
            "seed": seed,
            "seconds": round(time.perf_counter() - started, 2),
        }
    )
    return fit(
        matrix,
        [s.label for s in samples],
        [s.photo for s in samples],
        fingerprint=fingerprint,
        classes=list(classes),
        layers=layers,
        experts=experts,
        info=meta,
        min_accuracy=min_accuracy,
    )


def _same_size_groups(samples: list[Sample], indices: Iterable[int]) -> list[list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for i in indices:
        groups.setdefault(samples[i].array.shape[:2], []).append(i)
    return list(groups.values())


def _as_rgb(array: np.ndarray) -> np.ndarray:
    return gray_to_rgb(array)[..., :3]


def find_calibration(
    weights: str | Path | None, model: nn.Module, explicit: str | Path | None = None
) -> tuple[Calibration | None, str | None]:
    """The calibration to use with `model` loaded from `weights`, and a warning when one was found but not usable.

    explicit: a calibration file the user named; it must match the weights (else CalibrationError).
    Without it, `<weights>.calibration.json` is used when present and made for these weights, else another
    calibration in the same folder made for these weights.
    """
    if explicit is not None:
        calibration = Calibration.load(explicit)
        if calibration.fingerprint != fingerprint(model):
            raise CalibrationError(
                f"{explicit}: made for other weights (fingerprint differs); run `irtool calibrate` for these"
            )
        return calibration, None
    if weights is None:
        return None, None
    path = calibration_path(weights)
    # Beside the file first; then any calibration in the same folder made for these weights (a calibration made on
    # last.ckpt still serves weights.safetensors imported from it).
    candidates = [path] + sorted(p for p in Path(weights).parent.glob(f"*{SUFFIX}") if p != path)
    candidates = [p for p in candidates if p.is_file()]
    if not candidates:
        return None, None
    mine = fingerprint(model)
    problem = None
    for candidate in candidates:
        try:
            calibration = Calibration.load(candidate)
        except CalibrationError as exc:
            problem = problem or f"{exc}; degradations are named 'unknown'"
            continue
        if calibration.fingerprint == mine:
            return calibration, None
        if candidate == path:
            problem = f"{path}: made for other weights, ignored (run `irtool calibrate` again); degradations are named 'unknown'"
    return None, problem


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
    return (
        f"unknown: the calibration cannot tell these kinds apart: {told} (their routing looks alike: "
        f"held out, {', '.join(calibration.unreliable)} were named right under {calibration.min_accuracy:.0%} of the "
        f"time), so it does not guess between them; {far}"
    )
