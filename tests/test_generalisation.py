"""benchmarks/generalisation.py end to end on a tiny random model at a tiny crop: the tables' structure, the input
column against PSNR recomputed here from independently regenerated inputs, and --check's exit status."""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from restore_fixtures import photo, tiny_checkpoint

pytest.importorskip("skimage", reason="the classical tools use scikit-image (pip install -e '.[test]')")
from skimage.metrics import peak_signal_noise_ratio  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import generalisation as gen  # noqa: E402
import physical_degradations as phys  # noqa: E402

from irtool.degrade import degrade  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generalisation")
    photos = folder / "photos"
    photos.mkdir()
    for seed in (1, 2):
        Image.fromarray(photo(40, 48, seed=seed)).save(photos / f"p{seed}.png")
    weights = tiny_checkpoint(folder)
    out = folder / "result.json"
    argv = ["--weights", str(weights), "--photos", str(photos), "--crop", "32", "--seeds", "2", "--no-bm3d"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = gen.main([*argv, "--json", str(out), "--check"])
    return code, json.loads(out.read_text()), photos, printed.getvalue()


def test_tables_have_every_kind_for_both_generators(run):
    code, record, *_ = run
    assert set(record["generators"]) == {"irtool", "physical"}
    kinds = {g: [r["kind"] for r in part["rows"]] for g, part in record["generators"].items()}
    assert kinds["irtool"] == [row for row, _, _ in gen.IRTOOL_KINDS]
    assert kinds["physical"] == [*phys.KINDS, "clean"]
    for part in record["generators"].values():
        for r in part["rows"]:
            assert r["images"] == 2 * 2  # two photos, two draws
            if r["kind"] == "noise":  # its one classical tool, BM3D, was left out
                assert r["best_classical"] is None and r["classical_db"] == {}
            else:
                assert r["best_classical"] in r["classical_db"]
        degraded = [r for r in part["rows"] if r["kind"] != "clean"]
        assert part["degraded_images"] == sum(r["images"] for r in degraded)
        assert part["named_right"] == sum(r["named_right"] for r in degraded)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(peak_signal_noise_ratio(b, a, data_range=255)) if not np.array_equal(a, b) else math.inf


def test_input_column_is_the_psnr_of_the_inputs_regenerated_here(run):
    _, record, photos, printed = run
    clean = {p.stem: np.asarray(Image.open(p).convert("RGB"))[4:36, 8:40] for p in photos.iterdir()}  # 32 px centre
    levels = {row: level for row, _, level in gen.IRTOOL_KINDS}
    per_kind: dict[tuple[str, str], list[float]] = {}
    for case in record["cases"]:
        image = clean[case["photo"]]
        if case["kind"] == "clean":
            degraded = image
        elif case["generator"] == "irtool":
            degraded = degrade(image, case["kind"], levels[case["kind"]], seed=case["seed"])
        else:
            degraded = phys.degrade(image, case["kind"], case["seed"]).image
        per_kind.setdefault((case["generator"], case["kind"]), []).append(_psnr(degraded, image))
    for generator, part in record["generators"].items():
        for r in part["rows"]:
            values = per_kind[(generator, r["kind"])]
            if r["kind"] == "clean":
                assert r["input_db"] == "inf"  # identical images, written as the string JSON allows
            else:
                assert r["input_db"] == pytest.approx(float(np.mean(values)), abs=1e-9)
                assert r["model_minus_input_db"] == pytest.approx(r["model_db"] - r["input_db"], abs=1e-9)
    # and the printed tables' input column says the same, to its two decimals
    for generator in ("irtool", "physical"):
        table = printed.split(f"**{generator}**")[1].split("\n\n")[1]
        for line in table.splitlines()[2:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            values = per_kind[(generator, cells[0])]
            assert cells[2] == ("inf" if cells[0] == "clean" else f"{np.mean(values):.2f}")


def test_markdown_has_the_issue_columns_and_check_reports_misses(run):
    code, record, _, printed = run
    for generator, part in record["generators"].items():
        table = printed.split(f"**{generator}**")[1].split("\n\n")[1].splitlines()
        for column in ("kind", "input", "model", "best classical tool", "model - input", "target met?"):
            assert f"| {column} |" in table[0]
        assert len(table) == 2 + len(part["rows"])
        assert [line.split("|")[1].strip() for line in table[2:]] == [r["kind"] for r in part["rows"]]
    assert "targets missed:" in printed
    # a random tiny model without a calibration names nothing: the 70% target is missed, so --check fails
    assert code == 1 and any("named right" in m for m in record["misses"])
    assert all(m.split(":")[0] in ("irtool", "physical") for m in record["misses"])


def test_a_missing_weights_file_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="no such file"):
        gen.main(["--weights", str(tmp_path / "none.safetensors"), "--fast"])


def test_an_unreadable_photo_is_one_line(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(SystemExit, match="broken.png: cannot read this photo"):
        gen.main(["--photos", str(tmp_path), "--fast"])
