"""Decode stage (CPU tasks): encoded image bytes -> the canonical view, or a row status saying why not.

Every format Pillow reads is accepted; what varies between web images (EXIF rotation, CMYK, palettes,
16-bit, alpha, animation) is normalised to an 8-bit RGB canonical view here, once, so the scorer, the
training job and the report see the same pixels.

Images much larger than the view are not decoded at full size: a JPEG is decoded in the DCT domain at
1/2, 1/4 or 1/8 scale (``Image.draft``) and any other format is box-reduced by a whole factor before the
bicubic resize, keeping the shorter side at least ``DRAFT_MARGIN`` x S. The crop is then taken from the
reduced picture at the exact coordinates the full-size canonical view uses, so a patch index still names
the same part of the image; only the resampling of its pixels differs (benchmarks/bench_decode.py
measures the speed and the kept-patch agreement; docs/scale.md uses the rates).
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import ExifTags, Image

from datajuicer_ray.config import VisionConfig
from datajuicer_ray.io import schema
from datajuicer_ray.io.columns import IMAGE_COL, PIXELS_COL, UPSTREAM_ERROR_COL, UPSTREAM_STATUS_COL
from datajuicer_ray.io.reader import READ_ERROR
from datajuicer_ray.vision.geometry import canonical_view

# The reduced picture keeps its shorter side >= DRAFT_MARGIN * S, so the final bicubic resize still
# shrinks it by >= DRAFT_MARGIN. Measured on web-sized JPEGs with a shorter side >= 2 * S
# (benchmarks/bench_decode.py; kept-patch IoU against full-size decoding, tiny DINO / real DINOv2-S):
# margin 1.0: 2.9x faster per core, IoU 0.971 / 0.977; 1.25: 2.7x, 0.981 / 0.985; 2.0: IoU ~0.99 but it
# reduces too few web images to matter (1.1x). Images with a shorter side under 2 * DRAFT_MARGIN * S
# cannot be reduced by a whole factor and take the full-size path, pixel for pixel as before.
DRAFT_MARGIN = 1.25

Box = tuple[float, float, float, float]

# Pillow's messages name a Python object's address ("<_io.BytesIO object at 0x7f...>"): it would make the
# `error` column differ between two runs over the same bytes.
_ADDRESS = re.compile(r" ?<[^<>]* at 0x[0-9a-f]+>")

# EXIF orientation -> the transpose that shows the picture upright (as PIL.ImageOps.exif_transpose).
ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


_SWAPS_AXES = {
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
}


class RowRejected(Exception):
    def __init__(self, status: str, error: str):
        super().__init__(error)
        self.status = status
        self.error = error


@dataclass(frozen=True)
class Decoded:
    """An upright 8-bit RGB picture, the upright size of the original, and where the whole original
    lies in the picture's pixel coordinates.

    ``region`` is ``(0, 0, w, h)`` after a full-size decode. After DCT scaling by d it spans W/d x H/d,
    which the decoder rounds up to whole pixels: the last row or column of the picture reaches a little
    beyond the original, and after an EXIF flip that partial row or column is on the other side.
    """

    image: Image.Image
    original: tuple[int, int]
    region: Box


@contextmanager
def under_our_pixel_limit() -> Iterator[None]:
    """Pillow's DecompressionBombWarning off while we open and decode bytes that ``vision.max_pixels``
    limits: we apply our limit from the header, before any pixel is decoded, and turn Pillow's own error
    (2x its limit) into a row status, so its warning would only repeat what the row says.

    The caller's warning filters come back on exit (``warnings.catch_warnings``), so importing this module
    or decoding a row leaves the warning on for every other Pillow user in the process. A decorator too.
    catch_warnings swaps the process-wide filter list: two threads decoding at once could restore each
    other's list; the decode stage runs one decode per worker process at a time, so it is not a concern."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


@under_our_pixel_limit()
def open_header(data: bytes | None, max_pixels: int, max_bytes: int) -> Image.Image:
    """Open the image lazily and apply every limit that the header can decide; nothing is decoded yet."""
    if data is None or len(data) == 0:
        raise RowRejected(schema.EMPTY, "no image bytes")
    if len(data) > max_bytes:
        raise RowRejected(schema.TOO_LARGE, f"{len(data)} bytes > vision.max_image_bytes={max_bytes}")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise RowRejected(schema.TOO_LARGE, str(err)) from None
    except Exception as err:  # Pillow raises many types for unreadable bytes
        raise RowRejected(schema.DECODE_ERROR, reason(err)) from None
    w, h = img.size
    if w * h > max_pixels:
        raise RowRejected(schema.TOO_LARGE, f"{w}x{h} = {w * h} pixels > vision.max_pixels={max_pixels}")
    if w == 0 or h == 0:
        raise RowRejected(schema.EMPTY, f"image has size {w}x{h}")
    return img


def reason(err: Exception) -> str:
    """A row's error text: the exception's type and message, without object addresses."""
    return _ADDRESS.sub("", f"{type(err).__name__}: {err}")


@under_our_pixel_limit()
def decode(data: bytes | None, max_pixels: int, max_bytes: int, min_side: int | None = None) -> Decoded:
    """Decode one image as upright 8-bit RGB; raise RowRejected on any problem.

    With ``min_side``, a JPEG whose shorter side is at least twice that is decoded at the smallest DCT
    scale (1/2, 1/4, 1/8) that keeps the shorter side >= ``min_side``; without it, at full size.
    """
    img = open_header(data, max_pixels, max_bytes)
    try:
        img.seek(0)  # animated GIF/WebP/PNG: the first frame
        original = img.size
        region: Box = (0, 0, *img.size)
        if min_side is not None:
            region = _draft(img, min_side) or region
        img.load()
        method = ORIENTATIONS.get(img.getexif().get(ExifTags.Base.Orientation, 1))
        if method is not None:
            region = transpose_box(region, img.size, method)
            img = img.transpose(method)
            if method in _SWAPS_AXES:
                original = original[::-1]
        return Decoded(to_rgb(img), original, region)
    except RowRejected:
        raise
    except Exception as err:
        raise RowRejected(schema.DECODE_ERROR, reason(err)) from None


def _draft(img: Image.Image, min_side: int) -> Box | None:
    """Ask the JPEG decoder for DCT-domain downscaling; the original's box in the reduced picture, or
    None where nothing was reduced (not a JPEG, or too small to halve)."""
    w, h = img.size
    short = min(w, h)
    if short < 2 * min_side:
        return None
    # Pillow picks the largest scale 1/d with size // request >= d on both sides: requesting the
    # aspect-preserving size whose shorter side is min_side keeps the decoded shorter side >= min_side.
    drafted = img.draft("RGB", (math.ceil(w * min_side / short), math.ceil(h * min_side / short)))
    if drafted is None or drafted[1][2] >= w:
        return None
    return drafted[1]


def transpose_box(box: Box, size: tuple[int, int], method: Image.Transpose) -> Box:
    """Where ``box`` (in an image of ``size``) lies after ``Image.transpose(method)``."""
    w, h = size
    x0, y0, x1, y1 = box
    corners = [_transpose_point(x, y, w, h, method) for x, y in ((x0, y0), (x1, y1))]
    (ax, ay), (bx, by) = corners
    return (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))


def _transpose_point(x: float, y: float, w: int, h: int, method: Image.Transpose) -> tuple[float, float]:
    t = Image.Transpose
    return {
        t.FLIP_LEFT_RIGHT: (w - x, y),
        t.FLIP_TOP_BOTTOM: (x, h - y),
        t.ROTATE_90: (y, w - x),  # counter-clockwise
        t.ROTATE_180: (w - x, h - y),
        t.ROTATE_270: (h - y, x),  # clockwise
        t.TRANSPOSE: (y, x),
        t.TRANSVERSE: (h - y, w - x),
    }[method]


def open_image(data: bytes | None, max_pixels: int, max_bytes: int) -> Image.Image:
    """Open and fully decode one image as 8-bit RGB, upright, at full size; raise RowRejected."""
    return decode(data, max_pixels, max_bytes).image


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB. Transparency is composited on white (logos on a black field would score as objects)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # Pillow's convert() clips 16/32-bit values at 255 (a white image); scale to the used range instead.
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


def canonical_box(width: int, height: int, size: int) -> Box:
    """The canonical crop in the picture's own coordinates: what ``geometry.canonical_view`` keeps
    (shorter side to ``size``, the same rounding, centred ``size`` x ``size``), as a source box."""
    scale = size / min(width, height)
    nw, nh = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    sx, sy = width / nw, height / nh
    return (left * sx, top * sy, (left + size) * sx, (top + size) * sy)


def reduced_view(decoded: Decoded, size: int, margin: float = DRAFT_MARGIN) -> Image.Image:
    """The canonical view from a (possibly reduced) picture in one resize: the canonical crop of the
    original, mapped into the picture's coordinates; ``reducing_gap`` box-reduces by a whole factor
    first while the resize still shrinks by >= ``margin``. Pillow's resize reads past the box edges as
    the full image would, so on a full-size picture this equals resize-then-crop."""
    x0, y0, x1, y1 = decoded.region
    w, h = decoded.original
    fx, fy = (x1 - x0) / w, (y1 - y0) / h
    bx0, by0, bx1, by1 = canonical_box(w, h, size)
    box = (x0 + bx0 * fx, y0 + by0 * fy, x0 + bx1 * fx, y0 + by1 * fy)
    return decoded.image.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=margin)


def canonical_image(
    data: bytes | None,
    size: int,
    max_pixels: int = VisionConfig.max_pixels,
    max_bytes: int = VisionConfig.max_image_bytes,
    *,
    full_decode: bool = False,
) -> Image.Image:
    """The contract's canonical view of encoded bytes as an RGB ``size`` x ``size`` picture; raises
    RowRejected. Images whose shorter side is >= 2 * DRAFT_MARGIN * size are decoded reduced (see the
    module docstring); ``full_decode=True`` is the reference the decode benchmark compares against."""
    min_side = math.ceil(DRAFT_MARGIN * size)
    decoded = decode(data, max_pixels, max_bytes, None if full_decode else min_side)
    if full_decode or min(decoded.original) < 2 * min_side:
        return canonical_view(decoded.image, size)
    return reduced_view(decoded, size, DRAFT_MARGIN)


def canonical_pixels(
    data: bytes | None,
    size: int,
    max_pixels: int = VisionConfig.max_pixels,
    max_bytes: int = VisionConfig.max_image_bytes,
    *,
    full_decode: bool = False,
) -> np.ndarray:
    """The contract's canonical view of encoded bytes as uint8 [S, S, 3]; raises RowRejected.

    Curation scores these pixels, and the training job and the report decode through here too, so a patch
    index names the same pixels everywhere (alpha on white, 16-bit scaled, EXIF applied alike).
    """
    view = canonical_image(data, size, max_pixels, max_bytes, full_decode=full_decode)
    return np.asarray(view, dtype=np.uint8)


def upstream_rejection(status: str | None, error: str | None) -> RowRejected | None:
    """img2dataset marks failed downloads with a status other than success: keep the row, say why."""
    if status is None or status == "success":
        return None
    if status == READ_ERROR:  # set by our reader for a file that could not be read
        return RowRejected(READ_ERROR, error or "unreadable input file")
    return RowRejected(f"{schema.UPSTREAM}{status}", error or f"img2dataset status {status!r}")


class Decoder:
    """``batch -> batch``: adds ``status``, ``error`` and the canonical view ``_pixels`` (S*S*3 uint8 bytes)."""

    def __init__(self, vision: VisionConfig):
        self.size = vision.image_size
        self.max_pixels = vision.max_pixels
        self.max_bytes = vision.max_image_bytes

    def decode_one(self, data: bytes | None, up_status: str | None, up_error: str | None):
        rejected = upstream_rejection(up_status, up_error)
        if rejected is not None:
            return rejected.status, rejected.error, None
        try:
            view = canonical_pixels(data, self.size, self.max_pixels, self.max_bytes)
        except RowRejected as err:
            return err.status, err.error, None
        except Exception as err:  # noqa: BLE001 - any surprise stays in its row
            return schema.DECODE_ERROR, reason(err), None
        return schema.OK, None, view.tobytes()

    def __call__(self, batch: pa.Table) -> pa.Table:
        images = batch.column(IMAGE_COL).to_pylist()
        up_status = batch.column(UPSTREAM_STATUS_COL).to_pylist()
        up_error = batch.column(UPSTREAM_ERROR_COL).to_pylist()
        results = [self.decode_one(d, s, e) for d, s, e in zip(images, up_status, up_error)]
        statuses, errors, pixels = zip(*results) if results else ((), (), ())
        out = batch.drop_columns([UPSTREAM_STATUS_COL, UPSTREAM_ERROR_COL])
        out = out.append_column("status", pa.array(statuses, pa.string()))
        out = out.append_column("error", pa.array(errors, pa.string()))
        return out.append_column(PIXELS_COL, pa.array(pixels, pa.binary()))
