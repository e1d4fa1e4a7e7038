"""Wide training degradations (irtool.train.augment) and the identity hinge: what each kind draws, determinism per
sample key, the config switches, validation staying on irtool.degrade, and bit-exact resume with both on."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from irtool.train import augment, losses
from irtool.train.presets import PRESETS, ConfigError, resolve


def _photo(size: int = 96, seed: int = 0) -> np.ndarray:
    """A textured colour photo stand-in (gradients + edges + fine texture), read-only like the cached photos."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    image = np.stack([0.2 + 0.6 * xx, 0.3 + 0.5 * yy, 0.5 + 0.3 * np.sin(6 * xx + 4 * yy)], -1)
    image[size // 3 : size // 2] *= 0.5
    image = np.clip(image + rng.uniform(-0.05, 0.05, image.shape), 0, 1).astype(np.float32)
    image.flags.writeable = False
    return image


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(float(((a - b) ** 2).mean()), 1e-12)))


@pytest.mark.parametrize("kind", augment.KINDS)
def test_each_kind_is_a_pure_function_of_its_generator_and_keeps_its_label(kind):
    photo = _photo()
    for index in range(6):
        out, label = augment.sample(photo, kind, np.random.default_rng([0, 1, index]))
        again, _ = augment.sample(photo, kind, np.random.default_rng([0, 1, index]))
        assert label == kind and np.array_equal(out, again)  # same key, same sample: resume stays bit-exact
        assert out.shape == photo.shape and out.dtype == np.float32 and out.flags.c_contiguous
        assert out.min() >= 0.0 and out.max() <= 1.0
        if kind == "clean":
            assert np.array_equal(out, photo) and out is not photo
        else:
            assert _psnr(out, photo) < 60.0, (kind, index)  # something happened to it


def test_the_ranges_are_wider_than_irtool_degrade():
    """Low light reaches far darker than irtool.degrade's heaviest (exposure 0.15); JPEG reaches q5-like damage and
    near-lossless; blur spans from barely to very blurred: the draws cover a range, not one look."""
    photo = _photo(128)
    keys = [np.random.default_rng([3, 0, i]) for i in range(60)]

    def spread(kind):
        return [_psnr(augment.sample(photo, kind, rng, mix_rate=0.0)[0], photo) for rng in keys]

    means = [
        float(augment.sample(photo, "lowlight", np.random.default_rng([4, 0, i]), mix_rate=0.0)[0].mean())
        for i in range(60)
    ]
    assert min(means) < 0.05 * float(photo.mean()) and max(means) > 0.3 * float(photo.mean())
    for kind, dB in (("jpeg", 10.0), ("noise", 10.0), ("blur", 6.0)):  # a smooth photo: blur costs it less
        scores = spread(kind)
        assert max(scores) - min(scores) > dB, (kind, min(scores), max(scores))


def test_mixtures_add_a_milder_second_degradation_and_keep_the_dominant_label():
    photo = _photo()
    single, _ = augment.sample(photo, "noise", np.random.default_rng([5]), mix_rate=0.0)
    mixed, label = augment.sample(photo, "noise", np.random.default_rng([5]), mix_rate=1.0)
    assert label == "noise" and not np.array_equal(single, mixed)
    # at the default rate about MIX_RATE of the draws are mixtures (same first draw, so compare with rate 0)
    n, differ = 200, 0
    for i in range(n):
        a, _ = augment.sample(photo, "defocus", np.random.default_rng([6, i]))
        b, _ = augment.sample(photo, "defocus", np.random.default_rng([6, i]), mix_rate=0.0)
        differ += not np.array_equal(a, b)
    assert abs(differ / n - augment.MIX_RATE) < 0.08, differ / n
    with pytest.raises(ValueError, match="unknown degradation 'fog'"):
        augment.sample(photo, "fog", np.random.default_rng(0))


def test_kernels_are_normalised_and_sized_by_their_length():
    for length in (3, 17, 31):
        k = augment.line_kernel(length, 37.0)
        assert k.sum() == pytest.approx(1.0, abs=1e-5) and k.shape[0] % 2 == 1 and k.shape[0] >= length
        extent = np.argwhere(k > 1e-3)
        assert np.hypot(*(extent.max(0) - extent.min(0))) == pytest.approx(length, abs=3)
    shake = augment.shake_kernel(20.0, np.random.default_rng(0))
    assert shake.sum() == pytest.approx(1.0, abs=1e-5) and (shake > 1e-3).sum() > 20
    assert augment.disk(8.0).sum() == pytest.approx(1.0, abs=1e-5)


def test_identity_hinge_is_what_the_output_lost_against_its_input():
    gt = torch.zeros(2, 3, 4, 4)
    lq = torch.full_like(gt, 0.2)
    out = torch.stack([torch.full((3, 4, 4), 0.1), torch.full((3, 4, 4), 0.5)])
    assert losses.identity_hinge(out, lq, gt).tolist() == pytest.approx([0.0, 0.3])
    out.requires_grad_(True)
    losses.identity_hinge(out, lq, gt).sum().backward()
    assert out.grad[0].abs().sum() == 0 and out.grad[1].abs().sum() > 0  # only what got worse is pushed back


def _write_photos(folder: Path, n: int, size: int = 64) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rgb = np.round(_photo(size, seed=i) * 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"p{i}.png"), np.ascontiguousarray(rgb[..., ::-1]))


def test_wide_applies_to_clean_photo_sources_and_validation_stays_on_irtool_degrade(tmp_path):
    from irtool.degrade import degrade
    from irtool.train.sources import build_datasets

    photos = tmp_path / "photos"
    _write_photos(photos, 3)
    base = {"patch_size": 32, "val_size": 32, "val_count": 1, "degradations": "wide"}
    config = resolve(None, None, base, clean_dir=str(photos), tasks=["noise", "lowlight"])
    dataset, val = build_datasets(config)
    assert [s.degrade.family for s in dataset.sources] == ["wide", "wide"]
    # validation: irtool.degrade at the medium level with the validation seed, whatever the training family
    irtool_run = build_datasets(
        resolve(None, None, {**base, "degradations": "irtool"}, clean_dir=str(photos), tasks=["noise", "lowlight"])
    )[1]
    assert all(torch.equal(a.lq, b.lq) for a, b in zip(val, irtool_run))
    gt = val[0].gt.permute(1, 2, 0).numpy()
    expected = degrade(gt, "noise", 25, seed=np.random.default_rng([0, 0x5A1, 0, 1]))
    assert np.allclose(val[0].lq.permute(1, 2, 0).numpy(), expected, atol=1e-6)
    # a source with its own level (a recipe's fixed sigma) keeps irtool.degrade
    fixed = resolve(
        None,
        None,
        {**base, "sources": ({"task": "n15", "clean_dir": str(photos), "degrade": "noise", "params": {"level": 15}},)},
    )
    assert build_datasets(fixed, with_val=False)[0].sources[0].degrade.family == "irtool"
    a, b = dataset[(0, 1)], dataset[(0, 1)]
    assert torch.equal(a["lq"], b["lq"]) and a["task"] == b["task"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"degradations": "wider"}, "degradations must be irtool or wide"),
        ({"identity_weight": -1.0}, "identity_weight must not be negative"),
    ],
)
def test_bad_wide_settings_are_one_line_errors(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve(None, None, overrides, clean_dir=str(tmp_path), tasks=["noise"])


def test_the_default_model_presets_use_the_wide_recipe_and_the_finetune_starts_from_the_shipped_weights():
    for name in ("irtool_default-cpu", "irtool_default-h200", "irtool_default-finetune"):
        assert (PRESETS[name].degradations, PRESETS[name].identity_weight) == ("wide", 1.0), name
    finetune = PRESETS["irtool_default-finetune"]
    assert finetune.init is not None and Path(finetune.init).is_file()
    assert Path(finetune.init).name == "irtool_default.safetensors" and finetune.lr < PRESETS["irtool_default-cpu"].lr
    assert finetune.model == PRESETS["irtool_default-cpu"].model


def _log(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_wide_run_with_the_identity_hinge_logs_it_and_resumes_bit_exactly(tmp_path):
    from train_helpers import MICRO

    from irtool.train.loop import train

    torch.set_num_threads(1)
    photos = tmp_path / "photos"
    _write_photos(photos, 3, size=48)
    flags = {
        "variant": "tiny",
        "model": MICRO,
        "patch_size": 32,
        "batch_size": 4,
        "steps": 4,
        "warmup": 1,
        "ckpt_every": 2,
        "log_every": 1,
        "num_workers": 0,
        "val_count": 0,
        "degradations": "wide",
        "identity_weight": 1.0,
    }
    config = resolve(None, None, flags, clean_dir=str(photos), tasks=["noise", "rain", "clean"])

    class Stop(Exception):
        pass

    def stop_at_2(kind, info):
        if kind == "checkpoint" and info["step"] == 2:
            raise Stop

    train(config, tmp_path / "straight")
    with pytest.raises(Stop):
        train(config, tmp_path / "stopped", on_event=stop_at_2)
    train(config, tmp_path / "stopped", resume=True)
    wa, wb = (load_file(str(tmp_path / r / "last.safetensors")) for r in ("straight", "stopped"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    rows = _log(tmp_path / "straight" / "log.csv")
    assert rows == [
        {**r, "it_per_s": rows[i]["it_per_s"], "seconds": rows[i]["seconds"]}
        for i, r in enumerate(_log(tmp_path / "stopped" / "log.csv"))
    ]
    for r in rows:  # the hinge is logged and is part of the loss (weight 1)
        expected = float(r["pixel"]) + float(r["identity"]) + config.balance_weight * float(r["balance"])
        expected += float(r["fft"]) * config.fft_weight + float(r["route"]) * config.route_task_weight
        assert float(r["identity"]) >= 0 and float(r["loss"]) == pytest.approx(expected, rel=1e-4)


def test_low_light_in_linear_light_reaches_a_pedestal_beyond_the_physical_generators():
    """Half the linear-light draws leave a black-level pedestal, uniform up to 0.02 (linear), in the shadows: the
    physical generator's standard low light (pedestal 0.01) lies inside the range, and not only in its tail."""
    black = np.zeros((32, 32, 3), np.float32)
    floors = np.array(
        [float(np.median(augment._lowlight_linear(black, np.random.default_rng([7, 0, i]), False))) for i in range(300)]
    )
    encoded = lambda linear: float(augment.to_srgb(np.float32(linear)))  # noqa: E731
    assert floors.max() > encoded(0.018)  # reaches up to about 0.02
    assert 0.1 < np.mean(floors > encoded(0.01)) < 0.5  # a good share of the draws lie beyond 0.01
    assert np.mean(floors < encoded(0.001)) > 0.4  # and about half have none
