"""Small training setups shared by the training tests: a micro MoCE-IR recipe and in-memory task-labelled data."""

from __future__ import annotations

import numpy as np

from irtool.train.data import Pair, Source, TrainingSet
from irtool.train.presets import TaskSource, TrainConfig

#: a MoCE-IR small enough for a CPU step in ~0.1 s at 32 px
MICRO = {
    "dim": 8,
    "num_blocks": [1, 1, 1, 1],
    "num_dec_blocks": [1, 1, 1],
    "num_refinement_blocks": 1,
    "heads": [1, 1, 2, 2],
}


def clean_images(n: int, size: int = 40, seed: int = 0) -> list[np.ndarray]:
    """Smooth colour gradients with a little texture, HxWx3 float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    out = []
    for i in range(n):
        a, b, c = rng.uniform(0.2, 0.8, 3)
        img = np.stack([a * xx + 0.2, b * yy + 0.1, c * (xx + yy) / 2 + 0.1], axis=-1)
        img = img + 0.05 * np.sin(xx * (5 + i) * np.pi)[..., None]
        out.append(np.clip(img, 0, 1).astype(np.float32))
    return out


def add_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(image + rng.normal(0.0, 0.08, image.shape), 0, 1).astype(np.float32)


def darken(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (image * rng.uniform(0.3, 0.5)).astype(np.float32)


TASKS = ("noise", "lowlight")


def micro_dataset(n: int = 6, patch: int = 32, seed: int = 0) -> TrainingSet:
    images = clean_images(n)
    return TrainingSet(
        [Source(0, [Pair(im) for im in images], 1, add_noise), Source(1, [Pair(im) for im in images], 1, darken)],
        patch_size=patch,
        seed=seed,
    )


def micro_config(**overrides) -> TrainConfig:
    """Two synthetic tasks on the micro network; fields as a caller of `irtool train` would set them."""
    values = dict(
        variant="tiny",
        model=MICRO,
        sources=tuple(TaskSource(t, clean_dir="<memory>", degrade=t) for t in TASKS),
        patch_size=32,
        batch_size=4,
        steps=6,
        warmup=2,
        lr=1e-3,
        num_workers=0,
        ckpt_every=3,
        log_every=1,
        val_count=0,
        fft_weight=0.1,
        reweight="art",
    )
    values.update(overrides)
    return TrainConfig(**values)
