"""The curated table's columns (docs/contract.md) as Arrow types, and the status vocabulary."""

from __future__ import annotations

import pyarrow as pa

OBJECT_TYPE = pa.struct([("label", pa.string()), ("score", pa.float32())])

# Row status: "ok" or the reason a row was rejected.
OK = "ok"
DECODE_ERROR = "decode_error"
EMPTY = "empty"
TOO_LARGE = "too_large"
UPSTREAM = "upstream:"  # + img2dataset's status, e.g. "upstream:failed_to_download"
SCORE_ERROR = "score_error"
READ_ERROR = "read_error"

# Statuses a system fault (storage, device, endpoint) leaves, as opposed to what the data is: they count
# towards the failure-rate limit, and `output.retry_failed=true` processes their input files again.
TRANSIENT_STATUSES = (READ_ERROR, SCORE_ERROR)
TRANSIENT_REWRITE_PREFIX = "failed:"

# rewrite_status values: ok, disabled, skipped:<row status>, rejected:<reason>, failed:<reason>.
REWRITE_OK = "ok"
REWRITE_DISABLED = "disabled"

# Internal columns that travel between stages and never reach the output.
SOURCE_COL = "_source"  # input file id
ROW_COL = "_row"  # row number inside the input file
PIXELS_COL = "_pixels"  # canonical view, S*S*3 uint8 bytes


VISION_COLUMNS = ("patch_grid", "patch_index", "patch_scores", "kept_mass", "objects")


# A rewrite the model answered but not as asked: the model's doing, not a fault of the system.
MODEL_FAILURES = ("failed:unparsable",)


def is_transient(status: str | None, rewrite_status: str | None) -> bool:
    rw = rewrite_status or ""
    return status in TRANSIENT_STATUSES or (
        rw.startswith(TRANSIENT_REWRITE_PREFIX) and rw not in MODEL_FAILURES
    )


def output_schema(image_column: str | None) -> pa.Schema:
    """Columns in contract order; ``image_column=None`` when ``output.keep_image=false``."""
    fields = [pa.field("key", pa.string(), nullable=False)]
    if image_column:
        fields.append(pa.field(image_column, pa.binary()))
    fields += [
        pa.field("caption", pa.string()),
        pa.field("caption_rewritten", pa.string()),
        pa.field("rewrite_status", pa.string(), nullable=False),
        # What the rewriter wrote when the guard rejected it or it did not parse (evidence); null otherwise.
        pa.field("rewrite_candidate", pa.string()),
        pa.field("patch_grid", pa.int16()),
        pa.field("patch_index", pa.list_(pa.int16())),
        pa.field("patch_scores", pa.list_(pa.float32())),
        pa.field("kept_mass", pa.float32()),
        pa.field("objects", pa.list_(OBJECT_TYPE)),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        # Lineage: the input file (full URI) and row each output row came from.
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
    ]
    return pa.schema(fields)
