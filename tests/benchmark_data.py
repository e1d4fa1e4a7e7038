"""Tiny benchmark datasets written into a temp dir, in the layouts the official code expects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def photo(h: int, w: int, seed: int) -> np.ndarray:
    """(h, w, 3) uint8 with gradients, texture and grain, different per seed."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, 128 + 100 * np.sin(xx / (4 + seed) + yy / 9)], axis=-1)
    return np.clip(base + rng.randn(h, w, 3) * 6, 0, 255).astype(np.uint8)


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_moce_layout(root: Path, n: int = 3) -> dict[str, list[Path]]:
    """cBSD68 (odd sizes, so the crop to 16 matters), Rain100L (rain-/norain- names), SOTS (hazy id_A_beta.jpg ->
    gt id.png) and LOL-v1, as MoCE-IR's `--data_file_dir` holds them."""
    made: dict[str, list[Path]] = {"cbsd68": [], "rain100l": [], "sots": [], "lol": []}
    for i in range(n):
        made["cbsd68"].append(
            save(root / f"denoising/cBSD68/original_png/{i:04d}.png", photo(37 + 5 * i, 53 + 3 * i, i))
        )
        clean = photo(40, 56, 10 + i)
        save(root / f"deraining/Rain100L/gt/norain-{i + 1:03d}.png", clean)
        made["rain100l"].append(
            save(
                root / f"deraining/Rain100L/rainy/rain-{i + 1:03d}.png",
                np.clip(clean.astype(int) + 40, 0, 255).astype(np.uint8),
            )
        )
        save(root / f"dehazing/SOTS/outdoor/gt/{i + 1:04d}.png", clean)
        made["sots"].append(
            save(root / f"dehazing/SOTS/outdoor/hazy/{i + 1:04d}_0.9_0.16.jpg", (clean // 2 + 110).astype(np.uint8))
        )
        save(root / f"llie/LOLv1/Test/target/{i + 1}.png", clean)
        made["lol"].append(save(root / f"llie/LOLv1/Test/input/{i + 1}.png", (clean // 6).astype(np.uint8)))
    return made


def make_promptir_layout(root: Path, n: int = 3) -> None:
    """PromptIR's `test/` tree: denoise/bsd68 (flat), derain/Rain100L/{input,target} with equal names,
    dehaze/{input,target}."""
    for i in range(n):
        save(root / f"test/denoise/bsd68/{i:04d}.png", photo(48, 64, i))
        clean = photo(32, 48, 20 + i)
        save(root / f"test/derain/Rain100L/target/rain-{i + 1}.png", clean)
        save(
            root / f"test/derain/Rain100L/input/rain-{i + 1}.png",
            np.clip(clean.astype(int) + 40, 0, 255).astype(np.uint8),
        )
        save(root / f"test/dehaze/target/{i + 1:04d}.png", clean)
        save(root / f"test/dehaze/input/{i + 1:04d}_1_0.2.jpg", (clean // 2 + 110).astype(np.uint8))
