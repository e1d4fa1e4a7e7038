"""benchmarks/gpu_suite.py's CPU dry run: every part runs at toy sizes in its own time-boxed process and the record
and the markdown table hold every part with a status and every target row, so the GPU suite cannot rot unseen.
(The official MoCE-IR source is not needed: that part must then be skipped with its reason.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ["cuda_tests", "bench", "bench_compile", "lora_ir", "official", "memory_4k", "agreement"]


def test_dry_run_records_every_part_and_target(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--dry-run", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((out / "gpu_suite.json").read_text())
    table = (out / "gpu_suite.md").read_text()
    assert record["dry_run"] is True and list(record["parts"]) == PARTS
    for name, part in record["parts"].items():
        assert part["status"] in ("ok", "skipped"), (name, part.get("error"), part.get("traceback"))
        if part["status"] == "skipped":
            assert part["reason"]
        assert f"| {name} | {part['status']}" in table
    parts = record["parts"]
    # without a GPU the CUDA tests are selected by the marker and skip; without --official-src that part says why
    assert (
        parts["cuda_tests"]["data"]["counts"]["skipped"] >= 4 and parts["cuda_tests"]["data"]["counts"]["failed"] == 0
    )
    assert "--official-src" in parts["official"]["reason"]
    rows = [r for rep in parts["bench"]["data"]["reports"] for r in rep["rows"]]
    assert rows and all(r["error"] is None and r["flops"] > 0 for r in rows)
    assert {(r["precision"], r["experts"]) for r in rows} == {
        (p, e) for p in ("fp32", "bf16") for e in ("sparse", "dense")
    }
    folder = parts["lora_ir"]["data"]["folder_of_8"]
    assert folder["max_abs_diff"] < 1e-4 and folder["ratio"] > 0
    memory = parts["memory_4k"]["data"]["rows"]
    assert {(r["precision"], r["mode"]) for r in memory if r["model"] == "MoCE-IR"} >= {
        ("bf16", "whole"),
        ("fp32", "whole"),
    }
    assert all(r.get("error") is None and r["peak_mb"] > 0 for r in memory)
    agreement = parts["agreement"]["data"]["rows"]
    assert agreement and all(r.get("error") is None and r["bf16_psnr_db"] > 30 for r in agreement)
    targets = record["targets"]
    assert len(targets) == 4 and all(t["status"] for t in targets)
    assert targets[0]["status"].startswith("not measured") and "official" in targets[0]["status"]
    for t in targets:
        assert f"| {t['target']} |" in table
