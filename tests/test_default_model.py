"""The built-in default model: it ships inside the package, loads offline, names degradations, and really restores.

The held-out photos are ones the default never saw in training (the manifest lists both sets; they come from
scikit-image's and matplotlib's wheels), cropped and degraded with irtool's seeded generators. Each kind must beat
its degraded input, a clean photo must come back nearly unchanged, and the issue's targets that the shipped model
does not reach yet (ahead of the classical tool, 40 dB on a clean photo, 80% of names right) are strict expected
failures whose reasons give the measured gap: they turn red the day a better default ships.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import irtool
from irtool import loading
from irtool.degrade import degrade
from irtool.images import files as image_io
from irtool.weights import catalogue
from irtool.weights.download import sha256_file

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
CROP = 192
#: (kind, level, held-out photo) of the per-kind checks
CASES = {
    "noise": ("noise", 25, "chelsea"),
    "rain": ("rain", 5, "coffee"),
    "haze": ("haze", 1.5, "chelsea"),
    "blur": ("blur", 15, "coffee"),
    "defocus": ("defocus", 4, "motorcycle_left"),
    "lowlight": ("lowlight", 0.3, "chelsea"),
    "jpeg": ("jpeg", 30, "grace_hopper"),
}
#: what each kind must gain over its degraded input on its held-out crop, in dB: about half of what the shipped
#: model measured there (MEASURED_GAIN), so that a retrained default of the same quality passes too
MEASURED_GAIN = {
    "noise": 8.16,
    "rain": 6.62,
    "haze": 0.93,
    "blur": 0.03,
    "defocus": 0.06,
    "lowlight": 12.40,
    "jpeg": 0.07,
}
MARGIN_DB = {"noise": 4.0, "rain": 3.5, "haze": 0.45, "blur": 0.0, "defocus": 0.0, "lowlight": 5.5, "jpeg": 0.0}
#: kinds the shipped model does not improve (strict expected failures; reason: the measured gap); none since issue 15
#: (blur, defocus and JPEG are improved by 0.03-0.07 dB only: "not below the input", no more; haze by 0.9 dB)
BELOW_INPUT: dict[str, str] = {}
#: the issue's target for a clean photo returned as it is (measured 46.1-49.3 dB on these crops)
CLEAN_TARGET_DB = 40.0
#: the classical tool of benchmarks/classical_baselines.py each kind is checked against on its crop, and the kinds
#: where the shipped model is still behind it (strict expected failures with the gap measured on these crops)
CLASSICAL = {
    "rain": "tophat_inpaint",
    "haze": "dark_channel_prior",
    "blur": "richardson_lucy_known",
    "defocus": "richardson_lucy_known",
    "lowlight": "gain_to_half",
    "jpeg": "identity",
}
BEHIND_CLASSICAL = {
    "haze": "the dark channel prior is 9.8 dB ahead on this crop (model 13.30, DCP 23.13 dB)",
    "blur": "Richardson-Lucy with the known kernel is 1.7 dB ahead on this crop (model 21.97, RL 23.69 dB)",
    "defocus": "Richardson-Lucy with the known kernel is 2.3 dB ahead on this crop (model 20.73, RL 23.00 dB)",
}


@pytest.fixture(scope="module")
def entry() -> catalogue.Entry:
    name = catalogue.load_manifest()["default"]
    found = catalogue.find_entry(name)
    assert found is not None, f"the manifest's default {name!r} is not an entry"
    return found


@pytest.fixture(scope="module")
def model(entry):
    return irtool.load_model(entry.name, device="cpu")


def heldout_photo(entry: catalogue.Entry, stem: str) -> np.ndarray:
    """A held-out photo as the manifest records it (package and path inside it), from the installed wheel."""
    record = next(r for r in entry.data["training"]["heldout"] if Path(r["path"]).stem == stem)
    package, relative = record["path"].split("/", 1)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed: its photo {relative} is in the held-out set")
    return image_io.read_image(Path(spec.submodule_search_locations[0]) / relative).rgb


def centre(image: np.ndarray, size: int = CROP) -> np.ndarray:
    h, w = image.shape[:2]
    return np.ascontiguousarray(
        image[(h - size) // 2 : (h - size) // 2 + size, (w - size) // 2 : (w - size) // 2 + size]
    )


def run(model, image: np.ndarray) -> np.ndarray:
    import torch

    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].float()
    with torch.no_grad():
        return model(x).clamp(0, 1)[0].numpy().transpose(1, 2, 0)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """RGB PSNR of float images in [0, 1] or uint8 ones (data range 255)."""
    peak = 255.0 if a.dtype == np.uint8 else 1.0
    return float(10 * np.log10(peak**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def test_the_default_ships_inside_the_package_and_matches_the_manifest(entry):
    files = entry.packaged_files()
    assert set(files) == {"weights"}, "the default's weights are package data"
    path = files["weights"]
    spec = entry.file_spec("weights")
    assert sha256_file(path) == spec["sha256"] and path.stat().st_size == spec["size"]
    assert path.stat().st_size <= 25 * 1024 * 1024
    assert catalogue.entry_status(entry).status == "built-in"
    assert Path(f"{path}.calibration.json").is_file(), "a routing calibration ships beside the weights"
    training = entry.data["training"]
    trained_on = {(i["package"], i["path"]) for i in training["images"]}
    held_out = {(i["package"], i["path"]) for i in training["heldout"]}
    assert len(trained_on) == len(training["images"]) and trained_on and held_out and not trained_on & held_out
    assert all(i["license"] and i["author"] and i["version"] for i in training["images"] + training["heldout"])
    assert {Path(i["path"]).stem for i in training["heldout"]} >= {
        "chelsea",
        "coffee",
        "ihc",
        "motorcycle_left",
        "grace_hopper",
    }
    assert (REPO / "irtool" / "models" / "NOTICE.md").is_file(), "attribution for the CC-BY photos"


def test_the_default_loads_offline_as_moce_ir(model, entry):
    assert model.arch == "moce_ir" == entry.arch
    assert sum(p.numel() for p in model.parameters()) < 13_000_000  # MoCE_IR_S or smaller


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(k, marks=pytest.mark.xfail(reason=BELOW_INPUT[k], strict=True)) if k in BELOW_INPUT else k
        for k in sorted(CASES)
    ],
)
def test_each_kind_beats_its_degraded_input_on_held_out_photos(model, entry, kind):
    degradation, level, stem = CASES[kind]
    clean = centre(heldout_photo(entry, stem))
    lq = degrade(clean, degradation, level, seed=123)
    before, after = psnr(lq, clean), psnr(run(model, lq), clean)
    assert after > before + MARGIN_DB.get(kind, 0.0), f"{kind}: {before:.2f} dB in, {after:.2f} dB out"


def test_a_clean_photo_comes_back_at_the_issues_40_db(model, entry):
    values = [
        psnr(run(model, centre(heldout_photo(entry, s))), centre(heldout_photo(entry, s)))
        for s in ("chelsea", "coffee", "grace_hopper")
    ]
    assert min(values) >= CLEAN_TARGET_DB, values


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(k, marks=pytest.mark.xfail(reason=BEHIND_CLASSICAL[k], strict=True))
        if k in BEHIND_CLASSICAL
        else k
        for k in sorted(CLASSICAL)
    ],
)
def test_each_kind_is_ahead_of_its_classical_tool(model, entry, kind):
    """The issue's bar, on one held-out crop per kind (the whole table: benchmarks/classical_baselines.py; noise's
    BM3D is a benchmark-only dependency, so noise is judged there)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import classical_baselines as cb

    degradation, level, stem = CASES[kind]
    clean = np.rint(centre(heldout_photo(entry, stem)) * 255).astype(np.uint8)
    degraded = cb.irtool_degrade(clean, degradation, level, 123)
    classical = getattr(cb, CLASSICAL[kind])(degraded.image, degraded)
    ours = np.rint(run(model, degraded.image.astype(np.float32) / 255) * 255).astype(np.uint8)
    assert psnr(ours, clean) > psnr(classical, clean), (
        f"{kind}: model {psnr(ours, clean):.2f} dB, {CLASSICAL[kind]} {psnr(classical, clean):.2f} dB"
    )


def test_the_shipped_calibration_reports_unreliable_kinds_as_unknown(entry):
    from irtool.restoration.calibration import Calibration

    calibration = Calibration.load(f"{entry.packaged_files()['weights']}.calibration.json")
    assert calibration.min_accuracy == pytest.approx(0.7)
    assert set(calibration.unreliable) == {c for c, a in calibration.per_class_accuracy.items() if a < 0.7}
    for c in calibration.unreliable:  # a signature at that class's centre is still answered "unknown"
        assert calibration.predict(calibration.centroids[[calibration.classes.index(c)]])[0] == ("unknown", None)
    for c in set(calibration.classes) - set(calibration.unreliable):
        assert calibration.predict(calibration.centroids[[calibration.classes.index(c)]])[0][0] == c


def test_restore_with_no_model_options_uses_the_default_on_the_examples(tmp_path):
    examples = sorted(EXAMPLES.glob("*.png"))
    assert len(examples) >= 3, "examples/ holds degraded test images"
    done = subprocess.run(
        [sys.executable, "-m", "irtool", "restore", str(EXAMPLES), str(tmp_path / "out"), "--json", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "irtool.default" in done.stderr
    reports = {Path(r["input"]).name: r for r in map(json.loads, done.stdout.splitlines())}
    assert set(reports) == {p.name for p in examples}
    for name, report in reports.items():
        assert report["status"] == "ok" and Path(report["output"]).is_file(), name
        restored = image_io.read_image(report["output"])
        assert (restored.width, restored.height) == tuple(report["size"])
        assert report["degradation"] is not None, "the shipped calibration gives every image a name"
    assert reports["lowlight_chelsea.png"]["degradation"] == "lowlight"


def test_the_built_in_default_wins_over_a_cached_official_checkpoint(tmp_path):
    from restore_fixtures import tiny_checkpoint

    folder = catalogue.cache_dir() / "moce_ir.aio5"
    folder.mkdir(parents=True)
    tiny_checkpoint(folder, name="last.ckpt")
    path, router, how = loading.default_source()
    assert "irtool.default" in how and path == catalogue.find_entry("irtool.default").packaged_files()["weights"]


def test_fetching_the_built_in_model_says_it_is_built_in(entry):
    from typer.testing import CliRunner

    from irtool.cli import app

    result = CliRunner().invoke(app, ["weights", "fetch", entry.name])
    assert result.exit_code == 0 and f"{entry.name} (weights): built into irtool" in result.stdout
    assert not catalogue.cache_dir().exists() or not any(catalogue.cache_dir().rglob("*.safetensors"))


@pytest.mark.parametrize("tile", [None, 160])
def test_bf16_on_a_cpu_restores_as_fp32_does_within_reduced_precision(tile):
    """`--precision bf16` on a CPU (the built-in model's bf16 copy on prepacked convs), whole and in tiles: reported as
    bf16, the same degradation named, and the 8-bit result close to fp32's (45 dB; measured 52.8 whole, 53.1 tiled)."""
    path = EXAMPLES / "noise_chelsea.png"
    fp32 = irtool.restore(str(path), device="cpu", precision="fp32", tile=tile)[0]
    bf16 = irtool.restore(str(path), device="cpu", precision="bf16", tile=tile)[0]
    assert fp32.report.precision == "fp32" and bf16.report.precision == "bf16"
    assert bf16.report.degradation == fp32.report.degradation == "noise"
    assert fp32.image is not None and bf16.image is not None and fp32.image.shape == bf16.image.shape
    a, b = (np.asarray(r.image, dtype=np.float64) / 255 for r in (fp32, bf16))
    assert 10 * np.log10(1 / np.mean((a - b) ** 2)) > 45
