"""Patch-grid geometry shared by curation and training (CONTRACT.md, "Geometry").

Canonical view: resize the shorter side to S (bicubic), centre-crop S x S. The target grid is G x G with
G = S / P. A patch index is row-major in [0, G*G).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image


def canonical_view(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (bicubic), then the centred ``size`` x ``size`` crop. RGB in, RGB out."""
    w, h = img.size
    scale = size / min(w, h)
    # max(size, ...) keeps rounding from leaving a side one pixel short of the crop.
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


@lru_cache(maxsize=32)
def area_resample_matrix(src: int, dst: int) -> np.ndarray:
    """R (dst x src): R[i, j] is the share of target cell i covered by source cell j (rows sum to 1).

    Exact area weighting, unlike adaptive pooling, which rounds bin edges to whole source cells.
    """
    r = np.zeros((dst, src), dtype=np.float64)
    for i in range(dst):
        lo, hi = i * src / dst, (i + 1) * src / dst
        for j in range(int(np.floor(lo)), min(src, int(np.ceil(hi)))):
            r[i, j] = max(0.0, min(hi, j + 1) - max(lo, j))
    return r / r.sum(axis=1, keepdims=True)


def resample_scores(scores: np.ndarray, grid: int) -> np.ndarray:
    """Resample score maps [..., g, g] by area onto [..., grid, grid]."""
    g = scores.shape[-1]
    if g == grid:
        return scores
    r = area_resample_matrix(g, grid).astype(scores.dtype, copy=False)
    return r @ scores @ r.T


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Row-major indices of the ``k`` highest cells of a G x G map, ascending.

    Ties go to the lower index (stable sort), so the result is deterministic.
    """
    flat = np.asarray(scores).reshape(-1)
    k = max(0, min(k, flat.size))
    order = np.argsort(-flat, kind="stable")[:k]
    return np.sort(order).astype(np.int16)


def keep_count(keep_ratio: float, grid: int) -> int:
    return round(keep_ratio * grid * grid)


# Luminance standard deviation (0-1) below which a cell holds no content: JPEG noise and gentle gradients of a
# plain sky or wall stay under it, any edge or texture is well above it.
CONTENT_FLOOR = 0.02


def patch_content(view: np.ndarray, grid: int, floor: float = CONTENT_FLOOR) -> np.ndarray:
    """How much there is to see in each cell of a uint8 view [S, S, 3]: its luminance standard deviation
    above ``floor`` (0 for a flat cell), on the G x G grid."""
    size = view.shape[0]
    p = size // grid
    luma = view.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0
    std = luma[: grid * p, : grid * p].reshape(grid, p, grid, p).std(axis=(1, 3))
    return np.clip(std - floor, 0.0, None)


def mass_keep_count(
    scores: np.ndarray, keep_mass: float, min_keep: int, max_keep: int, content: np.ndarray | None = None
) -> int:
    """The fewest top cells (in ``scores``' order) holding ``keep_mass`` of the map, clamped to
    ``[min_keep, max_keep]``, so ``top_k_indices(scores, count)`` is the kept set.

    With ``content`` (:func:`patch_content`), the mass is the scores weighted by it: attention that falls on
    flat cells holds nothing to keep. Without it, a featureless image (whose [CLS] attention is near uniform)
    would keep the most patches of all; with it, a plain image keeps ``min_keep``, one subject on a plain
    background a few, a scene busy everywhere many.
    """
    flat = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-flat, kind="stable")
    weight = flat if content is None else flat * np.asarray(content, dtype=np.float64).reshape(-1)
    total = weight.sum()
    if total <= 0:
        return int(min(max(min_keep, 0), flat.size))
    ordered = np.cumsum(weight[order]) / total
    # The small tolerance keeps float rounding from costing one extra cell at an exact boundary.
    k = int(np.searchsorted(ordered, keep_mass - 1e-9) + 1)
    return int(min(max(k, min_keep), max_keep, flat.size))


def flip_indices(indices: np.ndarray, grid: int) -> np.ndarray:
    """Indices of the same pixels after a horizontal flip of the canonical view, ascending."""
    idx = np.asarray(indices, dtype=np.int64)
    rows, cols = idx // grid, idx % grid
    return np.sort(rows * grid + (grid - 1 - cols)).astype(np.int16)
