"""TIFF structures: read image file directories (IFDs) from TIFF files and EXIF blobs, write both back.

EXIF is itself a small TIFF (byte order mark, IFD0, an Exif sub-IFD, maybe a GPS sub-IFD), so one reader and one
writer serve three jobs:

- find and reset the EXIF orientation tag (`orientation`, `reset_orientation`), patching bytes in place so nothing
  else in the blob changes;
- pull the ICC profile and the descriptive tags out of a TIFF file (`metadata`), as an EXIF blob other
  formats can carry;
- write a TIFF file (`write_tiff`) with 8/16-bit or float samples, gray or RGB, alpha, Deflate compression, the ICC
  profile and the EXIF tags, which OpenCV's TIFF writer cannot do.

Values are kept as raw bytes in the byte order they were read in; a TIFF is written in the byte order of the EXIF it
carries, so no value ever needs swapping. Imports numpy and the standard library only.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

#: bytes per value of each TIFF field type (BYTE, ASCII, SHORT, LONG, RATIONAL, SBYTE, UNDEFINED, SSHORT, SLONG,
#: SRATIONAL, FLOAT, DOUBLE, IFD)
TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
SHORT, LONG, UNDEFINED = 3, 4, 7

ORIENTATION = 0x0112
ICC_PROFILE = 34675
EXIF_IFD, GPS_IFD, INTEROP_IFD = 34665, 34853, 40965
SUB_IFDS = (EXIF_IFD, GPS_IFD, INTEROP_IFD)

#: IFD0 tags that describe the picture rather than its storage; these travel between formats.
DESCRIPTIVE = {
    270,  # ImageDescription
    271,  # Make
    272,  # Model
    282,  # XResolution
    283,  # YResolution
    296,  # ResolutionUnit
    305,  # Software
    306,  # DateTime
    315,  # Artist
    316,  # HostComputer
    318,  # WhitePoint
    319,  # PrimaryChromaticities
    33432,  # Copyright
    ORIENTATION,
    EXIF_IFD,
    GPS_IFD,
}


class TiffFormatError(ValueError):
    """The bytes are not a well-formed TIFF structure."""


@dataclass
class Entry:
    """One IFD entry: `data` holds `count` values of `type` as raw bytes; `children` is the sub-IFD it points to."""

    tag: int
    type: int
    count: int
    data: bytes
    children: dict[int, Entry] | None = None


@dataclass
class Directory:
    byte_order: str  #: "<" (II, little-endian) or ">" (MM, big-endian)
    entries: dict[int, Entry] = field(default_factory=dict)

    def value(self, tag: int) -> int | None:
        """The first value of an integer tag (unsigned or signed), or None."""
        entry = self.entries.get(tag)
        if entry is None or entry.type not in _INT_CODES or not entry.data:
            return None
        return _unpack_ints(entry, self.byte_order)[0]


#: struct codes of the integer field types (BYTE, SHORT, LONG, SBYTE, SSHORT, SLONG, IFD)
_INT_CODES = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 13: "I"}


def _unpack_ints(entry: Entry, order: str) -> list[int]:
    code = _INT_CODES[entry.type]
    return list(struct.unpack(f"{order}{entry.count}{code}", entry.data[: entry.count * struct.calcsize(code)]))


def _header(buf: bytes, start: int = 0) -> tuple[str, int]:
    mark = buf[start : start + 4]
    if mark == b"II*\x00":
        order = "<"
    elif mark == b"MM\x00*":
        order = ">"
    else:
        raise TiffFormatError("no TIFF byte-order mark")
    (offset,) = struct.unpack(f"{order}I", buf[start + 4 : start + 8])
    return order, offset


def _read_entries(buf: bytes, start: int, offset: int, order: str, depth: int = 0) -> dict[int, Entry]:
    """The entries of the IFD at `start + offset` (offsets in a TIFF are relative to its header at `start`)."""
    pos = start + offset
    if depth > 4 or pos + 2 > len(buf):
        raise TiffFormatError("IFD offset out of range")
    (count,) = struct.unpack(f"{order}H", buf[pos : pos + 2])
    if pos + 2 + 12 * count > len(buf):
        raise TiffFormatError("IFD runs past the end of the data")
    entries: dict[int, Entry] = {}
    for i in range(count):
        raw = buf[pos + 2 + 12 * i : pos + 14 + 12 * i]
        tag, typ, n = struct.unpack(f"{order}HHI", raw[:8])
        size = TYPE_SIZES.get(typ)
        if size is None:
            continue  # unknown type: its size is unknown, so it cannot be copied faithfully
        length = size * n
        if length <= 4:
            data = raw[8 : 8 + length]
        else:
            (where,) = struct.unpack(f"{order}I", raw[8:12])
            if start + where + length > len(buf):
                continue  # a value pointing outside the data: drop the entry, keep the rest
            data = buf[start + where : start + where + length]
        entry = Entry(tag, typ, n, bytes(data))
        if tag in SUB_IFDS and typ in (LONG, 13) and n == 1:
            (sub,) = struct.unpack(f"{order}I", data)
            try:
                entry.children = _read_entries(buf, start, sub, order, depth + 1)
            except TiffFormatError:
                continue
        entries[tag] = entry
    return entries


def read_directory(buf: bytes, start: int = 0) -> Directory:
    """IFD0 (with its sub-IFDs) of the TIFF structure beginning at `buf[start]`."""
    order, offset = _header(buf, start)
    return Directory(order, _read_entries(buf, start, offset, order))


def page_count(buf: bytes, limit: int = 10000) -> int:
    """The number of full-resolution images (IFDs) in a TIFF file: reduced-resolution ones (previews, thumbnails:
    NewSubfileType bit 0) are not pages. Follows the IFD chain without looping."""
    try:
        order, offset = _header(buf)
    except (TiffFormatError, struct.error):
        return 1
    pages, seen = 0, set[int]()
    while offset and offset not in seen and len(seen) < limit and offset + 2 <= len(buf):
        seen.add(offset)
        (count,) = struct.unpack(f"{order}H", buf[offset : offset + 2])
        end = offset + 2 + 12 * count
        if end + 4 > len(buf):
            pages += 1
            break
        reduced = False
        for i in range(count):
            tag, typ, n = struct.unpack(f"{order}HHI", buf[offset + 2 + 12 * i : offset + 10 + 12 * i])
            if tag == 254 and typ in (3, 4) and n == 1:
                code = "H" if typ == 3 else "I"
                (value,) = struct.unpack(
                    f"{order}{code}", buf[offset + 10 + 12 * i : offset + 10 + 12 * i + struct.calcsize(code)]
                )
                reduced = bool(value & 1)
        pages += 0 if reduced and pages else 1
        (offset,) = struct.unpack(f"{order}I", buf[end : end + 4])
    return max(1, pages)


def strip_exif_header(exif: bytes) -> bytes:
    """EXIF as a bare TIFF structure: JPEG and WebP put "Exif\\0\\0" in front of it, PNG's eXIf chunk does not."""
    return exif[6:] if exif.startswith(b"Exif\x00\x00") else exif


# --------------------------------------------------------------------------------------------------------------------
# EXIF orientation


def _orientation_field(exif: bytes) -> tuple[int, str, int] | None:
    """(byte position of the orientation value, byte order, value) in a bare EXIF blob, or None."""
    try:
        order, offset = _header(exif)
        (count,) = struct.unpack(f"{order}H", exif[offset : offset + 2])
        for i in range(count):
            pos = offset + 2 + 12 * i
            tag, typ, n = struct.unpack(f"{order}HHI", exif[pos : pos + 8])
            if tag == ORIENTATION and typ == SHORT and n >= 1:
                (value,) = struct.unpack(f"{order}H", exif[pos + 8 : pos + 10])
                return pos + 8, order, value
    except (struct.error, TiffFormatError):
        return None
    return None


def orientation(exif: bytes | None) -> int:
    """The EXIF orientation (1-8; 1 when absent or unreadable)."""
    found = _orientation_field(strip_exif_header(exif)) if exif else None
    return found[2] if found and 1 <= found[2] <= 8 else 1


def reset_orientation(exif: bytes) -> bytes:
    """The same EXIF with orientation set to 1 ("as stored"), every other byte unchanged."""
    exif = strip_exif_header(exif)
    found = _orientation_field(exif)
    if found is None or found[2] == 1:
        return exif
    pos, order, _ = found
    return exif[:pos] + struct.pack(f"{order}H", 1) + exif[pos + 2 :]


def drop_thumbnail(exif: bytes) -> bytes:
    """The same EXIF with IFD1 (the embedded thumbnail) unlinked: after restoration it would show the old picture
    in file browsers. Only the next-IFD pointer changes, so every other byte and offset stays valid."""
    exif = strip_exif_header(exif)
    try:
        order, offset = _header(exif)
        (count,) = struct.unpack(f"{order}H", exif[offset : offset + 2])
        pointer = offset + 2 + 12 * count
        if pointer + 4 > len(exif) or exif[pointer : pointer + 4] == b"\x00\x00\x00\x00":
            return exif
    except (struct.error, TiffFormatError):
        return exif
    return exif[:pointer] + b"\x00\x00\x00\x00" + exif[pointer + 4 :]


# --------------------------------------------------------------------------------------------------------------------
# Writing IFDs


def _serialize(entries: dict[int, Entry], base: int, order: str) -> bytes:
    """An IFD placed at file offset `base`: count, 12-byte entries, next-IFD 0, then long values and sub-IFDs."""
    tags = sorted(entries)
    head_len = 2 + 12 * len(tags) + 4
    heap = bytearray()
    table = bytearray(struct.pack(f"{order}H", len(tags)))

    def place(blob: bytes) -> int:
        if (base + head_len + len(heap)) % 2:
            heap.append(0)  # values start on a word boundary
        at = base + head_len + len(heap)
        heap.extend(blob)
        return at

    for tag in tags:
        entry = entries[tag]
        if entry.children is not None:
            if (base + head_len + len(heap)) % 2:
                heap.append(0)
            at = base + head_len + len(heap)
            heap.extend(_serialize(entry.children, at, order))
            value = struct.pack(f"{order}I", at)
            table += struct.pack(f"{order}HHI", tag, LONG, 1) + value
            continue
        data = entry.data
        if len(data) <= 4:
            value = data + b"\x00" * (4 - len(data))
        else:
            value = struct.pack(f"{order}I", place(data))
        table += struct.pack(f"{order}HHI", tag, entry.type, entry.count) + value
    table += struct.pack(f"{order}I", 0)
    return bytes(table + heap)


def exif_from_directory(directory: Directory) -> bytes | None:
    """A bare EXIF blob holding the descriptive tags (and sub-IFDs) of a TIFF's IFD0; None if there are none."""
    kept = {t: e for t, e in directory.entries.items() if t in DESCRIPTIVE}
    if not kept:
        return None
    order = directory.byte_order
    mark = b"II*\x00" if order == "<" else b"MM\x00*"
    return mark + struct.pack(f"{order}I", 8) + _serialize(kept, 8, order)


def metadata(directory: Directory) -> tuple[bytes | None, bytes | None]:
    """(ICC profile, EXIF blob) of a TIFF file's first image, from its IFD0 (`read_directory`)."""
    icc = directory.entries.get(ICC_PROFILE)
    return (icc.data if icc else None), exif_from_directory(directory)


def _entry(tag: int, typ: int, values: list[int] | bytes, order: str) -> Entry:
    if isinstance(values, bytes):
        return Entry(tag, typ, len(values), values)
    code = {SHORT: "H", LONG: "I"}[typ]
    return Entry(tag, typ, len(values), struct.pack(f"{order}{len(values)}{code}", *values))


def write_tiff(
    pixels: np.ndarray,
    *,
    alpha: bool = False,
    icc: bytes | None = None,
    exif: bytes | None = None,
    level: int = 6,
) -> bytes:
    """A complete TIFF file (Deflate-compressed strips) of `pixels`.

    pixels: (H, W) gray, (H, W, 2) gray+alpha, (H, W, 3) RGB or (H, W, 4) RGBA, in uint8, uint16 or float32.
    alpha: the last channel is (unassociated) alpha.
    icc: ICC profile to embed. exif: a bare EXIF blob; its descriptive IFD0 tags go into the TIFF's IFD0 and its
        Exif/GPS sub-IFDs are copied, in the blob's byte order (so the file is written in that order).
    """
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    height, width, spp = pixels.shape
    if pixels.dtype not in (np.uint8, np.uint16, np.float32):
        raise ValueError(f"TIFF samples must be uint8, uint16 or float32, not {pixels.dtype}")
    carried = read_directory(strip_exif_header(exif)) if exif else None
    order = carried.byte_order if carried else "<"
    bits = pixels.dtype.itemsize * 8
    integer = pixels.dtype != np.float32

    row_bytes = width * spp * pixels.dtype.itemsize
    rows_per_strip = max(1, min(height, (256 * 1024) // max(row_bytes, 1)))

    def strip(r: int) -> bytes:
        # One strip at a time, so a large image never needs a second full-size copy.
        chunk = np.array(pixels[r : r + rows_per_strip], order="C")
        if integer:
            # Horizontal differencing (predictor 2) makes photographs compress far better; it wraps modulo 2^bits.
            chunk[:, 1:] -= pixels[r : r + rows_per_strip, :-1]
        return zlib.compress(
            chunk.astype(chunk.dtype.newbyteorder("<" if order == "<" else ">"), copy=False).tobytes(), level
        )

    strips = [strip(r) for r in range(0, height, rows_per_strip)]

    color = spp - int(alpha)
    entries: dict[int, Entry] = {}
    if carried:
        entries.update({t: e for t, e in carried.entries.items() if t in DESCRIPTIVE and t != ORIENTATION})
    entries[256] = _entry(256, LONG, [width], order)
    entries[257] = _entry(257, LONG, [height], order)
    entries[258] = _entry(258, SHORT, [bits] * spp, order)
    entries[259] = _entry(259, SHORT, [8], order)  # Adobe Deflate
    entries[262] = _entry(262, SHORT, [2 if color >= 3 else 1], order)  # RGB or BlackIsZero
    entries[277] = _entry(277, SHORT, [spp], order)
    entries[278] = _entry(278, LONG, [rows_per_strip], order)
    entries[279] = _entry(279, LONG, [len(s) for s in strips], order)
    entries[284] = _entry(284, SHORT, [1], order)  # chunky
    if integer:
        entries[317] = _entry(317, SHORT, [2], order)
    if alpha:
        entries[338] = _entry(338, SHORT, [2], order)  # unassociated alpha
    entries[339] = _entry(339, SHORT, [1 if integer else 3] * spp, order)
    if icc:
        entries[ICC_PROFILE] = Entry(ICC_PROFILE, UNDEFINED, len(icc), icc)

    # Layout: header, strips, then IFD0 with its values. Strip offsets are known before the IFD is serialised.
    mark = b"II*\x00" if order == "<" else b"MM\x00*"
    offsets, pos = [], 8
    for s in strips:
        offsets.append(pos)
        pos += len(s) + (len(s) % 2)
    entries[273] = _entry(273, LONG, offsets, order)
    body = b"".join(s + b"\x00" * (len(s) % 2) for s in strips)
    ifd = _serialize(entries, pos, order)
    return mark + struct.pack(f"{order}I", pos) + body + ifd
