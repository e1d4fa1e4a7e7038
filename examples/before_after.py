"""Make docs/before_after.jpg (the README's picture): each degraded example beside irtool's restoration of it.

    irtool restore examples/ out/ && python examples/before_after.py out/

Rows follow the example files in name order; every picture is scaled to the same width. Pillow only. The picture
lives outside examples/ so that `irtool restore examples/ out/` restores only the examples.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
WIDTH = 320  # px per picture
LABEL = 18  # px of caption above each row


def main(restored_dir: Path, out: Path = HERE.parent / "docs" / "before_after.jpg") -> None:
    examples = sorted(HERE.glob("*.png"))
    rows = []
    for before in examples:
        after = restored_dir / before.name
        if not after.is_file():
            raise SystemExit(f"{after}: missing (run `irtool restore examples/ {restored_dir}` first)")
        pair = [Image.open(p).convert("RGB") for p in (before, after)]
        pair = [im.resize((WIDTH, round(im.height * WIDTH / im.width)), Image.Resampling.LANCZOS) for im in pair]
        rows.append((before.stem, pair))
    height = sum(LABEL + pair[0].height for _, pair in rows)
    sheet = Image.new("RGB", (2 * WIDTH + 4, height), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for name, (before, after) in rows:
        draw.text((4, y + 3), f"{name}: input", fill="black")
        draw.text((WIDTH + 8, y + 3), "irtool restore (built-in model)", fill="black")
        y += LABEL
        sheet.paste(before, (0, y))
        sheet.paste(after, (WIDTH + 4, y))
        y += before.height
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, quality=88, optimize=True)
    print(f"{out}: {len(rows)} rows, {sheet.width}x{sheet.height}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python examples/before_after.py RESTORED_DIR")
    main(Path(sys.argv[1]))
