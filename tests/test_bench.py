"""`irtool bench` and its library: the report's structure and self-checks, option errors, weights files, and the
CUDA-only paths (which skip on machines without a GPU). Timings are never asserted, only their consistency."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import random_moce
from typer.testing import CliRunner

from irtool import bench
from irtool.archs.moce_ir import VARIANTS
from irtool.cli import app
from irtool.devices import speed
from irtool.errors import IrtoolError

runner = CliRunner()


def _bench(*args: str) -> dict:
    result = runner.invoke(app, ["bench", "--threads", "1", "--runs", "2", "--warmup", "0", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_report_covers_the_grid_and_checks_itself():
    report = _bench(
        "--variant",
        "moce_ir:tiny",
        "--sizes",
        "32,40x24",
        "--batch",
        "1,2",
        "--experts",
        "sparse,dense,e2",
        "--path",
        "fast,reference",
        "--breakdown",
    )
    assert (
        report["device"] == "cpu"
        and report["model"]["arch"] == "moce_ir"
        and report["model"]["parameters"] == 1_283_176
    )
    rows = report["rows"]
    assert len(rows) == 2 * 2 * 2 * 3
    assert {(r["height"], r["width"]) for r in rows} == {(32, 32), (24, 40)}
    layers = 5
    for r in rows:
        assert r["error"] is None and r["runs"] == 2
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"]
        pixels = r["batch"] * r["height"] * r["width"]
        assert math.isclose(r["megapixels_per_s"], pixels / 1e6 / (r["median_ms"] / 1000), rel_tol=1e-2)
        assert r["peak_memory_mb"] > 0 and r["memory_kind"] in ("rss", "rss-lifetime")
        assert set(r["breakdown_ms"]) == {"router", "experts", "trunk"} and r["breakdown_ms"]["experts"] > 0
        assert sum(r["routing"].values()) == r["batch"] * layers
        if r["experts"] == "e2":  # imposed: expert 2 everywhere, so nothing to compare with the model's own routing
            assert r["routing"] == {"e2": r["batch"] * layers} and r["max_abs_diff"] is None
        else:  # dense experts and the reference path restore exactly what the fast sparse path does
            assert r["max_abs_diff"] < 1e-5
    summary = report["summary"]
    assert set(summary["dense_over_sparse"]) == {"32x32 b1 fp32", "32x32 b2 fp32", "40x24 b1 fp32", "40x24 b2 fp32"}
    assert all(v > 0 for v in summary["reference_over_fast"].values())


def test_lora_ir_pair_benches_with_its_router():
    report = _bench(
        "--variant", "lora_ir:tiny", "--sizes", "32", "--batch", "1,2", "--experts", "sparse,dense,e0", "--breakdown"
    )
    assert report["model"]["arch"] == "lora_ir"
    rows = {(r["batch"], r["experts"]): r for r in report["rows"]}
    for batch in (1, 2):
        for experts in ("sparse", "dense"):
            r = rows[batch, experts]
            # merged-expert and dense (base + every expert, gated) runs give the same pixels
            assert r["error"] is None and r["max_abs_diff"] < 1e-5
            assert sum(r["routing"].values()) == batch
            assert r["breakdown_ms"]["router"] > 0 and set(r["breakdown_ms"]) == {"router", "trunk"}
        assert "cannot impose one expert" in rows[batch, "e0"]["error"]


def test_table_output_and_reduced_precision():
    result = runner.invoke(
        app,
        [
            "bench",
            "--variant",
            "moce_ir:tiny",
            "--sizes",
            "32",
            "--precision",
            "fp32,bf16",
            "--experts",
            "sparse",
            "--threads",
            "1",
            "--runs",
            "1",
            "--warmup",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    table = result.stdout
    assert "median ms" in table and "bf16" in table and " dB " in table  # bf16 row checked against fp32 in dB
    # random weights are said so, beside the table and under it
    assert "random weights (moce_ir:tiny)" in result.stderr and "not a trained model" in table
    report = _bench("--variant", "moce_ir:tiny", "--sizes", "32", "--precision", "bf16", "--experts", "sparse")
    assert report["rows"][0]["psnr_db"] > 40  # bf16 autocast against the fp32 output of the same input


def test_checkpoint_weights_and_per_row_errors(tmp_path):
    torch.save({"state_dict": random_moce(VARIANTS["tiny"]).state_dict()}, tmp_path / "tiny.pth")
    report = _bench("--weights", str(tmp_path / "tiny.pth"), "--sizes", "16", "--experts", "sparse,e7")
    assert report["model"]["source"] == str(tmp_path / "tiny.pth")
    ok, bad = report["rows"]
    assert ok["error"] is None and "expert 7" in bad["error"]  # one bad case does not stop the others


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--gpu", "0", "--device", "cpu"], 2, "not both"),
        (["--experts", "sparse,some"], 2, "--experts some"),
        (["--sizes", "12xq"], 2, "--sizes 12xq"),
        (["--precision", "fp8"], 2, "precision 'fp8'"),
        (["--variant", "NoSuchNet"], 1, "no such config"),
        (["--weights", "missing.pth"], 1, "missing.pth"),
    ],
)
def test_bad_options_are_one_line(args, code, message):
    result = runner.invoke(app, ["bench", "--sizes", "16", *args] if "--sizes" not in args else ["bench", *args])
    assert result.exit_code == code
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_gpu_on_a_machine_without_one():
    result = runner.invoke(app, ["bench", "--gpu", "0", "--sizes", "16"])
    assert result.exit_code == 1 and "CUDA is not available" in result.output


def test_random_model_names():
    assert bench.random_model("moce_ir:tiny").config == VARIANTS["tiny"]
    assert bench.random_model("MoCE_IR_S").config == VARIANTS["MoCE_IR_S"]
    with pytest.raises(IrtoolError, match="unknown architecture"):
        bench.random_model("nope:tiny")


def test_sizes_are_width_by_height():
    assert bench.parse_sizes("256, 3840x2160") == ((256, 256), (2160, 3840))


def test_cuda_graphs_refuse_what_cannot_be_captured():
    model = random_moce(VARIANTS["tiny"])
    with pytest.raises(IrtoolError, match="CUDA device"):
        speed.CudaGraphRun(model, torch.rand(1, 3, 16, 16), dense=True)


@pytest.mark.cuda
def test_cuda_graph_replay_equals_eager():
    device = torch.device("cuda")
    model = speed.prepare(random_moce(VARIANTS["tiny"]), device)
    x = torch.rand(2, 3, 64, 48, device=device)
    with torch.inference_mode():
        eager_dense = model.run(x, dense=True).output
        routing = model.uniform_routing(2, 3)
        eager_e3 = model.run(x, routing).output
    graph = speed.CudaGraphRun(model, x, dense=True)
    torch.testing.assert_close(graph(x).output, eager_dense, atol=1e-5, rtol=0)
    x2 = torch.rand_like(x)
    with torch.inference_mode():
        expected = model.run(x2, dense=True).output
    torch.testing.assert_close(graph(x2).output, expected, atol=1e-5, rtol=0)  # replays on new input
    graph_e3 = speed.CudaGraphRun(model, x, routing=routing)
    torch.testing.assert_close(graph_e3(x).output, eager_e3, atol=1e-5, rtol=0)


@pytest.mark.cuda
def test_cuda_bf16_is_within_45_db_of_fp32():
    device = torch.device("cuda")
    model = speed.prepare(random_moce(VARIANTS["MoCE_IR_S"]), device)
    x = torch.rand(1, 3, 512, 512, device=device)
    with torch.inference_mode():
        ref = model.run(x).output
        with speed.autocast(device, "bf16"):
            low = model.run(x).output
    assert bench._psnr(low, ref) >= 45


@pytest.mark.cuda
def test_cuda_bench_reports_allocator_memory():
    report = _bench(
        "--gpu",
        "0",
        "--variant",
        "moce_ir:tiny",
        "--sizes",
        "64",
        "--precision",
        "fp32,bf16",
        "--experts",
        "sparse,dense",
        "--cuda-graphs",
    )
    rows = report["rows"]
    assert all(r["error"] is None and r["memory_kind"] == "cuda-allocator" for r in rows)
    assert any(r["cuda_graph"] for r in rows if r["experts"] == "dense")


def test_case_count_follows_the_execution_modes():
    plan = bench.BenchPlan(
        sizes=((32, 32), (16, 16)),
        experts=("sparse", "dense"),
        paths=("fast", "reference"),
        compile=True,
        cuda_graphs=True,
    )
    moce = random_moce(VARIANTS["tiny"])
    # fast: 2 eager + 2 compiled; reference: 2 eager; CUDA adds a graph replay for dense (sparse needs the host)
    assert bench.count_cases(plan, torch.device("cpu"), moce) == 2 * 6
    assert bench.count_cases(plan, torch.device("cuda"), moce) == 2 * 7
    # a network without routing has one mode: fast eager + compiled, reference eager; CUDA adds its graph replay
    bioir = bench.random_model("bioir:tiny")
    assert bench.count_cases(plan, torch.device("cpu"), bioir) == 2 * 3
    assert bench.count_cases(plan, torch.device("cuda"), bioir) == 2 * 4


def test_a_network_without_routing_is_measured_in_one_mode_and_says_so():
    report = _bench("--variant", "bioir:tiny", "--sizes", "40x28", "--experts", "sparse,dense,e1", "--breakdown")
    assert report["model"]["arch"] == "bioir"
    (row,) = report["rows"]  # not three rows, and no "has no dense mode" errors
    assert row["experts"] == "none" and row["error"] is None and row["routing"] is None
    assert row["max_abs_diff"] == 0.0  # checked against its own fp32 output
    assert row["breakdown_ms"] == {"trunk": pytest.approx(row["breakdown_ms"]["trunk"])}
    assert any("does not route" in note and "one mode" in note for note in report["notes"])
    assert report["summary"]["dense_over_sparse"] == {}
    table = runner.invoke(app, ["bench", "--variant", "bioir:tiny", "--sizes", "32", "--runs", "1", "--warmup", "0"])
    assert table.exit_code == 0, table.output
    assert " none" in table.stdout and "BioIR does not route" in table.stdout


def test_compiled_run_equals_eager():
    # about a minute of CPU for inductor's first graphs: the one slow test, kept because --compile must not drift
    report = _bench("--variant", "moce_ir:tiny", "--sizes", "32", "--experts", "sparse,dense", "--compile")
    rows = {(r["experts"], r["compiled"]): r for r in report["rows"]}
    assert set(rows) == {("sparse", False), ("dense", False), ("sparse", True), ("dense", True)}
    for (_experts, compiled), r in rows.items():
        assert r["error"] is None and r["max_abs_diff"] < 1e-5
        assert (r["compile_s"] is not None) == compiled
    assert set(report["summary"]["eager_over_compiled"]) == {"32x32 b1 fp32 sparse", "32x32 b1 fp32 dense"}


def test_without_a_model_the_built_in_one_is_measured_and_the_table_fits_80_columns():
    result = runner.invoke(
        app,
        ["bench", "--sizes", "32", "--precision", "fp32,bf16", "--path", "fast,reference", "--breakdown"]
        + ["--threads", "1", "--runs", "1", "--warmup", "0"],
        env={"COLUMNS": "80"},
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "irtool.default" in lines[0] and "random" not in result.output
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    assert "…" not in result.stdout  # nothing cut to fit
    rows = [line for line in lines if line.startswith("32x32 b1")]
    assert len(rows) == 8 and all(len(row.split()) >= 9 for row in rows if "fast" in row)  # figures on one line
    assert "r/e/t %" in result.stdout and "shares of router, experts and trunk" in result.stdout
    assert "--variant" in runner.invoke(app, ["bench", "--weights", "x.pth", "--variant", "tiny"]).output
