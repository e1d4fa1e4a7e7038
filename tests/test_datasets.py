"""The benchmark registry: layouts found, pairing rules, missing-data messages, and the official test noise."""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_data import make_moce_layout, make_promptir_layout, photo, save
from PIL import Image

from irtool.evaluation import datasets as ds


def test_moce_ir_layout_is_found_and_paired_by_rule(tmp_path):
    make_moce_layout(tmp_path)
    rain = ds.locate(ds.get_spec("rain100l"), tmp_path)
    assert rain.layout.name == "moce-ir"
    assert [(p.lq.name, p.gt.name) for p in rain.pairs] == [(f"rain-00{i}.png", f"norain-00{i}.png") for i in (1, 2, 3)]
    sots = ds.locate(ds.get_spec("sots-outdoor"), tmp_path)
    assert [(p.lq.name, p.gt.name) for p in sots.pairs] == [(f"000{i}_0.9_0.16.jpg", f"000{i}.png") for i in (1, 2, 3)]
    noise = ds.locate(ds.get_spec("cbsd68-25"), tmp_path)
    assert [p.lq for p in noise.pairs] == [None] * 3 and [p.gt.name for p in noise.pairs] == [
        "0000.png",
        "0001.png",
        "0002.png",
    ]
    assert ds.locate(ds.get_spec("lol-v1"), tmp_path).layout.name == "moce-ir"


def test_promptir_layout_is_found_too(tmp_path):
    make_promptir_layout(tmp_path)
    for name in ("cbsd68-15", "rain100l", "sots-outdoor"):
        located = ds.locate(ds.get_spec(name), tmp_path)
        assert located.layout.name == "promptir" and len(located.pairs) == 3
    sots = ds.locate(ds.get_spec("sots-outdoor"), tmp_path)
    assert sots.pairs[0].gt.name == "0001.png" and sots.pairs[0].lq.name == "0001_1_0.2.jpg"


def test_adair_prefix_and_case_insensitive_folders(tmp_path):
    save(tmp_path / "data/test/deblur/GoPro/Input/a.png", photo(16, 16, 0))
    save(tmp_path / "data/test/deblur/GoPro/Target/a.png", photo(16, 16, 1))
    located = ds.locate(ds.get_spec("gopro"), tmp_path)
    assert located.layout.name == "adair" and located.pairs[0].gt.parent.name == "Target"


def test_pairing_never_zips_blindly(tmp_path):
    # an extra input and a renamed ground truth: sorted-list zipping would pair the wrong files
    root = tmp_path / "deraining/Rain100L"
    for i in (1, 2, 3):
        save(root / f"rainy/rain-{i:03d}.png", photo(16, 16, i))
    save(root / "gt/norain-1.png", photo(16, 16, 11))  # no zero padding: still rain-001's partner
    save(root / "gt/norain-003.png", photo(16, 16, 13))
    check = ds.check("rain100l", tmp_path)
    assert check.ok
    assert [(p.lq.name, p.gt.name) for p in check.located.pairs] == [
        ("rain-001.png", "norain-1.png"),
        ("rain-003.png", "norain-003.png"),
    ]
    assert any("rain-002.png" in w and "no ground truth" in w for w in check.located.warnings)
    assert any("standard release has 100" in w for w in check.located.warnings)


def test_missing_data_messages_say_exactly_what_is_missing(tmp_path):
    nothing = ds.check("gopro", tmp_path)
    assert not nothing.ok and nothing.summary.startswith(f"gopro: not found under {tmp_path}")
    assert "deblurring/GoPro/test/input" in nothing.summary and "test/deblur/gopro/input" in nothing.summary

    for i in range(4):
        save(tmp_path / f"deraining/Rain100L/rainy/rain-{i}.png", photo(16, 16, i))
    (tmp_path / "deraining/Rain100L/gt").mkdir()
    no_gt = ds.check("rain100l", tmp_path)
    assert (
        no_gt.summary
        == f"rain100l: found 4 inputs in {tmp_path}/deraining/Rain100L/rainy but 0 ground truths in {tmp_path}/deraining/Rain100L/gt"
    )
    lines = "\n".join(no_gt.lines())
    assert (
        "moce-ir" in lines and "promptir" in lines and "missing" in lines and "source:" in lines and "licence:" in lines
    )

    save(tmp_path / "deraining/Rain100L/gt/clean-a.png", photo(16, 16, 9))
    unmatched = ds.check("rain100l", tmp_path)
    assert "none of the 4 inputs" in unmatched.summary and "rain-0.png" in unmatched.summary
    with pytest.raises(ds.DatasetError, match=r"rain100l: none of the 4 inputs.*irtool datasets check rain100l"):
        ds.locate(ds.get_spec("rain100l"), tmp_path)


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("IRTOOL_DATA", str(tmp_path / "env"))
    assert ds.data_root(tmp_path / "flag") == tmp_path / "flag"
    assert ds.data_root(None) == tmp_path / "env"
    monkeypatch.delenv("IRTOOL_DATA")
    import platformdirs

    assert ds.data_root(None) == __import__("pathlib").Path(platformdirs.user_data_dir("irtool")) / "datasets"


def test_expand_families_settings_and_unknown_names():
    assert ds.expand(["cbsd68"]) == ["cbsd68-15", "cbsd68-25", "cbsd68-50"]
    assert ds.expand(["rain100l", "cbsd68-25"], ["aio5"]) == [
        "sots-outdoor",
        "rain100l",
        "cbsd68-25",
        "gopro",
        "lol-v1",
    ]
    assert len(ds.expand(["cdd11"])) == 11 and ds.expand(settings=["allweather"])[0] == "snow100k-s"
    # comma-separated values, as people type them
    assert ds.expand(["rain100l, synthetic:noise25", "cbsd68-25,"]) == ["rain100l", "synthetic:noise25", "cbsd68-25"]
    assert ds.expand(settings=["aio3,aio5"]) == ds.expand(settings=["aio3", "aio5"])
    with pytest.raises(ds.DatasetError, match="rain100: unknown dataset"):
        ds.expand(["rain100"])
    with pytest.raises(ds.DatasetError, match="--setting aio4: unknown"):
        ds.expand(settings=["aio4"])


def test_registry_is_complete_and_keyed_like_the_manifest():
    from irtool.weights import catalogue

    for entry in catalogue.entries():
        for key in entry.data.get("reported") or {}:
            assert key == "average" or key in ds.DATASETS, key
    for name in (
        "urban100-50",
        "kodak24-15",
        "rain100h",
        "cdd11-low-haze-snow",
        "snow100k-l",
        "outdoor-rain",
        "raindrop-a",
    ):
        spec = ds.DATASETS[name]
        assert spec.layouts and spec.source and spec.licence
    assert {ds.DATASETS[n].protocol for n in ds.SETTINGS["allweather"]} == {"y"}
    assert not ds.DATASETS["cdd11-rain"].crop


def _crop_img(image, base):  # the official crop_img (MoCE-IR/PromptIR utils/image_utils.py), rewritten
    h, w = image.shape[0], image.shape[1]
    ch, cw = h % base, w % base
    return image[ch // 2 : h - ch + ch // 2, cw // 2 : w - cw + cw // 2, :]


@pytest.mark.parametrize("shape", [(37, 53), (48, 64), (17, 31), (50, 65)])
def test_centre_crop_equals_the_official_crop(shape):
    image = np.arange(shape[0] * shape[1] * 3).reshape(*shape, 3)
    assert np.array_equal(ds.centre_crop(image, 16), _crop_img(image, 16))


def test_noise_equals_the_official_recipe_bit_for_bit(tmp_path):
    """np.random.seed(0) once; sorted files; crop, then clip(clean + randn * sigma).astype(uint8); 15 -> 25 -> 50."""
    files = make_moce_layout(tmp_path)["cbsd68"]

    np.random.seed(0)  # the official test script, written out
    expected = []
    for sigma in (15, 25, 50):
        for f in sorted(str(p) for p in files):
            clean = _crop_img(np.array(Image.open(f).convert("RGB")), base=16)
            noise = np.random.randn(*clean.shape)
            expected.append(np.clip(clean + noise * sigma, 0, 255).astype(np.uint8))
    np.random.seed(123)  # irtool must not depend on (or disturb) the global stream

    stream = ds.NoiseStream(0)
    got = []
    for name in ds.expand(["cbsd68"]):
        located = ds.locate(ds.get_spec(name), tmp_path)
        got.extend(s.lq for s in ds.iter_samples(located, crop_multiple=16, noise=stream))
    assert len(got) == len(expected) == 9
    for a, b in zip(got, expected):
        assert a.dtype == np.uint8 and np.array_equal(a, b)
    assert stream.history == ["cbsd68-15", "cbsd68-25", "cbsd68-50"]

    # --limit shows a subset of the very same noisy images: skipped images still advance the stream
    limited = ds.NoiseStream(0)
    subset = []
    for name in ds.expand(["cbsd68"]):
        located = ds.locate(ds.get_spec(name), tmp_path)
        subset.extend(s.lq for s in ds.iter_samples(located, crop_multiple=16, noise=limited, limit=1))
    assert all(np.array_equal(a, expected[3 * i]) for i, a in enumerate(subset))

    # running sigma 25 alone is another realisation (a fresh stream), as the official 5-task command gets
    alone = ds.NoiseStream(0)
    located = ds.locate(ds.get_spec("cbsd68-25"), tmp_path)
    first = next(ds.iter_samples(located, crop_multiple=16, noise=alone)).lq
    np.random.seed(0)
    clean = _crop_img(np.array(Image.open(files[0]).convert("RGB")), 16)
    assert np.array_equal(first, np.clip(clean + np.random.randn(*clean.shape) * 25, 0, 255).astype(np.uint8))
    assert not np.array_equal(first, expected[3])


def test_noise_truncates_rather_than_rounds():
    clean = np.full((1, 1, 3), 100, dtype=np.uint8)
    stream = ds.NoiseStream(0)
    noise = np.random.RandomState(0).randn(1, 1, 3)
    out = stream.add(clean, 1.0)
    assert np.array_equal(out, np.floor(np.clip(100 + noise, 0, 255)).astype(np.uint8))


def test_unreadable_and_unpaired_files_are_reported_not_fatal(tmp_path):
    make_moce_layout(tmp_path)
    (tmp_path / "deraining/Rain100L/rainy/rain-002.png").write_bytes(b"not a png")
    save(tmp_path / "deraining/Rain100L/rainy/rain-009.png", photo(16, 16, 0))
    located = ds.locate(ds.get_spec("rain100l"), tmp_path)
    items = list(ds.iter_samples(located, crop_multiple=16))
    samples = [i for i in items if isinstance(i, ds.Sample)]
    errors = [i for i in items if isinstance(i, tuple)]
    assert [s.name for s in samples] == ["rain-001.png", "rain-003.png"]
    assert samples[0].lq.shape == (32, 48, 3)  # 40x56 cropped to multiples of 16
    messages = sorted(str(e) for _, e in errors)
    assert "rain-002.png: cannot be read as an image" in messages[0]
    assert messages[1].startswith("rain-009.png: no ground truth found")


def test_skimage_photos_are_found_without_importing_skimage():
    import subprocess
    import sys

    probe = (
        "import sys; from irtool.evaluation import datasets as ds; photos, origin = ds.clean_photos(); "
        "assert 'skimage' not in sys.modules; print(len(photos), sorted(p.name for p in photos))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("5 ") and "astronaut.png" in done.stdout


def test_clean_dir_errors(tmp_path):
    with pytest.raises(ds.DatasetError, match="no such folder"):
        ds.clean_photos(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ds.DatasetError, match="holds no images"):
        ds.clean_photos(tmp_path / "empty")


def test_every_downloadable_dataset_has_its_address(tmp_path):
    for name, spec in {**ds.DATASETS, **{s.name: s for s in ds._TRAIN_SPECS}}.items():
        assert spec.url and spec.url.startswith("https://") and " " not in spec.url, name
    lines = ds.check("rain100l", tmp_path).lines()
    assert "   download: https://drive.google.com/drive/folders/1-_Tw-LHJF4vh8fpogKgZx1EQ9MhsJI_f" in lines
