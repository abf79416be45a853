"""Reading a curated table: what the training job, the report and user scripts use.

Only what the Delta log commits is data (``datajuicer_ray.io.table`` owns the layout): every function here
goes through the log, never through a glob of the folder, so the data files of a run that is still going,
or of one that was killed, are never read. Users read the same table with any Delta reader::

    deltalake.DeltaTable(OUT).to_pandas()          polars.read_delta(OUT)          ray.data.read_delta(OUT)
"""

from __future__ import annotations

from typing import Any

from datajuicer_ray.io.table import SUMMARY_FILE, OutputTable
from datajuicer_ray.vision.geometry import Geometry


def data_files(path: str) -> list[str]:
    """The committed data files of the table, sorted, as paths/URLs pyarrow and Ray Data read."""
    return sorted(OutputTable(path).file_uris())


def read_run_info(path: str) -> dict[str, Any]:
    """The newest run record of the table (``_runs/<run id>.json``; {} if there is none)."""
    return OutputTable(path).latest_run()


def read_summary(path: str) -> dict[str, Any]:
    """The table's ``_summary.json`` ({} if absent)."""
    return OutputTable(path).read_json(SUMMARY_FILE)


def image_column(path: str) -> str | None:
    """Name of the image-bytes column in this curated table, or None if images were not kept."""
    cfg = read_run_info(path).get("config", {})
    if not cfg.get("output", {}).get("keep_image", True):
        return None
    return cfg.get("input", {}).get("columns", {}).get("image", "jpg")


def table_geometry(path: str) -> Geometry:
    """The geometry of the table's patch indices, as its run recorded it. A table without one is an error
    (FileNotFoundError), never a guess at the usual 224/16: indices on another grid name other pixels."""
    return Geometry.from_record(read_run_info(path), path)
