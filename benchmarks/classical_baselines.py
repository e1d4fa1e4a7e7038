"""irtool's model beside the classical tool for each degradation, on photos the model never saw.

    pip install -e ".[bench]"
    python benchmarks/classical_baselines.py                      # the built-in default model
    python benchmarks/classical_baselines.py --weights FILE       # any checkpoint (its calibration beside it)
    python benchmarks/classical_baselines.py --model moce_ir.aio5 --json results.json

Photos: the issue's held-out set, found in the installed wheels: scikit-image's chelsea, coffee, ihc and
motorcycle_left, and matplotlib's grace_hopper (`--photos DIR` for others). Each photo is centre-cropped to
256x256 (`--crop 0`: whole photos), then degraded twice: by `irtool.degrade` (seeded) and by this script's own,
independent code (other noise generator, rain drawn as lines and added, haze from another depth model, a motion
kernel without anti-aliasing, an aliased disk, low light as exposure in linear light with read noise, Pillow's JPEG
encoder), so that a model is not judged only on the degradations it was trained with.

Per kind the classical tool: BM3D with the noise sigma estimated from the image (`bm3d`, sigma by skimage's
wavelet estimator), morphological top-hat + inpainting and a median filter for rain, the dark channel prior with a
guided filter (He et al.) for haze, Richardson-Lucy with the known kernel for motion and defocus blur, a gain to mean
0.5 and a gamma to mean 0.5 for low light, and the input itself for JPEG and for a clean photo. Parameters are fixed
in this file (the papers' values where they give them), never tuned on these photos. "best classical" is the best of
a kind's classical tools on these very photos, which favours the classical side.

Scores: skimage's PSNR (uint8, data range 255, all three channels) and SSIM (channel_axis=2, data range 255); the
name the model's router gives each degraded image (its routing calibration) is checked against the kind. Prints
markdown tables: all photos and both degraders together, then each degrader alone.

Imports numpy, OpenCV, scikit-image, bm3d (the `bench` extra), torch and irtool.
"""

from __future__ import annotations

import argparse
import importlib.util
import io as pyio
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

#: (row name, irtool.degrade kind, level, the name the router should give)
KINDS = (
    ("noise 15", "noise", 15, "noise"),
    ("noise 25", "noise", 25, "noise"),
    ("noise 50", "noise", 50, "noise"),
    ("rain", "rain", 5, "rain"),
    ("haze", "haze", 1.5, "haze"),
    ("blur (motion 15 px)", "blur", 15, "blur"),
    ("defocus (radius 4 px)", "defocus", 4, "defocus"),
    ("low light", "lowlight", 0.3, "lowlight"),
    ("JPEG q30", "jpeg", 30, "jpeg"),
    ("clean photo", "clean", None, "clean"),
)
HELD_OUT = (
    ("skimage", "data/chelsea.png"),
    ("skimage", "data/coffee.png"),
    ("skimage", "data/ihc.png"),
    ("skimage", "data/motorcycle_left.png"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
)


# --------------------------------------------------------------------------------------------------------------------
# Photos


def package_file(package: str, relative: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.is_file() else None


def read_rgb8(path: Path) -> np.ndarray:
    from irtool.images import files as io

    return np.rint(io.read_image(path).rgb * 255.0).astype(np.uint8)


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    if not size:
        return image
    h, w = image.shape[:2]
    s = min(size, h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return np.ascontiguousarray(image[top : top + s, left : left + s])


def held_out_photos(folder: str | None) -> list[tuple[str, Path]]:
    if folder:
        from irtool.images.files import IMAGE_SUFFIXES

        paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            sys.exit(f"--photos {folder}: no images")
        return [(p.stem, p) for p in paths]
    found = []
    for package, relative in HELD_OUT:
        path = package_file(package, relative)
        if path is None:
            print(f"note: {package} is not installed, {relative} left out (pip install -e '.[bench]')", file=sys.stderr)
            continue
        found.append((Path(relative).stem, path))
    if not found:
        sys.exit("no held-out photos: install scikit-image and matplotlib, or pass --photos DIR")
    return found


# --------------------------------------------------------------------------------------------------------------------
# Degradations: irtool's, and independent ones written here


@dataclass
class Degraded:
    image: np.ndarray  #: uint8 RGB
    kernel: np.ndarray | None = None  #: the blur kernel, for the non-blind deconvolution


def irtool_degrade(clean: np.ndarray, kind: str, level, seed: int) -> Degraded:
    from irtool.degrade import blur_kernel, degrade

    if kind == "clean":
        return Degraded(clean.copy())
    kernel = blur_kernel(kind, level, seed) if kind in ("blur", "defocus") else None
    return Degraded(degrade(clean, kind, level, seed=seed), kernel)


def _aliased_line(length: int, angle: float) -> np.ndarray:
    size = length + 1 - length % 2
    kernel = np.zeros((size, size), np.float32)
    c, half = size // 2, (length - 1) / 2
    dx, dy = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    cv2.line(
        kernel,
        (int(round(c - dx * half)), int(round(c - dy * half))),
        (int(round(c + dx * half)), int(round(c + dy * half))),
        1.0,
        thickness=1,
        lineType=cv2.LINE_8,
    )
    return kernel / kernel.sum()


def _aliased_disk(radius: float) -> np.ndarray:
    r = int(math.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    kernel = (xx**2 + yy**2 <= radius**2).astype(np.float32)
    return kernel / kernel.sum()


def independent_degrade(clean: np.ndarray, kind: str, level, seed: int) -> Degraded:
    """The same kinds at comparable strength, by other code and other models of the degradation."""
    rng = np.random.default_rng([seed, 0xB0B])
    x = clean.astype(np.float32) / 255.0
    h, w = x.shape[:2]
    kernel = None
    if kind == "clean":
        return Degraded(clean.copy())
    if kind == "noise":
        return Degraded(np.clip(np.rint(clean + rng.normal(0.0, level, clean.shape)), 0, 255).astype(np.uint8))
    if kind == "jpeg":
        from PIL import Image

        buffer = pyio.BytesIO()
        Image.fromarray(clean).save(buffer, format="JPEG", quality=int(level))
        return Degraded(np.asarray(Image.open(buffer).convert("RGB")))
    if kind == "rain":
        streaks = np.zeros((h, w), np.float32)
        angle = math.radians(90 + rng.uniform(-15, 15))
        for _ in range(int(h * w * level / 1000 / 2)):
            x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
            length = rng.uniform(10, 30)
            x1, y1 = x0 + math.cos(angle) * length, y0 + math.sin(angle) * length
            cv2.line(streaks, (int(x0), int(y0)), (int(x1), int(y1)), float(rng.uniform(0.5, 0.9)), 1, cv2.LINE_AA)
        streaks = cv2.GaussianBlur(streaks, (3, 3), 0)
        out = np.clip(x + streaks[..., None] * 0.8, 0.0, 1.0)  # additive, not irtool's screen blend
    elif kind == "haze":
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        cx = rng.uniform(0.3, 0.7) * w
        depth = 0.25 + 0.75 * (1 - yy / h) ** 0.7 * (1 - 0.3 * np.abs(xx - cx) / w)  # horizon high, a side darker
        t = np.exp(-float(level) * depth)[..., None]
        airlight = np.array([0.86, 0.88, 0.9], np.float32)  # a slightly blue sky
        out = x * t + airlight * (1 - t)
    elif kind in ("blur", "defocus"):
        kernel = (
            _aliased_line(int(level), float(rng.uniform(0, 180))) if kind == "blur" else _aliased_disk(float(level))
        )
        out = cv2.filter2D(x, -1, kernel, borderType=cv2.BORDER_REFLECT)
    elif kind == "lowlight":
        linear = np.power(x, 2.2) * (float(level) ** 2.2)  # exposure in linear light, then back to sRGB-ish gamma
        out = np.power(np.clip(linear, 0, 1), 1 / 2.2) + rng.normal(0.0, 0.01, x.shape)
    else:
        raise ValueError(kind)
    return Degraded(np.clip(np.rint(np.clip(out, 0, 1) * 255.0), 0, 255).astype(np.uint8), kernel)


DEGRADERS: dict[str, Callable[[np.ndarray, str, object, int], Degraded]] = {
    "irtool": irtool_degrade,
    "independent": independent_degrade,
}


# --------------------------------------------------------------------------------------------------------------------
# Classical tools (uint8 RGB in, uint8 RGB out)


def _to8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.clip(x, 0, 1) * 255.0), 0, 255).astype(np.uint8)


def bm3d_estimated(noisy: np.ndarray, _: Degraded) -> np.ndarray:
    import bm3d
    from skimage.restoration import estimate_sigma

    x = noisy.astype(np.float64) / 255.0
    sigma = float(estimate_sigma(x, channel_axis=-1, average_sigmas=True))
    return _to8(bm3d.bm3d_rgb(x, sigma_psd=max(sigma, 1e-3)))


def median_derain(rainy: np.ndarray, _: Degraded) -> np.ndarray:
    return cv2.medianBlur(rainy, 5)


def tophat_inpaint(rainy: np.ndarray, _: Degraded) -> np.ndarray:
    """Thin bright streaks = white top-hat of the luminance above a threshold; inpaint them (Telea)."""
    gray = cv2.cvtColor(rainy, cv2.COLOR_RGB2GRAY)
    tophat = cv2.morphologyEx(gray, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    mask = (tophat > 18).astype(np.uint8) * 255
    mask = cv2.dilate(mask, np.ones((3, 3), np.uint8))
    return cv2.inpaint(rainy, mask, 3, cv2.INPAINT_TELEA)


def _guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    box = lambda a: cv2.boxFilter(a, -1, (2 * radius + 1, 2 * radius + 1))  # noqa: E731
    mean_i, mean_p = box(guide), box(src)
    cov = box(guide * src) - mean_i * mean_p
    var = box(guide * guide) - mean_i * mean_i
    a = cov / (var + eps)
    b = mean_p - a * mean_i
    return box(a) * guide + box(b)


def dark_channel_prior(
    hazy: np.ndarray, _: Degraded, patch: int = 15, omega: float = 0.95, t0: float = 0.1
) -> np.ndarray:
    """He, Sun, Tang (CVPR 2009 / TPAMI 2011): dark channel, airlight from its brightest 0.1%, transmission refined
    by the guided filter (He et al. 2013; radius 60 px on 600-px images, here scaled to the image, eps 1e-3)."""
    x = hazy.astype(np.float32) / 255.0
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (patch, patch))
    dark = cv2.erode(x.min(axis=2), kernel)
    n = max(1, dark.size // 1000)
    idx = np.argsort(dark.ravel())[-n:]
    airlight = x.reshape(-1, 3)[idx].max(axis=0)
    norm = cv2.erode((x / np.maximum(airlight, 1e-3)).min(axis=2), kernel)
    t = 1.0 - omega * norm
    gray = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)
    radius = max(8, int(round(60 * min(x.shape[:2]) / 600)))
    t = np.clip(_guided_filter(gray, t.astype(np.float32), radius, 1e-3), t0, 1.0)
    return _to8((x - airlight) / t[..., None] + airlight)


def richardson_lucy_known(blurred: np.ndarray, degraded: Degraded, iterations: int = 30) -> np.ndarray:
    from skimage.restoration import richardson_lucy

    x = blurred.astype(np.float64) / 255.0
    psf = degraded.kernel.astype(np.float64)
    pad = psf.shape[0]  # reflect-pad so the FFT's wrap-around does not ring at the borders
    padded = np.pad(x, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    out = np.stack([richardson_lucy(padded[..., c], psf, num_iter=iterations, clip=True) for c in range(3)], axis=2)
    return _to8(out[pad:-pad, pad:-pad])


def gain_to_half(dark: np.ndarray, _: Degraded) -> np.ndarray:
    x = dark.astype(np.float32) / 255.0
    return _to8(x * (0.5 / max(float(x.mean()), 1e-3)))


def gamma_to_half(dark: np.ndarray, _: Degraded) -> np.ndarray:
    x = dark.astype(np.float32) / 255.0
    mean = min(max(float(x.mean()), 1e-3), 0.999)
    return _to8(np.power(x, math.log(0.5) / math.log(mean)))


def identity(image: np.ndarray, _: Degraded) -> np.ndarray:
    return image.copy()


CLASSICAL: dict[str, list[tuple[str, Callable[[np.ndarray, Degraded], np.ndarray]]]] = {
    "noise": [("BM3D, sigma estimated", bm3d_estimated)],
    "rain": [("top-hat + inpaint", tophat_inpaint), ("median 5x5", median_derain)],
    "haze": [("dark channel prior", dark_channel_prior)],
    "blur": [("Richardson-Lucy, known kernel", richardson_lucy_known)],
    "defocus": [("Richardson-Lucy, known kernel", richardson_lucy_known)],
    "lowlight": [("gain to mean 0.5", gain_to_half), ("gamma to mean 0.5", gamma_to_half)],
    "jpeg": [("the input itself", identity)],
    "clean": [("identity", identity)],
}


# --------------------------------------------------------------------------------------------------------------------
# Scoring


def scores(out: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if np.array_equal(out, clean):
        return math.inf, 1.0
    return (
        float(peak_signal_noise_ratio(clean, out, data_range=255)),
        float(structural_similarity(clean, out, channel_axis=2, data_range=255)),
    )


@dataclass
class Row:
    kind: str
    input: list[tuple[float, float]] = field(default_factory=list)
    model: list[tuple[float, float]] = field(default_factory=list)
    classical: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    named: list[bool] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def _mean(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    psnrs = [p for p, _ in pairs]
    return (
        math.inf if any(math.isinf(p) for p in psnrs) else float(np.mean(psnrs)),
        float(np.mean([s for _, s in pairs])),
    )


def _fmt(pair: tuple[float, float]) -> str:
    p, s = pair
    return f"{'inf' if math.isinf(p) else f'{p:.2f}'} / {s:.3f}"


def summarise(rows: dict[str, Row]) -> list[dict]:
    out = []
    for kind, row in rows.items():
        inp, mod = _mean(row.input), _mean(row.model)
        classical = {name: _mean(v) for name, v in row.classical.items()}
        best_name = max(classical, key=lambda n: (classical[n][0], classical[n][1]))
        best = classical[best_name]
        gap = None if math.isinf(best[0]) else mod[0] - best[0]
        out.append(
            {
                "kind": kind,
                "images": len(row.model),
                "input": inp,
                "model": mod,
                "classical": classical,
                "best_classical": best_name,
                "model_minus_classical_db": gap,
                "model_minus_input_db": None if math.isinf(inp[0]) else mod[0] - inp[0],
                "named_right": sum(row.named),
                "names": dict(zip(*np.unique(row.names, return_counts=True))) if row.names else {},
            }
        )
    return out


def markdown(summary: list[dict], title: str) -> str:
    lines = [
        f"**{title}** (PSNR dB / SSIM, mean over images)",
        "",
        "| kind | input | irtool model | best classical tool | classical | model - classical | model - input | named right |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in summary:
        gap = "" if r["model_minus_classical_db"] is None else f"{r['model_minus_classical_db']:+.2f} dB"
        gain = "" if r["model_minus_input_db"] is None else f"{r['model_minus_input_db']:+.2f} dB"
        lines.append(
            f"| {r['kind']} | {_fmt(r['input'])} | {_fmt(r['model'])} | {r['best_classical']} | "
            f"{_fmt(r['classical'][r['best_classical']])} | {gap} | {gain} | {r['named_right']}/{r['images']} |"
        )
    named = sum(r["named_right"] for r in summary)
    total = sum(r["images"] for r in summary)
    lines += ["", f"names right: {named}/{total} ({named / max(total, 1):.0%})"]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="manifest name of the model (default: the built-in default)")
    parser.add_argument("--weights", help="a checkpoint file (its calibration beside it names the degradations)")
    parser.add_argument("--photos", help="folder of clean photos instead of the held-out set from the wheels")
    parser.add_argument("--crop", type=int, default=256, help="centre crop side in px (0: whole photos); default 256")
    parser.add_argument("--degraders", default="irtool,independent", help="irtool, independent or both (default)")
    parser.add_argument("--kinds", help="comma-separated kinds to run (degrade names: noise,rain,...,clean)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--json", help="also write the results as JSON to this file")
    parser.add_argument(
        "--classical-cache",
        help="JSON file of the classical tools' scores: read when present, written "
        "after the run (they do not depend on the model, and BM3D takes minutes)",
    )
    args = parser.parse_args(argv)

    import torch

    import irtool
    from irtool.restoration import engine

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    photos = [(name, centre_crop(read_rgb8(path), args.crop)) for name, path in held_out_photos(args.photos)]
    kinds = [k for k in KINDS if not args.kinds or k[1] in args.kinds.split(",")]
    degraders = [d.strip() for d in args.degraders.split(",") if d.strip()]
    unknown = [d for d in degraders if d not in DEGRADERS]
    if unknown:
        parser.error(f"--degraders: unknown {', '.join(unknown)} (irtool, independent)")

    per_source: dict[str, dict[str, Row]] = {d: {k[0]: Row(k[0]) for k in kinds} for d in degraders}
    combined: dict[str, Row] = {k[0]: Row(k[0]) for k in kinds}
    jobs = []  # (source, row name, expected name, clean, degraded)
    for source in degraders:
        for p, (_, clean) in enumerate(photos):
            for k, (row_name, kind, level, expected) in enumerate(kinds):
                jobs.append(
                    (source, row_name, kind, expected, clean, DEGRADERS[source](clean, kind, level, 1000 * p + k))
                )

    cache_path = Path(args.classical_cache) if args.classical_cache else None
    cache: dict[str, list[float]] = json.loads(cache_path.read_text()) if cache_path and cache_path.is_file() else {}
    fresh = dict(crop=args.crop, photos=[n for n, _ in photos])
    if cache and cache.get("_setup") != fresh:
        cache = {}  # made for other photos or crops
    cache["_setup"] = fresh
    results = engine.restore([j[5].image for j in jobs], model=args.model, weights=args.weights, device="cpu")
    for n, ((source, row_name, kind, expected, clean, degraded), restored) in enumerate(zip(jobs, results)):
        if restored.image is None:
            sys.exit(f"the model failed on {row_name}: {restored.report.error}")
        named = restored.report.degradation or "unknown"
        for rows in (per_source[source], combined):
            row = rows[row_name]
            row.input.append(scores(degraded.image, clean))
            row.model.append(scores(restored.image, clean))
            row.named.append(named == expected)
            row.names.append(named)
            for name, tool in CLASSICAL[kind]:
                key = f"{source}|{row_name}|{n}|{name}"
                if key not in cache:
                    cache[key] = list(scores(tool(degraded.image, degraded), clean))
                row.classical.setdefault(name, []).append(tuple(cache[key]))

    what = args.weights or args.model or "the built-in default (irtool.default)"
    crop = f"{args.crop}x{args.crop} centre crops" if args.crop else "whole photos"
    header = (
        f"model: {what}; irtool {irtool.__version__}; photos: {', '.join(n for n, _ in photos)} ({crop}); "
        f"degraders: {', '.join(degraders)}; {time.perf_counter() - started:.0f} s"
    )
    report = {
        "command": " ".join(["python", "benchmarks/classical_baselines.py", *sys.argv[1:]]),
        "header": header,
        "all": summarise(combined),
        "by_degrader": {d: summarise(r) for d, r in per_source.items()},
    }
    print(header + "\n")
    print(markdown(report["all"], f"all photos, degraded by {' and '.join(degraders)}"))
    for d in degraders if len(degraders) > 1 else []:
        print()
        print(markdown(report["by_degrader"][d], f"degraded by {d}"))
    if cache_path:
        cache_path.write_text(json.dumps(cache))
    if args.json:
        Path(args.json).write_text(
            json.dumps(report, indent=1, default=lambda o: int(o) if isinstance(o, np.integer) else str(o)) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
