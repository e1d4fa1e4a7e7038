"""Reproduce the performance tables of benchmarks/README.md with `irtool bench` (irtool only, random weights).

    python benchmarks/perf_table.py                    # CPU table (2 threads), about 20 minutes on 2 cores
    python benchmarks/perf_table.py --device cuda:0    # GPU tables, including the 3840x2160 memory check
    python benchmarks/perf_table.py --quick            # a one-minute smoke run of the same pipeline

Each model config runs in its own `python -m irtool bench --json` process; the raw reports are written next to the
markdown (--out) so every figure can be traced to a run. Timings are medians over the timed runs; ratios compare rows
of the same process (same machine state).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CPU_CASES = [
    # (config, extra bench arguments)
    ("MoCE_IR_S", ["--sizes", "256", "--experts", "sparse,dense,e0,e3", "--path", "fast,reference", "--runs", "7"]),
    ("MoCE_IR", ["--sizes", "256", "--experts", "sparse,dense,e0,e3", "--path", "fast,reference", "--runs", "7"]),
    ("MoCE_IR_S", ["--sizes", "512", "--experts", "sparse,dense", "--runs", "3", "--breakdown"]),
    ("MoCE_IR_S", ["--sizes", "256", "--precision", "fp32,bf16", "--experts", "sparse", "--runs", "5"]),
    ("MoCE_IR_S", ["--sizes", "256", "--experts", "sparse,dense", "--compile", "--runs", "7"]),
]
GPU_CASES = [
    (
        "MoCE_IR_S",
        [
            "--sizes",
            "256,512,1024",
            "--batch",
            "1,4",
            "--precision",
            "fp32,bf16,fp16",
            "--experts",
            "sparse,dense,e0,e3",
            "--path",
            "fast,reference",
            "--breakdown",
        ],
    ),
    (
        "MoCE_IR",
        [
            "--sizes",
            "256,512,1024",
            "--batch",
            "1,4",
            "--precision",
            "fp32,bf16,fp16",
            "--experts",
            "sparse,dense,e0,e3",
            "--path",
            "fast,reference",
        ],
    ),
    ("MoCE_IR_S", ["--sizes", "512", "--precision", "bf16", "--experts", "dense,e0,e3", "--cuda-graphs"]),
    ("MoCE_IR_S", ["--sizes", "512", "--precision", "bf16", "--experts", "sparse", "--compile"]),
    ("MoCE_IR_S", ["--sizes", "3840x2160", "--precision", "bf16", "--experts", "sparse", "--runs", "3"]),
    ("MoCE_IR", ["--sizes", "3840x2160", "--precision", "bf16", "--experts", "sparse", "--runs", "3"]),
]
QUICK_CASES = [
    ("moce_ir:tiny", ["--sizes", "64", "--experts", "sparse,dense,e3", "--path", "fast,reference", "--runs", "2"])
]


def run_bench(config: str, args: list[str], device: str, threads: int | None) -> dict:
    cmd = [sys.executable, "-m", "irtool", "bench", "--variant", config, "--device", device, "--json", *args]
    if threads:
        cmd += ["--threads", str(threads)]
    print("$ python", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"bench failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout)


def markdown(reports: list[dict]) -> str:
    lines = [
        "| model | case | median ms | p90 ms | MP/s | peak MB | vs fp32 | router / experts / trunk |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for rep in reports:
        name = rep["model"]["source"].removeprefix("random weights (").removesuffix(")")
        for r in rep["rows"]:
            case = f"{r['width']}x{r['height']} b{r['batch']} {r['path']} {r['precision']} {r['experts']}"
            case += " +compile" if r["compiled"] else " +graph" if r["cuda_graph"] else ""
            if r["error"]:
                lines.append(f"| {name} | {case} | {r['error']} | | | | | |")
                continue
            if r["psnr_db"] is None:
                check = ""
            elif r["max_abs_diff"] < 1e-4:
                check = f"max abs diff {r['max_abs_diff']:.0e}"
            else:
                check = f"{r['psnr_db']:.1f} dB"
            parts = ""
            if r["breakdown_ms"]:
                total = sum(r["breakdown_ms"].values()) or 1.0
                shares = {k: f"{100 * v / total:.0f}%" for k, v in r["breakdown_ms"].items()}
                if set(shares) == {"router", "experts", "trunk"}:
                    parts = " / ".join(shares[k] for k in ("router", "experts", "trunk"))
                else:  # a model without separate experts (LoRA-IR merges them into the convs): name the parts
                    parts = " / ".join(f"{k} {v}" for k, v in shares.items())
            lines.append(
                f"| {name} | {case} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['megapixels_per_s']:.3f} | "
                f"{r['peak_memory_mb']:.0f} ({r['memory_kind']}) | {check} | {parts} |"
            )
    lines.append("")
    for rep in reports:
        name = rep["model"]["source"]
        for kind, ratios in rep["summary"].items():
            for tag, ratio in ratios.items():
                lines.append(f"- {name}, {kind.replace('_', ' ')}, {tag}: {ratio:.2f}")
        load = rep.get("load_average")
        lines.append(
            f"- {name}: {rep['device']} ({rep['device_name']}), torch {rep['torch_version']}, {rep['threads']} threads, "
            f"allocator tuned: {rep['allocator_tuned']}"
            + (f", load average {load[0]:.2f} -> {load[1]:.2f}" if load else "")
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu (the CPU table) or cuda:N (the GPU tables)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default 2 on CPU, as in the README)")
    ap.add_argument("--quick", action="store_true", help="tiny model, one size: checks the pipeline in a minute")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown here and the raw JSON beside it")
    args = ap.parse_args()
    gpu = args.device.startswith("cuda")
    cases = QUICK_CASES if args.quick else GPU_CASES if gpu else CPU_CASES
    threads = args.threads or (None if gpu else 2)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    reports = [run_bench(config, extra, args.device, threads) for config, extra in cases]
    text = markdown(reports)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(reports, indent=1))


if __name__ == "__main__":
    main()
