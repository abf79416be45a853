"""Column types: what the reader can take as an image or a caption, and why not where it cannot. The reader
reads by it; the preflight refuses by it before a run starts, naming the column, its type and the fix."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

IMAGE_TYPES_FIX = (
    "a column of encoded image bytes (binary), or a Hugging Face image column (struct<bytes: binary, "
    "path: string>)"
)


def _is_bytes(t: pa.DataType) -> bool:
    return (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or (hasattr(pa.types, "is_binary_view") and pa.types.is_binary_view(t))
    )


def _is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_text(t.value_type)
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t))
        or _is_bytes(t)
        or pa.types.is_null(t)
    )


def _hf_image(t: pa.DataType) -> bool:
    """A Hugging Face ``datasets`` Image feature as Parquet stores it: ``struct<bytes, path>``."""
    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 and _is_bytes(t.field("bytes").type)


def image_type_error(t: pa.DataType) -> str | None:
    """Why a column of type ``t`` cannot be read as the image (None: it can)."""
    if _is_bytes(t) or _hf_image(t) or pa.types.is_null(t):
        return None
    if _is_text(t):
        return "text (a path or URL, not the image's bytes)"
    if pa.types.is_struct(t):
        return "a struct without a binary 'bytes' field (an image stored by path only?)"
    return "not image bytes"


def caption_type_error(t: pa.DataType) -> str | None:
    """Why a column of type ``t`` cannot be read as the caption (None: it can)."""
    if _is_text(t):
        return None
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return "a list (several captions per row)"
    return "not text"


def image_values(table: pa.Table, name: str, n: int) -> list:
    """The image column's values as bytes (None where missing), a Hugging Face image struct's ``bytes``."""
    if name not in table.column_names:
        return [None] * n
    column = table.column(name)
    if _hf_image(column.type):  # the image's bytes; its path is where the exporter found it
        column = pc.struct_field(column, "bytes")
    return column.to_pylist()
