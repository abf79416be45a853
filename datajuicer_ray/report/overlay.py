"""Patch overlays: the canonical view with the kept patches bright and the dropped ones dimmed.

The picture a reader sees must be the one the scorer saw (CONTRACT.md, "Geometry"): upright (EXIF), RGB,
shorter side to S, centre crop, patch index i at row i // G, column i % G.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from datajuicer_ray.config import VisionConfig
from datajuicer_ray.vision.decode import RowRejected, canonical_image, open_image

DIM = 0.28  # brightness left to dropped patches
EDGE = np.array([255, 214, 10], dtype=np.float32)  # outline of the kept region


class ImageUnreadable(Exception):
    """The image bytes could not be turned into a picture; the message says why."""


def decode_image(data: bytes | None) -> Image.Image:
    """Upright 8-bit RGB picture, through curation's own decoder and limits, so the report shows the
    pixels the scorer saw."""
    try:
        return open_image(data, VisionConfig.max_pixels, VisionConfig.max_image_bytes)
    except RowRejected as err:
        raise ImageUnreadable(err.error) from None


def keep_mask(patch_index: list[int] | np.ndarray, grid: int) -> np.ndarray:
    """G x G booleans, True where the patch was kept. Out-of-range indices are an error, not ignored."""
    idx = np.asarray(patch_index if patch_index is not None else [], dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= grid * grid):
        raise ValueError(f"patch index out of range [0, {grid * grid}): {idx.min()}..{idx.max()}")
    mask = np.zeros(grid * grid, dtype=bool)
    mask[idx] = True
    return mask.reshape(grid, grid)


def overlay(view: Image.Image, patch_index: list[int] | np.ndarray, grid: int) -> Image.Image:
    """The view with dropped patches dimmed and a thin outline where kept meets dropped."""
    size = view.size[0]
    cell = keep_mask(patch_index, grid)
    # Cell edges at round(i * size / grid) so a size that is not a multiple of grid still tiles exactly.
    edges = np.round(np.arange(grid + 1) * size / grid).astype(int)
    owner = np.repeat(np.arange(grid), np.diff(edges))
    kept = cell[owner][:, owner]
    px = np.asarray(view, dtype=np.float32)
    out = np.where(kept[..., None], px, px * DIM)
    out[_boundary(kept)] = EDGE
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")


def _boundary(kept: np.ndarray) -> np.ndarray:
    """Kept pixels with a dropped 4-neighbour: a 1-px outline inside the kept region (not along the border)."""
    pad = np.pad(kept, 1, constant_values=True)
    inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    return kept & ~inner


def render_views(
    data: bytes | None, patch_index, size: int, grid: int
) -> tuple[Image.Image, Image.Image | None]:
    """(canonical view, overlay); the overlay is None where the row has no patch index. The view comes from
    curation's own canonical decoder (reduced JPEG decoding included), so it is the scorer's picture."""
    try:
        view = canonical_image(data, size, VisionConfig.max_pixels, VisionConfig.max_image_bytes)
    except RowRejected as err:
        raise ImageUnreadable(err.error) from None
    if patch_index is None:
        return view, None
    return view, overlay(view, patch_index, grid)


def data_uri(img: Image.Image, fmt: str = "JPEG", quality: int = 82) -> str:
    """Inline the picture so the page needs no other file and no network."""
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=quality, optimize=True)
    else:
        img.save(buf, fmt, optimize=True)
    mime = {"JPEG": "image/jpeg", "PNG": "image/png"}[fmt]
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"
