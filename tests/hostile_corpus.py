"""A deterministic corpus of odd, broken and hostile files, the way a real folder (or an attacker) can hold them.

`build(folder)` writes a few hundred files and returns what each one is expected to do: `Expect.OK` (restored, with
the display size `size`) or `Expect.REFUSED` (a one-line error naming it; `reason` is a word the line must hold,
or None when any one-line reason will do). Kinds: zero-byte files, files cut at many points, wrong extensions, every
Pillow mode in every format that takes it, odd sizes, decompression bombs (small files whose headers claim huge
sizes, for every format), animations and multi-page files, EXIF orientations 1-8 on every format that carries them,
corrupt ICC profiles, unicode and long names, link loops (file and folder), broken links, a link to /dev/zero, a
FIFO and a socket.
"""

from __future__ import annotations

import io as stdio
import os
import socket
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

OK, REFUSED = "ok", "refused"
MAX_MEGAPIXELS = 4  #: the run over the corpus passes --max-megapixels 4: the bombs claim far more


@dataclass
class Expect:
    outcome: str  #: OK or REFUSED
    size: tuple[int, int] | None = None  #: (width, height) of the restored image, for OK
    reason: str | None = None  #: a word the refusal line must hold (lower case)
    special: bool = False  #: not a regular file (not hashed, not read by the test)


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([0.5 + 0.4 * np.sin(0.2 * xx + c) * np.cos(0.15 * yy - c) for c in range(3)], axis=2)
    return np.clip(img * 255 + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def _pil(image: PILImage.Image, fmt: str, **kwargs) -> bytes:
    buf = stdio.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _exif(orientation: int) -> bytes:
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "corpus-camera"
    return exif.tobytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_claiming(width: int, height: int, payload: bytes = b"\x00" * 64) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(payload)) + _chunk(b"IEND", b"")


def _png_bomb(width: int, height: int) -> bytes:
    """A real gray PNG of zeros: a few hundred KB that inflate to width*height bytes."""
    row = b"\x00" + b"\x00" * width
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def _tiff_slong(width: int, height: int) -> bytes:
    """A little TIFF whose width and height tags are SLONG (type 9), claiming a huge gray image."""
    entries = [
        (256, 9, 1, width),
        (257, 9, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8),
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, 16),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        ifd += struct.pack("<HHI", tag, typ, count) + (
            struct.pack("<I", value) if typ in (4, 9) else struct.pack("<HH", value, 0)
        )
    ifd += struct.pack("<I", 0)
    body = b"\x00" * 16
    return b"II*\x00" + struct.pack("<I", 8 + len(body)) + body + ifd


def _bmp_claiming(width: int, height: int) -> bytes:
    header = b"BM" + struct.pack("<IHHI", 54 + 12, 0, 0, 54)
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 12, 2835, 2835, 0, 0)
    return header + dib + b"\x00" * 12


def _os2_bmp(width: int, height: int, seed: int) -> bytes:
    """An OS/2 1.x BMP (12-byte BITMAPCOREHEADER, 16-bit sizes), 24-bit."""
    rows = _photo(height, width, seed)[::-1, :, ::-1]
    stride = (width * 3 + 3) // 4 * 4
    pixels = b"".join(r.tobytes() + b"\x00" * (stride - width * 3) for r in rows)
    header = b"BM" + struct.pack("<IHHI", 26 + len(pixels), 0, 0, 26)
    return header + struct.pack("<IHHHH", 12, width, height, 1, 24) + pixels


def _webp_claiming(width: int, height: int) -> bytes:
    vp8x = bytes([0, 0, 0, 0]) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = (
        b"WEBP" + b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x + b"VP8L" + struct.pack("<I", 8) + b"\x2f" + b"\x00" * 7
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _jpeg_claiming(width: int, height: int) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + sof + b"\xff\xd9"


def _gif_claiming(width: int, height: int) -> bytes:
    """A real GIF of a huge blank canvas: a tiny file that Pillow would inflate to width*height bytes."""
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", width, height, 0, 0, 0)
        + b","
        + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
        + b"\x02\x02\x44\x01\x00;"
    )


def build(root: Path) -> dict[Path, Expect]:
    """Write the corpus under `root` (created) and return {path: what it must do}."""
    root.mkdir(parents=True, exist_ok=True)
    expect: dict[Path, Expect] = {}

    def put(
        rel: str, data: bytes, outcome: str, size: tuple[int, int] | None = None, reason: str | None = None
    ) -> Path:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expect[path] = Expect(outcome, size, reason)
        return path

    base = _photo(24, 32, 1)
    rgb = PILImage.fromarray(base)
    encoded = {
        "png": _pil(rgb, "PNG"),
        "jpg": _pil(rgb, "JPEG", quality=90),
        "webp": _pil(rgb, "WEBP", quality=90),
        "lossless.webp": _pil(rgb, "WEBP", lossless=True),
        "tiff": _pil(rgb, "TIFF", compression="tiff_deflate"),
        "bmp": _pil(rgb, "BMP"),
    }

    # good files, then zero-byte files and files cut at many points
    for ext, data in encoded.items():
        put(f"good/good.{ext}", data, OK, (32, 24))
        put(f"empty/empty.{ext}", b"", REFUSED, reason="empty")
        for cut in (
            1,
            2,
            4,
            8,
            12,
            16,
            24,
            30,
            45,
            60,
            100,
            150,
            *(len(data) * k // 8 for k in range(1, 8)),
            len(data) - 2,
        ):
            if 0 < cut < len(data):
                # a cut inside a JPEG's or BMP's pixel data can decode to a partial picture; either is acceptable
                lenient = ext in ("jpg", "bmp", "tiff") and cut > 200
                put(f"truncated/{ext.replace('.', '_')}_{cut:05d}.{ext}", data[:cut], "any" if lenient else REFUSED)

    # wrong extensions: the content decides
    put("wrong_ext/png_as.jpg", encoded["png"], OK, (32, 24))
    put("wrong_ext/jpeg_as.png", encoded["jpg"], OK, (32, 24))
    put("wrong_ext/webp_as.tiff", encoded["webp"], OK, (32, 24))
    put("wrong_ext/tiff_as.bmp", encoded["tiff"], OK, (32, 24))
    put("wrong_ext/bmp_as.webp", encoded["bmp"], OK, (32, 24))
    put("wrong_ext/gif_as.png", _pil(rgb.convert("P"), "GIF"), OK, (32, 24))
    put("wrong_ext/text_as.png", b"this is not an image\n" * 20, REFUSED)
    put("wrong_ext/html_as.jpg", b"<html><body>404 not found</body></html>", REFUSED)
    put("wrong_ext/random_as.tif", np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8).tobytes(), REFUSED)

    # every Pillow mode, in every format that takes it
    modes = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "F", "LA", "PA", "RGBX"]
    formats = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "tiff": "TIFF", "bmp": "BMP"}
    for mode in modes:
        try:
            image = rgb.convert(mode) if mode not in ("I;16", "PA", "LA") else None
        except ValueError:
            image = None
        if mode == "I;16":
            image = PILImage.fromarray(base[..., 0].astype(np.uint16) * 257)
        elif mode == "LA":
            image = rgb.convert("LA")
        elif mode == "PA":
            image = rgb.convert("P").convert("PA")
        if image is None:
            continue
        for ext, fmt in formats.items():
            try:
                data = _pil(image, fmt)
            except (OSError, ValueError, KeyError, TypeError):
                continue  # this format cannot hold this mode
            # restored, or refused with one line (e.g. signed or odd samples); the run decides which
            put(f"modes/{mode.replace(';', '_')}.{ext}", data, "any", (32, 24))

    # odd sizes
    for h, w in ((1, 1), (1, 17), (17, 1), (2, 3), (7, 5), (33, 65), (3, 200)):
        img = PILImage.fromarray(_photo(h, w, h * 100 + w))
        put(f"sizes/{w}x{h}.png", _pil(img, "PNG"), OK, (w, h))
        put(f"sizes/{w}x{h}.jpg", _pil(img, "JPEG", quality=90), OK, (w, h))

    # decompression bombs: tiny files that claim far more than the limit, in every format
    put("bombs/ihdr_100000x100000.png", _png_claiming(100000, 100000), REFUSED, reason="limit")
    put("bombs/real_6000x6000.png", _png_bomb(6000, 6000), REFUSED, reason="limit")
    put("bombs/gif_20000x20000_as.png", _gif_claiming(20000, 20000), REFUSED, reason="limit")
    put("bombs/slong_20000x20000.tiff", _tiff_slong(20000, 20000), REFUSED, reason="limit")
    put("bombs/bmp_30000x30000.bmp", _bmp_claiming(30000, 30000), REFUSED, reason="limit")
    put("bombs/webp_16000x16000.webp", _webp_claiming(16000, 16000), REFUSED, reason="limit")
    put("bombs/jpeg_60000x60000.jpg", _jpeg_claiming(60000, 60000), REFUSED, reason="limit")
    put("bombs/zero_width.png", _png_claiming(0, 10), REFUSED)
    put("sizes/os2.bmp", _os2_bmp(20, 12, 3), OK, (20, 12))

    # animations and multi-page files: never cut to their first frame
    frames = [PILImage.fromarray(_photo(24, 32, s)) for s in range(3)]
    put(
        "frames/animated.png", _pil(frames[0], "PNG", save_all=True, append_images=frames[1:]), REFUSED, reason="frames"
    )
    put(
        "frames/animated_gif_as.png",
        _pil(frames[0].convert("P"), "GIF", save_all=True, append_images=[f.convert("P") for f in frames[1:]]),
        REFUSED,
        reason="frames",
    )
    put(
        "frames/animated.webp",
        _pil(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        REFUSED,
        reason="frames",
    )
    put("frames/pages.tiff", _pil(frames[0], "TIFF", save_all=True, append_images=frames[1:]), REFUSED, reason="frames")

    # EXIF orientations 1-8 on every format that carries them (BMP holds no EXIF)
    tall = PILImage.fromarray(_photo(20, 30, 7))
    for o in range(1, 9):
        shown = (30, 20) if o <= 4 else (20, 30)
        put(f"orientation/o{o}.png", _pil(tall, "PNG", exif=_exif(o)), OK, shown)
        put(f"orientation/o{o}.jpg", _pil(tall, "JPEG", exif=_exif(o), quality=90), OK, shown)
        put(f"orientation/o{o}.webp", _pil(tall, "WEBP", exif=_exif(o), lossless=True), OK, shown)
        put(f"orientation/o{o}.tiff", _pil(tall, "TIFF", tiffinfo={0x0112: o}), OK, shown)
        put(f"orientation/o{o}_rgba.tiff", _pil(tall.convert("RGBA"), "TIFF", tiffinfo={0x0112: o}), OK, shown)

    # corrupt ICC profiles
    junk = b"not an icc profile" * 10
    put("icc/junk.png", _pil(rgb, "PNG", icc_profile=junk), OK, (32, 24))
    put("icc/junk.jpg", _pil(rgb, "JPEG", icc_profile=junk), OK, (32, 24))
    put("icc/junk.webp", _pil(rgb, "WEBP", icc_profile=junk), OK, (32, 24))
    put("icc/junk.tiff", _pil(rgb, "TIFF", icc_profile=junk), OK, (32, 24))
    put("icc/short.png", _pil(rgb, "PNG", icc_profile=b"\x00" * 8), OK, (32, 24))

    # unicode and long names, and names rich would read as markup
    for name in (
        "фото.png",
        "写真.jpg",
        "emoji_😀.webp",
        "space and [brackets] :smile:.png",
        "a" * 200 + ".png",
        "b" * 250 + ".png",
    ):
        put(f"names/{name}", encoded["png" if name.endswith("png") else name.rsplit(".", 1)[1]], OK, (32, 24))

    # links: loops, broken, to a device; special files
    links = root / "links"
    links.mkdir()
    put("links/target.png", encoded["png"], OK, (32, 24))
    os.symlink("target.png", links / "to_target.png")
    expect[links / "to_target.png"] = Expect(OK, (32, 24))
    os.symlink("loop.png", links / "loop.png")
    expect[links / "loop.png"] = Expect(REFUSED, reason="loop", special=True)
    os.symlink("nowhere.png", links / "broken.png")
    expect[links / "broken.png"] = Expect(REFUSED, reason="broken", special=True)
    os.symlink("/dev/zero", links / "zero.png")
    expect[links / "zero.png"] = Expect(REFUSED, reason="device", special=True)
    os.symlink("..", links / "back_to_root")  # a folder loop: walking must not follow it
    os.mkfifo(root / "pipe.png")
    expect[root / "pipe.png"] = Expect(REFUSED, reason="fifo", special=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(root / "sock.png"))
        expect[root / "sock.png"] = Expect(REFUSED, reason="socket", special=True)
    except OSError:
        pass  # sockets not allowed here: the rest of the corpus still stands
    finally:
        sock.close()
    return expect
