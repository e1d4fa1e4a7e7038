"""Image I/O loses nothing: bit depth, alpha, gray, EXIF orientation, ICC and EXIF; writes are atomic; bad files
give one-line errors."""

from __future__ import annotations

import io as stdio
import os
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageCms, ImageOps

from irtool.errors import ImageError
from irtool.images import files as io
from irtool.images import tiff

RNG = np.random.default_rng(0)


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_bytes(orientation: int = 1, make: str = "irtool-camera") -> bytes:
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = make
    exif.get_ifd(0x8769)[0x829A] = (1, 250)  # ExposureTime, in the Exif sub-IFD
    return exif.tobytes()


def pil_bytes(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    buf = stdio.BytesIO()
    PILImage.fromarray(array).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def random_u8(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def random_u16(*shape: int) -> np.ndarray:
    return RNG.integers(0, 65536, shape, dtype=np.uint16)


def roundtrip(tmp_path, src_bytes: bytes, name: str, fmt: str | None = None) -> tuple[io.Image, io.Image, bytes]:
    src = tmp_path / name
    src.write_bytes(src_bytes)
    image = io.read_image(src)
    dst = tmp_path / f"out_{name}"
    io.write_image(dst, image, fmt=fmt)
    return image, io.read_image(dst), dst.read_bytes()


@pytest.mark.parametrize("suffix", [".png", ".tiff"])
def test_16bit_rgb_comes_back_16bit_and_bit_exact(tmp_path, suffix):
    pixels = random_u16(19, 23, 3)
    ok, encoded = cv2.imencode(suffix, pixels[..., ::-1])
    image, back, _ = roundtrip(tmp_path, encoded.tobytes(), f"deep{suffix}")
    assert image.dtype == np.uint16 and image.bit_depth == 16 and not image.gray and image.alpha is None
    assert back.dtype == np.uint16
    assert np.array_equal(io.to_array(back), pixels)


def test_dark_16bit_image_is_still_16bit(tmp_path):
    """Bit depth comes from the sample type, not from the values (Real-ESRGAN guesses from max > 256)."""
    pixels = RNG.integers(0, 200, (8, 9, 3), dtype=np.uint16)
    ok, encoded = cv2.imencode(".png", pixels)
    image, back, _ = roundtrip(tmp_path, encoded.tobytes(), "dark.png")
    assert image.dtype == np.uint16 and back.dtype == np.uint16
    assert np.array_equal(io.to_array(back), pixels[..., ::-1])


@pytest.mark.parametrize(
    "pixels,suffix",
    [
        (random_u8(17, 21, 4), ".png"),
        (random_u16(17, 21, 4), ".png"),
        (random_u8(17, 21, 4), ".tiff"),
        (random_u16(17, 21, 4), ".tiff"),
        (random_u8(17, 21, 4), ".webp"),
    ],
)
def test_alpha_is_carried_through_untouched(tmp_path, pixels, suffix):
    if suffix == ".tiff":
        encoded = tiff.write_tiff(pixels, alpha=True)
    else:
        params = [cv2.IMWRITE_WEBP_QUALITY, 101] if suffix == ".webp" else []
        if suffix == ".webp":  # lossless WebP may rewrite the colour of fully transparent pixels
            pixels = pixels.copy()
            pixels[..., 3] |= 1
        encoded = cv2.imencode(suffix, pixels[..., [2, 1, 0, 3]], params)[1].tobytes()
    src = tmp_path / f"a{suffix}"
    src.write_bytes(encoded)
    image = io.read_image(src)
    assert image.alpha is not None and image.alpha.dtype == pixels.dtype
    assert np.array_equal(image.alpha, pixels[..., 3])
    # colours are not premultiplied on read (OpenCV's TIFF reader would premultiply 8-bit RGBA)
    assert np.array_equal(io.to_array(image)[..., :3], pixels[..., :3])
    restored = 1.0 - image.rgb  # any change to the colour must leave alpha alone
    io.write_image(tmp_path / f"out{suffix}", image, restored)
    back = io.read_image(tmp_path / f"out{suffix}")
    assert np.array_equal(back.alpha, pixels[..., 3])
    if suffix != ".webp":  # lossy colour
        assert np.array_equal(io.to_array(back)[..., :3], io.to_array(image, restored)[..., :3])


@pytest.mark.parametrize("mode,dtype", [("L", np.uint8), ("I;16", np.uint16), ("LA", np.uint8)])
def test_gray_in_gives_gray_out(tmp_path, mode, dtype):
    if mode == "LA":
        src_bytes = pil_bytes(random_u8(12, 15, 2), "PNG")
    elif dtype == np.uint16:
        src_bytes = cv2.imencode(".png", random_u16(12, 15))[1].tobytes()
    else:
        src_bytes = pil_bytes(random_u8(12, 15), "PNG")
    image, back, out_bytes = roundtrip(tmp_path, src_bytes, "gray.png")
    assert image.gray and back.gray and image.rgb.shape == (12, 15, 3)
    assert back.dtype == dtype
    assert np.array_equal(io.to_array(back), io.to_array(image))
    decoded = cv2.imdecode(np.frombuffer(out_bytes, np.uint8), cv2.IMREAD_UNCHANGED)
    if mode == "LA":
        assert decoded.shape[2] == 4 and image.alpha is not None  # OpenCV cannot write gray + alpha; RGBA it is
        assert np.array_equal(decoded[..., 0], decoded[..., 2])
    else:
        assert decoded.ndim == 2 and decoded.dtype == dtype


def test_gray_tiff_with_alpha_stays_gray_with_alpha(tmp_path):
    pixels = random_u16(10, 11, 2)
    src = tmp_path / "ga.tiff"
    src.write_bytes(tiff.write_tiff(pixels, alpha=True))
    image = io.read_image(src)
    assert image.gray and np.array_equal(image.alpha, pixels[..., 1])
    io.write_image(tmp_path / "out.tiff", image)
    back = io.read_image(tmp_path / "out.tiff")
    assert back.gray and np.array_equal(io.to_array(back), pixels)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_exif_orientation_is_applied_on_read_and_reset_on_write(tmp_path, orientation, fmt):
    pixels = random_u8(20, 30, 3)
    src_bytes = pil_bytes(pixels, fmt, exif=exif_bytes(orientation), **({"quality": 95} if fmt == "JPEG" else {}))
    image, back, _ = roundtrip(tmp_path, src_bytes, f"o.{fmt.lower()}")
    with PILImage.open(stdio.BytesIO(src_bytes)) as pil:
        pil.load()
        expected = np.asarray(ImageOps.exif_transpose(pil))
    assert image.rgb.shape[:2] == expected.shape[:2]
    got = io.to_array(image).astype(int)
    if fmt == "JPEG":  # decoders may differ by a level or two
        assert np.abs(got - expected).max() <= 3
    else:
        assert np.array_equal(got, expected)
    # written upright, tagged upright, other tags kept: a viewer shows the same picture, not rotated twice
    assert back.rgb.shape == image.rgb.shape and back.orientation == 1
    with PILImage.open(tmp_path / f"out_o.{fmt.lower()}") as pil:
        written = pil.getexif()
        assert written.get(0x0112, 1) == 1 and written.get(0x010F) == "irtool-camera"
        assert written.get_ifd(0x8769).get(0x829A) == (1, 250)


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("JPEG", ".jpg"), ("WEBP", ".webp"), ("TIFF", ".tiff")])
def test_icc_profile_and_exif_survive(tmp_path, fmt, suffix):
    icc = srgb_icc()
    src_bytes = pil_bytes(random_u8(16, 16, 3), fmt, icc_profile=icc, exif=exif_bytes())
    image, back, _ = roundtrip(tmp_path, src_bytes, f"icc{suffix}")
    assert image.icc == icc and back.icc == icc
    with PILImage.open(tmp_path / f"out_icc{suffix}") as written:
        assert written.info.get("icc_profile") == icc
        assert written.getexif().get(0x010F) == "irtool-camera"


@pytest.mark.parametrize("target", ["png", "jpeg", "webp", "tiff"])
def test_16bit_tiff_metadata_moves_to_other_formats(tmp_path, target):
    """A camera's 16-bit TIFF with ICC and EXIF, saved as another format, keeps both."""
    icc = srgb_icc()
    src = tmp_path / "scan.tiff"
    src.write_bytes(tiff.write_tiff(random_u16(12, 14, 3), icc=icc, exif=exif_bytes()))
    image = io.read_image(src)
    warnings = io.write_image(tmp_path / f"out.{target}", image, fmt=target)
    back = io.read_image(tmp_path / f"out.{target}")
    assert back.icc == icc
    with PILImage.open(tmp_path / f"out.{target}") as pil:
        assert pil.getexif().get(0x010F) == "irtool-camera"
    assert back.dtype == (np.uint16 if target in ("png", "tiff") else np.uint8)
    assert bool(warnings) == (target in ("jpeg", "webp"))  # "cannot hold 16-bit samples"


def test_format_limits_give_warnings_not_silence(tmp_path):
    src = tmp_path / "a.png"
    src.write_bytes(cv2.imencode(".png", random_u8(8, 8, 4))[1].tobytes())
    image = io.read_image(src)
    warnings = io.write_image(tmp_path / "a.jpg", image, fmt="jpg")
    assert any("alpha" in w for w in warnings)
    assert io.read_image(tmp_path / "a.jpg").alpha is None


def test_write_never_replaces_without_overwrite_and_is_atomic(tmp_path, monkeypatch):
    image = io.from_array(random_u8(8, 8, 3))
    target = tmp_path / "sub" / "out.png"
    io.write_image(target, image)
    before = target.read_bytes()
    with pytest.raises(ImageError, match="already exists"):
        io.write_image(target, io.from_array(random_u8(8, 8, 3)))
    assert target.read_bytes() == before
    io.write_image(target, io.from_array(random_u8(8, 8, 3)), overwrite=True)
    assert target.read_bytes() != before
    # the temp file's owner-only mode does not leak into the output: it gets the umask's usual mode
    mask = os.umask(0o022)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask

    # Interrupted in the middle of a write (Ctrl-C while flushing): no partial target, no temp file left behind.
    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        io.write_image(tmp_path / "new.png", image)
    with pytest.raises(KeyboardInterrupt):
        io.write_image(target, image, overwrite=True)
    assert not (tmp_path / "new.png").exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out.png", "sub"]


def png_claiming(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("empty.png", b"", "empty file"),
        ("notes.jpg", b"these are not pixels" * 10, "not an image"),
        ("cut.png", cv2.imencode(".png", random_u8(32, 32, 3))[1].tobytes()[:300], "truncated PNG"),
        ("cut.jpg", cv2.imencode(".jpg", random_u8(32, 32, 3))[1].tobytes()[:200], "JPEG"),
        ("cut.tiff", tiff.write_tiff(random_u8(32, 32, 3))[:100], "TIFF"),
        ("huge.png", png_claiming(100_000, 100_000), "over the"),
        ("zero.png", png_claiming(0, 10), "0x10"),
    ],
)
def test_bad_files_raise_one_line_errors_naming_the_file(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError) as info:
        io.read_image(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and reason in message


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        io.read_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a folder"):
        io.read_image(tmp_path)


def test_arrays_round_trip_through_the_python_api_frame():
    for array in (random_u8(5, 6, 3), random_u16(5, 6), random_u8(5, 6, 4), RNG.random((5, 6, 3)).astype(np.float32)):
        image = io.from_array(array)
        assert np.array_equal(io.to_array(image), array)


def test_tiff_writer_output_is_read_by_other_readers():
    tifffile = pytest.importorskip("tifffile")
    for pixels in (random_u16(9, 10, 3), random_u8(9, 10), RNG.random((9, 10, 4)).astype(np.float32)):
        encoded = tiff.write_tiff(pixels, alpha=pixels.ndim == 3 and pixels.shape[2] == 4, exif=exif_bytes())
        assert np.array_equal(tifffile.imread(stdio.BytesIO(encoded)), pixels)


def test_an_icc_profile_that_no_longer_fits_is_dropped_with_a_warning(tmp_path):
    cmyk_like = bytearray(srgb_icc())
    cmyk_like[16:20] = b"CMYK"  # as in a CMYK JPEG, which OpenCV decodes to RGB
    image = io.from_array(random_u8(8, 8, 3))
    image.icc = bytes(cmyk_like)
    warnings = io.write_image(tmp_path / "a.png", image)
    assert any("CMYK ICC profile does not fit" in w for w in warnings)
    assert io.read_image(tmp_path / "a.png").icc is None


def test_the_exif_thumbnail_is_unlinked_so_it_cannot_show_the_old_picture():
    # IFD0 (Make="ab") -> IFD1 (JPEGInterchangeFormat), little-endian, built by hand
    ifd0 = struct.pack("<H", 1) + struct.pack("<HHI", 0x010F, 2, 3) + b"ab\x00\x00" + struct.pack("<I", 26)
    ifd1 = struct.pack("<H", 1) + struct.pack("<HHII", 0x0201, 4, 1, 0) + struct.pack("<I", 0)
    blob = b"II*\x00" + struct.pack("<I", 8) + ifd0 + ifd1
    assert struct.unpack("<I", blob[22:26])[0] == 26
    dropped = tiff.drop_thumbnail(b"Exif\x00\x00" + blob)
    assert len(dropped) == len(blob) and struct.unpack("<I", dropped[22:26])[0] == 0
    assert dropped[:22] == blob[:22] and dropped[26:] == blob[26:]
    assert tiff.read_directory(dropped).entries[0x010F].data == b"ab\x00"


def test_bmp_round_trips_8bit_and_says_it_drops_metadata(tmp_path):
    pixels = random_u8(9, 11, 3)
    (tmp_path / "a.bmp").write_bytes(cv2.imencode(".bmp", pixels[..., ::-1])[1].tobytes())
    image = io.read_image(tmp_path / "a.bmp")
    assert image.format == "bmp" and np.array_equal(io.to_array(image), pixels)
    image.icc = srgb_icc()
    warnings = io.write_image(tmp_path / "b.bmp", image)
    assert np.array_equal(io.to_array(io.read_image(tmp_path / "b.bmp")), pixels)
    assert any("cannot hold ICC/EXIF" in w for w in warnings)


def test_a_lossless_webp_stays_lossless(tmp_path):
    pixels = random_u8(12, 14, 3)
    (tmp_path / "a.webp").write_bytes(pil_bytes(pixels, "WEBP", lossless=True))
    image = io.read_image(tmp_path / "a.webp")
    assert image.lossless
    io.write_image(tmp_path / "b.webp", image)
    back = io.read_image(tmp_path / "b.webp")
    assert back.lossless and np.array_equal(io.to_array(back), pixels)
    (tmp_path / "c.webp").write_bytes(pil_bytes(pixels, "WEBP", quality=80))
    assert not io.read_image(tmp_path / "c.webp").lossless


# --------------------------------------------------------------------------------------------------------------------
# The one scaling (images.pixels) and the one image <-> tensor pair (images.tensors)


def test_integer_samples_survive_the_float_round_trip_exactly():
    from irtool.images import pixels

    for dtype, top in ((np.uint8, 255), (np.uint16, 65535)):
        every = np.arange(top + 1, dtype=dtype)
        values = pixels.to_float(every)
        assert values.dtype == np.float32 and values.min() == 0.0 and values.max() == 1.0
        assert np.array_equal(pixels.from_float(values, dtype), every)
    # uint8 scaling is torchvision's ToTensor bit for bit: float32 division by 255
    assert np.array_equal(pixels.to_float(np.arange(256, dtype=np.uint8)), np.arange(256, dtype=np.float32) / 255)
    # floats are clipped, NaN is 0 and +Inf is 1 on the way out
    assert pixels.to_float(np.array([-0.5, 0.25, 2.0, np.nan], np.float32)).tolist() == [0.0, 0.25, 1.0, 0.0]
    assert pixels.from_float(np.array([np.nan, np.inf, -1.0, 0.5]), np.uint8).tolist() == [0, 255, 0, 128]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("layout", ["gray", "rgb", "rgba", "gray+alpha"])
def test_array_image_tensor_and_back_is_exact(dtype, layout):
    import torch

    from irtool.images.tensors import from_tensor, to_tensor

    top = np.iinfo(dtype).max
    channels = {"gray": None, "rgb": 3, "rgba": 4, "gray+alpha": 2}[layout]
    shape = (7, 9) if channels is None else (7, 9, channels)
    array = RNG.integers(0, top + 1, size=shape, dtype=dtype)
    array.flat[:2] = (0, top)
    image = io.from_array(array)
    x = to_tensor(image.rgb[None])
    assert x.shape == (1, 3, 7, 9) and x.dtype == torch.float32 and x.is_contiguous()
    assert torch.equal(to_tensor(image.rgb), x[0])  # one image is the batch's first, without the batch axis
    back = from_tensor(x[0])
    assert back.shape == (7, 9, 3) and back.dtype == np.float32
    restored = io.to_array(image, back)
    assert restored.dtype == array.dtype and np.array_equal(restored, array)  # gray from luma, alpha untouched


def test_tensors_keep_layout_and_clamp_only_on_the_way_out():
    import torch

    from irtool.images.tensors import channels_first, from_tensor, to_tensor

    u8 = RNG.integers(0, 256, size=(2, 5, 6, 3), dtype=np.uint8)
    assert channels_first(u8).dtype == torch.uint8 and channels_first(u8).shape == (2, 3, 5, 6)
    assert torch.equal(channels_first(u8)[1, 2], torch.from_numpy(u8[1, ..., 2]))
    assert torch.equal(to_tensor(u8), channels_first(u8).float() / 255)
    raw = torch.tensor([[[-0.5, 1.5]]])
    assert from_tensor(raw).tolist() == [[[0.0], [1.0]]]
    assert from_tensor(raw, clamp=False).tolist() == [[[-0.5], [1.5]]]
    with pytest.raises(ValueError, match="expected"):
        from_tensor(torch.zeros(3, 4))
