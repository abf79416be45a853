"""The curated table's columns (../shared/CONTRACT.md) as Arrow types, and the status vocabulary."""

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

# rewrite_status values: ok, disabled, skipped:<row status>, rejected:<reason>, failed:<reason>.
REWRITE_OK = "ok"
REWRITE_DISABLED = "disabled"

# Internal columns that travel between stages and never reach the output.
SOURCE_COL = "_source"  # input file id
ROW_COL = "_row"  # row number inside the input file
PIXELS_COL = "_pixels"  # canonical view, S*S*3 uint8 bytes


def output_schema(image_column: str | None) -> pa.Schema:
    """Columns in contract order; ``image_column=None`` when ``output.keep_image=false``."""
    fields = [pa.field("key", pa.string(), nullable=False)]
    if image_column:
        fields.append(pa.field(image_column, pa.binary()))
    fields += [
        pa.field("caption", pa.string()),
        pa.field("caption_rewritten", pa.string()),
        pa.field("rewrite_status", pa.string(), nullable=False),
        pa.field("patch_grid", pa.int16()),
        pa.field("patch_index", pa.list_(pa.int16())),
        pa.field("objects", pa.list_(OBJECT_TYPE)),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
    ]
    return pa.schema(fields)
