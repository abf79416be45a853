"""Reading a curated folder: what the training job, the report and user scripts use.

Layout of a curated folder (written by :mod:`datajuicer_ray.io.writer`)::

    OUT/part-<input file id>-<n>.parquet   the curated rows (contract columns)
    OUT/_run.json                          resolved config, models, S/P/G, times
    OUT/_summary.json                      counts by status and rewrite status, images/s
    OUT/_manifest/<input file id>.json     one per finished input file
    OUT/_tmp/                              parts of unfinished input files (ignored by readers)

Names starting with ``_`` are ignored by pyarrow datasets, so ``pd.read_parquet(OUT)`` works too.
"""

from __future__ import annotations

import json
from typing import Any

import fsspec


def fs_root(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of a folder URL or path, and the folder's path on it (no trailing slash)."""
    fs, root = fsspec.core.url_to_fs(path)
    return fs, root.rstrip("/")


def list_parts(path: str) -> list[str]:
    """The curated Parquet files of a folder, sorted, as paths/URLs pyarrow and Ray Data read."""
    fs, root = fs_root(path)
    files = sorted(f for f in fs.glob(f"{root}/part-*.parquet"))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return [f if protocol in ("file", "local") else f"{protocol}://{f}" for f in files]


def read_json(path: str, name: str) -> dict[str, Any]:
    fs, root = fs_root(path)
    target = f"{root}/{name}"
    if not fs.exists(target):
        return {}
    with fs.open(target, "r") as fh:
        return json.load(fh)


def read_run_info(path: str) -> dict[str, Any]:
    """The folder's ``_run.json`` ({} if absent)."""
    return read_json(path, "_run.json")


def read_summary(path: str) -> dict[str, Any]:
    """The folder's ``_summary.json`` ({} if absent)."""
    return read_json(path, "_summary.json")


def image_column(path: str) -> str | None:
    """Name of the image-bytes column in this curated folder, or None if images were not kept."""
    info = read_run_info(path)
    cfg = info.get("config", {})
    if not cfg.get("output", {}).get("keep_image", True):
        return None
    return cfg.get("input", {}).get("columns", {}).get("image", "jpg")


def geometry(path: str) -> dict[str, int]:
    """S, P and G of the folder's patch indices."""
    g = read_run_info(path).get("geometry", {})
    return {"S": int(g.get("S", 224)), "P": int(g.get("P", 16)), "G": int(g.get("G", 14))}
