"""Inputs as people hold them besides img2dataset's: a Hugging Face ``datasets`` Parquet export."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.support.inputs import photo

# How `datasets` stores an Image feature in Parquet (Dataset.to_parquet, the Hub's Parquet exports).
HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def hf_image_parquet(path: Path, n: int, start: int = 0) -> Path:
    """``image: struct<bytes, path>`` and ``text``, no key column, one row group (as `datasets` writes
    small shards)."""
    rows = range(start, start + n)
    table = pa.table(
        {
            "image": pa.array([{"bytes": photo(i), "path": f"{i:06d}.jpg"} for i in rows], HF_IMAGE),
            "text": [f"an exported photo {i}" for i in rows],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path
