"""Row-group access to a curated folder: what lets the report read a few megabytes of a terabyte folder.

Only Parquet footers are read to plan; then single row groups, only the columns asked for. Image bytes are
streamed in small batches so memory holds one batch, not one row group of images.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from datajuicer_ray.io import storage
from datajuicer_ray.io.curated import CuratedTable

# Footers read to plan a sample: enough to spread it over many files, few enough to take seconds on S3.
MAX_FILES = 64


@dataclass(frozen=True)
class RowGroup:
    path: str
    index: int
    num_rows: int


@dataclass
class GroupPlan:
    """Row groups of a random subset of the folder's files, in random order."""

    groups: list[RowGroup]
    columns: list[str]  # the parts' column names (from the first opened file)
    files_total: int
    files_opened: int

    @property
    def complete(self) -> bool:
        return self.files_opened == self.files_total


def _open(path: str) -> pq.ParquetFile:
    return storage.open_parquet(path)  # by ranges, each request retried (local, S3, GCS alike)


def plan(table: CuratedTable, rng: random.Random, max_files: int = MAX_FILES) -> GroupPlan:
    parts = table.data_files()
    if not parts:
        raise FileNotFoundError(
            f"no committed rows in {table.path!r}: is it a curated table (a `datajuicer-ray curate` output)?"
        )
    files = list(parts)
    rng.shuffle(files)
    opened = files[:max_files]
    groups: list[RowGroup] = []
    columns: list[str] = []
    for path in opened:
        with _open(path) as pf:
            md = pf.metadata
            columns = columns or list(pf.schema_arrow.names)
            groups += [RowGroup(path, g, md.row_group(g).num_rows) for g in range(md.num_row_groups)]
    rng.shuffle(groups)
    return GroupPlan(groups, columns, len(parts), len(opened))


def read_group(group: RowGroup, columns: list[str]) -> pa.Table:
    with _open(group.path) as pf:
        present = [c for c in columns if c in pf.schema_arrow.names]
        return pf.read_row_group(group.index, columns=present)


def stream_column(group: RowGroup, column: str, batch_rows: int = 32) -> Iterator[pa.Array]:
    """One column of one row group in order, ``batch_rows`` at a time."""
    with _open(group.path) as pf:
        for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[group.index], columns=[column]):
            yield batch.column(0)
