"""The decoder: every format Pillow reads becomes an upright 8-bit RGB canonical view; every bad input
becomes a row status with a readable reason, never an exception."""

from __future__ import annotations

import io
import subprocess
import sys
import warnings

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from datajuicer_ray.config import VisionConfig
from datajuicer_ray.io import columns
from datajuicer_ray.io.columns import IMAGE_COL, UPSTREAM_ERROR_COL, UPSTREAM_STATUS_COL
from datajuicer_ray.vision import decode as decode_module
from datajuicer_ray.vision.decode import (
    ORIENTATIONS,
    Decoded,
    Decoder,
    canonical_pixels,
    open_image,
    reduced_view,
    transpose_box,
)
from datajuicer_ray.vision.geometry import canonical_view


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
        out.column(columns.PIXELS_COL).to_pylist(),
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
    assert " at 0x" not in error[0]  # the same bytes give the same error text in every run


def test_pixel_limit_rejects_before_decoding(monkeypatch):
    """The limit is read from the header: the over-limit image's pixels are never decoded (no load(), no
    decoder made for its size), while the small image next to it is decoded as usual."""
    from PIL import ImageFile

    loaded: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def spy_load(self):
        loaded.append(self.size)
        return real_load(self)

    decoders: list[str] = []
    real_getdecoder = Image._getdecoder

    def spy_getdecoder(mode, decoder_name, *args, **kwargs):
        decoders.append(decoder_name)
        return real_getdecoder(mode, decoder_name, *args, **kwargs)

    big = encode(Image.new("1", (3000, 3000)), "PNG")  # 9 Mpx, a few KB on disk
    small = encode(gradient(), "PNG")
    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    monkeypatch.setattr(Image, "_getdecoder", spy_getdecoder)
    got, error, pixels = decode_rows([big, small], max_pixels=4_000_000)
    assert got == ["too_large", "ok"] and "9000000 pixels > vision.max_pixels=4000000" in error[0]
    assert pixels[0] is None and pixels[1] is not None
    assert (3000, 3000) not in loaded and (320, 240) in loaded  # the spy sees the decoding it is there for
    assert decoders == ["zip"]  # one PNG decoder: the small image's

    loaded.clear()
    decoders.clear()
    got, _, _ = decode_rows([big], max_pixels=4_000_000)
    assert got == ["too_large"] and loaded == [] and decoders == []


def test_pillow_bomb_guard_becomes_too_large():
    bomb = encode(Image.new("1", (14000, 14000)), "PNG")  # > 2x Pillow's default limit
    got, error, _ = decode_rows([bomb], max_pixels=10**10)
    assert got == ["too_large"] and "decompression bomb" in error[0].lower()


def test_pillow_warning_is_off_only_inside_our_decode(monkeypatch):
    """Between Pillow's limit and ours the decoder says nothing; the same bytes opened by anyone else
    still warn, so the decoder did not switch the warning off for the process."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40x40 = 1600 px: over it, under 2x it
    data = encode(gradient(40, 40), "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert decode_module.decode(data, max_pixels=10_000, max_bytes=10**6).image.size == (40, 40)
    with pytest.warns(Image.DecompressionBombWarning):
        Image.open(io.BytesIO(data)).load()


def test_importing_the_package_changes_no_pillow_setting():
    """MAX_IMAGE_PIXELS and the warning filters, before and after importing every module that decodes."""
    probe = (
        "import warnings, PIL.Image as I\n"
        "before = (I.MAX_IMAGE_PIXELS, [f for f in warnings.filters if f[2] is I.DecompressionBombWarning])\n"
        "import datajuicer_ray, datajuicer_ray.cli, datajuicer_ray.pipeline, datajuicer_ray.vision.decode\n"
        "import datajuicer_ray.vision.gpu_decode, datajuicer_ray.report.inspect, datajuicer_ray.train.data\n"
        "after = (I.MAX_IMAGE_PIXELS, [f for f in warnings.filters if f[2] is I.DecompressionBombWarning])\n"
        "assert before == after, (before, after)\n"
        "assert before[0] == 89478485, before  # Pillow's default: nobody set it before us either\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


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


# -- reduced decoding of large images (DCT scaling, whole-factor reduce) --------------------------


def photo(w: int, h: int) -> Image.Image:
    """A detailed picture of any size: a real photo resized, with a fine checker so aliasing would show."""
    import skimage.data

    img = Image.fromarray(skimage.data.astronaut()).resize((w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(img).astype(np.int16)
    yy, xx = np.mgrid[0:h, 0:w]
    arr += (((yy // 3 + xx // 3) % 2) * 24 - 12)[..., None].astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def full_and_reduced(data: bytes, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    full = canonical_pixels(data, size, full_decode=True).astype(int)
    return full, canonical_pixels(data, size).astype(int)


@pytest.mark.parametrize(("w", "h", "fmt"), [(1800, 1200, "JPEG"), (1000, 1400, "JPEG"), (1300, 1000, "PNG")])
def test_large_images_decode_reduced_close_to_full_size(w, h, fmt):
    data = encode(photo(w, h), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    full, reduced = full_and_reduced(data)
    assert full.shape == reduced.shape == (224, 224, 3)
    assert np.abs(full - reduced).mean() < 2.0
    # Same crop: the pictures line up (a shifted crop would leave the checker's edges misaligned).
    assert np.corrcoef(full.ravel(), reduced.ravel())[0, 1] > 0.99


def test_jpeg_is_decoded_at_a_reduced_dct_scale(monkeypatch):
    sizes = []
    real = decode_module.to_rgb
    monkeypatch.setattr(decode_module, "to_rgb", lambda img: sizes.append(img.size) or real(img))
    canonical_pixels(encode(photo(2000, 1000), "JPEG"), 224)
    canonical_pixels(encode(photo(2000, 1000), "JPEG"), 224, full_decode=True)
    # shorter side 1000 -> 1/2 keeps it >= DRAFT_MARGIN * 224; full_decode decodes every pixel
    assert sizes == [(1000, 500), (2000, 1000)]


def test_small_images_take_the_full_size_path_pixel_for_pixel():
    data = encode(photo(520, 400), "JPEG")  # shorter side < 2 * DRAFT_MARGIN * 224
    full, reduced = full_and_reduced(data)
    assert np.array_equal(full, reduced)
    img = Image.open(io.BytesIO(data)).convert("RGB")
    assert np.array_equal(full, np.asarray(canonical_view(img, 224)))


@pytest.mark.parametrize(("w", "h"), [(1000, 700), (700, 1001), (1999, 1333), (225, 2000)])
def test_the_one_step_crop_box_is_the_canonical_view(w, h):
    img = photo(w, h)
    decoded = Decoded(img, img.size, (0, 0, *img.size))
    one_step = np.asarray(reduced_view(decoded, 224, margin=1e9)).astype(int)  # no reduce step
    diff = np.abs(one_step - np.asarray(canonical_view(img, 224)).astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.05  # Pillow's fixed-point rounding, not a shift


@pytest.mark.parametrize("method", list(Image.Transpose))
def test_transpose_box_follows_pillow(method):
    arr = np.zeros((30, 50), np.uint8)
    arr[4:11, 7:20] = 255
    moved = np.asarray(Image.fromarray(arr).transpose(method))
    ys, xs = np.nonzero(moved)
    assert transpose_box((7, 4, 20, 11), (50, 30), method) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_on_the_reduced_path(orientation):
    upright = photo(1800, 1000)
    undo = {2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}  # how a camera stores a picture shown this way
    stored = upright.transpose(ORIENTATIONS[undo[orientation]]) if orientation > 1 else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    reduced = canonical_pixels(encode(stored, "JPEG", quality=95, exif=exif), 224).astype(int)
    reference = canonical_pixels(encode(upright, "JPEG", quality=95), 224, full_decode=True).astype(int)
    assert np.abs(reduced - reference).mean() < 2.0


def jpeg_claiming(w: int, h: int) -> bytes:
    """A small JPEG whose header (SOF0) claims w x h: a decompression bomb as far as the header says."""
    data = bytearray(encode(Image.new("RGB", (64, 48), (9, 9, 9)), "JPEG"))
    at = data.find(b"\xff\xc0")
    data[at + 5 : at + 9] = h.to_bytes(2, "big") + w.to_bytes(2, "big")
    return bytes(data)


@pytest.mark.parametrize(
    ("w", "h", "max_pixels", "fragment"),
    [(5000, 4000, 4_000_000, "5000x4000 = 20000000 pixels > vision.max_pixels=4000000"),
     (30000, 30000, 10**10, "decompression bomb")],
)  # fmt: skip
def test_header_bombs_are_rejected_before_any_decoding(monkeypatch, w, h, max_pixels, fragment):
    from PIL import ImageFile

    calls = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: calls.append("load"))
    monkeypatch.setattr(Image.Image, "draft", lambda self, *a: calls.append("draft"))
    got, error, _ = decode_rows([jpeg_claiming(w, h)], max_pixels=max_pixels)
    assert got == ["too_large"] and fragment in error[0].lower() and calls == []


def test_full_decode_is_the_old_path():
    data = encode(photo(1600, 1200), "JPEG")
    old = canonical_view(open_image(data, VisionConfig.max_pixels, VisionConfig.max_image_bytes), 224)
    assert np.array_equal(canonical_pixels(data, 224, full_decode=True), np.asarray(old))
    assert open_image(data, VisionConfig.max_pixels, VisionConfig.max_image_bytes).size == (1600, 1200)
