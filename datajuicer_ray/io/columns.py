"""Every column name a row carries through the pipeline, the table's and the internal ones, in one place.

The table's columns are ``docs/contract.md``'s (their Arrow types and order: :mod:`.schema`). Internal
columns start with ``_``: they travel between stages and never reach the table. Which stage reads and
writes which is declared once, on the operator list (:mod:`datajuicer_ray.operators`).
"""

from __future__ import annotations

# -- the curated table (docs/contract.md) ----------------------------------------------------------
KEY = "key"
CAPTION = "caption"
CAPTION_REWRITTEN = "caption_rewritten"
REWRITE_STATUS = "rewrite_status"
REWRITE_CANDIDATE = "rewrite_candidate"  # what the model wrote when it was not accepted
PATCH_GRID = "patch_grid"
PATCH_INDEX = "patch_index"
PATCH_SCORES = "patch_scores"
KEPT_MASS = "kept_mass"
OBJECTS = "objects"
STATUS = "status"
ERROR = "error"
SOURCE_FILE = "source_file"  # lineage: the input file's full URI
SOURCE_ROW = "source_row"  # lineage: the row number in it

VISION_COLUMNS = (PATCH_GRID, PATCH_INDEX, PATCH_SCORES, KEPT_MASS, OBJECTS)
REWRITE_COLUMNS = (CAPTION_REWRITTEN, REWRITE_STATUS, REWRITE_CANDIDATE)

# -- internal: between stages only ---------------------------------------------------------------
IMAGE_COL = "_image"  # the input's image bytes (named as in the input once written)
UPSTREAM_STATUS_COL = "_upstream_status"  # img2dataset's own status of the row, if any
UPSTREAM_ERROR_COL = "_upstream_error"
SOURCE_COL = "_source"  # input file id
ROW_COL = "_row"  # row number inside the input file
LAST_COL = "_last"  # marks an input file's last row: the committer's signal that the file is complete
PIXELS_COL = "_pixels"  # canonical view, S*S*3 uint8 bytes
STORAGE_RETRIES_COL = "_storage_retries"  # storage requests retried to read these rows (the run's summary)
