"""Training data from a config: clean photos degraded on the fly, the registry's training splits, held-out validation,
and `irtool train --clean-dir` from the command line."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import irtool
from irtool.cli import app
from irtool.train.presets import ConfigError, TaskSource, TrainConfig, resolve
from irtool.train.sources import build_datasets

SKIMAGE = Path(__import__("skimage").__file__).parent / "data"
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg")  # CC0 / public domain


def write_photos(folder: Path, names=PHOTOS, size: int = 96) -> list[Path]:
    """scikit-image's CC0 / public-domain photos, shrunk to size px, as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        image = cv2.imread(str(SKIMAGE / name), cv2.IMREAD_COLOR)
        path = folder / (Path(name).stem + ".png")
        cv2.imwrite(str(path), cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))
        out.append(path)
    return out


def test_clean_photos_hold_out_the_same_images_for_every_task(tmp_path):
    write_photos(tmp_path / "photos")
    config = resolve(
        None,
        overrides={"variant": "tiny", "patch_size": 64, "val_count": 2, "val_size": 64},
        clean_dir=str(tmp_path / "photos"),
        tasks=["noise", "rain", "lowlight"],
    )
    dataset, val = build_datasets(config)
    held = {p.name for p in val}
    assert len(held) == 2 and len(val) == 2 * 3
    assert len(dataset) == 3 * 3 and all(len(s.pairs) == 3 for s in dataset.sources)
    assert not held & {p.name for s in dataset.sources for p in s.pairs}
    assert [v.lq.shape for v in val] == [(3, 64, 64)] * 6
    # validation is fixed: built again, bit for bit the same
    again = build_datasets(config)[1]
    assert all(torch.equal(a.lq, b.lq) and torch.equal(a.gt, b.gt) for a, b in zip(val, again))
    # a sample is a function of (epoch, index): the same twice, another epoch another crop or noise
    a, b, c = dataset[(0, 4)], dataset[(0, 4)], dataset[(1, 4)]
    assert torch.equal(a["lq"], b["lq"]) and not torch.equal(a["lq"], c["lq"])
    assert a["task"] == 1 and not torch.equal(a["lq"], a["gt"])


def test_val_dir_validates_the_synthetic_tasks(tmp_path):
    write_photos(tmp_path / "photos", PHOTOS[:3])
    write_photos(tmp_path / "val", PHOTOS[3:])
    config = resolve(
        None,
        overrides={"val_dir": str(tmp_path / "val"), "val_size": 64},
        clean_dir=str(tmp_path / "photos"),
        tasks=["haze", "jpeg"],
    )
    dataset, val = build_datasets(config)
    assert all(len(s.pairs) == 3 for s in dataset.sources)  # nothing held out of training
    assert sorted(v.name for v in val) == sorted(["rocket.png", "hubble_deep_field.png"] * 2)


def test_few_photos_hold_out_at_most_a_quarter_for_validation_and_say_so(tmp_path):
    def held_out(folder: Path, **overrides):
        config = resolve(
            None,
            overrides={"patch_size": 32, "val_size": 32, **overrides},
            clean_dir=str(folder),
            tasks=["noise", "rain"],
        )
        dataset, val = build_datasets(config)
        return len({v.name for v in val}), [len(s.pairs) for s in dataset.sources], dataset.warnings

    write_photos(tmp_path / "five", size=32)
    assert held_out(tmp_path / "five") == (
        1,
        [4, 4],
        [
            "1 of the 5 images of noise, rain held out for validation, 4 left for training (the default holds out at "
            "most a quarter of a task's images; --val-count N or --val-dir to choose)"
        ],
    )
    assert held_out(tmp_path / "five", val_count=1) == (1, [4, 4], [])
    assert held_out(tmp_path / "five", val_count=3) == (
        3,
        [2, 2],
        ["3 of the 5 images of noise, rain held out for validation, 2 left for training (--val-count 3)"],
    )
    write_photos(tmp_path / "three", PHOTOS[:3], size=32)
    count, sizes, warnings = held_out(tmp_path / "three")
    assert (count, sizes) == (0, [3, 3]) and len(warnings) == 1
    assert warnings[0].startswith("none of the 3 images of noise, rain held out for validation, 3 left")
    # plenty of photos: the default four, nothing to say
    rng = np.random.default_rng(0)
    (tmp_path / "many").mkdir()
    for i in range(16):
        cv2.imwrite(str(tmp_path / "many" / f"{i:02d}.png"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    assert held_out(tmp_path / "many") == (4, [12, 12], [])


def make_data_root(root: Path) -> None:
    """The MoCE-IR layout, a few images each: RainTrainL pairs, BSD400 and WED clean images."""
    rng = np.random.default_rng(0)
    for i in range(1, 4):
        clean = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        (root / "deraining/RainTrainL/gt").mkdir(parents=True, exist_ok=True)
        (root / "deraining/RainTrainL/rainy").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / f"deraining/RainTrainL/gt/norain-{i}.png"), clean)
        cv2.imwrite(
            str(root / f"deraining/RainTrainL/rainy/rain-{i}.png"),
            np.clip(clean.astype(int) + 40, 0, 255).astype(np.uint8),
        )
    write_photos(root / "denoising/BSD400", PHOTOS[:3], size=48)
    (root / "denoising/WaterlooED").mkdir(parents=True)
    for i in range(2):
        cv2.imwrite(str(root / f"denoising/WaterlooED/{i:05d}.bmp"), rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))


def test_registry_training_splits_with_official_noise_and_repeats(tmp_path):
    make_data_root(tmp_path)
    config = TrainConfig(
        variant="tiny",
        data_root=str(tmp_path),
        patch_size=32,
        val_count=0,
        augment="none",
        sources=(
            TaskSource(
                "denoise_25",
                datasets=("wed-train", "bsd400-train"),
                degrade="noise",
                params={"level": 25, "uint8": True},
                repeat=3,
            ),
            TaskSource("derain", datasets=("rain100l-train",), repeat=2),
        ),
    )
    dataset, _ = build_datasets(config)
    assert [len(s.pairs) for s in dataset.sources] == [5, 3] and len(dataset) == 5 * 3 + 3 * 2
    noisy = dataset[(0, 0)]
    levels = noisy["lq"] * 255
    assert torch.equal(levels, levels.round())  # noise added to uint8 and truncated back to uint8, as the official
    residual = (noisy["lq"] - noisy["gt"]) * 255
    assert 15 < float(residual[(noisy["gt"] > 0.25) & (noisy["gt"] < 0.75)].std()) < 35
    rain = dataset[(0, 15)]
    assert rain["task"] == 1 and torch.allclose(rain["lq"], (rain["gt"] + 40 / 255).clamp(max=1), atol=1e-6)


def test_a_missing_training_set_is_one_line(tmp_path):
    from irtool.errors import IrtoolError

    config = TrainConfig(
        variant="tiny", data_root=str(tmp_path), sources=(TaskSource("derain", datasets=("rain100l-train",)),)
    )
    with pytest.raises(IrtoolError, match=r"rain100l-train: not found under .* \(tried deraining/RainTrainL/rainy"):
        build_datasets(config)


def test_cli_trains_on_clean_photos_and_the_weights_load(tmp_path):
    write_photos(tmp_path / "photos", size=64)
    out = tmp_path / "run"
    args = [
        "train",
        "--preset",  # named: without it the recipe depends on whether CUDA is there
        "custom",
        "--clean-dir",
        str(tmp_path / "photos"),
        "--tasks",
        "noise,blur",
        "--variant",
        "tiny",
        "--dim",
        "8",
        "--patch-size",
        "32",
        "--batch-size",
        "2",
        "--steps",
        "4",
        "--warmup",
        "1",
        "--val-count",
        "1",
        "--val-size",
        "32",
        "--ckpt-every",
        "2",
        "--num-workers",
        "0",
        "--reweight",
        "art",
        "--out",
        str(out),
        "--json",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4 and summary["metric"] == "psnr" and summary["best_step"] in (2, 4)
    assert set(summary["art_weights"]) == {"noise", "blur"}
    model = irtool.load_model(out / "best.safetensors", device="cpu")
    assert model.config.dim == 8 and model.config.with_complexity
    assert (out / "val.csv").read_text().splitlines()[0] == "step,psnr/mean,psnr/noise,psnr/blur"
    # the trained weights work in restore and eval
    photo = tmp_path / "photos" / "chelsea.png"
    restored = CliRunner().invoke(
        app,
        [
            "restore",
            str(photo),
            str(tmp_path / "restored"),
            "--weights",
            str(out / "best.safetensors"),
            "--device",
            "cpu",
        ],
    )
    assert restored.exit_code == 0, restored.output
    assert (tmp_path / "restored" / "chelsea.png").is_file()
    scored = CliRunner().invoke(
        app,
        [
            "eval",
            "--dataset",
            "synthetic:noise25",
            "--clean-dir",
            str(tmp_path / "photos"),
            "--weights",
            str(out / "last.safetensors"),
            "--limit",
            "1",
            "--device",
            "cpu",
        ],
    )
    assert scored.exit_code == 0, scored.output
    # the same command again refuses to overwrite; with --resume it has nothing left to do
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and "already holds a run" in again.output
    resumed = CliRunner().invoke(app, ["train", "--out", str(out), "--resume", "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["trained_steps"] == 0


def test_training_splits_are_in_the_registry_apart_from_the_benchmarks(tmp_path):
    from irtool.evaluation import datasets

    make_data_root(tmp_path)
    assert {"wed-train", "bsd400-train", "rain100l-train", "lol-v1-train", "raindrop-train"} <= set(
        datasets.TRAINING_SETS
    )
    assert not set(datasets.TRAINING_SETS) & set(datasets.DATASETS)
    assert all(s.split == "train" for s in datasets.TRAINING_SETS.values())
    # OTS: 35 hazy images per clean one, paired by the stem up to the first '_'
    (tmp_path / "dehazing/RESIDE/clear").mkdir(parents=True)
    (tmp_path / "dehazing/RESIDE/part2").mkdir(parents=True)
    for name in ("0001.jpg", "0002.jpg"):
        cv2.imwrite(str(tmp_path / "dehazing/RESIDE/clear" / name), np.zeros((8, 8, 3), np.uint8))
    for name in ("0001_0.8_0.2.jpg", "0001_1_0.04.jpg", "0002_0.9_0.1.jpg"):
        cv2.imwrite(str(tmp_path / "dehazing/RESIDE/part2" / name), np.zeros((8, 8, 3), np.uint8))
    located = datasets.locate(datasets.get_spec("ots-train-part2"), tmp_path)
    assert sorted((p.lq.name, p.gt.name) for p in located.pairs) == [
        ("0001_0.8_0.2.jpg", "0001.jpg"),
        ("0001_1_0.04.jpg", "0001.jpg"),
        ("0002_0.9_0.1.jpg", "0002.jpg"),
    ]
    checked = CliRunner().invoke(app, ["datasets", "check", "rain100l-train", "--data-root", str(tmp_path)])
    assert checked.exit_code == 0 and "found 3 pairs" in checked.output


def write_png(path: Path, rgb: np.ndarray) -> None:
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))


def test_clean_and_defocus_tasks_make_identity_and_disk_blurred_pairs(tmp_path):
    """--tasks clean gives clean -> clean pairs (the network learns to leave a good photo alone); defocus a disk blur."""
    from irtool.train.presets import resolve
    from irtool.train.sources import build_datasets

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        write_png(folder / f"p{i}.png", (rng.uniform(0, 1, (80, 96, 3)) * 255).astype(np.uint8))
    config = resolve(None, None, {"patch_size": 32, "val_count": 0}, clean_dir=str(folder), tasks=["clean", "defocus"])
    dataset, _ = build_datasets(config, with_val=False)
    clean_ids = [i for i in range(len(dataset)) if dataset.locate(i)[0].task_id == 0]
    blur_ids = [i for i in range(len(dataset)) if dataset.locate(i)[0].task_id == 1]
    for i in clean_ids:
        sample = dataset[(0, i)]
        assert sample["task"] == 0 and torch.equal(sample["lq"], sample["gt"])
    for i in blur_ids:
        sample = dataset[(0, i)]
        assert sample["task"] == 1 and (sample["lq"] - sample["gt"]).abs().mean() > 0.05  # noise photos blur a lot
        assert sample["lq"].std() < sample["gt"].std()
    with pytest.raises(ConfigError, match="clean photos take no level"):
        build_datasets(
            resolve(
                None,
                None,
                {"sources": ({"task": "clean", "clean_dir": str(folder), "degrade": "clean", "params": {"level": 3}},)},
            ),
            with_val=False,
        )


def test_decoded_photos_are_cached_read_only(tmp_path):
    from irtool.train import sources

    path = tmp_path / "a.png"
    write_png(path, np.full((20, 30, 3), 128, np.uint8))
    first = sources.read_rgb(path)
    assert sources.read_rgb(path) is first and first.shape == (20, 30, 3) and first.dtype == np.float32
    with pytest.raises(ValueError):
        first[0, 0, 0] = 0.0  # shared by every sample: read-only
    write_png(path, np.full((20, 30, 3), 10, np.uint8))  # a changed file is read again
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert sources.read_rgb(path)[0, 0, 0] == pytest.approx(10 / 255)
