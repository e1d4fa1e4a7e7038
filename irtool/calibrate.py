"""Making the classifier that names degradations from MoCE-IR's routing (`irtool calibrate`).

MoCE-IR routes per layer, not per degradation class, so its decisions need a dictionary before they can be read as
"this photo is rainy". `calibrate` builds one: it degrades clean photos with known synthetic degradations
(irtool.degrade, seeded), routes each through the checkpoint and records its *signature*, the softmax of the clean
router logits of every MoCE layer, concatenated (L layers x E experts values). The classifier is a nearest centroid
under a shared per-feature scale (diagonal LDA): the distance to each class centroid becomes a confidence through a
softmax whose temperature is fitted on held-out images, and a signature far from every centroid is "unknown".
Accuracy is measured by leave-one-photo-out cross-validation, so it says how well unseen photos are named; a class
named right less often than `min_accuracy` there (70% by default) is reported as "unknown" rather than guessed.

The calibration file, where calibrations live and how restore finds and reads one are irtool.restoration.calibration's
(`Calibration`, `find_calibration`): restore needs them, not this module.

Imports numpy, torch, irtool.degrade, irtool.images and irtool.restoration.calibration; the model and the way it is
run (device, precision) come from the caller.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .degrade import KINDS, LEVEL_NAMES, degrade
from .images.pixels import gray_to_rgb
from .images.tensors import to_tensor
from .restoration.calibration import Calibration, CalibrationError, signatures, softmax

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
            probs = softmax(-held_out * dims / (2.0 * t))
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
    merge: Mapping[str, str] | None = None,
) -> Calibration:
    """Route degraded crops of clean `photos` (uint8 RGB arrays) through `route` and fit the classifier.

    route: x (B, 3, H, W) float in [0, 1] on `device` -> a routing with `.logits` (B, L, E), e.g. `model.route`.
    progress: called with (done, total) after each batch.
    merge: {kind: class}: kind's samples are made as usual but count as that other class (e.g. {"defocus": "blur"}
    for a network that routes both blurs alike: one "blur" class named right, instead of two named at chance).
    """
    unknown = [c for c in classes if c != CLEAN and c not in KINDS]
    if unknown:
        raise CalibrationError(f"unknown degradation(s) {', '.join(unknown)}; choose from {', '.join(DEFAULT_CLASSES)}")
    merge = dict(merge or {})
    for kind, into in merge.items():
        if kind not in classes or into not in classes or kind == into or into in merge:
            raise CalibrationError(
                f"merge {kind}={into}: both must be classes being calibrated ({', '.join(classes)}), different, and "
                f"{into} not itself merged"
            )
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
    if merge:
        meta["merged"] = merge
    return fit(
        matrix,
        [merge.get(s.label, s.label) for s in samples],
        [s.photo for s in samples],
        fingerprint=fingerprint,
        classes=[c for c in classes if c not in merge],
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
