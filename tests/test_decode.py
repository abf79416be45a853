"""The decoder: every format Pillow reads becomes an upright 8-bit RGB canonical view; every bad input
becomes a row status with a readable reason, never an exception."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from datajuicer_ray.config import VisionConfig
from datajuicer_ray.io import schema
from datajuicer_ray.io.reader import IMAGE_COL, UPSTREAM_ERROR_COL, UPSTREAM_STATUS_COL
from datajuicer_ray.vision.decode import Decoder


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient(w=320, h=240) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    return Image.fromarray(np.stack([x, 255 - x, np.full_like(x, 80)], -1))


def decode_rows(images, statuses=None, errors=None, **vision):
    n = len(images)
    batch = pa.table(
        {
            IMAGE_COL: pa.array(images, pa.binary()),
            UPSTREAM_STATUS_COL: pa.array(statuses or [None] * n, pa.string()),
            UPSTREAM_ERROR_COL: pa.array(errors or [None] * n, pa.string()),
        }
    )
    out = Decoder(VisionConfig(**vision))(batch)
    return (
        out.column("status").to_pylist(),
        out.column("error").to_pylist(),
        out.column(schema.PIXELS_COL).to_pylist(),
    )


def view(pixels: bytes, size=224) -> np.ndarray:
    return np.frombuffer(pixels, np.uint8).reshape(size, size, 3)


def test_formats_decode_to_rgb_views():
    g = gradient()
    rgba = g.convert("RGBA")
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 0, 255))]
    anim = io.BytesIO()
    frames[0].save(anim, format="GIF", save_all=True, append_images=frames[1:])
    images = [
        encode(g, "JPEG"),
        encode(g, "PNG"),
        encode(g, "WEBP"),
        encode(g.convert("CMYK"), "JPEG"),
        encode(g.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"),
        encode(g.convert("L"), "PNG"),
        encode(rgba, "PNG"),
        anim.getvalue(),
        encode(g, "BMP"),
        encode(g, "TIFF"),
        encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"),
    ]
    status, error, pixels = decode_rows(images)
    assert status == ["ok"] * len(images), error
    assert all(view(p).shape == (224, 224, 3) for p in pixels)
    # animated: the first frame (red)
    assert view(pixels[7])[..., 0].mean() > 200 and view(pixels[7])[..., 2].mean() < 50


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    status, _, pixels = decode_rows([encode(img, "PNG")])
    assert status == ["ok"] and view(pixels[0]).min() == 255


def test_palette_transparency_is_composited_on_white():
    img = Image.new("P", (50, 50), 0)
    img.putpalette([0, 0, 0] * 256)
    status, _, pixels = decode_rows([encode(img, "GIF", transparency=0)])
    assert status == ["ok"] and view(pixels[0]).min() == 255


def test_sixteen_bit_is_scaled_not_clipped():
    arr = (np.linspace(0, 65535, 200 * 200).reshape(200, 200)).astype(np.uint16)
    status, _, pixels = decode_rows([encode(Image.fromarray(arr), "PNG")])
    v = view(pixels[0])
    assert status == ["ok"]
    assert v[0, :, 0].mean() < 40 and v[-1, :, 0].mean() > 215  # a gradient, not a white field


def test_exif_orientation_is_applied():
    # Stored landscape with a red left half; orientation 6 says: rotate 90 deg clockwise to show.
    arr = np.zeros((200, 400, 3), np.uint8)
    arr[:, :200] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    status, _, pixels = decode_rows([encode(Image.fromarray(arr), "JPEG", exif=exif, quality=95)])
    v = view(pixels[0]).astype(int)
    assert status == ["ok"]
    # shown upright it is portrait with the red half on top
    assert v[:100, :, 0].mean() > 200 and v[124:, :, 0].mean() < 60


@pytest.mark.parametrize(
    ("data", "status", "fragment"),
    [
        (None, "empty", "no image bytes"),
        (b"", "empty", "no image bytes"),
        (b"<html>403 Forbidden</html>", "decode_error", "UnidentifiedImageError"),
        (encode(gradient(), "JPEG")[:400], "decode_error", "truncated"),
        (encode(gradient(), "PNG")[:-40], "decode_error", ""),
    ],
)
def test_bad_bytes_become_row_statuses(data, status, fragment):
    got, error, pixels = decode_rows([data])
    assert got == [status] and pixels == [None]
    assert fragment.lower() in error[0].lower()


def test_pixel_limit_rejects_before_decoding():
    big = encode(Image.new("1", (3000, 3000)), "PNG")  # 9 Mpx, a few KB on disk
    got, error, _ = decode_rows([big], max_pixels=4_000_000)
    assert got == ["too_large"] and "9000000 pixels > vision.max_pixels=4000000" in error[0]


def test_pillow_bomb_guard_becomes_too_large():
    bomb = encode(Image.new("1", (14000, 14000)), "PNG")  # > 2x Pillow's default limit
    got, error, _ = decode_rows([bomb], max_pixels=10**10)
    assert got == ["too_large"] and "decompression bomb" in error[0].lower()


def test_byte_limit():
    got, error, _ = decode_rows([encode(gradient(), "PNG")], max_image_bytes=100)
    assert got == ["too_large"] and "vision.max_image_bytes=100" in error[0]


def test_upstream_failures_keep_their_reason():
    got, error, _ = decode_rows(
        [None, encode(gradient(), "JPEG")],
        statuses=["failed_to_download", "success"],
        errors=["HTTP Error 404: Not Found", None],
    )
    assert got == ["upstream:failed_to_download", "ok"]
    assert error == ["HTTP Error 404: Not Found", None]
