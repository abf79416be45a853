"""Patch-grid geometry shared by curation and training (CONTRACT.md, "Geometry").

Canonical view: resize the shorter side to S (bicubic), centre-crop S x S. The target grid is G x G with
G = S / P. A patch index is row-major in [0, G*G). :class:`Geometry` is the one place S, P and G (and the
keep count of a ratio) are worked out: from the config when curating, from the run record when reading.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from datajuicer_ray.config import VisionConfig


@dataclass(frozen=True)
class Geometry:
    """S (canonical view side), P (patch side, the trained model's) and the fixed retention's keep ratio."""

    size: int
    patch: int
    keep_ratio: float | None = None  # None: a table whose run record predates it, or a model's geometry

    def __post_init__(self) -> None:
        if self.patch < 1 or self.size < self.patch or self.size % self.patch:
            raise ValueError(f"no patch grid: S={self.size} is not a positive multiple of P={self.patch}")

    @property
    def grid(self) -> int:
        """G: the side of the target patch grid."""
        return self.size // self.patch

    @property
    def cells(self) -> int:
        return self.grid * self.grid

    def keep(self, ratio: float) -> int:
        """Patches kept of G*G at ``ratio``."""
        return keep_count(ratio, self.grid)

    @property
    def keep_count(self) -> int:
        """Patches every row keeps under fixed retention at the run's keep ratio."""
        if self.keep_ratio is None:
            raise ValueError("this geometry has no keep ratio")
        return self.keep(self.keep_ratio)

    @classmethod
    def from_vision(cls, vision: VisionConfig) -> Geometry:
        return cls(vision.image_size, vision.patch_size, vision.keep_ratio)

    @classmethod
    def from_record(cls, record: Mapping[str, Any], where: str) -> Geometry:
        """The geometry a run record's ``geometry`` entry states; ``where`` names the table in errors.

        A table's indices mean nothing without it, so a missing or inconsistent entry is an error, never a
        guess at the usual 224/16.
        """
        g = record.get("geometry") if isinstance(record, Mapping) else None
        if not g:
            raise FileNotFoundError(
                f"{where}: no run record (_runs/*.json) with the table's geometry (S, P, G); "
                "patch indices cannot be placed without it"
            )
        try:
            geo = cls(
                int(g["S"]), int(g["P"]), None if g.get("keep_ratio") is None else float(g["keep_ratio"])
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: the run record's geometry {dict(g)!r} is unusable ({err})") from None
        if "G" in g and int(g["G"]) != geo.grid:
            raise ValueError(f"{where}: the run record's geometry says G={g['G']} but S/P = {geo.grid}")
        return geo

    def record(self) -> dict[str, int]:
        """S, P and G as the run record and the report show them."""
        return {"S": self.size, "P": self.patch, "G": self.grid}


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
