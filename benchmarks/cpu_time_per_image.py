"""CPU time per image of several architectures, measured in one run: `python benchmarks/cpu_time_per_image.py
[--size 256] [--runs 3] [--threads 1] [ARCH:VARIANT ...]` (default: adair:AdaIR moce_ir:MoCE_IR_S).

Each network is a released variant with random weights (the time does not depend on the values; AdaIR's Fourier
split only runs on feature maps of 256 px and more, i.e. not at 256x256, as with trained weights), in eval mode,
fp32, on one (B=1, 3, size, size) image, through `forward` (what `irtool restore` runs for a whole image). After one
warm-up pass per network, the networks take turns for `--runs` rounds, so that a busy machine slows all of them
alike; the median wall time and the median process CPU time per image are printed (JSON with --json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from irtool.archs import ARCHS, build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["adair:AdaIR", "moce_ir:MoCE_IR_S"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    nets = {}
    for name in args.models:
        arch, variant = name.split(":")
        torch.manual_seed(0)
        nets[name] = build(arch, variant).eval()
    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    wall: dict[str, list[float]] = {name: [] for name in nets}
    cpu: dict[str, list[float]] = {name: [] for name in nets}
    with torch.inference_mode():
        for net in nets.values():
            net(x)
        for _ in range(args.runs):
            for name, net in nets.items():
                t0, c0 = time.perf_counter(), time.process_time()
                net(x)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    result = {
        "size": args.size,
        "threads": args.threads,
        "runs": args.runs,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "models": {
            name: {
                "title": ARCHS[name.split(":")[0]].title,
                "parameters": sum(p.numel() for p in net.parameters()),
                "median_wall_s": round(statistics.median(wall[name]), 3),
                "median_cpu_s": round(statistics.median(cpu[name]), 3),
                "wall_s": [round(t, 3) for t in wall[name]],
            }
            for name, net in nets.items()
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.size}x{args.size}, {args.threads} thread(s), median of {args.runs}, torch {torch.__version__}")
    for name, r in result["models"].items():
        print(f"{name:22} {r['parameters'] / 1e6:6.2f}M params  wall {r['median_wall_s']:7.2f} s  "
              f"cpu {r['median_cpu_s']:7.2f} s  (runs {r['wall_s']})")  # fmt: skip


if __name__ == "__main__":
    main()
