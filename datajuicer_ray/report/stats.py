"""Folder statistics for the summary plots, from the small columns only (never the image bytes).

Large folders are read up to a row budget, whole row groups chosen at random; the page says how much of the
folder the plots cover.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datajuicer_ray.io.schema import OK
from datajuicer_ray.report.groups import GroupPlan, read_group

STAT_COLUMNS = [
    "status",
    "rewrite_status",
    "patch_grid",
    "patch_index",
    "kept_mass",
    "objects",
    "caption",
    "caption_rewritten",
]
MAX_STAT_ROWS = 200_000
TOP_CLASSES = 15


@dataclass
class FolderStats:
    grid: int
    rows: int = 0  # rows these statistics were computed from
    groups_read: int = 0
    groups_planned: int = 0
    rows_planned: int = 0  # rows in the planned row groups (the whole folder when the plan is complete)
    by_status: Counter = field(default_factory=Counter)
    by_rewrite_status: Counter = field(default_factory=Counter)
    objects_per_image: Counter = field(default_factory=Counter)
    classes: Counter = field(default_factory=Counter)
    caption_words: list[np.ndarray] = field(default_factory=list)
    rewritten_words: list[np.ndarray] = field(default_factory=list)
    kept_counts: np.ndarray | None = None  # G*G: how many rows kept each position
    rows_with_patches: int = 0
    kept_lengths: list[np.ndarray] = field(default_factory=list)  # len(patch_index) of each scored row
    kept_masses: list[np.ndarray] = field(default_factory=list)  # kept_mass of each scored row that has one

    @property
    def kept_share(self) -> np.ndarray:
        """G x G: share of scored rows that kept each position."""
        counts = self.kept_counts if self.kept_counts is not None else np.zeros(self.grid * self.grid)
        return (counts / max(1, self.rows_with_patches)).reshape(self.grid, self.grid)

    @property
    def kept_per_image(self) -> np.ndarray:
        """Patches kept by each scored row: one value under fixed retention, a spread under mass."""
        return np.concatenate(self.kept_lengths) if self.kept_lengths else np.zeros(0, dtype=np.int64)

    @property
    def kept_mass(self) -> np.ndarray:
        """Each scored row's share of its score map held by its kept patches (tables older than the
        column have none)."""
        return np.concatenate(self.kept_masses) if self.kept_masses else np.zeros(0, dtype=np.float64)

    def words(self, which: str) -> np.ndarray:
        parts = self.caption_words if which == "caption" else self.rewritten_words
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def collect(group_plan: GroupPlan, grid: int, seed: int, max_rows: int = MAX_STAT_ROWS) -> FolderStats:
    """Statistics over the planned row groups, stopping once ``max_rows`` rows are covered."""
    stats = FolderStats(grid=grid, kept_counts=np.zeros(grid * grid, dtype=np.int64))
    stats.groups_planned = len(group_plan.groups)
    stats.rows_planned = sum(g.num_rows for g in group_plan.groups)
    order = list(group_plan.groups)
    random.Random(seed + 1).shuffle(order)
    for group in order:
        if stats.rows >= max_rows:
            break
        _add(stats, read_group(group, STAT_COLUMNS))
        stats.groups_read += 1
    return stats


def _counts(column: pa.ChunkedArray) -> Counter:
    vc = pc.value_counts(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)
    return Counter({str(v["values"]): int(v["counts"]) for v in vc.to_pylist()})


def _add(stats: FolderStats, table: pa.Table) -> None:
    stats.rows += table.num_rows
    names = set(table.column_names)
    if "status" in names:
        stats.by_status.update(_counts(table["status"]))
    if "rewrite_status" in names:
        stats.by_rewrite_status.update(_counts(table["rewrite_status"]))
    ok = table.filter(pc.equal(table["status"], OK)) if "status" in names else table
    if "objects" in names:
        objects = ok["objects"].combine_chunks()
        lengths = pc.fill_null(pc.list_value_length(objects), 0).to_numpy(zero_copy_only=False)
        stats.objects_per_image.update(Counter(int(n) for n in lengths))
        labels = pc.struct_field(pc.list_flatten(objects), "label")
        stats.classes.update(_counts(labels.drop_null()))
    for col, sink in (("caption", stats.caption_words), ("caption_rewritten", stats.rewritten_words)):
        if col in names:
            text = table[col].combine_chunks().drop_null()
            sink.append(pc.list_value_length(pc.utf8_split_whitespace(text)).to_numpy(zero_copy_only=False))
    if "patch_index" in names:
        _add_patches(stats, ok)


def _add_patches(stats: FolderStats, ok: pa.Table) -> None:
    if "patch_grid" in ok.column_names:
        # Rows on another grid (a folder mixing runs) would land on the wrong cells: count only ours.
        ok = ok.filter(pc.fill_null(pc.equal(ok["patch_grid"], stats.grid), False))
    ok = ok.filter(pc.is_valid(ok["patch_index"]))
    index = ok["patch_index"].combine_chunks()
    stats.kept_lengths.append(pc.list_value_length(index).to_numpy(zero_copy_only=False).astype(np.int64))
    if "kept_mass" in ok.column_names:
        mass = ok["kept_mass"].combine_chunks().drop_null()
        stats.kept_masses.append(mass.to_numpy(zero_copy_only=False).astype(np.float64))
    flat = pc.list_flatten(index).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = flat[(flat >= 0) & (flat < stats.grid * stats.grid)]
    stats.kept_counts += np.bincount(flat, minlength=stats.grid * stats.grid)
    stats.rows_with_patches += len(index)
