"""Reading a curated table: what the training job, the report and user scripts use.

Only what the Delta log commits is data (``datajuicer_ray.io.table`` owns the layout): every method here
goes through the log, never through a glob of the folder, so the data files of a run that is still going,
or of one that was killed, are never read. A command opens its table once (:class:`CuratedTable`) and passes
the handle down. Users read the same table with any Delta reader::

    deltalake.DeltaTable(OUT).to_pandas()          polars.read_delta(OUT)          ray.data.read_delta(OUT)
"""

from __future__ import annotations

from typing import Any

from datajuicer_ray.io.table import SUMMARY_FILE, OutputTable
from datajuicer_ray.vision.geometry import Geometry


class CuratedTable(OutputTable):
    """A curated table as its readers see it: committed data files, the newest run record, the summary."""

    def data_files(self) -> list[str]:
        """The committed data files of the table, sorted, as paths/URLs pyarrow and Ray Data read."""
        return sorted(self.file_uris())

    def run_info(self) -> dict[str, Any]:
        """The newest run record of the table (``_runs/<run id>.json``; {} if there is none)."""
        return self.latest_run()

    def stored_summary(self) -> dict[str, Any]:
        """The table's ``_summary.json`` as the last run wrote it ({} if absent)."""
        return self.read_json(SUMMARY_FILE)

    def image_column(self) -> str | None:
        """Name of the image-bytes column in this table, or None if images were not kept."""
        cfg = self.run_info().get("config", {})
        if not cfg.get("output", {}).get("keep_image", True):
            return None
        return cfg.get("input", {}).get("columns", {}).get("image", "jpg")

    def geometry(self) -> Geometry:
        """The geometry of the table's patch indices, as its run recorded it. A table without one is an
        error (FileNotFoundError), never a guess at the usual 224/16: indices on another grid name other
        pixels."""
        return Geometry.from_record(self.run_info(), self.path)
