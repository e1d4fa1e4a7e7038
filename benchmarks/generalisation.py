"""Does a model generalise beyond its own training degradations? Held-out photos, two independent generators.

    python benchmarks/generalisation.py                         # the built-in default model, full run
    python benchmarks/generalisation.py --weights FILE --check  # a checkpoint; exit 1 when a target is missed
    python benchmarks/generalisation.py --fast --weights FILE   # two photos, one seed, no BM3D: under a minute

Photos: the held-out set of benchmarks/classical_baselines.py (scikit-image's chelsea, coffee, ihc,
motorcycle_left and matplotlib's grace_hopper, from the installed wheels; none is in irtool.default's training
list), centre-cropped to `--crop` px (default 256). Each photo is degraded by two generators:

- "irtool": `irtool.degrade` at its medium levels (the model's own training family), seeds 100 * photo + 10 * kind
  + draw;
- "physical": benchmarks/physical_degradations.py at its standard settings (written independently from the
  physics: linear-light exposure with shot and read noise, Koschmieder haze over varied depth maps, anti-aliased
  PSFs, real JPEG and WebP encoders, streak rain, Gaussian and Poisson-Gaussian noise), seed seeds * photo + draw
  (consecutive, so the haze depth maps, JPEG subsamplings and noise models that cycle with the seed all occur);

`--seeds` draws per photo and kind (default 2). Beside the input and the model, the classical tools of
classical_baselines.py, by import: BM3D (sigma estimated), top-hat inpainting and a median 5x5 for rain, the dark
channel prior for haze, Richardson-Lucy with the true kernel for blur and defocus, gain and gamma to mean 0.5 for low
light, the input itself for JPEG, WebP and a clean photo. `--fast` and `--no-bm3d` leave BM3D out (minutes on one
core); `--classical-cache FILE` keeps the classical scores between runs (they do not depend on the model).

Scores: PSNR over all three channels of uint8 images (data range 255), averaged per kind over images (mean of
per-image PSNRs). The router's calibrated name (the report's `degradation`) is right when it is in NAMED_RIGHT for
the kind: "blur" or "defocus" for either blur (one family), "jpeg" for JPEG and WebP (compression artefacts), the
kind's own name otherwise. A clean photo is not counted among the degraded images.

The issue's targets ("Done when"), checked per generator with `--check` (exit status 1, each miss printed):
  1. the model's mean PSNR is not below the input's on any degraded kind;
  2. low light: the model is ahead of "gain to mean 0.5";
  3. rain: the model is ahead of the median 5x5;
  4. a clean photo comes back at >= 40 dB (mean PSNR);
  5. >= 70% of the degraded images are named right.

Imports numpy, OpenCV, Pillow, scikit-image (metrics, and the classical tools), bm3d (unless left out), torch, irtool.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import classical_baselines as cb  # noqa: E402
import physical_degradations as phys  # noqa: E402

#: irtool.degrade's rows: (row, kind, medium level)
IRTOOL_KINDS = (
    ("noise", "noise", 25),
    ("rain", "rain", 5),
    ("haze", "haze", 1.5),
    ("blur", "blur", 15),
    ("defocus", "defocus", 4),
    ("lowlight", "lowlight", 0.3),
    ("jpeg", "jpeg", 30),
    ("clean", "clean", None),
)
#: the physical generator's rows: the kinds of physical_degradations, and a clean photo
PHYSICAL_KINDS = (*phys.KINDS, "clean")

#: router names that count as right per kind
NAMED_RIGHT: dict[str, set[str]] = {
    "noise": {"noise"},
    "rain": {"rain"},
    "haze": {"haze"},
    "blur": {"blur", "defocus"},
    "defocus": {"blur", "defocus"},
    "lowlight": {"lowlight"},
    "jpeg": {"jpeg"},
    "webp": {"jpeg"},
    "clean": {"clean"},
}
#: the classical tools per kind (classical_baselines' tools; WebP is judged like JPEG: the input is the baseline)
CLASSICAL = {**cb.CLASSICAL, "webp": cb.CLASSICAL["jpeg"]}
CLEAN_TARGET_DB = 40.0
NAMED_TARGET = 0.70
#: (kind, classical tool the model must beat)
MUST_BEAT = (("lowlight", "gain to mean 0.5"), ("rain", "median 5x5"))


def psnr(out: np.ndarray, clean: np.ndarray) -> float:
    """PSNR in dB of uint8 images, data range 255, all channels; inf when identical."""
    mse = float(np.mean((out.astype(np.float64) - clean.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


@dataclass
class Case:
    generator: str
    kind: str
    photo: str
    seed: int
    clean: np.ndarray
    degraded: cb.Degraded
    params: dict[str, Any] = field(default_factory=dict)


def make_cases(photos: list[tuple[str, np.ndarray]], generators: list[str], seeds: int) -> list[Case]:
    from irtool.degrade import blur_kernel, degrade

    cases = []
    for p, (name, clean) in enumerate(photos):
        for draw in range(seeds):
            if "irtool" in generators:
                for k, (row, kind, level) in enumerate(IRTOOL_KINDS):
                    seed = 100 * p + 10 * k + draw
                    if kind == "clean":
                        out = cb.Degraded(clean.copy())
                    else:
                        kernel = blur_kernel(kind, level, seed) if kind in ("blur", "defocus") else None
                        out = cb.Degraded(degrade(clean, kind, level, seed=seed), kernel)
                    cases.append(Case("irtool", row, name, seed, clean, out, {"level": level}))
            if "physical" in generators:
                for kind in PHYSICAL_KINDS:
                    seed = seeds * p + draw  # consecutive over photos: the settings that cycle by seed all occur
                    if kind == "clean":
                        cases.append(Case("physical", kind, name, seed, clean, cb.Degraded(clean.copy())))
                        continue
                    made = phys.degrade(clean, kind, seed)
                    cases.append(
                        Case("physical", kind, name, seed, clean, cb.Degraded(made.image, made.kernel), made.params)
                    )
    return cases


def _mean(values: list[float]) -> float:
    return math.inf if any(math.isinf(v) for v in values) else float(np.mean(values))


def summarise(cases: list[Case], model_psnr: list[float], names: list[str], classical: list[dict[str, float]]):
    """Per generator: per kind means, the best classical tool, named-right counts and the targets."""
    report: dict[str, Any] = {}
    for generator in dict.fromkeys(c.generator for c in cases):
        idx = [i for i, c in enumerate(cases) if c.generator == generator]
        rows = []
        misses = []
        for kind in dict.fromkeys(cases[i].kind for i in idx):
            mine = [i for i in idx if cases[i].kind == kind]
            inp = _mean([psnr(cases[i].degraded.image, cases[i].clean) for i in mine])
            mod = _mean([model_psnr[i] for i in mine])
            tools: dict[str, float] = {}
            for tool in classical[mine[0]]:
                scored = [classical[i].get(tool) for i in mine]
                if all(s is not None for s in scored):
                    tools[tool] = _mean([float(s) for s in scored if s is not None])
            best = max(tools, key=lambda t: tools[t]) if tools else None
            right = sum(names[i] in NAMED_RIGHT[kind] for i in mine)
            checks = []
            if kind == "clean":
                checks.append((mod >= CLEAN_TARGET_DB, f"clean photo {mod:.2f} dB < {CLEAN_TARGET_DB:.0f} dB"))
            else:
                checks.append((mod >= inp, f"{kind}: model {mod:.2f} dB below its input {inp:.2f} dB"))
            for must_kind, tool in MUST_BEAT:
                if kind == must_kind and tool in tools:
                    checks.append((mod > tools[tool], f"{kind}: model {mod:.2f} dB not ahead of {tool} {tools[tool]:.2f} dB"))  # fmt: skip
            failed = [why for ok, why in checks if not ok]
            misses += [f"{generator}: {why}" for why in failed]
            rows.append(
                {
                    "kind": kind,
                    "images": len(mine),
                    "input_db": inp,
                    "model_db": mod,
                    "model_minus_input_db": None if math.isinf(inp) else mod - inp,
                    "classical_db": tools,
                    "best_classical": best,
                    "named_right": right,
                    "names": {n: sum(names[i] == n for i in mine) for n in sorted({names[i] for i in mine})},
                    "target_met": not failed,
                    "missed": failed,
                }
            )
        degraded = [r for r in rows if r["kind"] != "clean"]
        named = sum(r["named_right"] for r in degraded)
        total = sum(r["images"] for r in degraded)
        share = named / total if total else 0.0
        if share < NAMED_TARGET:
            misses.append(
                f"{generator}: {named}/{total} degraded images named right ({share:.0%} < {NAMED_TARGET:.0%})"
            )
        clean = next((r for r in rows if r["kind"] == "clean"), None)
        report[generator] = {
            "rows": rows,
            "named_right": named,
            "degraded_images": total,
            "named_share": share,
            "clean_db": None if clean is None else clean["model_db"],
            "misses": misses,
        }
    return report


def _db(v: float | None) -> str:
    return "" if v is None else ("inf" if math.isinf(v) else f"{v:.2f}")


def markdown(generator: str, part: dict[str, Any]) -> str:
    lines = [
        f"**{generator}** (PSNR dB, mean over images)",
        "",
        "| kind | images | input | model | best classical tool | classical | model - input | named right | target met? |",
        "|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in part["rows"]:
        best = r["best_classical"]
        gain = "" if r["model_minus_input_db"] is None else f"{r['model_minus_input_db']:+.2f}"
        met = "yes" if r["target_met"] else "**no**: " + "; ".join(r["missed"])
        lines.append(
            f"| {r['kind']} | {r['images']} | {_db(r['input_db'])} | {_db(r['model_db'])} | {best or '-'} | "
            f"{_db(r['classical_db'].get(best)) if best else '-'} | {gain} | {r['named_right']}/{r['images']} | {met} |"
        )
    lines += [
        "",
        f"clean photo: {_db(part['clean_db'])} dB; degraded images named right: {part['named_right']}/"
        f"{part['degraded_images']} ({part['named_share']:.0%})",
    ]
    return "\n".join(lines)


def classical_scores(cases: list[Case], with_bm3d: bool, cache: dict[str, float], setup: str) -> list[dict[str, float]]:
    out = []
    for c in cases:
        scored: dict[str, float] = {}
        for name, tool in CLASSICAL[c.kind]:
            if tool is cb.bm3d_estimated and not with_bm3d:
                continue
            key = f"{setup}|{c.generator}|{c.kind}|{c.photo}|{c.seed}|{name}"
            if key not in cache:
                cache[key] = psnr(tool(c.degraded.image, c.degraded), c.clean)
            scored[name] = cache[key]
        out.append(scored)
    return out


def run_model(
    cases: list[Case], model: str | None, weights: str | None, precision: str = "fp32"
) -> tuple[list[np.ndarray], list[str]]:
    from irtool.restoration import engine

    images, names = [], []
    batch = 8  # same-size crops, a few at a time: a batch's peak memory stays small
    for start in range(0, len(cases), batch):
        chunk = cases[start : start + batch]
        results = engine.restore(
            [c.degraded.image for c in chunk], model=model, weights=weights, device="cpu", precision=precision
        )
        for c, restored in zip(chunk, results):
            if restored.image is None:
                sys.exit(f"the model failed on {c.generator} {c.kind} ({c.photo}): {restored.report.error}")
            images.append(restored.image)
            names.append(restored.report.degradation or "unknown")
    return images, names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="manifest name of the model (default: the built-in irtool.default)")
    parser.add_argument("--weights", help="a checkpoint file (its calibration beside it names the degradations)")
    parser.add_argument("--photos", help="folder of clean photos instead of the held-out set from the wheels")
    parser.add_argument("--crop", type=int, default=256, help="centre crop side in px (0: whole photos); default 256")
    parser.add_argument("--seeds", type=int, default=2, help="draws per photo and kind (default 2)")
    parser.add_argument("--generators", default="irtool,physical", help="irtool, physical or both (default)")
    parser.add_argument("--fast", action="store_true", help="two photos, one seed, no BM3D (< 1 minute)")
    parser.add_argument("--no-bm3d", action="store_true", help="leave BM3D out (the noise rows' classical column)")
    parser.add_argument("--classical-cache", help="JSON file of classical scores: read when present, written after")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="the model's (default fp32)")
    parser.add_argument("--json", help="also write the results as JSON to this file")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed (each miss printed)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    generators = [g.strip() for g in args.generators.split(",") if g.strip()]
    unknown = [g for g in generators if g not in ("irtool", "physical")]
    if unknown or not generators:
        parser.error(f"--generators: unknown {', '.join(unknown) or '(none given)'} (irtool, physical)")
    if args.weights and not Path(args.weights).is_file():
        sys.exit(f"--weights {args.weights}: no such file")

    import torch

    import irtool

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.photos and not Path(args.photos).is_dir():
        sys.exit(f"--photos {args.photos}: not a folder")
    if args.crop < 0:
        parser.error("--crop must be 0 (whole photos) or a side in px")
    listed = cb.held_out_photos(args.photos)
    seeds = args.seeds
    if args.fast:
        listed, seeds = listed[:2], 1
    from irtool.errors import IrtoolError

    photos = []
    for name, path in listed:
        try:
            photos.append((name, cb.centre_crop(cb.read_rgb8(path), args.crop)))
        except (IrtoolError, OSError, ValueError) as e:
            sys.exit(f"{path}: cannot read this photo ({e})")
    cases = make_cases(photos, generators, seeds)

    cache_path = Path(args.classical_cache) if args.classical_cache else None
    cache: dict[str, float] = {}
    if cache_path and cache_path.is_file():
        try:
            cache = json.loads(cache_path.read_text())
        except (OSError, ValueError) as e:
            sys.exit(f"--classical-cache {cache_path}: unreadable ({e})")
    setup = f"crop{args.crop}"
    classical_started = time.process_time()
    classical = classical_scores(cases, not (args.fast or args.no_bm3d), cache, setup)
    classical_cpu = time.process_time() - classical_started
    if cache_path:
        cache_path.write_text(json.dumps(cache))

    model_started = time.process_time()
    restored, names = run_model(cases, args.model, args.weights, args.precision)
    model_cpu = time.process_time() - model_started
    model_psnr = [psnr(out, c.clean) for out, c in zip(restored, cases)]
    report = summarise(cases, model_psnr, names, classical)

    what = args.weights or args.model or "irtool.default (built in)"
    crop = f"{args.crop}x{args.crop} centre crops" if args.crop else "whole photos"
    header = (
        f"model: {what}; irtool {irtool.__version__}; photos: {', '.join(n for n, _ in photos)} ({crop}); "
        f"{seeds} draw(s) per photo and kind; {time.perf_counter() - started:.0f} s wall, CPU time: classical tools "
        f"{classical_cpu:.0f} s, model {model_cpu:.0f} s, all {time.process_time():.0f} s"
    )
    print(header)
    for generator, part in report.items():
        print()
        print(markdown(generator, part))
    misses = [m for part in report.values() for m in part["misses"]]
    if args.json:
        record = {
            "command": " ".join(["python", "benchmarks/generalisation.py", *(sys.argv[1:] if argv is None else argv)]),
            "header": header,
            "generators": report,
            "misses": misses,
            "cases": [
                {
                    "generator": c.generator,
                    "kind": c.kind,
                    "photo": c.photo,
                    "seed": c.seed,
                    "params": c.params,
                    "input_db": psnr(c.degraded.image, c.clean),
                    "model_db": m,
                    "name": n,
                    "classical_db": s,
                }
                for c, m, n, s in zip(cases, model_psnr, names, classical)
            ],  # fmt: skip
        }
        from irtool.finite_json import finite

        text = json.dumps(finite(record, infinity="inf"), indent=1, allow_nan=False, default=_jsonable)
        Path(args.json).write_text(text + "\n")
    if args.check:
        print()
        if misses:
            print("targets missed:\n" + "\n".join(f"  {m}" for m in misses))
            return 1
        print("all targets met")
    return 0


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


if __name__ == "__main__":
    raise SystemExit(main())
