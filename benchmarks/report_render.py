"""How long a large eval report takes to render in headless Chromium.

    python benchmarks/report_render.py --images 500 --repeats 5

Builds a synthetic eval report (one model, one dataset of N images with scores and routing, plus a gallery of the
worst/best images and their crops as a real run keeps them), writes it with irtool.report, opens it in Chromium over
the DevTools protocol and reports, per load: wall time from navigation to the load event, the page's own
navigation timing (responseStart -> loadEventEnd) and first contentful paint. Median and range over the repeats.
Needs Chromium (Debian's chromium) and websocket-client.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import Browser, find_chromium  # noqa: E402

from irtool.report import evaluation  # noqa: E402


def synthetic_report(n: int, seed: int = 0) -> tuple[dict, evaluation.Gallery]:
    rng = np.random.default_rng(seed)
    images, gallery = [], evaluation.Gallery()
    for i in range(n):
        inp = float(rng.uniform(18, 30))
        out = inp + float(rng.normal(6, 2))
        experts = rng.integers(0, 4, size=(10, 1)).tolist()
        images.append({"file": f"img-{i:04d}.png", "psnr": out, "ssim": float(rng.uniform(0.7, 0.99)), "input_psnr": inp,
                       "input_ssim": float(rng.uniform(0.4, 0.9)), "seconds": 0.05, "height": 321, "width": 481,
                       "experts": experts, "degradation": None, "error": None, "notes": []})  # fmt: skip
        # the gallery sees every image, as during a real run (pixels are only kept for the few it shows)
        gt = (rng.uniform(0, 1, (321, 481, 3)) * 255).astype(np.uint8)
        lq = np.clip(gt.astype(int) + rng.integers(-40, 40, gt.shape), 0, 255).astype(np.uint8)
        result = SimpleNamespace(file=images[-1]["file"], psnr=out, ssim=images[-1]["ssim"], input_psnr=inp)
        gallery("synthetic", result, SimpleNamespace(lq=lq, gt=gt), lq)
    gallery.selection()
    counts = np.zeros((10, 4), int)
    for im in images:
        for layer, (e,) in enumerate(im["experts"]):
            counts[layer, e] += 1
    psnr = float(np.mean([im["psnr"] for im in images]))
    dataset = {
        "dataset": "synthetic", "title": f"Synthetic ({n} images)", "task": "denoise", "protocol": "moce",
        "reproduces": "synthetic benchmark for the renderer", "crop_multiple": 16, "crop_border": 0, "layout": None,
        "root": None, "expected": None, "reported": {"psnr": psnr + 0.2, "ssim": 0.9}, "noise": None, "synthetic": None,
        "departures": [], "warnings": [], "seconds": 1.0, "images": images,
        "usage": {"kind": "experts", "layers": [f"dec{i}" for i in range(10)], "num_experts": 4, "counts": counts.tolist()},
        "summary": {"n": n, "failed": 0, "psnr": psnr, "ssim": 0.85, "input_psnr": 24.0, "input_ssim": 0.6,
                    "delta_psnr": -0.2, "delta_ssim": -0.05, "seconds_per_image": 0.05},
    }  # fmt: skip
    report = {"irtool": "bench", "torch": "-", "started": "-", "complete": True,
              "model": {"source": "synthetic.ckpt", "arch": "moce_ir", "parameters": 11_000_000},
              "device": "cpu", "precision": "fp32", "options": {}, "reported_from": None, "reported": {},
              "average": None, "datasets": [dataset]}  # fmt: skip
    return report, gallery


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    exe, why = find_chromium()
    if exe is None:
        sys.exit(why)
    with tempfile.TemporaryDirectory() as tmp:
        report, gallery = synthetic_report(args.images)
        started = time.perf_counter()
        page, _ = evaluation.write_report(Path(tmp) / "eval.html", [report], [gallery])
        built = time.perf_counter() - started
        size = page.stat().st_size
        walls, loads, paints = [], [], []
        with Browser(exe) as browser:
            for _ in range(args.repeats):
                walls.append(browser.open(page))
                timing = browser.js(
                    "(() => { const n = performance.getEntriesByType('navigation')[0];"
                    " const p = performance.getEntriesByName('first-contentful-paint')[0];"
                    " return [n.loadEventEnd - n.startTime, p ? p.startTime : null]; })()"
                )
                loads.append(timing[0] / 1000)
                paints.append((timing[1] or 0) / 1000)
                rows = browser.js("document.querySelectorAll('table.perimage tbody tr').length")
                assert rows == args.images, rows
                assert browser.problems() == [], browser.problems()
    print(f"{args.images}-image eval report: {size} bytes written in {built:.2f} s (Python: build + render)")
    for name, values in (("navigation -> load event (CDP wall)", walls), ("page load (navigation timing)", loads),
                         ("first contentful paint", paints)):  # fmt: skip
        print(
            f"  {name}: median {statistics.median(values):.3f} s (range {min(values):.3f}-{max(values):.3f}) over {len(values)} loads"
        )


if __name__ == "__main__":
    main()
