"""Reading a curated table in tests the way a user would: through the Delta log."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable

from datajuicer_ray.io import columns as c


def read_rows(path, columns=None) -> list[dict]:
    return DeltaTable(str(path)).to_pyarrow_table(columns=columns).to_pylist()


def read_keys(path) -> list[str]:
    return [r["key"] for r in read_rows(path, ["key"])]


def latest_run(path) -> dict:
    records = sorted((Path(path) / "_runs").glob("*.json"))
    assert records, f"no run record in {path}"
    return json.loads(records[-1].read_text())


def committed_inputs(path) -> int:
    """Input files committed so far (each commit names its inputs in the commit info)."""
    history = DeltaTable(str(path)).history()
    return sum(len((h.get("datajuicer_ray") or {}).get("inputs", [])) for h in history)


def write_table(
    path, chunks: list[list[dict]], run: dict, summary: dict | None = None, image_column="jpg", row_group=None
):
    """A curated table made by hand (one commit per chunk, as one input file each), with a run record:
    for tests of readers (training, the report) that need exact control of the rows."""
    import pyarrow as pa
    from deltalake import WriterProperties, write_deltalake

    from datajuicer_ray.io.schema import output_schema

    path = Path(path)
    schema = output_schema(image_column)
    for i, chunk in enumerate(chunks):
        rows = [
            {
                "patch_scores": None,
                "kept_mass": None,
                "source_file": f"input-{i:05d}.parquet",
                "source_row": j,
                **{k: v for k, v in r.items() if k in schema.names},
            }
            for j, r in enumerate(chunk)
        ]
        props = WriterProperties(max_row_group_size=row_group) if row_group else None
        write_deltalake(
            str(path), pa.Table.from_pylist(rows, schema=schema), mode="append", writer_properties=props
        )
    (path / "_runs").mkdir(exist_ok=True)
    (path / "_runs" / "20260101T000000Z-00000000.json").write_text(json.dumps(run))
    if summary is not None:
        (path / "_summary.json").write_text(json.dumps(summary))
    return path


def stage_rows(source: str, n: int) -> pa.Table:
    """``n`` rows of one input file as the last stage hands them to the writer (no image, no rewrite)."""
    return pa.table(
        {
            c.KEY: [f"{source}:{i}" for i in range(n)],
            c.CAPTION: ["c"] * n,
            c.PATCH_GRID: pa.array([None] * n, pa.int16()),
            c.STATUS: ["ok"] * n,
            c.ERROR: pa.array([None] * n, pa.string()),
            c.ROW_COL: pa.array(range(n), pa.int64()),
        }
    )
