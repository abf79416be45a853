"""Reader: input files -> a stream of rows in one internal layout, whatever the input format.

Each input file (a Parquet table or a WebDataset tar shard) is read by one task that streams it in blocks
of ``input.rows_per_block`` rows. We read files ourselves inside a Ray Data ``map_batches`` rather than
with ``read_parquet`` / ``read_webdataset`` because exactly-once output needs three things those
readers do not give: the input file of every row, its row number (the deterministic key where the input
has none), and a mark on the file's last row (so the writer knows when a file is complete without
counting it first). It also lets an unreadable file become a ``read_error`` row instead of a failed job,
and maps LAION / DataComp / img2dataset column names in one place.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import pyarrow as pa

from datajuicer_ray.config import ColumnsConfig, InputConfig, parse_shard
from datajuicer_ray.io import columns, faults, schema, storage
from datajuicer_ray.io.column_types import caption_type_error, image_type_error, image_values
from datajuicer_ray.io.faults import is_transient_io
from datajuicer_ray.io.paths import path_items, redact

READ_ERROR = schema.READ_ERROR

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
CAPTION_SUFFIXES = ("txt", "caption", "text")

INTERNAL_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("caption", pa.string()),
        (columns.IMAGE_COL, pa.binary()),
        (columns.UPSTREAM_STATUS_COL, pa.string()),
        (columns.UPSTREAM_ERROR_COL, pa.string()),
        (columns.SOURCE_COL, pa.string()),
        (columns.ROW_COL, pa.int64()),
        (columns.LAST_COL, pa.bool_()),
        (columns.STORAGE_RETRIES_COL, pa.int32()),
    ]
)


@dataclass(frozen=True)
class InputFile:
    path: str  # as storage.filesystem opens it (a URL for object storage, a path for local files)
    file_id: str  # deterministic, filesystem-safe: names the output parts and the manifest entry
    format: str  # parquet | webdataset


def file_id_for(path: str) -> str:
    """A readable id for keys of keyless inputs (``<id>:<row>``); the file's identity everywhere else (its
    commit marker, the ``source_file`` column) is its full URI."""
    stem = posixpath.basename(path.rstrip("/")).split(".")[0] or "input"
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:64]
    return f"{safe}-{hashlib.sha256(path.encode()).hexdigest()[:16]}"


def expand_paths(spec: str | list[str], fmt: str) -> list[str]:
    """Paths, globs and folders (local or object storage, ``io/storage.py``) -> sorted unique data files;
    one paged listing per item, no request per object."""
    suffix = ".parquet" if fmt == "parquet" else ".tar"
    return sorted({uri for item in path_items(spec) for uri in storage.list_files(item, suffix)})


def plan_inputs(cfg: InputConfig) -> list[InputFile]:
    """The input files of this run: expanded, sorted, sliced by ``input.shard``, capped by ``max_files``."""
    fmt = "parquet" if cfg.format == "sample" else cfg.format
    paths = expand_paths(cfg.path, fmt)
    if not paths:
        raise FileNotFoundError(f"input.path: no {fmt} files under {cfg.path!r}")
    shard = parse_shard(cfg.shard)
    if shard is not None:
        i, n = shard
        paths = [p for pos, p in enumerate(paths) if pos % n == i]
    if cfg.max_files:
        paths = paths[: cfg.max_files]
    return [InputFile(p, file_id_for(p), fmt) for p in paths]


def count_rows(files: list[InputFile]) -> dict[str, int]:
    """Row counts from Parquet footers (tar shards are counted when read); threads, since it is all I/O."""

    def one(f: InputFile) -> tuple[str, int]:
        if f.format != "parquet":
            return f.file_id, -1
        try:
            with storage.open_parquet(f.path) as pf:
                return f.file_id, pf.metadata.num_rows
        except Exception:  # noqa: BLE001 - an unreadable file is reported by its read task
            return f.file_id, -1

    with ThreadPoolExecutor(max_workers=16) as pool:
        return dict(pool.map(one, files))


# ----------------------------------------------------------------------------------------------
# reading one file


def _rows_table(rows: dict[str, list], file_id: str, start: int, last: bool, retried: int = 0) -> pa.Table:
    """One block in the internal layout; ``retried``: storage requests retried to read it (on its first
    row, so that the writer's sum over any slice of rows counts each retry once)."""
    n = len(rows["caption"])
    keys = [k if k not in (None, "") else f"{file_id}:{start + i}" for i, k in enumerate(rows["key"])]
    cols = {
        "key": keys,
        "caption": rows["caption"],
        columns.IMAGE_COL: rows["image"],
        columns.UPSTREAM_STATUS_COL: rows["status"],
        columns.UPSTREAM_ERROR_COL: rows["error"],
        columns.SOURCE_COL: [file_id] * n,
        columns.ROW_COL: list(range(start, start + n)),
        columns.LAST_COL: [last and i == n - 1 for i in range(n)],
        columns.STORAGE_RETRIES_COL: [retried if i == 0 else 0 for i in range(n)],
    }
    return pa.Table.from_pydict(cols, schema=INTERNAL_SCHEMA)


def _as_str(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _pick(table: pa.Table, name: str, n: int) -> list:
    return table.column(name).to_pylist() if name in table.column_names else [None] * n


def _checked_columns(schema_: pa.Schema, cols: ColumnsConfig) -> list[str]:
    """The columns to read from a Parquet file; a missing or unreadable image or caption column raises
    (the file becomes a read_error row saying which, the preflight having looked at a sample only)."""
    names = set(schema_.names)
    if cols.image not in names:
        raise KeyError(f"image column {cols.image!r} not in {sorted(names)} (set input.columns.image)")
    for key, name, error in (
        ("input.columns.image", cols.image, image_type_error),
        ("input.columns.caption", cols.caption, caption_type_error),
    ):
        why = error(schema_.field(name).type) if name in names else None
        if why:
            raise TypeError(f"{key}: column {name!r} is {schema_.field(name).type}: {why}")
    return sorted({c for c in (cols.key, cols.caption, cols.image, cols.status, cols.error) if c in names})


def _parquet_blocks(f: InputFile, cols: ColumnsConfig, rows_per_block: int) -> Iterator[dict[str, list]]:
    """Streams by ranges (``storage.open_parquet``): the footer, then the wanted columns block by block,
    whatever the row groups' size."""
    with storage.open_parquet(f.path) as pf:
        wanted = _checked_columns(pf.schema_arrow, cols)
        for batch in pf.iter_batches(batch_size=rows_per_block, columns=wanted):
            t = pa.Table.from_batches([batch])
            n = t.num_rows
            yield {
                "key": [_as_str(k) for k in _pick(t, cols.key, n)],
                "caption": [_as_str(c) for c in _pick(t, cols.caption, n)],
                "image": image_values(t, cols.image, n),
                "status": [_as_str(s) for s in _pick(t, cols.status, n)],
                "error": [_as_str(e) for e in _pick(t, cols.error, n)],
            }


def _wds_samples(f: InputFile, cols: ColumnsConfig) -> Iterator[dict]:
    """Group tar members by key (the basename up to its first dot), in archive order."""
    current: dict | None = None
    with storage.open_stream(f.path) as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = posixpath.basename(member.name)
            if base.startswith(("_", ".")) or "." not in base:
                continue
            stem, suffix = base.split(".", 1)
            key = posixpath.join(posixpath.dirname(member.name), stem)
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key}
            current[suffix.lower()] = tar.extractfile(member).read()
    if current is not None:
        yield current


def _wds_row(sample: dict, cols: ColumnsConfig) -> dict:
    meta: dict = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except ValueError:
            meta = {}
    image = next((sample[s] for s in (cols.image, *IMAGE_SUFFIXES) if s in sample), None)
    caption = None
    if cols.caption is not None:  # null: the input says it has no captions; a stray .txt is not one
        caption = next((_as_str(sample[s]) for s in CAPTION_SUFFIXES if s in sample), None)
        if caption is None:
            caption = _as_str(meta.get(cols.caption))
    return {
        "key": _as_str(meta.get(cols.key)) or sample["__key__"].split("/")[-1],
        "caption": caption,
        "image": image,
        "status": _as_str(meta.get(cols.status)),
        "error": _as_str(meta.get(cols.error)),
    }


def _wds_blocks(f: InputFile, cols: ColumnsConfig, rows_per_block: int) -> Iterator[dict[str, list]]:
    block: dict[str, list] = {k: [] for k in ("key", "caption", "image", "status", "error")}
    try:
        for sample in _wds_samples(f, cols):
            for k, v in _wds_row(sample, cols).items():
                block[k].append(v)
            if len(block["key"]) >= rows_per_block:
                yield block
                block = {k: [] for k in block}
    except Exception:
        if block["key"]:  # a shard that breaks off: the samples read before the break still count
            yield block
        raise
    if block["key"]:
        yield block


def _blocks(f: InputFile, cols: ColumnsConfig, rows_per_block: int) -> Iterator[dict[str, list]]:
    if f.format == "parquet":
        return _parquet_blocks(f, cols, rows_per_block)
    return _wds_blocks(f, cols, rows_per_block)


class _RetryMeter:
    """Storage retries of this process since the last look (a read task runs alone in its worker)."""

    def __init__(self) -> None:
        self.seen = faults.retries()

    def take(self) -> int:
        now = faults.retries()
        taken, self.seen = now - self.seen, now
        return taken


def read_file(f: InputFile, cols: ColumnsConfig, rows_per_block: int) -> Iterator[pa.Table]:
    """Stream one input file as internal-layout tables; the last row is marked.

    Every storage request is retried alone when it meets a transient fault (a throttle, a reset, a
    timeout: ``io/storage.py``), and the retries are counted on the rows; a fault that outlasts the
    retries goes up, so the task fails and the file stays uncommitted for a re-run: a passing fault is
    never a row's fate. A file that cannot be read (gone since the listing, denied, corrupt, a missing or
    unreadable column, a shard that breaks off) ends in one ``read_error`` row that says why, and the rows
    read before it are kept.
    """
    start, pending, meter = 0, None, _RetryMeter()
    pending_retries = 0
    try:
        for block in _blocks(f, cols, rows_per_block):
            if pending is not None:  # one block of look-ahead, so the last row can be marked
                yield _rows_table(pending, f.file_id, start, last=False, retried=pending_retries)
                start += len(pending["key"])
            pending, pending_retries = block, meter.take()
    except Exception as err:
        if is_transient_io(err):
            raise  # outlasted the retries: fail the task, leave the file uncommitted
        if pending is not None:
            yield _rows_table(pending, f.file_id, start, last=False, retried=pending_retries)
            start += len(pending["key"])
        error_row = {
            "key": [f"{f.file_id}:{start}"],
            "caption": [None],
            "image": [None],
            "status": [READ_ERROR],
            "error": [f"{redact(f.path)}: {type(err).__name__}: {err}"],
        }
        yield _rows_table(error_row, f.file_id, start, last=True, retried=meter.take())
        return
    if pending is not None:
        yield _rows_table(pending, f.file_id, start, last=True, retried=pending_retries)


def read_curated_file(f: InputFile, image_column: str | None, rows_per_block: int) -> Iterator[pa.Table]:
    """A part of a curated folder (for rewrite.only): contract columns as they are, plus the internal ones."""
    meter = _RetryMeter()
    with storage.open_parquet(f.path) as pf:
        total, start = pf.metadata.num_rows, 0
        for batch in pf.iter_batches(batch_size=rows_per_block):
            # The text branch's columns and the lineage are written anew by this run.
            redone = (
                columns.CAPTION_REWRITTEN,
                columns.REWRITE_STATUS,
                columns.SOURCE_FILE,
                columns.SOURCE_ROW,
            )
            t = pa.Table.from_batches([batch]).drop_columns([c for c in redone if c in batch.schema.names])
            if image_column and image_column in t.column_names:
                t = t.rename_columns([columns.IMAGE_COL if c == image_column else c for c in t.column_names])
            n = t.num_rows
            t = t.append_column(columns.SOURCE_COL, pa.array([f.file_id] * n, pa.string()))
            t = t.append_column(columns.ROW_COL, pa.array(range(start, start + n), pa.int64()))
            t = t.append_column(
                columns.LAST_COL, pa.array([start + i == total - 1 for i in range(n)], pa.bool_())
            )
            retried = meter.take()
            t = t.append_column(
                columns.STORAGE_RETRIES_COL,
                pa.array([retried if i == 0 else 0 for i in range(n)], pa.int32()),
            )
            start += n
            yield t


class FileReader:
    """``batch of input files -> row blocks`` (a generator, so one file streams as many blocks)."""

    def __init__(self, cfg: InputConfig, curated_image_column: str | None = None):
        self.cols = cfg.columns
        self.rows_per_block = cfg.rows_per_block
        self.curated_image_column = curated_image_column
        if cfg.format == "sample":
            # The driver built the sample in its node's cache; a read task on another node builds the same
            # file in its own (no-op where it exists), so the dry run also runs on a multi-node cluster.
            from datajuicer_ray.io.sample import write_sample

            write_sample(cfg.sample_rows)

    def __call__(self, batch: dict) -> Iterator[pa.Table]:
        for path, file_id, fmt in zip(batch["path"], batch["file_id"], batch["format"]):
            f = InputFile(str(path), str(file_id), str(fmt))
            if f.format == "curated":
                yield from read_curated_file(f, self.curated_image_column, self.rows_per_block)
            else:
                yield from read_file(f, self.cols, self.rows_per_block)


def read_files(batch: dict, input_cfg: InputConfig, image_column: str | None) -> Iterator[pa.Table]:
    """Read task (Ray pickles it by reference: this module imports no torch)."""
    yield from FileReader(input_cfg, curated_image_column=image_column)(batch)


def file_items(files: list[InputFile]) -> list[dict]:
    return [asdict(f) for f in files]
