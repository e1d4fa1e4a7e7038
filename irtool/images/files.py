"""Lossless image reading and writing: what comes in (bit depth, alpha, gray, ICC, EXIF) goes back out.

`read_image(path)` returns an `Image`: RGB float32 pixels in [0, 1] for the model, plus everything needed to write
the result back faithfully. `write_image(path, image, rgb)` puts restored pixels back into that frame and writes it
atomically. BGR exists only inside this module.

Decisions, each made here once:
- Formats: PNG, JPEG, WebP, TIFF, BMP (and whatever else OpenCV decodes, written back as PNG). The format is taken from
  the file's first bytes, not its name.
- Bit depth comes from the sample type (uint8, uint16, float32), never from pixel values. 16-bit in gives 16-bit out
  where the output format can hold it (PNG, TIFF); otherwise the result is rounded to 8 bits and a warning says so.
- Alpha is carried through untouched (same array, same dtype); it is never fed to the model.
- One colour channel in (gray, or gray + alpha) gives one colour channel out (BT.601 luma of the restored RGB).
- EXIF orientation is applied on read, and the orientation tag is reset to 1 in the EXIF written back, so viewers do
  not rotate twice. ICC profiles and EXIF are written back for PNG, JPEG, WebP and TIFF (BMP can hold neither).
- Writing is atomic: encode in memory, write a hidden temp file beside the target, fsync, then link/rename it into
  place. An interrupted run leaves either the complete old state or the complete new file, never a partial one. An
  existing file is only replaced with `overwrite=True`.

Imports numpy, OpenCV (5.x: `imdecodeWithMetadata` / `imencodeWithMetadata`), Pillow (8-bit TIFF with alpha only)
and irtool.images.tiff.
"""

from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np

from ..errors import ImageError, IrtoolError, first_line
from . import pixels as px
from . import safe_paths, tiff
from .pixels import luma

# OpenCV logs decoder trouble on stderr; irtool reports it as one line of its own instead.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

#: output format name -> file extension irtool writes
EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "tiff": ".tiff", "bmp": ".bmp"}
#: user-facing aliases of the format names
FORMAT_ALIASES = {
    "jpg": "jpeg",
    "jpeg": "jpeg",
    "png": "png",
    "webp": "webp",
    "tif": "tiff",
    "tiff": "tiff",
    "bmp": "bmp",
}
#: file extensions irtool picks up when it walks a folder
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".webp", ".tif", ".tiff", ".bmp"})

_DEPTHS = {"png": (8, 16), "jpeg": (8,), "webp": (8,), "tiff": (8, 16, 32), "bmp": (8,)}
_ALPHA = {"png": True, "jpeg": False, "webp": True, "tiff": True, "bmp": True}
_METADATA = {"png", "jpeg", "webp", "tiff"}


@dataclass
class Image:
    """A decoded image, ready for the model, with what must come back out.

    pixels: the colour samples in the file's sample type, orientation applied: (H, W, 3) RGB or (H, W) gray. Often a
            view into the decoded buffer (no copy).
    rgb:    (H, W, 3) float32 RGB in [0, 1] (gray repeated over three channels), made from `pixels` on first use.
            Large images are restored in tiles from `pixels` and never need it.
    dtype:  sample type of the file: uint8, uint16 or float32 (bit depth 8, 16 or 32).
    alpha:  (H, W) alpha channel in `dtype`, exactly as stored (orientation applied), or None.
    gray:   the file had a single colour channel.
    icc:    ICC profile bytes, or None.
    exif:   EXIF as a bare TIFF structure (no "Exif\\0\\0" header), orientation reset to 1 and the thumbnail
            unlinked (it would show the unrestored picture), or None.
    format: "png", "jpeg", "webp", "tiff", "bmp", or None for other formats (GIF, and what Pillow/OpenCV decode).
    """

    pixels: np.ndarray
    dtype: np.dtype
    alpha: np.ndarray | None = None
    gray: bool = False
    icc: bytes | None = None
    exif: bytes | None = None
    format: str | None = None
    path: Path | None = None
    orientation: int = 1  #: the EXIF orientation that was applied on read
    lossless: bool = False  #: a lossless WebP: written back losslessly when it stays WebP
    warnings: list[str] = field(default_factory=list)
    _rgb: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def rgb(self) -> np.ndarray:
        if self._rgb is None:
            self._rgb = float_rgb(self.pixels)
        return self._rgb

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def bit_depth(self) -> int:
        return np.dtype(self.dtype).itemsize * 8

    @property
    def megapixels(self) -> float:
        return self.height * self.width / 1e6


def float_rgb(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1] of colour samples (RGB or gray; uint8, uint16 or float32): one copy."""
    return np.ascontiguousarray(px.gray_to_rgb(px.to_float(pixels)))


def normalize_format(name: str | None) -> str | None:
    """Canonical format name for a user's spelling ("jpg", "TIF", ...); None or "auto" -> None."""
    if name is None or name.lower() == "auto":
        return None
    try:
        return FORMAT_ALIASES[name.lower().lstrip(".")]
    except KeyError:
        raise ImageError(f"--format {name}: not a format irtool writes (png, jpg, webp, tiff, bmp)") from None


def format_from_suffix(suffix: str) -> str | None:
    return FORMAT_ALIASES.get(suffix.lower().lstrip(".")) if suffix else None


# --------------------------------------------------------------------------------------------------------------------
# Sniffing: the format and the pixel count from the first bytes, before anything is decoded


def sniff_format(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:2] == b"BM":
        return "bmp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


@dataclass
class Header:
    """What a file's header says before any pixel is decoded."""

    width: int
    height: int
    frames: int = 1  #: frames (animation) or pages (TIFF); 1 for a still image
    kind: str = ""  #: "animated PNG", "multi-page TIFF", ... when frames > 1


def _png_header(data: bytes) -> Header:
    if data[12:16] != b"IHDR":
        raise ImageError("PNG without an IHDR header")
    width, height = struct.unpack(">II", data[16:24])
    frames = 1
    pos = 8
    while pos + 8 <= len(data):  # an acTL chunk before the first IDAT makes it an APNG
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"acTL" and pos + 12 <= len(data):
            (frames,) = struct.unpack(">I", data[pos + 8 : pos + 12])
            break
        if kind in (b"IDAT", b"IEND"):
            break
        pos += 12 + length
    return Header(width, height, max(1, frames), "animated PNG")


def _png_check(data: bytes) -> None:
    """Walk the chunk list: a PNG cut short has no IEND (libpng would only complain on stderr)."""
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        pos += 12 + length
        if kind == b"IEND":
            if pos > len(data):
                break
            return
    raise ImageError("truncated PNG (the file ends before its IEND chunk)")


def _jpeg_header(data: bytes) -> Header:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageError("corrupt JPEG (bad marker before the frame header)")
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return Header(width, height)
        pos += 2 + length
    raise ImageError("truncated JPEG (no frame header)")


def _webp_header(data: bytes) -> Header:
    chunk = data[12:16]
    if len(data) < 30:
        raise ImageError("truncated WebP (no image header)")
    if chunk == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        animated = bool(data[20] & 0x02)
        frames = data.count(b"ANMF") if animated else 1
        return Header(w, h, max(frames, 2) if animated else 1, "animated WebP")
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return Header((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", data[26:30])
        return Header(w & 0x3FFF, h & 0x3FFF)
    raise ImageError("corrupt WebP (unknown first chunk)")


def _webp_is_lossless(data: bytes) -> bool:
    """True when the WebP's image chunk is VP8L (lossless) rather than VP8 (lossy)."""
    pos = 12
    while pos + 8 <= len(data):
        kind = data[pos : pos + 4]
        if kind in (b"VP8L", b"VP8 "):
            return kind == b"VP8L"
        (length,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        pos += 8 + length + (length % 2)
    return False


def _bmp_header(data: bytes) -> Header:
    if len(data) < 26:
        raise ImageError("truncated BMP (no image header)")
    (dib,) = struct.unpack("<I", data[14:18])
    if dib == 12:  # OS/2 1.x BITMAPCOREHEADER: 16-bit unsigned sizes
        w, h = struct.unpack("<HH", data[18:22])
    else:
        w, h = struct.unpack("<ii", data[18:26])
    return Header(abs(w), abs(h))


def _pillow_header(data: bytes, what: str) -> Header:
    """Size and frame count from Pillow's lazy open (the header only; no pixel is decoded)."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        with PILImage.open(BytesIO(data)) as pil:
            frames = int(getattr(pil, "n_frames", 1) or 1)
            return Header(pil.width, pil.height, frames, f"animated {pil.format or what}")
    except UnidentifiedImageError:
        raise ImageError("not an image irtool reads (unknown format)") from None
    except PILImage.DecompressionBombError:
        if what == "GIF" and len(data) >= 10:  # the logical screen size: the limit check that follows names it
            width, height = struct.unpack("<HH", data[6:10])
            return Header(width, height)
        raise ImageError(
            f"its header claims more than {2 * (PILImage.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} MP (a decompression bomb)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - Pillow reports damaged headers with many exception types
        raise ImageError(f"corrupt {what} header ({first_line(exc, 100)})") from None


def _header(data: bytes, fmt: str | None, directory: tiff.Directory | None) -> Header:
    if fmt == "png":
        return _png_header(data)
    if fmt == "jpeg":
        return _jpeg_header(data)
    if fmt == "webp":
        return _webp_header(data)
    if fmt == "bmp":
        return _bmp_header(data)
    if fmt == "tiff" and directory is not None:
        w, h = directory.value(256), directory.value(257)
        if not w or not h or w < 0 or h < 0:
            raise ImageError("corrupt TIFF header (no image size)")
        return Header(w, h, tiff.page_count(data), "multi-page TIFF")
    return _pillow_header(data, "GIF" if fmt == "gif" else "image")


# --------------------------------------------------------------------------------------------------------------------
# Orientation


def apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels (H, W[, C]) into display orientation for an EXIF orientation value 1-8."""
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:
        return np.swapaxes(array, 0, 1)
    if orientation == 6:
        return np.rot90(array, k=-1)
    if orientation == 7:
        return np.rot90(np.swapaxes(array, 0, 1), k=2)
    if orientation == 8:
        return np.rot90(array, k=1)
    return array


# --------------------------------------------------------------------------------------------------------------------
# Reading


def _pillow_applies_tiff_orientation() -> bool:
    """Whether this Pillow turns TIFF pixels by their orientation tag while loading (Pillow 13 does, older ones do
    not): found once on a 2x1 TIFF with orientation 2 (mirrored), so irtool never turns a picture twice."""
    global _PILLOW_ORIENTS
    if _PILLOW_ORIENTS is None:
        from PIL import Image as PILImage

        buf = BytesIO()
        PILImage.fromarray(np.array([[[255, 0, 0, 255], [0, 0, 255, 255]]], np.uint8), "RGBA").save(
            buf, format="TIFF", tiffinfo={tiff.ORIENTATION: 2}
        )
        with PILImage.open(BytesIO(buf.getvalue())) as pil:
            _PILLOW_ORIENTS = bool(np.asarray(pil.convert("RGBA"))[0, 0, 2] == 255)
    return _PILLOW_ORIENTS


_PILLOW_ORIENTS: bool | None = None


def _decode_pillow(data: bytes) -> tuple[np.ndarray, bool]:
    """8-bit TIFF with alpha: OpenCV's TIFF reader premultiplies the colours by alpha, Pillow keeps them.
    Returns the pixels (BGRA, or gray + alpha as BGRA) and whether Pillow already applied the orientation."""
    from PIL import Image as PILImage

    with PILImage.open(BytesIO(data)) as pil:
        array = np.asarray(pil.convert("RGBA" if pil.mode not in ("LA", "RGBA") else pil.mode))
    oriented = _pillow_applies_tiff_orientation()
    if array.shape[-1] == 2:  # gray + alpha -> the BGRA layout OpenCV would give
        return _gray_alpha_to_bgra(array), oriented
    return np.ascontiguousarray(array[..., [2, 1, 0, 3]]), oriented


def _gray_alpha_to_bgra(array: np.ndarray) -> np.ndarray:
    return np.dstack([array[..., 0]] * 3 + [array[..., 1]])


def _decode_gif(data: bytes) -> np.ndarray | None:
    """A single-frame GIF (or another format Pillow reads and OpenCV does not) as BGR(A), 8-bit."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(BytesIO(data)) as pil:
            alpha = pil.mode in ("RGBA", "LA", "PA") or "transparency" in pil.info
            array = np.asarray(pil.convert("RGBA" if alpha else "RGB"))
    except Exception:  # noqa: BLE001 - Pillow reports damage with many exception types
        return None
    return np.ascontiguousarray(array[..., [2, 1, 0, 3][: array.shape[2]]])


def _decode_tiff(data: bytes, directory: tiff.Directory, name: str) -> tuple[np.ndarray | None, bool]:
    """Pixels of a TIFF in OpenCV's layout (gray, BGR or BGRA), checked against what the header promises, and
    whether the decoder already applied the TIFF's orientation tag (OpenCV does; Pillow 13 does; tifffile does not).

    OpenCV decodes most TIFFs (all compressions, tiles, planar layouts) but premultiplies 8-bit colour by alpha and
    mangles gray + alpha; those go through Pillow (8-bit) or tifffile (if installed).
    """
    bits = directory.value(258) or 1
    samples = directory.value(277) or 1
    sample_format = directory.value(339) or 1
    has_alpha = 338 in directory.entries
    if sample_format == 2:
        raise ImageError(
            f"{name}: signed {bits}-bit integer samples are not supported (unsigned 8/16-bit or float32 TIFF only)"
        )
    if sample_format == 3 and bits not in (32, 64):
        raise ImageError(f"{name}: {bits}-bit float samples are not supported (8/16-bit or float32 TIFF only)")
    if sample_format not in (1, 3):
        raise ImageError(
            f"{name}: TIFF sample format {sample_format} is not supported (unsigned 8/16-bit or float32 only)"
        )
    expected = {8: np.uint8, 16: np.uint16, 32: np.float32, 64: np.float64}.get(bits)
    if bits == 8 and has_alpha:
        try:
            return _decode_pillow(data)
        except Exception:  # noqa: BLE001 - Pillow reports damage with many exception types
            return None, False
    if not (samples == 2 or (has_alpha and samples != 4)):
        try:
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error:
            pixels = None
        if pixels is None:
            return None, False
        channels = 1 if pixels.ndim == 2 else pixels.shape[2]
        if pixels.dtype == expected and channels == samples:
            return pixels, True
        if bits < 8 and pixels.dtype == np.uint8:  # 1/2/4-bit (bilevel, few grays, palette): OpenCV widens to 8-bit
            return pixels, True
    if bits not in (8, 16, 32, 64):
        raise ImageError(f"{name}: {bits}-bit TIFF samples are not supported (8-bit, 16-bit or float32 only)")
    try:
        import tifffile
    except ImportError:
        raise ImageError(
            f"{name}: {bits}-bit TIFF with {samples} samples per pixel is not supported without tifffile "
            "(pip install tifffile), or save it as PNG"
        ) from None
    try:
        array = np.asarray(tifffile.imread(BytesIO(data)))
    except Exception:  # noqa: BLE001 - tifffile reports damage with many exception types
        return None, False
    if array.ndim == 3 and array.shape[2] == 2:
        return _gray_alpha_to_bgra(array), False
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return np.ascontiguousarray(array[..., [2, 1, 0, 3][: array.shape[2]]]), False
    return array, False


#: file bytes allowed per pixel of the megapixel limit (an uncompressed 16-bit RGBA TIFF) plus room for metadata
_FILE_BYTES_PER_PIXEL = 8
_FILE_SLACK = 64 << 20


def resolve_max_megapixels(max_megapixels: float | None) -> float:
    """The limit to apply: the given one, or the machine's default (see irtool.images.memory)."""
    from .memory import default_max_megapixels

    return default_max_megapixels() if max_megapixels is None else float(max_megapixels)


def read_header(data: bytes, name: str = "image") -> tuple[str | None, Header, tiff.Directory | None]:
    """(format, header, TIFF directory) of encoded bytes, before any decoding: the one-line ImageError for an empty
    file, an unknown format, a damaged header, or an animation/multi-page file (never cut to its first frame)."""
    if not data:
        raise ImageError(f"{name}: empty file")
    fmt = sniff_format(data[:16])
    directory = None
    try:
        if fmt == "tiff":
            directory = tiff.read_directory(data)
        header = _header(data, fmt, directory)
        if fmt == "png":
            _png_check(data)
    except ImageError as exc:
        raise ImageError(f"{name}: {exc}") from None
    except (tiff.TiffFormatError, struct.error):
        raise ImageError(f"{name}: corrupt {(fmt or 'image').upper()} header") from None
    if header.width <= 0 or header.height <= 0:
        raise ImageError(f"{name}: {(fmt or 'image').upper()} header says {header.width}x{header.height} pixels")
    if header.frames > 1:
        raise ImageError(
            f"{name}: {header.kind} with {header.frames} frames; irtool restores single images and will not keep "
            "only the first, so it is refused (split it into single images first)"
        )
    return fmt, header, directory


@dataclass
class _Decoded:
    """What a decoder hands over: samples in OpenCV's layout (gray, BGR or BGRA), the metadata it found, and whether
    it already turned the pixels by their orientation tag."""

    pixels: np.ndarray | None
    fmt: str | None
    icc: bytes | None = None
    exif: bytes | None = None
    oriented: bool = False
    warnings: list[str] = field(default_factory=list)


def _check_size(header: Header, name: str, limit: float) -> None:
    megapixels = header.width * header.height / 1e6
    if megapixels > limit:
        raise ImageError(
            f"{name}: {header.width}x{header.height} pixels ({megapixels:.0f} MP) is over the {limit:.0f} MP limit "
            "(raise it with --max-megapixels)"
        )


def _decode_pixels(data: bytes, fmt: str | None, directory: tiff.Directory | None, name: str) -> _Decoded:
    """Run the decoder for the format: TIFF (irtool's own container reading), GIF and unknown formats (Pillow), the
    rest (OpenCV, with its ICC and EXIF)."""
    if fmt == "tiff" and directory is not None:
        pixels, oriented = _decode_tiff(data, directory, name)
        decoded = _Decoded(pixels, fmt, *tiff.metadata(directory))
        decoded.oriented = oriented
        if (directory.value(258) or 1) < 8 and pixels is not None:
            decoded.warnings.append(f"{directory.value(258) or 1}-bit TIFF samples are written back as 8-bit")
        return decoded
    if fmt is None or fmt == "gif":
        return _Decoded(_decode_gif(data), None)
    try:
        pixels, types, chunks = cv2.imdecodeWithMetadata(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        pixels, types, chunks = None, None, None
    decoded = _Decoded(pixels, fmt)
    for kind, chunk in zip(() if types is None else types, () if chunks is None else chunks):
        blob = np.asarray(chunk, dtype=np.uint8).tobytes()
        if int(kind) == cv2.IMAGE_METADATA_ICCP:
            decoded.icc = blob or None
        elif int(kind) == cv2.IMAGE_METADATA_EXIF:
            decoded.exif = tiff.strip_exif_header(blob) or None
    return decoded


def _checked_samples(decoded: _Decoded, header: Header, name: str) -> np.ndarray:
    """The decoded samples, refused when missing, of another size than the header's, or of an unsupported type."""
    pixels = decoded.pixels
    if pixels is None or pixels.size == 0:
        what = decoded.fmt.upper() if decoded.fmt else "image"
        raise ImageError(f"{name}: truncated or corrupt {what} file")
    if pixels.shape[:2] != (header.height, header.width) and not (
        decoded.oriented and pixels.shape[:2] == (header.width, header.height)
    ):
        raise ImageError(
            f"{name}: decoded {pixels.shape[1]}x{pixels.shape[0]} pixels, its header says {header.width}x{header.height}"
        )
    if pixels.dtype not in (np.uint8, np.uint16, np.float32):
        if pixels.dtype != np.float64:
            raise ImageError(f"{name}: {pixels.dtype} samples are not supported (8-bit, 16-bit or float32 only)")
        pixels = pixels.astype(np.float32)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    return pixels


def _split_channels(
    pixels: np.ndarray, data: bytes, fmt: str | None, directory: tiff.Directory | None, name: str
) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """(colour as RGB or gray, alpha or None, gray) from OpenCV-layout samples."""
    gray = pixels.ndim == 2
    if fmt == "png" and len(data) > 25 and data[25] == 4:
        gray = True  # gray + alpha: OpenCV hands it over as BGRA with equal colour channels
    if directory is not None and directory.value(262) in (0, 1):
        gray = True
    if pixels.ndim == 2:
        color, alpha = pixels, None
    elif pixels.shape[2] == 4:
        color, alpha = pixels[..., :3], pixels[..., 3]
    elif pixels.shape[2] == 3:
        color, alpha = pixels, None
    else:
        raise ImageError(f"{name}: {pixels.shape[2]} channels are not supported (gray, RGB, with or without alpha)")
    if color.ndim == 3:
        color = color[..., ::-1]  # BGR -> RGB
        if gray:
            color = color[..., 0]
    return color, alpha, gray


def _orientation(exif: bytes | None, fmt: str | None, directory: tiff.Directory | None) -> int:
    """The EXIF orientation (1-8) to apply: a TIFF's own tag, else the EXIF's."""
    if fmt == "tiff" and directory is not None:
        orientation = directory.value(tiff.ORIENTATION) or 1
        return orientation if 1 <= orientation <= 8 else 1
    return tiff.orientation(exif) if exif else 1


def decode_image(data: bytes, name: str = "image", *, max_megapixels: float | None = None) -> Image:
    """Decode encoded image bytes into an `Image` (see `read_image`). The size comes from the header (or Pillow's
    lazy open) and is checked against `max_megapixels` (default: from this machine's memory) before decoding."""
    fmt, header, directory = read_header(data, name)
    _check_size(header, name, resolve_max_megapixels(max_megapixels))
    decoded = _decode_pixels(data, fmt, directory, name)
    samples = _checked_samples(decoded, header, name)
    color, alpha, gray = _split_channels(samples, data, decoded.fmt, directory, name)
    orientation = _orientation(decoded.exif, decoded.fmt, directory)
    if orientation != 1 and not decoded.oriented:
        color = apply_orientation(color, orientation)
        alpha = apply_orientation(alpha, orientation) if alpha is not None else None
    exif = tiff.drop_thumbnail(tiff.reset_orientation(decoded.exif)) if decoded.exif else decoded.exif
    return Image(
        pixels=color,
        dtype=samples.dtype,
        alpha=None if alpha is None else np.ascontiguousarray(alpha),
        gray=gray,
        icc=decoded.icc,
        exif=exif,
        format=decoded.fmt,
        orientation=orientation,
        lossless=decoded.fmt == "webp" and _webp_is_lossless(data),
        warnings=decoded.warnings,
    )


def read_image(path: str | Path, *, max_megapixels: float | None = None) -> Image:
    """Read an image file losslessly (see the module docstring). Raises ImageError with a one-line reason.

    Special files (FIFOs, devices, sockets) are refused by type before anything opens them, and a file larger than
    any image under the megapixel limit is not read at all."""
    path = Path(path)
    limit = resolve_max_megapixels(max_megapixels)
    max_bytes = int(limit * 1e6 * _FILE_BYTES_PER_PIXEL) + _FILE_SLACK
    data = safe_paths.read_regular(path, max_bytes, error=ImageError)
    image = decode_image(data, str(path), max_megapixels=limit)
    del data
    image.path = path
    return image


#: how much of a file `probe_image` reads: all of a small file, the start of a larger one
PROBE_BYTES = 1 << 16


def probe_image(path: str | Path) -> str | None:
    """A one-line reason why `read_image` will certainly refuse the file, found from its first `PROBE_BYTES` alone
    (cheap enough to ask of every input before a model is loaded); None when it may be readable.

    Refused here: what is not a readable regular file, an empty file, one whose start is no image format irtool
    knows, and, for a file that fits in `PROBE_BYTES`, every header check `read_image` makes (same lines)."""
    path = Path(path)
    problem = safe_paths.file_problem(path)
    if problem:
        return problem
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
        try:
            head = os.read(fd, PROBE_BYTES)
        finally:
            os.close(fd)
    except OSError as exc:
        return f"{path}: cannot be read ({exc.strerror or exc})"
    whole = len(head) < PROBE_BYTES
    if whole:
        try:
            read_header(head, str(path))
        except ImageError as exc:
            return str(exc)
        return None
    if sniff_format(head) is None:  # only Pillow might read it: refused when Pillow cannot name its format either
        from PIL import Image as PILImage
        from PIL import UnidentifiedImageError

        try:
            PILImage.open(BytesIO(head)).close()
        except UnidentifiedImageError:
            return f"{path}: not an image irtool reads (unknown format)"
        except Exception:  # noqa: BLE001 - a header cut at PROBE_BYTES: decoding the whole file decides
            return None
    return None


# --------------------------------------------------------------------------------------------------------------------
# Writing


def _convert_samples(samples: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Samples (alpha, or restored colour) in another sample type; as they are when already of it."""
    if samples.dtype == dtype:
        return samples
    return px.from_float(px.to_float(samples), dtype)


def icc_colour_space(icc: bytes) -> bytes:
    """The data colour space an ICC profile describes (header bytes 16-19: b"RGB ", b"GRAY", b"CMYK", ...)."""
    return icc[16:20] if len(icc) >= 20 else b""


def _encode_gray_alpha_png(color: np.ndarray, alpha: np.ndarray, icc: bytes | None, exif: bytes | None) -> bytes:
    from PIL import Image as PILImage

    extra = {}
    if icc:
        extra["icc_profile"] = icc
    if exif:
        extra["exif"] = exif
    buf = BytesIO()
    PILImage.fromarray(np.dstack([color, alpha]), mode="LA").save(buf, format="PNG", compress_level=6, **extra)
    return buf.getvalue()


def encode_image(
    image: Image,
    rgb: np.ndarray | None = None,
    fmt: str | None = None,
    *,
    quality: int = 95,
    samples: np.ndarray | None = None,
) -> tuple[bytes, list[str]]:
    """Encode `rgb` (H, W, 3 float in [0, 1]; default `image.rgb`) in `image`'s frame: its bit depth, alpha, gray
    flag, ICC and EXIF. fmt: output format (default: the input's, PNG for other formats).
    samples: instead of `rgb`, restored colour already in `image.dtype` (RGB, or gray for a gray image), as the tiled
    path makes it; it may be converted in place (no second full-size copy for RGB without alpha).

    Returns the file bytes and warnings about anything the format could not hold.
    """
    data, warnings = _encode(image, rgb, fmt, quality=quality, samples=samples)
    return bytes(data), warnings


def _frame_for(image: Image, fmt: str) -> tuple[np.dtype, np.ndarray | None, bytes | None, list[str]]:
    """What of `image`'s frame the output format can hold: (sample type, alpha, ICC profile, warnings about the
    rest)."""
    warnings: list[str] = []
    dtype = np.dtype(image.dtype)
    if image.bit_depth not in _DEPTHS[fmt]:
        target = np.dtype(np.uint16) if fmt == "png" else np.dtype(np.uint8)
        warnings.append(
            f"{fmt.upper()} cannot hold {image.bit_depth}-bit samples; written as {target.itemsize * 8}-bit"
        )
        dtype = target
    alpha = image.alpha
    if alpha is not None and not _ALPHA[fmt]:
        warnings.append(f"{fmt.upper()} has no alpha channel; alpha dropped")
        alpha = None
    if fmt not in _METADATA and (image.icc or image.exif):
        warnings.append(f"{fmt.upper()} cannot hold ICC/EXIF metadata; dropped")
    icc = image.icc
    if icc and fmt in _METADATA and icc_colour_space(icc) != (b"GRAY" if image.gray else b"RGB "):
        # e.g. a CMYK JPEG's profile: OpenCV decodes to RGB, so that profile no longer describes the pixels
        space = icc_colour_space(icc).decode("ascii", "replace").strip()
        warnings.append(
            f"the {space or 'unknown'} ICC profile does not fit the {'gray' if image.gray else 'RGB'} output; dropped"
        )
        icc = None
    return dtype, alpha, icc, warnings


def _opencv_params(fmt: str, quality: int, lossless: bool) -> list[int]:
    if fmt == "jpeg":
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
        if quality >= 90:  # keep full chroma resolution at high quality
            params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
        return params
    if fmt == "webp":
        return [cv2.IMWRITE_WEBP_QUALITY, 101 if lossless else int(quality)]  # above 100: lossless
    if fmt == "png":
        return [cv2.IMWRITE_PNG_COMPRESSION, 6]
    return []


def _encode_opencv(image: Image, fmt: str, array: np.ndarray, icc: bytes | None, quality: int) -> memoryview:
    """Encode OpenCV-layout samples (gray, BGR or BGRA) with the ICC profile and `image`'s EXIF."""
    types, chunks = [], []
    if fmt in _METADATA:
        if icc and not (fmt == "webp" and image.gray and icc_colour_space(icc) == b"GRAY"):  # WebP stores gray as RGB
            types.append(cv2.IMAGE_METADATA_ICCP)
            chunks.append(np.frombuffer(icc, np.uint8))
        if image.exif:
            types.append(cv2.IMAGE_METADATA_EXIF)
            chunks.append(np.frombuffer(image.exif, np.uint8))
    params = _opencv_params(fmt, quality, image.lossless)
    try:
        ok, buffer = cv2.imencodeWithMetadata(EXTENSIONS[fmt], array, types, chunks, params)
    except cv2.error as exc:
        raise ImageError(f"cannot encode as {fmt.upper()} ({str(exc).strip().splitlines()[-1][:120]})") from None
    if not ok:
        raise ImageError(f"cannot encode as {fmt.upper()}")
    return buffer.data


def _encode(
    image: Image, rgb: np.ndarray | None, fmt: str | None, *, quality: int, samples: np.ndarray | None
) -> tuple[bytes | memoryview, list[str]]:
    fmt = fmt or image.format or "png"
    restored = samples if samples is not None else image.rgb if rgb is None else rgb
    if restored.shape[:2] != (image.height, image.width):
        raise ValueError(f"restored pixels are {restored.shape[:2]}, the image is {(image.height, image.width)}")
    dtype, alpha, icc, warnings = _frame_for(image, fmt)
    if samples is not None:
        color = _convert_samples(samples, dtype)
    else:
        color = px.from_float(luma(restored) if image.gray else restored, dtype)
    if alpha is not None:
        alpha = _convert_samples(alpha, dtype)

    if fmt == "tiff":
        planes = color if alpha is None else np.dstack([color, alpha])
        return tiff.write_tiff(planes, alpha=alpha is not None, icc=icc, exif=image.exif), warnings

    if color.ndim == 2 and alpha is not None:
        # OpenCV cannot encode gray + alpha. Pillow can at 8 bits; otherwise it becomes RGBA with equal channels.
        if fmt == "png" and dtype == np.uint8:
            return _encode_gray_alpha_png(color, alpha, icc, image.exif), warnings
        if fmt != "webp":  # WebP has no gray at all
            warnings.append(f"{fmt.upper()} gray + alpha at {dtype.itemsize * 8} bits is written as RGBA")
        if icc and icc_colour_space(icc) == b"GRAY":
            icc = None  # a gray profile cannot describe RGB data
        color = np.dstack([color] * 3)
    # OpenCV: BGR(A) order. Without alpha the swap is done in place on our own copy: no second full-size array.
    if alpha is not None:
        array = np.ascontiguousarray(np.dstack([color[..., ::-1] if color.ndim == 3 else color, alpha]))
    elif color.ndim == 3:
        if color.flags.c_contiguous and color.flags.writeable and not (samples is not None and color is image.pixels):
            array = cv2.cvtColor(color, cv2.COLOR_RGB2BGR, dst=color)
        else:
            array = np.ascontiguousarray(color[..., ::-1])
    else:
        array = np.ascontiguousarray(color)
    return _encode_opencv(image, fmt, array, icc, quality), warnings


def publish(tmp: Path, path: Path, overwrite: bool, *, error: type[IrtoolError] = ImageError) -> None:
    """Move a finished temp file into place; without `overwrite`, never replace an existing file (even in a race):
    then `error` says it exists. Used for images here and for videos by irtool.restoration.video."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic and fails if `path` exists
    except FileExistsError:
        raise error(f"{path}: already exists (pass --overwrite to replace it, or --skip-existing)") from None
    except OSError:
        # file systems without hard links: a check then a rename (a tiny race window)
        if path.exists():
            raise error(f"{path}: already exists (pass --overwrite to replace it, or --skip-existing)") from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def file_mode() -> int:
    """The mode a new file gets under the process's umask now (0644 under the usual 022): what irtool's outputs get,
    as mkstemp makes owner-only (0600) files. Read at every write, so a umask set after import counts; the probe sets
    the strictest mask for the instant it takes, so a file another thread creates meanwhile is at worst private,
    never more open than asked."""
    mask = os.umask(0o077)
    os.umask(mask)
    return 0o666 & ~mask


def write_bytes_atomic(
    path: str | Path, data: bytes | memoryview, *, overwrite: bool = False, error: type[IrtoolError] = ImageError
) -> None:
    """Write `data` to `path` through a temp file in the same folder; see `publish` for the replace rule. A failure
    is one line as `error` (ImageError for images; reports pass their own)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise error(f"{path}: already exists (pass --overwrite to replace it, or --skip-existing)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the temp name stays within the 255 bytes a file name can hold, however long the target's name is
        stem = os.fsdecode(os.fsencode(path.name)[:120]).rstrip("\ufffd")
        fd, name = tempfile.mkstemp(prefix=f".{stem}.", suffix=".irtool-tmp", dir=path.parent)
    except OSError as exc:
        raise error(f"{path}: cannot write ({exc.strerror or exc})") from None
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path, overwrite, error=error)
    except OSError as exc:
        raise error(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def write_image(
    path: str | Path,
    image: Image,
    rgb: np.ndarray | None = None,
    fmt: str | None = None,
    *,
    quality: int = 95,
    overwrite: bool = False,
    samples: np.ndarray | None = None,
) -> list[str]:
    """Encode (see `encode_image`) and write atomically. Returns warnings about what the format could not hold."""
    path = Path(path)
    fmt = normalize_format(fmt) or format_from_suffix(path.suffix) or image.format or "png"
    data, warnings = _encode(image, rgb, fmt, quality=quality, samples=samples)
    write_bytes_atomic(path, data, overwrite=overwrite)
    return warnings


def from_array(array: np.ndarray, *, alpha_last: bool | None = None) -> Image:
    """An `Image` from an RGB(A) or gray array (uint8, uint16 or float in [0, 1]), for the Python API.

    (H, W) is gray, (H, W, 3) RGB, (H, W, 4) RGBA, (H, W, 2) gray + alpha.
    """
    array = np.asarray(array)
    if array.dtype not in (np.uint8, np.uint16, np.float32):
        if np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float32)
        else:
            raise ImageError(f"array of {array.dtype}: use uint8, uint16 or float in [0, 1]")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        gray, color, alpha = True, array, None
    elif array.ndim == 3 and array.shape[2] in (2, 3, 4):
        channels = array.shape[2]
        gray = channels == 2
        color = array[..., 0] if gray else array[..., :3]
        alpha = array[..., -1] if channels in (2, 4) else None
    else:
        raise ImageError(f"array of shape {array.shape}: expected (H, W), (H, W, 3) or (H, W, 4)")
    return Image(pixels=color, dtype=array.dtype, alpha=alpha, gray=gray)


def to_array(image: Image, rgb: np.ndarray | None = None, samples: np.ndarray | None = None) -> np.ndarray:
    """Restored pixels as an array in `image`'s frame: its dtype, gray flag and alpha (inverse of `from_array`).
    samples: restored colour already in `image.dtype` (from the tiled path), instead of float `rgb`."""
    dtype = np.dtype(image.dtype)
    if samples is not None:
        color = samples
    else:
        rgb = image.rgb if rgb is None else rgb
        color = px.from_float(luma(rgb) if image.gray else rgb, dtype)
    if image.alpha is None:
        return color
    alpha = _convert_samples(image.alpha, dtype)
    return np.dstack([color, alpha])


__all__ = [
    "Image",
    "read_image",
    "decode_image",
    "write_image",
    "encode_image",
    "write_bytes_atomic",
    "from_array",
    "to_array",
    "apply_orientation",
    "normalize_format",
    "EXTENSIONS",
    "IMAGE_SUFFIXES",
]
