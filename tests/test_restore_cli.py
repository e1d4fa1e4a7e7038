"""`irtool restore`, `irtool degrade` and `irtool calibrate` from the command line, with a tiny random MoCE-IR:
naming and tree mirroring, globs, lossless formats, skip/overwrite, a corrupt file mid-batch, the JSON schema,
exit codes, the default-model message, and calibrate -> restore naming."""

from __future__ import annotations

import io as stdio
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageCms
from restore_fixtures import photo, tiny_checkpoint, tree_hashes
from typer.testing import CliRunner

from irtool.cli import app
from irtool.degrade import degrade
from irtool.images import files as io
from irtool.images import tiff

runner = CliRunner()

REPORT_KEYS = {
    "input",
    "output",
    "status",
    "size",
    "degradation",
    "confidence",
    "experts",
    "gates",
    "routing",
    "tiles",
    "tile_size",
    "precision",
    "seconds",
    "warnings",
    "error",
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("weights"))


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def json_lines(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def save(path, array, fmt=None, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = stdio.BytesIO()
    PILImage.fromarray(array).save(buf, format=fmt or path.suffix.lstrip(".").upper().replace("JPG", "JPEG"), **kwargs)
    path.write_bytes(buf.getvalue())


def test_restore_a_tree_mirrors_it_keeps_formats_and_never_touches_inputs(tmp_path, checkpoint):
    src, out = tmp_path / "in", tmp_path / "out"
    save(src / "a.png", photo(24, 32, seed=1))
    save(src / "trip" / "b.jpg", photo(24, 32, seed=2), quality=95)
    save(src / "trip" / "day2" / "c.webp", photo(16, 24, seed=3), lossless=True)
    (src / "trip" / "notes.txt").write_text("not an image")
    before = tree_hashes(src)
    result = invoke("restore", src, out, "-w", checkpoint, "--suffix", "_fixed", "--json", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "a_fixed.png",
        "trip/b_fixed.jpg",
        "trip/day2/c_fixed.webp",
    ]
    assert io.read_image(out / "trip" / "b_fixed.jpg").format == "jpeg"
    assert tree_hashes(src) == before
    reports = json_lines(result)
    assert len(reports) == 3 and all(set(r) == REPORT_KEYS for r in reports)
    first = reports[0]
    assert first["status"] == "ok" and first["size"] == [32, 24] and first["error"] is None
    assert first["degradation"] == "unknown" and first["confidence"] is None  # no calibration yet
    assert len(first["experts"]) == 5 and all(len(layer) == 1 and 0 <= layer[0] < 4 for layer in first["experts"])
    assert all(0 < g[0] <= 1 for g in first["gates"]) and first["routing"] == "whole" and first["precision"] == "fp32"
    assert isinstance(first["seconds"], float) and first["tiles"] == 1


def test_globs_mirror_the_tree_below_their_fixed_part(tmp_path, checkpoint):
    save(tmp_path / "shots" / "x" / "1.png", photo(16, 16, seed=1))
    save(tmp_path / "shots" / "y" / "2.png", photo(16, 16, seed=2))
    save(tmp_path / "shots" / "y" / "3.jpg", photo(16, 16, seed=3))
    result = invoke("restore", str(tmp_path / "shots" / "**" / "*.png"), tmp_path / "out", "-w", checkpoint, "-q")
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.*")) == [
        "x/1.png",
        "y/2.png",
    ]


def test_restore_keeps_16_bits_alpha_gray_orientation_icc_and_exif(tmp_path, checkpoint):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    deep = photo(24, 32).astype(np.uint16) * 257 + rng.integers(0, 256, (24, 32, 3), dtype=np.uint16)
    (src / "deep.png").write_bytes(cv2.imencode(".png", deep[..., ::-1])[1].tobytes())
    (src / "deep.tiff").write_bytes(tiff.write_tiff(deep))
    alpha = rng.integers(0, 256, (24, 32), dtype=np.uint8)
    save(src / "cutout.png", np.dstack([photo(24, 32, seed=4), alpha]))
    save(src / "gray.png", photo(24, 32, seed=5)[..., 1])
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    exif[0x010F] = "irtool-camera"
    save(src / "phone.jpg", photo(24, 40, seed=6), quality=95, exif=exif.tobytes(), icc_profile=icc)
    result = invoke("restore", src, tmp_path / "out", "-w", checkpoint, "--json")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    for name in ("deep.png", "deep.tiff"):
        back = io.read_image(out / name)
        assert back.dtype == np.uint16, name
        assert len(np.unique(io.to_array(back))) > 256  # real 16-bit values, not 8-bit ones scaled
    cutout = io.read_image(out / "cutout.png")
    assert np.array_equal(cutout.alpha, alpha)
    assert cv2.imread(str(out / "gray.png"), cv2.IMREAD_UNCHANGED).ndim == 2
    phone = io.read_image(out / "phone.jpg")
    assert (phone.width, phone.height) == (24, 40) and phone.orientation == 1 and phone.icc == icc
    with PILImage.open(out / "phone.jpg") as written:
        assert written.getexif().get(0x0112) == 1 and written.getexif().get(0x010F) == "irtool-camera"
    sizes = {r["input"].rsplit("/", 1)[-1]: r["size"] for r in json_lines(result)}
    assert sizes["phone.jpg"] == [24, 40]


def test_existing_outputs_are_refused_skipped_or_replaced_and_inputs_never_written(tmp_path, checkpoint):
    save(tmp_path / "in" / "a.png", photo(16, 16, seed=1))
    out = tmp_path / "out"
    assert invoke("restore", tmp_path / "in", out, "-w", checkpoint, "-q").exit_code == 0
    first = (out / "a.png").read_bytes()
    (out / "a.png").write_bytes(b"user's own edit")

    # a rerun is not a failure: the output exists, is left as it is, and one line says how to skip or replace it
    rerun = invoke("restore", tmp_path / "in", out, "-w", checkpoint, "--json")
    assert rerun.exit_code == 0 and json_lines(rerun)[0]["status"] == "exists"
    assert rerun.stderr.count("--skip-existing") == 1 and "--overwrite" in rerun.stderr and "error" not in rerun.stderr
    assert (out / "a.png").read_bytes() == b"user's own edit"

    skipped = invoke("restore", tmp_path / "in", out, "-w", checkpoint, "--skip-existing", "--json")
    assert skipped.exit_code == 0 and json_lines(skipped)[0]["status"] == "skipped"
    assert (out / "a.png").read_bytes() == b"user's own edit"

    replaced = invoke("restore", tmp_path / "in", out, "-w", checkpoint, "--overwrite", "-q")
    assert replaced.exit_code == 0 and (out / "a.png").read_bytes() == first

    before = tree_hashes(tmp_path / "in")
    into_itself = invoke("restore", tmp_path / "in", tmp_path / "in", "-w", checkpoint, "--overwrite", "-q")
    assert into_itself.exit_code == 1 and "overwrite the input" in into_itself.stderr
    assert tree_hashes(tmp_path / "in") == before
    assert invoke("restore", tmp_path / "in", out, "--overwrite", "--skip-existing").exit_code == 1
    assert not list(out.rglob("*.irtool-tmp"))


def test_a_corrupt_file_mid_batch_is_one_line_and_the_rest_is_written(tmp_path, checkpoint):
    src = tmp_path / "in"
    save(src / "1.png", photo(16, 16, seed=1))
    (src / "2.png").write_bytes(cv2.imencode(".png", photo(16, 16, seed=2))[1].tobytes()[:60])
    (src / "3.jpg").write_text("I am a text file with a .jpg name")
    save(src / "4.png", photo(16, 16, seed=4))
    result = invoke("restore", src, tmp_path / "out", "-w", checkpoint, "--json", "--batch-size", "4")
    assert result.exit_code == 1
    statuses = [(r["input"].rsplit("/", 1)[-1], r["status"]) for r in json_lines(result)]
    assert statuses == [("1.png", "ok"), ("2.png", "failed"), ("3.jpg", "failed"), ("4.png", "ok")]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "2.png: truncated PNG" in errors[0] and "3.jpg: not an image" in errors[1]
    assert "Traceback" not in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["1.png", "4.png"]


def test_table_tiles_and_exit_codes(tmp_path, checkpoint):
    save(tmp_path / "big.png", photo(80, 120, seed=1))
    result = invoke(
        "restore", tmp_path / "big.png", tmp_path / "out", "-w", checkpoint, "--tile", "64", "--tile-overlap", "16"
    )
    assert result.exit_code == 0, result.output
    assert (
        "big.png" in result.stdout.replace("\n", "")
        and "unknown" in result.stdout
        and "restored 1 of 1" in result.stderr
    )
    tiled = json_lines(
        invoke("restore", tmp_path / "big.png", tmp_path / "out2", "-w", checkpoint, "-t", "64", "--json")
    )[0]
    assert tiled["routing"] == "downscaled" and tiled["tiles"] == 6 and max(tiled["tile_size"]) <= 64

    # file names are shown literally, not read as rich markup or emoji codes
    save(tmp_path / "odd" / "[red]x:smile:.png", photo(16, 16))
    odd = invoke("restore", tmp_path / "odd", tmp_path / "out3", "-w", checkpoint)
    assert odd.exit_code == 0 and "[red]x:smile:.png" in odd.stdout.replace("\n", "")

    assert invoke("restore").exit_code == 2
    assert invoke("restore", tmp_path / "big.png", tmp_path / "o", "--precision", "fp8").exit_code == 2
    missing = invoke("restore", tmp_path / "big.png", tmp_path / "o", "-w", tmp_path / "no.pth")
    assert missing.exit_code == 1 and len(missing.stderr.strip().splitlines()) == 1 and "no.pth" in missing.stderr
    nothing = invoke("restore", tmp_path / "nothing-here.png", tmp_path / "o", "-w", checkpoint)
    assert nothing.exit_code == 1 and "no such file" in nothing.stderr


def test_dry_run_lists_the_plan_without_loading_a_model(tmp_path):
    save(tmp_path / "in" / "a.png", photo(8, 8))
    result = invoke("restore", tmp_path / "in", tmp_path / "out", "--dry-run", "-w", tmp_path / "no-such-weights.pth")
    assert result.exit_code == 0 and "a.png ->" in result.stdout and not (tmp_path / "out").exists()


def test_without_weights_one_line_says_how_to_get_them(tmp_path, no_builtin_default):
    save(tmp_path / "a.png", photo(8, 8))
    result = invoke("restore", tmp_path / "a.png", tmp_path / "out")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "irtool weights fetch moce_ir.aio5" in lines[0] and "--weights" in lines[0]


def test_degrade_makes_seeded_test_images_and_keeps_the_frame(tmp_path):
    clean = photo(32, 40, seed=1)
    save(tmp_path / "clean.png", clean)
    result = invoke(
        "degrade", tmp_path / "clean.png", tmp_path / "rainy.png", "--kind", "rain", "--level", "heavy", "--seed", "3"
    )
    assert result.exit_code == 0, result.output
    got = io.to_array(io.read_image(tmp_path / "rainy.png"))
    assert np.array_equal(got, degrade(clean, "rain", "heavy", seed=3))
    again = invoke(
        "degrade", tmp_path / "clean.png", tmp_path / "rainy.png", "--kind", "rain", "--level", "heavy", "--seed", "3"
    )
    assert again.exit_code == 1 and "already exists" in again.stderr
    folder = invoke("degrade", tmp_path, tmp_path / "noisy", "-k", "noise", "-l", "15")
    assert folder.exit_code == 0 and sorted(p.name for p in (tmp_path / "noisy").iterdir()) == [
        "clean.png",
        "rainy.png",
    ]
    assert invoke("degrade", tmp_path / "clean.png", tmp_path / "x.png", "-k", "noise", "-l", "loud").exit_code == 2


def test_calibrate_then_restore_names_the_degradation(tmp_path, checkpoint):
    clean = tmp_path / "clean"
    for s in range(6):
        save(clean / f"{s}.png", photo(64, 64, seed=s))
    result = invoke(
        "calibrate",
        "-w",
        checkpoint,
        "--clean-dir",
        clean,
        "--classes",
        "haze,lowlight,noise",
        "--levels",
        "heavy",
        "--size",
        "48",
        "--batch-size",
        "9",
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    saved = Path(summary["calibration"])  # the user's data folder (IRTOOL_HOME here), named for these weights
    assert saved.parent == Path(os.environ["IRTOOL_HOME"]) / "calibrations" and saved.is_file()
    assert saved.name.startswith("tiny.") and saved.name.endswith(".calibration.json")
    assert not Path(f"{checkpoint}.calibration.json").exists() and summary["accuracy"] >= 0.9
    assert summary["photos"] == 6 and summary["samples"] == 18

    fresh = photo(48, 48, seed=100)
    for kind in ("haze", "lowlight", "noise"):
        save(tmp_path / "test" / f"{kind}.png", degrade(fresh, kind, "heavy", seed=1))
    restored = invoke("restore", tmp_path / "test", tmp_path / "out", "-w", checkpoint, "--json")
    assert restored.exit_code == 0, restored.output
    named = {r["input"].rsplit("/", 1)[-1]: (r["degradation"], r["confidence"]) for r in json_lines(restored)}
    for kind in ("haze", "lowlight", "noise"):
        name, confidence = named[f"{kind}.png"]
        assert name == kind and 0 < confidence <= 1

    table = invoke(
        "calibrate",
        "-w",
        checkpoint,
        "--clean-dir",
        clean,
        "--classes",
        "haze,lowlight",
        "--levels",
        "heavy",
        "--size",
        "48",
        "-o",
        tmp_path / "c.json",
    )
    assert table.exit_code == 0 and "held-out accuracy" in table.stdout and (tmp_path / "c.json").is_file()
    assert invoke("calibrate", "-w", checkpoint, "--clean-dir", clean, "--classes", "snow").exit_code == 1


def test_manifest_names_and_the_default_model_come_from_the_cache(tmp_path, no_builtin_default):
    from irtool.weights import catalogue

    save(tmp_path / "a.png", photo(16, 16))
    folder = catalogue.cache_dir() / "moce_ir_s.aio3"
    folder.mkdir(parents=True)
    tiny_checkpoint(folder, name="last.ckpt")
    named = invoke("restore", tmp_path / "a.png", tmp_path / "out1", "-m", "MoCE_IR_S_AIO3", "--json")
    assert named.exit_code == 0, named.output
    assert json_lines(named)[0]["status"] == "ok"
    default = invoke("restore", tmp_path / "a.png", tmp_path / "out2", "-q")
    assert default.exit_code == 0 and "using moce_ir_s.aio3" in default.stderr
    absent = invoke("restore", tmp_path / "a.png", tmp_path / "out3", "-m", "moce_ir.aio5")
    assert absent.exit_code == 1 and "irtool weights fetch moce_ir.aio5" in absent.stderr


#: `irtool restore` with every image read slowly (0.3 s), so that Ctrl-C lands in the middle of a folder
SLOW_READS = """
import sys, time
from irtool.images import files
from irtool.cli import main
read = files.read_image
def slow(*args, **kwargs):
    time.sleep(0.3)
    return read(*args, **kwargs)
files.read_image = slow
sys.argv = ["irtool", *sys.argv[1:]]
main()
"""


def test_ctrl_c_in_a_folder_says_how_many_images_were_written_and_how_to_finish(tmp_path, checkpoint):
    import os
    import re
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    src, out = tmp_path / "in", tmp_path / "out"
    for n in range(12):
        save(src / f"p{n:02d}.png", photo(16, 16, seed=n))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", SLOW_READS, "restore", str(src), str(out), "-w", str(checkpoint),
           "--batch-size", "1", "--workers", "1", "-q"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    try:
        while len(list(out.glob("*.png"))) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    found = re.fullmatch(
        rf"interrupted: (\d+) of 12 images written to {re.escape(str(out))}; "
        r"run the same command with --skip-existing to finish",
        lines[0],
    )
    assert found, lines[0]
    written = sorted(p.name for p in out.iterdir())  # every image counted is there, whole; no temp file is left
    assert len(written) == int(found[1]) and 2 <= len(written) < 12, written
    assert all(io.read_image(out / name).rgb.shape == (16, 16, 3) for name in written)

    rest = invoke("restore", src, out, "-w", checkpoint, "--skip-existing", "--json", "-q")
    assert rest.exit_code == 0, rest.output
    statuses = [r["status"] for r in json_lines(rest)]
    assert statuses.count("skipped") == len(written) and statuses.count("ok") == 12 - len(written)


# --------------------------------------------------------------------------------------------------------------------
# Messages a user can act on, before any work is done


def test_a_tile_overlap_over_a_quarter_of_the_tile_warns(tmp_path, checkpoint):
    save(tmp_path / "a.png", photo(80, 120, seed=1))
    wide = invoke("restore", tmp_path / "a.png", tmp_path / "o1", "-w", checkpoint, "-t", "64", "--tile-overlap", "20")
    assert wide.exit_code == 0, wide.output
    (line,) = [x for x in wide.stderr.splitlines() if "quarter" in x]
    assert line.startswith("warning: --tile-overlap 20 is over a quarter of --tile 64") and "16 px" in line
    within = invoke(
        "restore", tmp_path / "a.png", tmp_path / "o2", "-w", checkpoint, "-t", "64", "--tile-overlap", "16"
    )
    assert within.exit_code == 0 and "quarter" not in within.stderr


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if any model is loaded."""
    import irtool.loading

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(irtool.loading, "load_model", refuse)


def test_an_unwritable_output_folder_is_one_line_before_the_model_loads(
    tmp_path, checkpoint, no_model_load, monkeypatch
):
    import os
    from pathlib import Path

    save(tmp_path / "in" / "a.png", photo(16, 16))
    (tmp_path / "file").write_text("not a folder")
    cases = [tmp_path / "file" / "out", tmp_path / "file" / "deeper" / "out"]
    (tmp_path / "locked").mkdir(mode=0o555)
    cases += [tmp_path / "locked", tmp_path / "locked" / "out"]
    if os.geteuid() == 0:  # root writes into any folder: the read-only folder is seen as other users see it
        real_access = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode: False if Path(p) == tmp_path / "locked" else real_access(p, mode)
        )
    for out in cases:
        done = invoke("restore", tmp_path / "in", out, "-w", checkpoint)
        lines = done.stderr.strip().splitlines()
        assert done.exit_code == 1 and len(lines) == 1, (out, done.output)
        assert lines[0].startswith(f"error: {out}: cannot") and "Traceback" not in done.output
    single = invoke("restore", tmp_path / "in" / "a.png", tmp_path / "file" / "fixed.png", "-w", checkpoint)
    assert single.exit_code == 1 and "is not a folder" in single.stderr


def test_no_model_is_loaded_when_no_input_can_be_read(tmp_path, checkpoint, no_model_load):
    from irtool.images.files import PROBE_BYTES

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not a picture")
    (folder / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 5)
    (folder / "big.tif").write_bytes(b"\x00" * (PROBE_BYTES + 10))  # larger than the probe, in no known format
    done = invoke("restore", folder, tmp_path / "out", "-w", checkpoint)
    assert done.exit_code == 1 and "Traceback" not in done.output
    lines = done.stderr.strip().splitlines()
    named = {name: [x for x in lines if name in x] for name in ("empty.png", "text.jpg", "cut.png", "big.tif")}
    assert all(len(found) == 1 for found in named.values()), lines
    assert "empty file" in named["empty.png"][0] and "unknown format" in named["big.tif"][0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_one_readable_input_is_enough_to_load_the_model(tmp_path, checkpoint):
    save(tmp_path / "in" / "good.png", photo(16, 16))
    (tmp_path / "in" / "empty.png").write_bytes(b"")
    done = invoke("restore", tmp_path / "in", tmp_path / "out", "-w", checkpoint, "--json")
    statuses = {r["input"].rsplit("/", 1)[-1]: r["status"] for r in json_lines(done)}
    assert done.exit_code == 1 and statuses == {"good.png": "ok", "empty.png": "failed"}


def test_unknown_is_explained_once_under_the_table_and_in_the_report(tmp_path, checkpoint):
    import html

    from irtool.loading import default_source
    from irtool.restoration.calibration import Calibration, calibration_path, unknown_explanation

    # the built-in model's calibration cannot tell a clean photo from a JPEG: a clean held-out photo (never a JPEG,
    # so its pixels carry no JPEG trace either) is "unknown"
    data = pytest.importorskip("skimage.data", reason="scikit-image (a test dependency) holds the held-out photo")
    example = tmp_path / "clean_chelsea.png"
    save(example, data.chelsea())
    weights, _, _ = default_source()
    why = unknown_explanation(Calibration.load(calibration_path(weights)))
    assert "clean / jpeg" in why
    done = runner.invoke(
        app,
        ["restore", str(example), str(tmp_path / "out"), "--report", str(tmp_path / "r.html")],
        env={"COLUMNS": "400"},
    )
    assert done.exit_code == 0, done.output
    assert "unknown" in done.stdout and done.stdout.count(why) == 1
    assert html.unescape((tmp_path / "r.html").read_text()).count(why) == 1

    # weights without a calibration: every name is unknown, and the line says how to get names
    for n in range(2):
        save(tmp_path / "in" / f"{n}.png", photo(16, 16, seed=n))
    plain = invoke("restore", tmp_path / "in", tmp_path / "out2", "-w", checkpoint)
    assert plain.stdout.count("unknown: these weights have no routing calibration") == 1
    named = invoke("restore", tmp_path / "in", tmp_path / "out3", "-w", checkpoint, "--json")
    assert "unknown:" not in named.stdout  # JSON lines only
