"""CPU time per 256x256 image: irtool's BioIR, the official BioIR code, and irtool's MoCE-IR-S, in one run.

    pip install einops    # only for the official column (its model file's one extra import)
    python benchmarks/bioir_cpu_time.py [--mirror /work/.mirror/c-yn+BioIR/repo] [--runs 3] [--json FILE]

One torch thread, fp32, batch 1, random weights (time does not depend on the values; BioIR has no routing, and
MoCE-IR-S picks its experts as its random routers do). The official network is `All_in_One/net/model.py` of
github.com/c-yn/BioIR at the commit below, read from a git checkout or bare mirror into a temporary folder and
loaded with irtool's BioIR weights (so its output is checked against irtool's in the same run). After one warm-up
round, the models run interleaved (A, B, C, A, B, C, ...) so that load from other jobs falls on all of them alike;
the figure per model is the median of its `--runs` timings, both wall-clock and this process's CPU time (with one
thread, CPU time is what the model costs; on a busy machine wall time also counts waiting for a core). The 1-minute
load average before and after is printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

OFFICIAL_COMMIT = "ff61e477ecf64db2731ef080a1e586f3f9d4248d"


def _official_bioir(mirror: Path, folder: Path) -> torch.nn.Module | None:
    """The official network with default (released) arguments, or None when its source or einops is missing."""
    try:
        source = subprocess.run(
            ["git", "-C", str(mirror), "show", f"{OFFICIAL_COMMIT}:All_in_One/net/model.py"],
            check=True,
            capture_output=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        print(f"official column skipped: no BioIR git checkout at {mirror}", file=sys.stderr)
        return None
    if importlib.util.find_spec("einops") is None:
        print("official column skipped: einops is not installed", file=sys.stderr)
        return None
    path = folder / "bioir_official_model.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("bioir_official_model", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BioIR().eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", type=Path, default=Path("/work/.mirror/c-yn+BioIR/repo"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from irtool.archs import build

    torch.manual_seed(0)
    models: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    ours = build("bioir", "BioIR").eval()
    models["BioIR (irtool)"] = ours
    with tempfile.TemporaryDirectory() as tmp:
        official = _official_bioir(args.mirror, Path(tmp))
        if official is not None:
            official.load_state_dict(ours.state_dict(), strict=True)
            models["BioIR (official)"] = official
        models["MoCE-IR-S (irtool)"] = build("moce_ir", "MoCE_IR_S").eval()
        x = torch.rand(1, 3, args.size, args.size)
        times: dict[str, list[float]] = {name: [] for name in models}
        cpu: dict[str, list[float]] = {name: [] for name in models}
        load_before = os.getloadavg()[0]
        with torch.inference_mode():
            outputs = {name: model(x) for name, model in models.items()}  # warm-up round
            for _ in range(args.runs):
                for name, model in models.items():
                    started, started_cpu = time.perf_counter(), time.process_time()
                    model(x)
                    times[name].append(time.perf_counter() - started)
                    cpu[name].append(time.process_time() - started_cpu)
        load_after = os.getloadavg()[0]
    result = {
        "size": f"{args.size}x{args.size}",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "runs": args.runs,
        "load1": [round(load_before, 2), round(load_after, 2)],
        "median_wall_s": {name: round(statistics.median(t), 3) for name, t in times.items()},
        "median_cpu_s": {name: round(statistics.median(t), 3) for name, t in cpu.items()},
        "all_wall_s": {name: [round(v, 3) for v in t] for name, t in times.items()},
        "all_cpu_s": {name: [round(v, 3) for v in t] for name, t in cpu.items()},
        "parameters": {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()},  # type: ignore[attr-defined]
    }
    if "BioIR (official)" in outputs:
        diff = (outputs["BioIR (official)"] - outputs["BioIR (irtool)"]).abs().max()
        result["bioir_max_abs_diff_vs_official"] = float(diff)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
