"""A config's task sources -> the training set and the held-out validation pairs.

- `clean_dir` sources: the image files of a folder (not recursive, sorted), each degraded on the fly by
  `irtool.degrade` with a per-sample seeded generator; without a fixed level, each sample draws its level uniformly
  between the kind's named "light" and "heavy" levels, so the network sees the whole range. With `degradations =
  "wide"`, sources without a fixed level are degraded by `irtool.train.augment` instead (more families, wider
  ranges, mixtures); validation stays on `irtool.degrade` either way.
- `datasets` sources: the training splits of the benchmark registry (`irtool.evaluation.datasets`, under `--data-root`), as
  real pairs, or as clean images degraded on the fly (the official denoising: uint8 images plus Gaussian noise,
  truncated to uint8, as MoCE-IR/PromptIR's training loaders do).

Validation (what decides `best`): `val_count` clean images per source are held out of training (picked by a seeded
permutation; sources that share their images hold out the same ones, and a held-out image leaves every source), or,
with `val_dir`, that folder's photos validate the synthetic tasks. Without a `val_count`, a source holds out
`DEFAULT_VAL_COUNT` images but never more than a quarter of them (none from fewer than four), so that a few photos are
not mostly spent on validation; a capped or explicitly large hold-out is reported in one warning line. Each validation pair is centre-cropped to
`val_size` and, when synthetic, degraded once with a fixed seed at the kind's "medium" level (or the source's level).

Imports numpy and torch; `irtool.images.files`, `irtool.degrade`, `irtool.evaluation.datasets`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..images.pixels import from_float, to_float
from .data import Pair, Source, TrainingSet, ValPair, to_tensor
from .presets import DEFAULT_VAL_COUNT, DEFAULT_VAL_SHARE, ConfigError, TaskSource, TrainConfig

#: decoded photos kept per process (bytes): a training sample cuts one window from a whole photo, and decoding a
#: 1024-px PNG for every sample cost more than degrading and training on it
CACHE_BYTES = 1 << 30
_cache: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()


def read_rgb(path: Path) -> np.ndarray:
    """HxWx3 float32 RGB in [0, 1] (EXIF orientation applied; gray repeated; alpha dropped), read-only.

    Decoded images are kept (least recently used first out, `CACHE_BYTES` in all), keyed by path, size and mtime."""
    from ..images.files import read_image

    stat = Path(path).stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    cached = _cache.get(key)
    if cached is not None:
        _cache.move_to_end(key)
        return cached
    rgb = np.ascontiguousarray(read_image(path).rgb, dtype=np.float32)
    rgb.flags.writeable = False  # shared by every sample: a degradation must copy, never write into it
    _cache[key] = rgb
    total = sum(a.nbytes for a in _cache.values())
    while total > CACHE_BYTES and len(_cache) > 1:
        _, old = _cache.popitem(last=False)
        total -= old.nbytes
    return rgb


#: the synthetic "degradation" that leaves the photo as it is (clean -> clean pairs)
CLEAN_TASK = "clean"


@dataclass(frozen=True)
class SyntheticDegrader:
    """`irtool.degrade` as a training degradation (a plain object, so loader workers can pickle it)."""

    kind: str
    level: float | None = None
    #: degrade the uint8 image (the official denoising: noise added to uint8 and truncated) instead of floats
    uint8: bool = False
    #: "irtool": `irtool.degrade` at a level; "wide": `irtool.train.augment.sample` (its own families and ranges)
    family: str = "irtool"

    def level_for(self, rng: np.random.Generator) -> float:
        if self.kind == CLEAN_TASK:
            return 0.0
        if self.level is not None:
            return float(self.level)
        from ..degrade import LEVELS

        low, high = sorted((float(LEVELS[self.kind]["light"]), float(LEVELS[self.kind]["heavy"])))
        return float(rng.uniform(low, high))

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from ..degrade import degrade

        if self.family == "wide":
            from .augment import sample

            return sample(image, self.kind, rng)[0]
        level = self.level_for(rng)
        if self.kind == CLEAN_TASK:
            return np.array(image, dtype=np.float32, copy=True)  # identity: the clean photo is its own target
        if self.uint8:
            u8 = from_float(image, np.uint8)
            return to_float(degrade(u8, self.kind, level, seed=rng))
        return degrade(image, self.kind, level, seed=rng).astype(np.float32)


def _degrader(source: TaskSource, family: str = "irtool") -> SyntheticDegrader | None:
    """The on-the-fly degradation of `source`; `family` "wide" applies to sources that fix neither level nor uint8
    (a fixed level is a recipe's own, e.g. the official denoising sigmas)."""
    if source.degrade is None:
        return None
    unknown = sorted(set(source.params) - {"level", "uint8"})
    if unknown:
        raise ConfigError(f"task {source.task!r}: unknown degradation parameter(s) {', '.join(unknown)} (level, uint8)")
    level = source.params.get("level")
    if level is not None and source.degrade == CLEAN_TASK:
        raise ConfigError(f"task {source.task!r}: clean photos take no level")
    if level is not None:
        from ..degrade import resolve_level

        try:
            level = resolve_level(source.degrade, level)
        except ValueError as exc:
            raise ConfigError(f"task {source.task!r}: {exc}") from None
    uint8 = bool(source.params.get("uint8", False))
    wide = family == "wide" and level is None and not uint8
    return SyntheticDegrader(source.degrade, level, uint8, "wide" if wide else "irtool")


def list_photos(folder: str | Path) -> list[Path]:
    from ..images.files import IMAGE_SUFFIXES

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such folder")
    photos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not photos:
        raise ConfigError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return photos


def _registry_pairs(source: TaskSource, data_root: str | None, warnings: list[str]) -> list[Pair]:
    from ..evaluation import datasets

    pairs: list[Pair] = []
    for name in source.datasets:
        spec = datasets.get_spec(name)
        located = datasets.locate(spec, data_root)
        warnings += [f"{spec.name}: {w}" for w in located.warnings]
        for p in located.pairs:
            # a clean-image source ignores any degraded files: the degradation is made on the fly
            pairs.append(Pair(Path(p.gt), None if source.degrade or p.lq is None else Path(p.lq)))
    if not pairs:
        raise ConfigError(f"task {source.task!r}: datasets {', '.join(source.datasets)} hold no images")
    return pairs


def _file(image: Path | np.ndarray) -> Path:
    """The file of an image this module paired (folder and registry pairs are files; arrays come from callers of
    `TrainingSet` only)."""
    if not isinstance(image, Path):
        raise TypeError(f"expected an image file, got {type(image).__name__}")
    return image


def _held_out(pairs: Sequence[Pair], count: int, seed: int) -> set[Path]:
    """The clean images of `count` pairs picked by a seeded permutation (the same list gives the same picks)."""
    gts = sorted({_file(p.gt) for p in pairs})
    order = np.random.default_rng([seed, 0x7A1]).permutation(len(gts))
    return {gts[i] for i in order[: min(count, max(0, len(gts) - 1))]}  # always leave something to train on


def _centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    th, tw = (min(h, size), min(w, size)) if size else (h, w)
    th, tw = th - th % 16, tw - tw % 16  # validation crops are multiples of 16, as the official test crops
    if th < 16 or tw < 16:
        raise ConfigError(f"validation image of {w}x{h} px is smaller than 16 px")
    top, left = (h - th) // 2, (w - tw) // 2
    return image[top : top + th, left : left + tw]


def _val_pair(
    source: TaskSource, task_id: int, pair: Pair, degrader: SyntheticDegrader | None, config: TrainConfig, index: int
) -> ValPair:
    gt = _centre_crop(read_rgb(_file(pair.gt)), config.val_size)
    if pair.lq is not None:
        lq = _centre_crop(read_rgb(_file(pair.lq)), config.val_size)
    elif degrader is not None:
        # validation stays on irtool.degrade's medium level whatever the training family, so curves compare
        fixed = replace(degrader, family="irtool")
        fixed = fixed if fixed.level is not None else replace(fixed, level=_medium(degrader.kind))
        lq = fixed(np.ascontiguousarray(gt), np.random.default_rng([config.seed, 0x5A1, task_id, index]))
    else:
        raise ConfigError(f"task {source.task!r}: {pair.name} has no degraded image and the task no degradation")
    return ValPair(to_tensor(lq), to_tensor(gt), task_id, pair.name)


def _medium(kind: str) -> float:
    from ..degrade import LEVELS

    if kind == CLEAN_TASK:
        return 0.0
    return float(LEVELS[kind]["medium"])


def _hold_out_count(config: TrainConfig, images: int) -> int:
    """How many of a source's `images` its validation takes: `val_count`, else the default capped at a quarter."""
    if config.val_count is not None:
        return config.val_count
    return min(DEFAULT_VAL_COUNT, images // DEFAULT_VAL_SHARE)


def _hold_out_warning(config: TrainConfig, held: list[tuple[str, int, int]]) -> str | None:
    """One line on hold-outs that take more than a quarter of a source's images, or that the default cap cut (per
    (task, held out, images)); None when there is nothing to say."""
    groups: dict[tuple[int, int], list[str]] = {}
    for task, n, images in held:
        capped = config.val_count is None and n < DEFAULT_VAL_COUNT
        if capped or n > images // DEFAULT_VAL_SHARE:
            groups.setdefault((n, images), []).append(task)
    if not groups:
        return None
    parts = [
        f"{n or 'none'} of the {images} images of {', '.join(tasks)} held out for validation, {images - n} left "
        "for training"
        for (n, images), tasks in groups.items()
    ]
    why = (
        "the default holds out at most a quarter of a task's images; --val-count N or --val-dir to choose"
        if config.val_count is None
        else f"--val-count {config.val_count}"
    )
    return f"{'; '.join(parts)} ({why})"


def _validation_items(
    config: TrainConfig, all_pairs: list[list[Pair]], degraders: list[SyntheticDegrader | None]
) -> tuple[set[Path], list[tuple[int, Pair]], str | None]:
    """The clean images held out of training, the (source, pair) items to validate on and the hold-out warning."""
    held: set[Path] = set()
    val_items: list[tuple[int, Pair]] = []
    if config.val_dir is not None:
        photos = [Pair(p) for p in list_photos(config.val_dir)]
        count = config.val_count if config.val_count is not None else DEFAULT_VAL_COUNT
        for k in range(len(config.sources)):
            if degraders[k] is not None:
                val_items += [(k, p) for p in photos[: count or len(photos)]]
    counts: list[tuple[str, int, int]] = []
    for k, pairs in enumerate(all_pairs):
        if config.val_dir is not None and degraders[k] is not None:
            continue
        images = len({_file(p.gt) for p in pairs})
        picked = _held_out(pairs, _hold_out_count(config, images), config.seed)
        counts.append((config.sources[k].task, len(picked), images))
        held |= picked
        first: dict[Path, Pair] = {}  # one validation pair per held-out image (RESIDE has 35 hazy per clean)
        for p in pairs:
            if _file(p.gt) in picked:
                first.setdefault(_file(p.gt), p)
        val_items += [(k, p) for p in first.values()]
    return held, val_items, _hold_out_warning(config, counts)


def build_datasets(
    config: TrainConfig, *, with_val: bool = True, views: tuple[int, int] | None = None
) -> tuple[TrainingSet, list[ValPair]]:
    """The training set of `config.sources` and (when `with_val`) its validation pairs; `views`: see TrainingSet."""
    all_pairs: list[list[Pair]] = []
    warnings: list[str] = []
    for source in config.sources:
        if source.clean_dir is not None:
            all_pairs.append([Pair(p) for p in list_photos(source.clean_dir)])
        else:
            all_pairs.append(_registry_pairs(source, config.data_root, warnings))
    degraders = [_degrader(s, config.degradations) for s in config.sources]
    held, val_items, hold_out_warning = _validation_items(config, all_pairs, degraders)
    if hold_out_warning:
        warnings.append(hold_out_warning)

    sources = []
    for k, (source, pairs) in enumerate(zip(config.sources, all_pairs)):
        train_pairs = [p for p in pairs if p.gt not in held]
        if not train_pairs:
            raise ConfigError(f"task {source.task!r}: every image is held out for validation; lower --val-count")
        sources.append(Source(k, train_pairs, source.repeat, degraders[k]))
    dataset = TrainingSet(
        sources, patch_size=config.patch_size, augment=config.augment, seed=config.seed, reader=read_rgb, views=views
    )
    dataset.warnings = warnings  # what the registry noticed while pairing, and a hold-out that takes many images
    val = []
    if with_val:
        seen: dict[int, int] = {}
        for k, pair in val_items:
            seen[k] = seen.get(k, 0) + 1
            val.append(_val_pair(config.sources[k], k, pair, degraders[k], config, seen[k]))
    return dataset, val


def describe(dataset: TrainingSet, tasks: Sequence[str]) -> dict[str, Any]:
    """Per task: training images and samples per epoch (with repeats)."""
    return {
        tasks[s.task_id]: {"images": len(s.pairs), "repeat": s.repeat, "samples": len(s.pairs) * s.repeat}
        for s in dataset.sources
    }
