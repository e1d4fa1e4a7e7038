"""Where calibrations go and which one restore uses: never into the installed package, the user's folder first.

`irtool calibrate` with no --output writes to $IRTOOL_HOME/calibrations (conftest points IRTOOL_HOME at a fresh
folder for every test), replaces a file only with --overwrite, and refuses a path inside the package; restore,
inspect and the report then use (and name) the user's calibration of these weights over the one shipped beside them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from restore_fixtures import photo, tiny_checkpoint, tree_hashes
from typer.testing import CliRunner

import irtool
from irtool.cli import app
from irtool.images import files as io
from irtool.loading import load_model
from irtool.restoration import calibration as rc
from irtool.restoration.engine import Restorer
from irtool.restoration.planning import RestoreOptions

runner = CliRunner()
PACKAGE = Path(irtool.__file__).resolve().parent


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def package_files() -> dict[str, str]:
    """sha256 of every file under the installed package (bytecode caches aside: Python, not a command, writes them)."""
    return {k: v for k, v in tree_hashes(PACKAGE).items() if "__pycache__" not in k}


def fitted(fingerprint: str, classes=("rain", "haze", "noise")) -> rc.Calibration:
    rng = np.random.default_rng(0)
    return rc.Calibration(
        classes=list(classes),
        centroids=rng.uniform(0, 1, (len(classes), 8)),
        scale=np.ones(8),
        temperature=1.0,
        reject_distance=10.0,
        fingerprint=fingerprint,
    )


def clean_photos(folder: Path, count: int = 3) -> Path:
    for s in range(count):
        io.write_image(folder / f"{s}.png", io.from_array(photo(48, 48, seed=s)))
    return folder


def test_the_users_calibration_of_these_weights_comes_before_the_one_beside_them(tmp_path):
    weights = tiny_checkpoint(tmp_path)
    model = load_model(weights, device="cpu")
    mine = rc.fingerprint(model)
    fitted(mine, ("beside", "b", "c")).save(rc.calibration_path(weights))
    found, warning = rc.find_calibration(weights, model)
    assert warning is None and found is not None and found.path == rc.calibration_path(weights)

    home = Path(os.environ["IRTOOL_HOME"]) / "calibrations"
    assert rc.user_calibration_dir() == home
    user = rc.user_calibration_path(weights, mine)
    assert user == home / f"tiny.{mine[:16]}.calibration.json"
    fitted("0" * 64, ("stranger", "b", "c")).save(home / f"tiny.{'0' * 16}.calibration.json")  # other weights
    fitted(mine, ("user", "b", "c")).save(user)
    found, warning = rc.find_calibration(weights, model)
    assert warning is None and found is not None and found.path == user and found.classes[0] == "user"
    # the same weights under another file name still find the user's calibration (by fingerprint)
    found, _ = rc.find_calibration(tmp_path / "elsewhere" / "renamed.safetensors", model)
    assert found is not None and found.path == user
    # restore loads it, and the report line names it
    restorer = Restorer.load(RestoreOptions(weights=str(weights), device="cpu"))
    assert restorer.calibration is not None and restorer.calibration.path == user
    assert rc.calibration_in_use(restorer.spec, restorer.calibration) == str(user)
    # an explicit --calibration still wins
    restorer = Restorer.load(
        RestoreOptions(weights=str(weights), device="cpu", calibration=str(rc.calibration_path(weights)))
    )
    assert restorer.calibration is not None and restorer.calibration.classes[0] == "beside"


def test_calibrate_never_writes_into_the_package_and_restore_uses_the_result(tmp_path):
    """The built-in model (whose calibration ships inside the package) calibrated with no --output: the package is
    untouched, the calibration lands in the user's folder, restore and inspect use it; --overwrite, refusals."""
    clean = clean_photos(tmp_path / "clean")
    fast = ["--clean-dir", clean, "--classes", "haze,noise", "--levels", "heavy", "--size", "32", "-d", "cpu"]
    before = package_files()
    shipped = Restorer.load(RestoreOptions(device="cpu")).calibration
    assert shipped is not None and shipped.path is not None and shipped.path.resolve().is_relative_to(PACKAGE)

    result = invoke("calibrate", *fast, "--json")
    assert result.exit_code == 0, result.output
    saved = Path(json.loads(result.stdout.splitlines()[-1])["calibration"])
    assert package_files() == before
    mine = rc.fingerprint(load_model("irtool.default", device="cpu"))
    assert saved == Path(os.environ["IRTOOL_HOME"]) / "calibrations" / f"irtool_default.{mine[:16]}.calibration.json"
    assert rc.Calibration.load(saved).classes == ["haze", "noise"]

    # restore, inspect and the report now use the user's calibration, and say so
    restorer = Restorer.load(RestoreOptions(device="cpu"))
    assert restorer.calibration is not None and restorer.calibration.path == saved
    inspected = invoke("inspect", "irtool.default", "--json")
    assert inspected.exit_code == 0 and json.loads(inspected.stdout)["calibration"] == str(saved)
    io.write_image(tmp_path / "in" / "a.png", io.from_array(photo(24, 32)))
    report = tmp_path / "r.html"
    restored = invoke("restore", tmp_path / "in", tmp_path / "out", "-d", "cpu", "--report", report)
    assert restored.exit_code == 0, restored.output
    assert str(saved) in report.read_text(encoding="utf-8")

    # an existing calibration is replaced only with --overwrite (one line, before any routing)
    again = invoke("calibrate", *fast)
    assert again.exit_code == 1
    assert errors(again) == [f"error: {saved}: already exists; pass --overwrite to replace it"]
    stamp = saved.read_bytes()
    replaced = invoke("calibrate", *fast, "--classes", "haze,lowlight", "--overwrite", "--json")
    assert replaced.exit_code == 0, replaced.output
    assert saved.read_bytes() != stamp and rc.Calibration.load(saved).classes == ["haze", "lowlight"]

    # a path inside the installed package is refused, --overwrite or not
    for target in (shipped.path, PACKAGE / "models" / "new.calibration.json"):
        refused = invoke("calibrate", *fast, "-o", target, "--overwrite")
        assert refused.exit_code == 2
        [line] = errors(refused)
        assert line.startswith(f"error: {target}: inside the installed irtool package")
    assert package_files() == before


@pytest.mark.parametrize("explicit", [False, True])
def test_output_elsewhere_and_overwrite(tmp_path, explicit):
    weights = tiny_checkpoint(tmp_path)
    clean = clean_photos(tmp_path / "clean")
    target = tmp_path / "mine.json"
    if explicit:
        target.write_text("keep")
    args = ["-w", weights, "--clean-dir", clean, "--classes", "haze,noise", "--levels", "heavy", "--size", "32"]
    result = invoke("calibrate", *args, "-o", target)
    if explicit:  # an existing file of the user's is not replaced without --overwrite
        assert result.exit_code == 1 and target.read_text() == "keep" and "--overwrite" in result.stderr
        result = invoke("calibrate", *args, "-o", target, "--overwrite")
    assert result.exit_code == 0, result.output
    assert rc.Calibration.load(target).fingerprint == rc.fingerprint(load_model(weights, device="cpu"))
    assert not (Path(os.environ["IRTOOL_HOME"]) / "calibrations").exists()


def test_merge_counts_one_kind_as_another_class_and_a_bad_pair_is_one_line(tmp_path):
    weights = tiny_checkpoint(tmp_path)
    clean = clean_photos(tmp_path / "clean")
    args = ["-w", weights, "--clean-dir", clean, "--classes", "haze,blur,defocus", "--levels", "heavy", "--size", "32"]
    result = invoke("calibrate", *args, "--merge", "defocus=blur", "-o", tmp_path / "m.json", "--json")
    assert result.exit_code == 0, result.output
    saved = rc.Calibration.load(tmp_path / "m.json")
    assert saved.classes == ["haze", "blur"] and saved.info["merged"] == {"defocus": "blur"}
    bad = invoke("calibrate", *args, "--merge", "defocus=noise", "-o", tmp_path / "n.json")
    assert bad.exit_code == 2 and not (tmp_path / "n.json").exists()
    assert errors(bad) == [
        "error: --merge defocus=noise: pairs KIND=CLASS of two different --classes, e.g. defocus=blur"
    ]
