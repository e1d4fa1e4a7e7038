"""`irtool restore FOLDER OUT` with the built-in model on a CPU: this tree against an older commit, side by side.

    python benchmarks/restore_folder_speed.py [--baseline d20f704] [--pairs 5] [--large 2.0,3.1] [--keep DIR]
                                              [--weights FILE] [--new-precision bf16]

The folder: the five examples (examples/*.png, 0.18-0.24 MP each) plus held-out photos upscaled as a demanding user's
camera would give them: scikit-image's `stereo_motorcycle` left view (held out from the built-in model's training)
resized (Lanczos) to the first `--large` size in megapixels, and `immunohistochemistry` (held out too) mirrored into
a square of the second. On a machine with ~19 GB available, 2.0 MP is still restored whole and 3.1 MP goes through
the tiled path (`irtool.images.memory.whole_image_pixels`), so both paths are timed.

The baseline is checked out with `git worktree add --detach` into a temp folder. Each run is a fresh process,
`python -m irtool restore FOLDER OUT` with PYTHONPATH pointing at its tree, the same environment and thread settings
for both (whatever this process has: set OMP_NUM_THREADS here to pin both); old and new alternate (old, new, old,
new, ...) after one unmeasured warm-up run of each on one small image. Printed per run: wall time (images/s and MP/s end to end: start,
imports, model load, decode, route, restore, encode, write) and the in-process rate from the run's own summary line
(model loaded: what a long run sees), the load average; then the per-pair ratio (old time / new time: the images/s
ratio) as median and range.

Agreement: the two trees' PNGs are decoded and compared. The network outputs agree within 1e-5 (fp32) when the
8-bit samples differ by at most 1 level, and only in a small fraction of the samples: a float difference d moves a
value across a rounding boundary (k + 0.5) / 255 only when it lies within d of one, which for d = 1e-5 is a fraction
2 * d * 255 = 0.5% of uniformly spread values, and then by exactly one level. Identical bytes cannot be asked: the
thread layout changes the order of float additions (last-bit differences, ~1e-7). The script fails when a sample
differs by more than 1 level or more than 0.5% of the samples differ.

--new-precision bf16: the new tree restores with `--precision bf16` (the opt-in CPU bf16 path) against the old tree's
fp32, the question a user with a bf16-capable CPU asks. The outputs then differ by more than rounding: the script
prints their PSNR against the old fp32 outputs instead and fails below 40 dB.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
#: the most a fp32 difference of 1e-5 can change the 8-bit samples: one level, in at most this fraction of them
MAX_LEVELS, MAX_DIFFERING = 1, 2 * 1e-5 * 255


def build_folder(folder: Path, large: list[float]) -> list[tuple[str, int, int]]:
    """The test photos (see the module docstring); returns (name, width, height) of each."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    for src in sorted((REPO / "examples").glob("*.png")):
        shutil.copy(src, folder / src.name)
    sources = [("motorcycle", data.stereo_motorcycle()[0], "resize"), ("ihc", data.immunohistochemistry(), "mirror")]
    for (name, pixels, how), megapixels in zip(sources, large):
        h, w = pixels.shape[:2]
        scale = (megapixels * 1e6 / (h * w)) ** 0.5
        size = (round(w * scale), round(h * scale))
        if how == "resize":
            image = Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS)
        else:  # mirrored copies side by side: the photo's own detail at every scale, no interpolation blur
            reps = (-(-size[1] // h), -(-size[0] // w))
            rows = [np.concatenate([pixels if j % 2 == 0 else pixels[:, ::-1] for j in range(reps[1])], 1)
                    for _ in range(reps[0])]  # fmt: skip
            tiled = np.concatenate([r if i % 2 == 0 else r[::-1] for i, r in enumerate(rows)], 0)
            image = Image.fromarray(np.ascontiguousarray(tiled[: size[1], : size[0]]))
        image.save(folder / f"heldout_{name}_{megapixels:g}mp.png")
    return [(p.name, *Image.open(p).size) for p in sorted(folder.glob("*.png"))]


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def run(tree: Path, folder: Path, out: Path, weights: Path, extra: list[str] | None = None) -> tuple[float, float, int]:
    """(wall seconds, in-process seconds from the summary line, images restored) of one restore in a fresh process,
    with `weights` (the same file for both trees: the built-in weights change between commits, and with them the
    experts the routers pick, hence the work and the outputs)."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "irtool", "restore", str(folder), str(out), "-w", str(weights), *(extra or [])]
    started = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree)
    wall = time.perf_counter() - started
    summary = re.search(r"restored (\d+) of (\d+) images in ([\d.]+)s", result.stderr)
    if result.returncode != 0 or summary is None:
        raise SystemExit(f"{' '.join(cmd)} (PYTHONPATH={tree}) failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return wall, float(summary.group(3)), int(summary.group(1))


def compare(old: Path, new: Path) -> tuple[int, float, float]:
    """(largest difference in levels, fraction of samples that differ, PSNR in dB of new against old) over all PNGs
    of the two outputs."""
    worst, differing, total, squares = 0, 0, 0, 0.0
    for a in sorted(old.rglob("*.png")):
        x = np.asarray(Image.open(a)).astype(np.int32)
        y = np.asarray(Image.open(new / a.relative_to(old))).astype(np.int32)
        if x.shape != y.shape:
            raise SystemExit(f"{a.name}: shapes differ {x.shape} vs {y.shape}")
        worst = max(worst, int(np.abs(x - y).max()))
        differing += int((x != y).sum())
        squares += float(np.square((x - y) / 255.0).sum())
        total += x.size
    mse = squares / max(total, 1)
    return worst, differing / max(total, 1), float("inf") if mse == 0 else float(10 * np.log10(1 / mse))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="d20f704", help="git revision of the old code")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--large", default="2.0,3.1", help="megapixels of the held-out photos added to the examples")
    parser.add_argument("--keep", type=Path, help="keep the folder and outputs here instead of a temp folder")
    parser.add_argument(
        "--weights", type=Path, help="weights both trees restore with (default: the baseline's built-in weights)"
    )
    parser.add_argument(
        "--new-precision", default="fp32", choices=["fp32", "bf16"], help="the new tree's --precision (old: fp32)"
    )
    args = parser.parse_args()
    new_args = [] if args.new_precision == "fp32" else ["--precision", args.new_precision]
    extra = {"old": [], "new": new_args}  # each tree's restore options beyond the folder and weights
    work = args.keep or Path(tempfile.mkdtemp(prefix="irtool-folder-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    old_tree = work / "baseline"
    if old_tree.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old_tree)], check=False)
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(old_tree), args.baseline], check=True
    )
    try:
        folder = work / "photos"
        shutil.rmtree(folder, ignore_errors=True)
        photos = build_folder(folder, [float(x) for x in args.large.split(",") if x])
        megapixels = sum(w * h for _, w, h in photos) / 1e6
        print(f"folder: {len(photos)} images, {megapixels:.2f} MP: " + ", ".join(f"{n} {w}x{h}" for n, w, h in photos))
        print(
            f"baseline {args.baseline} in {old_tree}; new: {REPO}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
        )
        trees = {"old": old_tree, "new": REPO}
        weights = (args.weights or old_tree / "irtool" / "models" / "irtool_default.safetensors").resolve()
        print(f"weights for both: {weights}")
        warm = work / "warm-up"
        warm.mkdir(exist_ok=True)
        shutil.copy(REPO / "examples" / "noise_chelsea.png", warm)
        for name, tree in trees.items():  # warm-up on one small image: file caches, .pyc files
            run(tree, warm, work / f"out_warm_{name}", weights, extra[name])
        walls: dict[str, list[float]] = {"old": [], "new": []}
        inner: dict[str, list[float]] = {"old": [], "new": []}
        print(f"{'pair':>4} {'tree':4} {'wall s':>7} {'img/s':>6} {'MP/s':>6} {'in-proc MP/s':>12} {'load1':>5}")
        for pair in range(args.pairs):
            for name, tree in trees.items():
                wall, seconds, count = run(tree, folder, work / f"out_{name}", weights, extra[name])
                if count != len(photos):
                    raise SystemExit(f"{name}: restored {count} of {len(photos)}")
                walls[name].append(wall)
                inner[name].append(seconds)
                print(f"{pair:>4} {name:4} {wall:7.2f} {count / wall:6.3f} {megapixels / wall:6.3f} "
                      f"{megapixels / seconds:12.3f} {loadavg():>5}", flush=True)  # fmt: skip
        ratios = [o / n for o, n in zip(walls["old"], walls["new"])]
        inner_ratios = [o / n for o, n in zip(inner["old"], inner["new"])]
        for label, values in (("end to end", ratios), ("in-process (model loaded)", inner_ratios)):
            print(f"new/old images/s, {label}: median {statistics.median(values):.2f}x "
                  f"(range {min(values):.2f}-{max(values):.2f}, {len(values)} pairs)")  # fmt: skip
        for name in trees:
            wall = statistics.median(walls[name])
            print(f"{name}: median {len(photos) / wall:.3f} images/s, {megapixels / wall:.3f} MP/s end to end; "
                  f"{megapixels / statistics.median(inner[name]):.3f} MP/s in-process")  # fmt: skip
        worst, differing, psnr = compare(work / "out_old", work / "out_new")
        if new_args:
            print(f"outputs: new ({args.new_precision}) against old (fp32): {psnr:.1f} dB PSNR, largest difference "
                  f"{worst} level(s), {differing:.2%} of samples differ (allowed: PSNR >= 40 dB)")  # fmt: skip
            if psnr < 40:
                raise SystemExit(f"{args.new_precision} outputs are further from fp32 than reduced precision explains")
            return
        print(f"outputs: largest difference {worst} level(s), {differing:.4%} of samples differ "
              f"(allowed: {MAX_LEVELS} level, {MAX_DIFFERING:.2%})")  # fmt: skip
        if worst > MAX_LEVELS or differing > MAX_DIFFERING:
            raise SystemExit("outputs disagree by more than a 1e-5 float difference can explain")
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old_tree)], check=False)
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
