"""Writer: exactly-once, resumable output, committed one input file at a time.

Workers write *parts* (the rows of one input file that arrived in one batch) under ``_tmp/`` with a name
derived from the file and the row numbers they hold, so a retried task rewrites the same name. The driver
sees every part's row numbers; when an input file's rows are all present (its last row carries a mark),
it moves the file's parts into the folder and writes ``_manifest/<file id>.json``. A re-run skips files
that have a manifest entry and clears leftovers of the rest, so a killed driver, a lost node or a
restarted actor never leaves a row missing or written twice.

Why not Ray Data's ``checkpoint_config``: it is beta, dedups row by row (loading every finished key at
start, a LAION-scale set in driver memory), and still reads and decodes whole finished files; ours skips
finished files without opening them and gives each file an atomic, inspectable commit record.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from datajuicer_ray.io import schema
from datajuicer_ray.io.curated import fs_root
from datajuicer_ray.io.reader import IMAGE_COL, LAST_COL, InputFile

MANIFEST_DIR = "_manifest"
TMP_DIR = "_tmp"


def write_json_atomic(fs: fsspec.AbstractFileSystem, path: str, obj: dict) -> None:
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with fs.open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
    fs.mv(tmp, path)


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> dict:
    with fs.open(path, "r") as fh:
        return json.load(fh)


def ensure_folder(out_path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = fs_root(out_path)
    fs.makedirs(root, exist_ok=True)
    return fs, root


# ----------------------------------------------------------------------------------------------
# worker side


def to_output_table(batch: pa.Table, image_column: str | None) -> pa.Table:
    """Internal batch -> contract columns, in contract order. Missing rewrite columns mean rewriting is off."""
    n = batch.num_rows
    cols = {"key": batch.column("key")}
    if image_column:
        cols[image_column] = (
            batch.column(IMAGE_COL) if IMAGE_COL in batch.column_names else pa.nulls(n, pa.binary())
        )
    cols["caption"] = batch.column("caption")
    if "rewrite_status" in batch.column_names:
        cols["caption_rewritten"] = batch.column("caption_rewritten")
        cols["rewrite_status"] = batch.column("rewrite_status")
    else:
        cols["caption_rewritten"] = pa.nulls(n, pa.string())
        cols["rewrite_status"] = pa.array([schema.REWRITE_DISABLED] * n, pa.string())
    for name in ("patch_grid", "patch_index", "objects", "status", "error"):
        cols[name] = batch.column(name)
    return pa.Table.from_pydict(cols).cast(schema.output_schema(image_column))


def part_name(file_id: str, rows: list[int]) -> str:
    digest = hashlib.sha1(",".join(map(str, rows)).encode()).hexdigest()[:12]
    return f"part-{file_id}-{min(rows):09d}-{digest}.parquet"


META_SCHEMA = pa.schema(
    [
        ("file_id", pa.string()),
        ("part", pa.string()),
        ("rows", pa.list_(pa.int64())),
        ("last_row", pa.int64()),
        ("by_status", pa.string()),
        ("by_rewrite_status", pa.string()),
    ]
)


class PartWriter:
    """``batch -> part metadata``: writes each input file's rows of the batch as one part under ``_tmp/``."""

    def __init__(self, out_path: str, image_column: str | None):
        self.out_path = out_path
        self.image_column = image_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        fs, root = fs_root(self.out_path)
        sources = batch.column(schema.SOURCE_COL).to_pylist()
        meta: dict[str, list] = {f.name: [] for f in META_SCHEMA}
        for file_id in dict.fromkeys(sources):
            group = batch.filter(pc.equal(batch.column(schema.SOURCE_COL), file_id))
            rows = group.column(schema.ROW_COL).to_pylist()
            last = [r for r, is_last in zip(rows, group.column(LAST_COL).to_pylist()) if is_last]
            out = to_output_table(group, self.image_column)
            name = part_name(file_id, rows)
            final = f"{root}/{TMP_DIR}/{name}"
            tmp = f"{root}/{TMP_DIR}/.{name}.{uuid.uuid4().hex}"
            with fs.open(tmp, "wb") as fh:
                pq.write_table(out, fh, compression="zstd")
            fs.mv(tmp, final)  # atomic on local filesystems; the driver only trusts parts it was told of
            meta["file_id"].append(file_id)
            meta["part"].append(name)
            meta["rows"].append(rows)
            meta["last_row"].append(last[0] if last else -1)
            meta["by_status"].append(json.dumps(Counter(out.column("status").to_pylist())))
            meta["by_rewrite_status"].append(json.dumps(Counter(out.column("rewrite_status").to_pylist())))
        return pa.Table.from_pydict(meta, schema=META_SCHEMA)


# ----------------------------------------------------------------------------------------------
# driver side


@dataclass
class _FileState:
    parts: dict[str, list[int]] = field(default_factory=dict)
    seen: set[int] = field(default_factory=set)
    last_row: int = -1
    by_status: Counter = field(default_factory=Counter)
    by_rewrite_status: Counter = field(default_factory=Counter)


class Committer:
    """Tracks parts as they arrive and commits each input file once all its rows are written."""

    def __init__(self, out_path: str, files: list[InputFile], expected_rows: dict[str, int]):
        self.fs, self.root = fs_root(out_path)
        self.files = {f.file_id: f for f in files}
        self.expected = expected_rows
        self.state: dict[str, _FileState] = {}
        self.committed: list[str] = []
        self.rows_written = 0
        self.fs.makedirs(f"{self.root}/{MANIFEST_DIR}", exist_ok=True)
        self.fs.makedirs(f"{self.root}/{TMP_DIR}", exist_ok=True)

    def add(self, meta: dict) -> str | None:
        """One part's metadata; returns the file id if this part completed its file."""
        file_id, name, rows = meta["file_id"], meta["part"], list(meta["rows"])
        st = self.state.setdefault(file_id, _FileState())
        if name in st.parts:  # the same part again (a retried task): it was rewritten in place
            return None
        dup = st.seen.intersection(rows)
        if dup:
            # A retry that batched rows differently: keep only the rows we do not have yet.
            keep = [i for i, r in enumerate(rows) if r not in st.seen]
            self._rewrite_part(name, keep)
            rows = [rows[i] for i in keep]
            meta = {**meta, "by_status": None}
            if not rows:
                return None
        st.parts[name] = rows
        st.seen.update(rows)
        if meta["last_row"] >= 0:
            st.last_row = meta["last_row"]
        if meta["by_status"] is not None:
            st.by_status.update(json.loads(meta["by_status"]))
            st.by_rewrite_status.update(json.loads(meta["by_rewrite_status"]))
        else:
            self._recount(st)
        self.rows_written += len(rows)
        if st.last_row >= 0 and len(st.seen) == st.last_row + 1:
            self.commit(file_id)
            return file_id
        return None

    def _rewrite_part(self, name: str, keep: list[int]) -> None:
        path = f"{self.root}/{TMP_DIR}/{name}"
        with self.fs.open(path, "rb") as fh:
            table = pq.read_table(fh)
        if keep:
            with self.fs.open(path + ".dedup", "wb") as fh:
                pq.write_table(table.take(pa.array(keep)), fh, compression="zstd")
            self.fs.mv(path + ".dedup", path)
        else:
            self.fs.rm(path)

    def _recount(self, st: _FileState) -> None:
        st.by_status, st.by_rewrite_status = Counter(), Counter()
        for name in st.parts:
            with self.fs.open(f"{self.root}/{TMP_DIR}/{name}", "rb") as fh:
                t = pq.read_table(fh, columns=["status", "rewrite_status"])
            st.by_status.update(t.column("status").to_pylist())
            st.by_rewrite_status.update(t.column("rewrite_status").to_pylist())

    def commit(self, file_id: str) -> None:
        st = self.state.get(file_id, _FileState())
        for name in sorted(st.parts):
            self.fs.mv(f"{self.root}/{TMP_DIR}/{name}", f"{self.root}/{name}")
        f = self.files[file_id]
        entry = {
            "file_id": file_id,
            "input": f.path,
            "rows_expected": self.expected.get(file_id, -1)
            if self.expected.get(file_id, -1) >= 0
            else len(st.seen),
            "rows_written": len(st.seen),
            "parts": sorted(st.parts),
            "by_status": dict(st.by_status),
            "by_rewrite_status": dict(st.by_rewrite_status),
            "committed_at": time.time(),
        }
        write_json_atomic(self.fs, f"{self.root}/{MANIFEST_DIR}/{file_id}.json", entry)
        self.committed.append(file_id)

    def finish(self) -> None:
        """After the stream ended: files that produced no row are empty inputs; anything else is a bug."""
        for file_id in self.files:
            if file_id in self.committed:
                continue
            st = self.state.get(file_id)
            if st is None or not st.seen:
                self.commit(file_id)
            else:
                raise RuntimeError(
                    f"input {self.files[file_id].path}: {len(st.seen)} rows written but the file's last row "
                    "never arrived; re-run to complete it"
                )


# ----------------------------------------------------------------------------------------------
# resume


def finished_files(out_path: str) -> dict[str, dict]:
    fs, root = fs_root(out_path)
    folder = f"{root}/{MANIFEST_DIR}"
    if not fs.exists(folder):
        return {}
    out = {}
    for p in fs.glob(f"{folder}/*.json"):
        entry = read_json(fs, p)
        out[entry["file_id"]] = entry
    return out


def clear_unfinished(out_path: str, pending: list[InputFile]) -> int:
    """Remove parts of unfinished files (in ``_tmp/`` or moved by an interrupted commit)."""
    fs, root = fs_root(out_path)
    removed = 0
    pending_ids = {f.file_id for f in pending}
    for pattern in (f"{root}/{TMP_DIR}/*", f"{root}/{TMP_DIR}/.*", f"{root}/part-*.parquet"):
        for p in fs.glob(pattern):
            name = posixpath.basename(p).lstrip(".")
            if name.startswith("part-") and any(name.startswith(f"part-{fid}-") for fid in pending_ids):
                fs.rm(p)
                removed += 1
    return removed


def clear_output(out_path: str) -> None:
    """output.mode=overwrite: remove what a previous run wrote (only our own files)."""
    fs, root = fs_root(out_path)
    if not fs.exists(root):
        return
    for p in fs.glob(f"{root}/part-*.parquet"):
        fs.rm(p)
    for name in (MANIFEST_DIR, TMP_DIR):
        if fs.exists(f"{root}/{name}"):
            fs.rm(f"{root}/{name}", recursive=True)
    for name in ("_run.json", "_summary.json"):
        if fs.exists(f"{root}/{name}"):
            fs.rm(f"{root}/{name}")


def summarize(out_path: str, images_per_s: float, this_run: dict) -> dict:
    """`_summary.json`: counts over every finished input file, this run's throughput."""
    entries = finished_files(out_path).values()
    by_status: Counter = Counter()
    by_rewrite: Counter = Counter()
    for e in entries:
        by_status.update(e["by_status"])
        by_rewrite.update(e["by_rewrite_status"])
    return {
        "rows_in": sum(e["rows_expected"] for e in entries),
        "rows_out": sum(e["rows_written"] for e in entries),
        "by_status": dict(sorted(by_status.items())),
        "by_rewrite_status": dict(sorted(by_rewrite.items())),
        "files_finished": len(entries),
        "images_per_s": round(images_per_s, 3),
        "this_run": this_run,
    }
