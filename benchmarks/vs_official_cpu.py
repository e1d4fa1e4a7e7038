"""irtool's MoCE-IR against the official code on the CPU, same weights, one process, interleaved:
`python benchmarks/vs_official_cpu.py --variant MoCE_IR_S --size 256 [--pairs 7] [--threads 2] [--precision bf16]
[--json]`.

The official source is not part of the repository. Bring it into the ignored folder benchmarks/_official first:

    mkdir -p benchmarks/_official/src/net
    git -C <eduardzamfir/MoCE-IR clone> show a1a6e74:src/net/moce_ir.py > benchmarks/_official/src/net/moce_ir.py
    pip install einops                       # the official file imports it; fvcore (FLOP tables only) is stubbed

Both networks get one state dict: irtool's MoCEIR built after `torch.manual_seed(seed)`, then moved off its
initialisation so that routing and experts matter (router weights x10, the experts' output projections x200,
attention temperatures uniform in [2, 6], as the golden data does), loaded strictly into the official `MoCEIR`.
The official router adds noise at eval time; its `noise_std` is set to 0 so both pick the same experts. The script
checks that both outputs agree within --atol (1e-5) before timing anything, and refuses to time when they do not.

--precision bf16 times both under CPU bf16 autocast instead (the official code as torch runs it in bf16; irtool's
network then runs its bf16 copy on its prepacked convs). Outputs cannot agree within 1e-5 there: each side's PSNR
against the official fp32 output is printed instead, and timing is refused below --min-psnr (40 dB).

Timing: both forwards in this process, under `torch.inference_mode()`, fp32, batch 1, whole image (irtool's `run`,
the aligned path; the size must be a multiple of 8). One process rather than alternating subprocesses: both sides
then share the same thread pool, allocator setting and page cache state, and a load spike on the shared machine hits
the two calls of a pair alike; the order inside a pair alternates (official first on even pairs) so that neither side
always runs on the other's freed memory. The per-pair ratio irtool/official is the figure: its median and range are
printed (of wall time, and of the process CPU time, which other jobs on a shared machine disturb less), with the load
average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gpu_suite import _official_kwargs, _official_module  # noqa: E402  (the loader the GPU suite uses)

from irtool.archs.moce_ir import VARIANTS, MoCEIR  # noqa: E402
from irtool.devices import speed  # noqa: E402

DEFAULT_SOURCE = HERE / "_official"


def _loadavg() -> list[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def build_pair(variant: str, seed: int, official_src: Path) -> tuple[MoCEIR, torch.nn.Module]:
    """irtool's network and the official one, holding the same (seeded, off-initialisation) weights, eval mode."""
    module = _official_module(official_src)
    torch.manual_seed(seed)
    ours = MoCEIR(VARIANTS[variant]).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.endswith("temperature"):
                p.copy_(torch.rand(p.shape, generator=gen) * 4 + 2)
            elif ".routing." in name:
                p.mul_(10.0)
            elif ".experts." in name and name.endswith("proj.2.weight"):
                p.mul_(200.0)
    official = module.MoCEIR(**_official_kwargs(ours.config))
    official.load_state_dict(ours.state_dict(), strict=True)
    for m in official.modules():
        if hasattr(m, "noise_std"):
            m.noise_std = 0.0  # its eval routing adds N(0, 1/E) noise; off, so both take the same experts
    return ours.requires_grad_(False), official.eval().requires_grad_(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="MoCE_IR_S", choices=["MoCE_IR_S", "MoCE_IR"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--pairs", type=int, default=7, help="timed pairs after the warm-up (at least 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed pairs first")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads, the same for both")
    parser.add_argument(
        "--allocator",
        choices=["tuned", "default"],
        default="tuned",
        help="glibc allocator: irtool.devices.speed.tune_cpu_allocator() (what `irtool restore` applies) or as "
        "Python leaves it; either way both sides share it",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: both under CPU autocast")
    parser.add_argument("--min-psnr", type=float, default=40.0, help="bf16: least PSNR against fp32 to time at all")
    parser.add_argument("--official-src", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of text")
    args = parser.parse_args()

    if (
        not (args.official_src / "src" / "net" / "moce_ir.py").is_file()
        and not (args.official_src / "moce_ir.py").is_file()
    ):
        sys.exit(
            f"{args.official_src}: no official MoCE-IR source; bring it in with `git -C <MoCE-IR clone> show "
            f"a1a6e74:src/net/moce_ir.py > {DEFAULT_SOURCE}/src/net/moce_ir.py` (see this script's docstring)"
        )
    if args.pairs < 5:
        sys.exit("--pairs: at least 5 timed pairs")
    if args.size % 8:
        sys.exit(f"--size {args.size}: must be a multiple of 8 (the official network has no padding rule)")
    torch.set_num_threads(args.threads)
    tuned = speed.tune_cpu_allocator() if args.allocator == "tuned" else False
    try:
        ours, official = build_pair(args.variant, args.seed, args.official_src)
    except ImportError as exc:
        sys.exit(f"the official MoCE-IR code does not import ({exc}); `pip install einops` into this environment")

    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(args.seed + 1))
    bf16 = args.precision == "bf16"

    def precision() -> Any:
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    with torch.inference_mode():
        exact = official(x)
        with precision():
            theirs_out = official(x) if bf16 else exact
            result = ours.run(x)
    diff = float((result.output.float() - theirs_out.float()).abs().max())
    experts = result.routing.experts[0, :, 0].tolist()
    psnr = {
        name: round(float(10 * torch.log10(1 / (out.float() - exact).square().mean().clamp_min(1e-20))), 2)
        for name, out in (("official", theirs_out), ("irtool", result.output))
    }
    if not bf16 and not diff <= args.atol:
        sys.exit(f"outputs differ by {diff:.3g} (> --atol {args.atol}): not timing different computations")
    if bf16 and min(psnr.values()) < args.min_psnr:
        sys.exit(f"bf16 outputs {psnr} dB from the official fp32 output (< --min-psnr {args.min_psnr}): not timing")

    def timed(fn: Any) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.inference_mode(), precision():
            fn(x)
        return time.perf_counter() - t0, time.process_time() - c0

    sides = {"official": official, "irtool": lambda t: ours.run(t)}
    times: dict[str, list[float]] = {"official": [], "irtool": []}
    cpu: dict[str, list[float]] = {"official": [], "irtool": []}
    load_before = _loadavg()
    for i in range(args.warmup + args.pairs):
        order = ["official", "irtool"] if i % 2 == 0 else ["irtool", "official"]
        pair = {name: timed(sides[name]) for name in order}
        if i >= args.warmup:
            for name in order:
                times[name].append(pair[name][0])
                cpu[name].append(pair[name][1])
    load_after = _loadavg()
    ratios = [a / b for a, b in zip(times["irtool"], times["official"])]
    # process CPU time (all threads): less sensitive than wall time to other jobs on a shared machine
    cpu_ratios = [a / b for a, b in zip(cpu["irtool"], cpu["official"])]
    report = {
        "variant": args.variant,
        "size": [args.size, args.size],
        "batch": 1,
        "precision": args.precision,
        "psnr_vs_official_fp32_db": psnr,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "allocator_tuned": tuned,
        "max_abs_diff": diff,
        "experts_layer_by_layer": experts,
        "pairs": args.pairs,
        "official_s": [round(t, 4) for t in times["official"]],
        "irtool_s": [round(t, 4) for t in times["irtool"]],
        "official_median_s": round(statistics.median(times["official"]), 4),
        "irtool_median_s": round(statistics.median(times["irtool"]), 4),
        "ratio_median": round(statistics.median(ratios), 4),
        "ratio_range": [round(min(ratios), 4), round(max(ratios), 4)],
        "ratios": [round(r, 4) for r in ratios],
        "official_cpu_s": [round(t, 4) for t in cpu["official"]],
        "irtool_cpu_s": [round(t, 4) for t in cpu["irtool"]],
        "cpu_ratio_median": round(statistics.median(cpu_ratios), 4),
        "cpu_ratio_range": [round(min(cpu_ratios), 4), round(max(cpu_ratios), 4)],
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"{args.variant} {args.size}x{args.size} {args.precision} b1, torch {torch.__version__}, {report['torch_threads']} "
        f"threads, allocator {'tuned' if tuned else 'as Python leaves it'} (both sides)"
    )
    if bf16:
        print(f"PSNR against the official fp32 output: {psnr} dB; max abs diff between the two {diff:.2e}")
    else:
        print(f"outputs agree: max abs diff {diff:.2e} (atol {args.atol}); experts {experts}")
    print(
        f"official {report['official_median_s']:.3f} s  irtool {report['irtool_median_s']:.3f} s  "
        f"irtool/official per-pair median {report['ratio_median']:.3f} "
        f"(range {report['ratio_range'][0]:.3f}-{report['ratio_range'][1]:.3f}, {args.pairs} pairs)"
    )
    print(
        f"process CPU time: irtool/official per-pair median {report['cpu_ratio_median']:.3f} "
        f"(range {report['cpu_ratio_range'][0]:.3f}-{report['cpu_ratio_range'][1]:.3f})"
    )
    print(f"load average {load_before} -> {load_after}")


if __name__ == "__main__":
    main()
