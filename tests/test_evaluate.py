"""`irtool eval`: scores equal a direct computation, reports parse, expert usage adds up, the CLI behaves."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from benchmark_data import make_moce_layout, make_promptir_layout
from helpers import random_moce
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim
from typer.testing import CliRunner

from irtool.archs.moce_ir import VARIANTS
from irtool.cli import app
from irtool.errors import IrtoolError
from irtool.evaluation import datasets as ds
from irtool.evaluation import evaluate

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions gain nothing from threads, and a busy shared CPU makes torch's thread pool crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_model():
    return random_moce(VARIANTS["tiny"], seed=0)


@pytest.fixture
def checkpoint(tmp_path, tiny_model):
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in tiny_model.state_dict().items()}}, path)
    return path


def _evaluate(model, names, root, **options):
    opts = evaluate.EvalOptions(**options)
    report = evaluate.new_report(model, opts, source="tiny", device="cpu", reported_from="moce_ir.aio3",
                                 reported=evaluate.reported_figures({"reported": {"rain100l": {"psnr": 38.57, "ssim": 0.984}}}))  # fmt: skip
    events = list(evaluate.run(model, evaluate.resolve(names, root), opts, report))
    return report, events


def test_scores_equal_the_official_computation_on_the_same_images(tmp_path, tiny_model):
    made = make_moce_layout(tmp_path)
    report, events = _evaluate(tiny_model, ["rain100l"], tmp_path)
    assert report.complete and len(events) == 3
    d = report.datasets[0]
    for result, lq_path in zip(d.images, made["rain100l"]):
        gt_path = lq_path.parent.parent / "gt" / lq_path.name.replace("rain-", "norain-")
        # MoCE-IR src/test.py, written out: PIL read, crop to 16, ToTensor, net, clamp, skimage on float32 HWC
        lq = ds.centre_crop(np.array(Image.open(lq_path).convert("RGB")), 16)
        gt = ds.centre_crop(np.array(Image.open(gt_path).convert("RGB")), 16)
        x = torch.from_numpy(lq.transpose(2, 0, 1).copy()).float().div(255)[None]
        with torch.no_grad():
            restored = tiny_model(x).clamp(0, 1)[0].permute(1, 2, 0).numpy()
        clean = torch.from_numpy(gt.transpose(2, 0, 1).copy()).float().div(255).permute(1, 2, 0).numpy()
        assert result.psnr == pytest.approx(sk_psnr(clean, restored, data_range=1), abs=1e-4)
        assert result.ssim == pytest.approx(
            sk_ssim(clean, restored, channel_axis=2, gaussian_weights=True, data_range=1.0), abs=1e-5
        )
        assert (result.height, result.width) == (32, 48)
        # the degraded input, scored the same way: the baseline the table shows beside the model's figure
        degraded = lq.astype(np.float32) / 255.0
        assert result.input_psnr == pytest.approx(sk_psnr(clean, degraded, data_range=1), abs=1e-4)
        assert result.input_ssim == pytest.approx(
            sk_ssim(clean, degraded, channel_axis=2, gaussian_weights=True, data_range=1.0), abs=1e-5
        )
    assert d.psnr == pytest.approx(np.mean([r.psnr for r in d.images]))
    assert d.input_psnr == pytest.approx(np.mean([r.input_psnr for r in d.images]))
    assert d.reported == {"psnr": 38.57, "ssim": 0.984} and d.delta_psnr == pytest.approx(d.psnr - 38.57)


def test_expert_usage_counts_every_image_in_every_layer(tmp_path, tiny_model):
    make_moce_layout(tmp_path)
    report, _ = _evaluate(tiny_model, ["sots-outdoor", "lol-v1"], tmp_path)
    for d in report.datasets:
        counts = np.array(d.usage["counts"])
        assert d.usage["kind"] == "experts" and counts.shape == (
            len(tiny_model.moce_layers),
            tiny_model.config.num_experts,
        )
        assert (counts.sum(axis=1) == len(d.images)).all()
        # the per-image choices add up to the counts
        tally = np.zeros_like(counts)
        for r in d.images:
            for layer, picks in enumerate(r.experts):
                tally[layer, picks] += 1
        assert np.array_equal(tally, counts)
    assert report.average["datasets"] == ["sots-outdoor", "lol-v1"] and report.average["reported"] is None


def test_noisy_inputs_saved_are_the_official_realisation(tmp_path, tiny_model):
    files = make_moce_layout(tmp_path / "data")["cbsd68"]
    out = tmp_path / "inputs"
    report, _ = _evaluate(
        tiny_model, ds.expand(["cbsd68"]), tmp_path / "data", save_inputs=out, save_images=tmp_path / "restored"
    )
    np.random.seed(0)
    for name in ("cbsd68-15", "cbsd68-25", "cbsd68-50"):
        sigma = int(name.split("-")[1])
        for f in files:
            clean = ds.centre_crop(np.array(Image.open(f).convert("RGB")), 16)
            want = np.clip(clean + np.random.randn(*clean.shape) * sigma, 0, 255).astype(np.uint8)
            assert np.array_equal(np.array(Image.open(out / name / f.name)), want)
            restored = np.array(Image.open(tmp_path / "restored" / name / f.name))
            assert restored.shape == clean.shape and restored.dtype == np.uint8
    assert [d.noise["follows"] for d in report.datasets] == [[], ["cbsd68-15"], ["cbsd68-15", "cbsd68-25"]]
    fresh, _ = _evaluate(tiny_model, ["cbsd68-15", "cbsd68-25"], tmp_path / "data", noise_stream="fresh")
    assert [d.noise["follows"] for d in fresh.datasets] == [[], []]
    assert fresh.datasets[1].psnr != report.datasets[1].psnr  # another realisation of the sigma-25 noise


def test_protocol_override_hides_a_paper_figure_scored_otherwise(tmp_path, tiny_model):
    make_moce_layout(tmp_path)
    report, _ = _evaluate(tiny_model, ["rain100l"], tmp_path, protocol="y", limit=2)
    d = report.datasets[0]
    assert d.protocol == "y" and d.reported is None and d.crop_multiple is None
    assert (d.images[0].height, d.images[0].width) == (40, 56)  # Y protocol: full image
    assert any("scored with protocol moce" in w for w in d.warnings)
    assert any("first 2 of 3" in x for x in d.departures) and len(d.images) == 2


def test_reports_json_and_csv(tmp_path, tiny_model):
    make_moce_layout(tmp_path)
    report, _ = _evaluate(tiny_model, ["rain100l", "sots-outdoor"], tmp_path)
    evaluate.write_json(report, tmp_path / "r.json")
    evaluate.write_csv(report, tmp_path / "r.csv")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["complete"] and data["model"]["arch"] == "moce_ir" and data["reported_from"] == "moce_ir.aio3"
    assert [d["dataset"] for d in data["datasets"]] == ["rain100l", "sots-outdoor"]
    assert data["datasets"][0]["summary"]["n"] == 3 and len(data["datasets"][0]["images"]) == 3
    assert "MoCE-IR src/test.py" in data["datasets"][0]["reproduces"]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text())))
    assert tuple(rows[0]) == evaluate.CSV_COLUMNS and len(rows) == 6
    assert rows[0]["dataset"] == "rain100l" and rows[0]["protocol"] == "moce"
    assert float(rows[0]["psnr"]) == pytest.approx(report.datasets[0].images[0].psnr, abs=1e-6)
    assert len(rows[0]["experts"].split(";")) == len(tiny_model.moce_layers)


def test_identical_images_give_json_safe_infinity(tmp_path, tiny_model):
    report = evaluate.new_report(tiny_model, evaluate.EvalOptions(), source="x", device="cpu")
    report.datasets.append(evaluate.DatasetReport("d", "D", "noise", "moce", "", 16, 0, None, None, None))
    report.datasets[0].images.append(evaluate.ImageResult("a.png", psnr=float("inf"), ssim=1.0))
    assert json.loads(evaluate.to_json(report))["datasets"][0]["images"][0]["psnr"] == "inf"


def test_plot_writes_a_png_or_says_what_is_missing(tmp_path, tiny_model, monkeypatch):
    make_moce_layout(tmp_path)
    report, _ = _evaluate(tiny_model, ["lol-v1"], tmp_path)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        path = evaluate.plot_usage(report, tmp_path / "usage.png")
        assert Image.open(path).format == "PNG"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(evaluate.IrtoolError, match=r"--plot needs matplotlib: pip install 'irtool\[plot\]'"):
        evaluate.plot_usage(report, tmp_path / "other.png")


def test_cli_eval_end_to_end(tmp_path, checkpoint):
    make_promptir_layout(tmp_path / "data", n=2)
    json_path, csv_path = tmp_path / "r.json", tmp_path / "r.csv"
    args = ["eval", "--weights", str(checkpoint), "--data-root", str(tmp_path / "data"), "--setting", "aio3",
            "--reported", "moce_ir.aio3", "--json-file", str(json_path), "--csv", str(csv_path), "-q"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "cbsd68-50" in result.stdout and "32.73/0.917" in result.stdout  # the paper's average for this entry
    data = json.loads(json_path.read_text())
    assert [d["dataset"] for d in data["datasets"]] == [
        "sots-outdoor",
        "rain100l",
        "cbsd68-15",
        "cbsd68-25",
        "cbsd68-50",
    ]
    assert data["average"]["reported"] == {"psnr": 32.73, "ssim": 0.917}
    assert all(d["layout"] == "promptir" for d in data["datasets"])
    assert len(csv_path.read_text().splitlines()) == 1 + 10

    stdout = runner.invoke(
        app, ["eval", "-w", str(checkpoint), "--data-root", str(tmp_path / "data"), "--dataset", "rain100l", "--json"]
    )
    assert stdout.exit_code == 0 and json.loads(stdout.stdout)["datasets"][0]["summary"]["n"] == 2


def test_cli_eval_errors(tmp_path, checkpoint):
    missing = runner.invoke(app, ["eval", "-w", str(checkpoint), "--data-root", str(tmp_path), "--dataset", "gopro"])
    assert missing.exit_code == 1
    assert "gopro: not found under" in missing.stderr and "irtool datasets check gopro" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    # --figure only makes sense with the HTML report it is saved beside
    lonely = runner.invoke(app, ["eval", "-w", str(checkpoint), "--dataset", "rain100l", "--figure", "a.png:0,0,8,8"])
    assert lonely.exit_code == 2 and "--figure needs --report FILE" in lonely.stderr
    assert runner.invoke(app, ["eval", "-w", str(checkpoint)]).exit_code == 2  # no dataset
    assert (
        runner.invoke(app, ["eval", "-w", str(checkpoint), "--dataset", "rain100l", "--protocol", "matlab"]).exit_code
        == 2
    )
    # one unreadable image fails alone: exit 1, the others are scored
    make_moce_layout(tmp_path)
    (tmp_path / "deraining/Rain100L/rainy/rain-002.png").write_bytes(b"broken")
    partial = runner.invoke(
        app,
        [
            "eval",
            "-w",
            str(checkpoint),
            "--data-root",
            str(tmp_path),
            "--dataset",
            "rain100l",
            "-q",
            "--json-file",
            str(tmp_path / "r.json"),
        ],
    )
    assert partial.exit_code == 1 and "rain-002.png: cannot be read as an image" in partial.stderr
    summary = json.loads((tmp_path / "r.json").read_text())["datasets"][0]["summary"]
    assert summary["n"] == 2 and summary["failed"] == 1


def test_cli_eval_without_a_model_uses_the_default_one_as_restore_does(tmp_path):
    make_moce_layout(tmp_path)
    result = runner.invoke(app, ["eval", "--data-root", str(tmp_path), "--dataset", "rain100l", "-q", "--json"])
    assert result.exit_code == 0, result.output
    assert "using the default model irtool.default" in result.stderr
    assert json.loads(result.stdout)["datasets"][0]["summary"]["n"] == 3


def test_cli_eval_without_any_model_says_how_to_get_one(tmp_path, no_builtin_default):
    make_moce_layout(tmp_path)
    result = runner.invoke(app, ["eval", "--data-root", str(tmp_path), "--dataset", "rain100l"])
    assert result.exit_code == 1 and "irtool weights fetch" in result.stderr


def test_cli_datasets_list_and_check(tmp_path):
    make_moce_layout(tmp_path)
    listed = runner.invoke(app, ["datasets", "list", "--data-root", str(tmp_path), "--json"])
    assert listed.exit_code == 0
    rows = {r["name"]: r for r in json.loads(listed.stdout)["datasets"]}
    assert rows["rain100l"]["status"] == "found*" and rows["rain100l"]["count"] == 3  # found, fewer than 100
    assert rows["gopro"]["status"] == "missing" and len(rows) == len(ds.DATASETS)
    table = runner.invoke(app, ["datasets", "list", "--data-root", str(tmp_path)])
    assert table.exit_code == 0 and "sots-outdoor" in table.stdout
    ok = runner.invoke(app, ["datasets", "check", "cbsd68", "--data-root", str(tmp_path)])
    assert ok.exit_code == 0 and ok.stdout.count("found 3 clean images") == 3
    bad = runner.invoke(app, ["datasets", "check", "gopro", "--data-root", str(tmp_path)])
    assert bad.exit_code == 1 and "gopro: not found under" in bad.stdout and "CC BY 4.0" in bad.stdout
    assert runner.invoke(app, ["datasets", "check", "nope"]).exit_code == 1


def test_classifier_routed_lora_ir_on_an_allweather_set(tmp_path):
    """LoRA-IR's router is a classifier: usage counts classes, the Y protocol scores full-size images."""
    from benchmark_data import photo, save

    from irtool.archs.lora_ir import build_pair

    for i in range(2):
        clean = photo(30 + 4 * i, 44, 30 + i)
        save(tmp_path / f"data/allweather/test/RainDrop/gt/{i}_clean.png", clean)
        save(
            tmp_path / f"data/allweather/test/RainDrop/input/{i}_rain.png",
            np.clip(clean.astype(int) + 25, 0, 255).astype(np.uint8),
        )
    pair = build_pair("tiny").eval()
    torch.save({"params": pair.ir.state_dict()}, tmp_path / "ir.pth")
    torch.save({"params": pair.router.state_dict()}, tmp_path / "router.pth")
    args = ["eval", "-w", str(tmp_path / "ir.pth"), "--router", str(tmp_path / "router.pth"), "--dataset", "raindrop-a",
            "--data-root", str(tmp_path / "data"), "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)["datasets"][0]
    assert d["protocol"] == "y" and d["crop_multiple"] is None
    assert [(r["file"], r["height"], r["width"]) for r in d["images"]] == [
        ("0_rain.png", 30, 44),
        ("1_rain.png", 34, 44),
    ]
    assert d["usage"]["kind"] == "classes" and sum(d["usage"]["counts"].values()) == 2
    assert all(r["degradation"] in pair.classes for r in d["images"])


def test_synthetic_benchmark_is_offline_reproducible_and_made_by_degrade(tmp_path, tiny_model):
    from benchmark_data import photo, save

    from irtool.degrade import degrade

    photos = [save(tmp_path / "clean" / f"p{i}.png", photo(37, 50 + 7 * i, 40 + i)) for i in range(2)]
    options = dict(save_inputs=tmp_path / "inputs")
    opts = evaluate.EvalOptions(**options)
    runs = []
    for _ in range(2):
        report = evaluate.new_report(tiny_model, opts, source="tiny", device="cpu")
        list(
            evaluate.run(
                tiny_model, evaluate.resolve(["synthetic:noise25"], clean_dir=tmp_path / "clean"), opts, report
            )
        )
        runs.append([(r.file, r.psnr, r.ssim) for r in report.datasets[0].images])
    assert runs[0] == runs[1] and len(runs[0]) == 2
    d = report.datasets[0]
    assert d.dataset == "synthetic:noise25" and d.synthetic["generator"] == "irtool.degrade" and d.reported is None
    for p in photos:
        clean = ds.centre_crop(np.array(Image.open(p).convert("RGB")), 16)  # crop first, as the official order
        want = degrade(clean, "noise", 25.0, seed=ds.synthetic_seed("noise", 25.0, p.name))
        assert np.array_equal(np.array(Image.open(tmp_path / "inputs" / "synthetic-noise25" / p.name)), want)


def test_synthetic_names_levels_and_bundled_photos():
    assert ds.parse_synthetic("synthetic:noise25") == ("noise", 25.0)
    assert ds.parse_synthetic("synthetic:rain") == ("rain", 5.0)  # medium
    assert ds.parse_synthetic("synthetic:haze-heavy") == ("haze", 2.5)
    assert ds.parse_synthetic("synthetic:jpeg10") == ("jpeg", 10.0)
    with pytest.raises(ds.DatasetError, match="not a synthetic dataset: synthetic:fog"):
        ds.parse_synthetic("synthetic:fog")
    with pytest.raises(ds.DatasetError, match="out of range"):
        ds.parse_synthetic("synthetic:jpeg500")
    located = ds.locate_synthetic("synthetic:lowlight")
    assert len(located.pairs) == 5 and located.layout.name == "scikit-image"
    assert "CC0" in located.spec.licence and "public domain" in located.spec.licence


def test_tiled_eval_goes_through_the_engine_and_says_so(tmp_path, tiny_model):
    make_moce_layout(tmp_path)
    report, _ = _evaluate(tiny_model, ["rain100l"], tmp_path, tile=32)
    d = report.datasets[0]
    assert len(d.scored) == 3 and all("tiles of" in r.notes[0] for r in d.images)
    assert any("tiled inference (32 px tiles" in x for x in d.departures)
    assert np.array(d.usage["counts"]).sum(axis=1).tolist() == [3] * len(tiny_model.moce_layers)
    with pytest.raises(evaluate.IrtoolError, match="cannot be combined with --tile"):
        _evaluate(tiny_model, ["rain100l"], tmp_path, tile=32, routing_noise=True)


def test_ctrl_c_keeps_the_finished_images_in_the_report_files(tmp_path, checkpoint, monkeypatch):
    make_moce_layout(tmp_path)
    real = evaluate._evaluate_sample
    calls = []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "_evaluate_sample", interrupt_second)
    args = ["eval", "-w", str(checkpoint), "--data-root", str(tmp_path), "--dataset", "rain100l", "-q",
            "--json-file", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv")]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 130 and "interrupted" in result.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["complete"] is False and [r["file"] for r in data["datasets"][0]["images"]] == ["rain-001.png"]
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 2


@pytest.mark.parametrize("save_format,bound", [("tiff", 0.0), ("png16", 1e-4), ("png8", None)])
def test_saved_images_recompute_the_reported_scores_as_their_format_promises(tmp_path, tiny_model, save_format, bound):
    """The protocols score the float output: a float32 TIFF gives back exactly those scores (bit for bit: the same
    values through the same metric code), a 16-bit PNG within 1e-4 dB (1/65535 quantisation), an 8-bit PNG is for
    viewing; the report says which was written."""
    from irtool.evaluation import metrics
    from irtool.images import files as image_io

    made = make_moce_layout(tmp_path / "data")
    out = tmp_path / "restored"
    report, _ = _evaluate(tiny_model, ["rain100l"], tmp_path / "data", save_images=out, save_format=save_format)
    assert report.saved_images["format"] == save_format and report.to_dict()["saved_images"] == report.saved_images
    d = report.datasets[0]
    suffix, depth = {"tiff": (".tif", np.float32), "png16": (".png", np.uint16), "png8": (".png", np.uint8)}[
        save_format
    ]
    for result, lq_path in zip(d.images, made["rain100l"]):
        saved = image_io.read_image(out / "rain100l" / (Path(result.file).stem + suffix))
        assert saved.dtype == depth
        if bound is None:
            continue
        gt_path = lq_path.parent.parent / "gt" / lq_path.name.replace("rain-", "norain-")
        gt = ds.centre_crop(np.array(Image.open(gt_path).convert("RGB")), 16)
        restored = torch.from_numpy(saved.rgb.transpose(2, 0, 1).copy())[None]
        psnr, ssim = metrics.psnr_ssim(restored, torch.from_numpy(gt.transpose(2, 0, 1).copy()), d.protocol)
        if bound == 0.0:
            assert (psnr, ssim) == (result.psnr, result.ssim)
        else:
            assert abs(psnr - result.psnr) < bound and abs(ssim - result.ssim) < bound
    with pytest.raises(IrtoolError, match="--save-format jpeg: one of png8, png16, tiff"):
        evaluate.EvalOptions(save_format="jpeg").check()


def test_cli_eval_d_is_device_and_json_is_a_flag(tmp_path, checkpoint):
    make_moce_layout(tmp_path / "data", n=2)
    base = ["eval", "-w", str(checkpoint), "--data-root", str(tmp_path / "data"), "-q", "--dataset", "rain100l"]
    long = runner.invoke(app, [*base, "--device", "cpu", "--json"])
    short = runner.invoke(app, [*base, "-d", "cpu", "--json"])
    assert long.exit_code == 0 and short.exit_code == 0, short.output
    scores = [(d["dataset"], d["summary"]["psnr"]) for d in json.loads(long.stdout)["datasets"]]
    assert [(d["dataset"], d["summary"]["psnr"]) for d in json.loads(short.stdout)["datasets"]] == scores
    # not yet released, so nothing reads the old spellings: -d names a device (a dataset name there is a bad one),
    # and --json takes no value (a file name after it is an argument eval does not take)
    not_a_device = runner.invoke(app, [*base, "-d", "rain100l"])
    assert not_a_device.exit_code != 0 and "rain100l" in not_a_device.output
    assert runner.invoke(app, [*base, "--json", str(tmp_path / "r.json")]).exit_code == 2
    assert not (tmp_path / "r.json").exists()


def test_a_missing_dataset_names_its_address_and_the_offline_synthetic_sets(tmp_path):
    # the datasets are looked for before any model is loaded: the weights named here do not exist
    one = runner.invoke(
        app, ["eval", "-w", str(tmp_path / "none.pth"), "--data-root", str(tmp_path), "--dataset", "rain100l"]
    )
    assert one.exit_code == 1 and len(one.stderr.strip().splitlines()) == 1, one.output
    line = " ".join(one.stderr.split())
    assert "rain100l: not found under" in line and "none.pth" not in line
    assert "download it from https://drive.google.com/drive/folders/1-_Tw-LHJF4vh8fpogKgZx1EQ9MhsJI_f" in line
    assert "--dataset synthetic:rain needs no download" in line
    both = runner.invoke(app, ["eval", "-w", "x.pth", "--data-root", str(tmp_path), "--dataset", "gopro,cdd11-snow"])
    line = " ".join(both.stderr.split())
    assert both.exit_code == 1 and line.count("download it from https://") == 2
    assert line.count("synthetic:blur needs no download") == 1  # said once, for the first task that has a synthetic set
