"""Decode stage (CPU tasks): encoded image bytes -> the canonical view, or a row status saying why not.

Every format Pillow reads is accepted; what varies between web images (EXIF rotation, CMYK, palettes,
16-bit, alpha, animation) is normalised to an 8-bit RGB canonical view here, once, so the scorer and the
training job see the same pixels.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps

from datajuicer_ray.config import VisionConfig
from datajuicer_ray.io import schema
from datajuicer_ray.io.reader import IMAGE_COL, READ_ERROR, UPSTREAM_ERROR_COL, UPSTREAM_STATUS_COL
from datajuicer_ray.vision.geometry import canonical_view

# Pillow's own bomb check raises only at 2x its limit and warns below that; we apply ours from the
# header (before any pixel is decoded) and turn Pillow's into a row status too.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


class RowRejected(Exception):
    def __init__(self, status: str, error: str):
        super().__init__(error)
        self.status = status
        self.error = error


def open_image(data: bytes | None, max_pixels: int, max_bytes: int) -> Image.Image:
    """Open and fully decode one image as 8-bit RGB, upright; raise RowRejected on any problem."""
    if data is None or len(data) == 0:
        raise RowRejected(schema.EMPTY, "no image bytes")
    if len(data) > max_bytes:
        raise RowRejected(schema.TOO_LARGE, f"{len(data)} bytes > vision.max_image_bytes={max_bytes}")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise RowRejected(schema.TOO_LARGE, str(err)) from None
    except Exception as err:  # Pillow raises many types for unreadable bytes
        raise RowRejected(schema.DECODE_ERROR, f"{type(err).__name__}: {err}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise RowRejected(schema.TOO_LARGE, f"{w}x{h} = {w * h} pixels > vision.max_pixels={max_pixels}")
    if w == 0 or h == 0:
        raise RowRejected(schema.EMPTY, f"image has size {w}x{h}")
    try:
        img.seek(0)  # animated GIF/WebP/PNG: the first frame
        img.load()
        img = ImageOps.exif_transpose(img)
        return to_rgb(img)
    except RowRejected:
        raise
    except Exception as err:
        raise RowRejected(schema.DECODE_ERROR, f"{type(err).__name__}: {err}") from None


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


def canonical_pixels(
    data: bytes | None,
    size: int,
    max_pixels: int = VisionConfig.max_pixels,
    max_bytes: int = VisionConfig.max_image_bytes,
) -> np.ndarray:
    """The contract's canonical view of encoded bytes as uint8 [S, S, 3]; raises RowRejected.

    Curation scores these pixels, and the training job and the report decode through here too, so a patch
    index names the same pixels everywhere (alpha on white, 16-bit scaled, EXIF applied alike).
    """
    return np.asarray(canonical_view(open_image(data, max_pixels, max_bytes), size), dtype=np.uint8)


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
            return schema.DECODE_ERROR, f"{type(err).__name__}: {err}", None
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
        return out.append_column(schema.PIXELS_COL, pa.array(pixels, pa.binary()))
