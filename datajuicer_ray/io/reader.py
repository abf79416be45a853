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

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from datajuicer_ray.config import ColumnsConfig, InputConfig, parse_shard
from datajuicer_ray.io import schema
from datajuicer_ray.io.faults import is_transient_io, storage_retrying

IMAGE_COL = "_image"
UPSTREAM_STATUS_COL = "_upstream_status"
UPSTREAM_ERROR_COL = "_upstream_error"
LAST_COL = "_last"

READ_ERROR = schema.READ_ERROR

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
CAPTION_SUFFIXES = ("txt", "caption", "text")

INTERNAL_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("caption", pa.string()),
        (IMAGE_COL, pa.binary()),
        (UPSTREAM_STATUS_COL, pa.string()),
        (UPSTREAM_ERROR_COL, pa.string()),
        (schema.SOURCE_COL, pa.string()),
        (schema.ROW_COL, pa.int64()),
        (LAST_COL, pa.bool_()),
    ]
)


@dataclass(frozen=True)
class InputFile:
    path: str  # as fsspec opens it (URL for remote filesystems)
    file_id: str  # deterministic, filesystem-safe: names the output parts and the manifest entry
    format: str  # parquet | webdataset


def file_id_for(path: str) -> str:
    """A readable id for keys of keyless inputs (``<id>:<row>``); the file's identity everywhere else (its
    commit marker, the ``source_file`` column) is its full URI."""
    stem = posixpath.basename(path.rstrip("/")).split(".")[0] or "input"
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:64]
    return f"{safe}-{hashlib.sha256(path.encode()).hexdigest()[:16]}"


def expand_paths(spec: str | list[str], fmt: str) -> list[str]:
    """Paths, globs and directories (any fsspec filesystem) -> sorted unique data files."""
    suffix = ".parquet" if fmt == "parquet" else ".tar"
    found: set[str] = set()
    for item in [spec] if isinstance(spec, str) else list(spec):
        fs, root = fsspec.core.url_to_fs(item)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        if any(ch in root for ch in "*?["):
            matches = fs.glob(root)
        elif fs.isdir(root):
            matches = [p for p in fs.find(root) if p.endswith(suffix)]
        elif fs.exists(root):
            matches = [root]
        else:
            raise FileNotFoundError(f"input.path: {item!r} does not exist")
        for m in matches:
            name = posixpath.basename(m)
            if name.startswith(("_", ".")) or not fs.isfile(m):
                continue
            found.add(m if protocol in ("file", "local") else f"{protocol}://{m}")
    return sorted(found)


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
            with fsspec.open(f.path, "rb") as fh:
                return f.file_id, pq.ParquetFile(fh).metadata.num_rows
        except Exception:  # noqa: BLE001 - an unreadable file is reported by its read task
            return f.file_id, -1

    with ThreadPoolExecutor(max_workers=16) as pool:
        return dict(pool.map(one, files))


# ----------------------------------------------------------------------------------------------
# reading one file


def _rows_table(rows: dict[str, list], file_id: str, start: int, last: bool) -> pa.Table:
    n = len(rows["caption"])
    keys = [k if k not in (None, "") else f"{file_id}:{start + i}" for i, k in enumerate(rows["key"])]
    cols = {
        "key": keys,
        "caption": rows["caption"],
        IMAGE_COL: rows["image"],
        UPSTREAM_STATUS_COL: rows["status"],
        UPSTREAM_ERROR_COL: rows["error"],
        schema.SOURCE_COL: [file_id] * n,
        schema.ROW_COL: list(range(start, start + n)),
        LAST_COL: [last and i == n - 1 for i in range(n)],
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


def _parquet_blocks(f: InputFile, cols: ColumnsConfig, rows_per_block: int) -> Iterator[dict[str, list]]:
    with fsspec.open(f.path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        names = set(pf.schema_arrow.names)
        if cols.image not in names:
            raise KeyError(f"image column {cols.image!r} not in {sorted(names)} (set input.columns.image)")
        wanted = [c for c in (cols.key, cols.caption, cols.image, cols.status, cols.error) if c in names]
        for batch in pf.iter_batches(batch_size=rows_per_block, columns=sorted(set(wanted))):
            t = pa.Table.from_batches([batch])
            n = t.num_rows
            yield {
                "key": [_as_str(k) for k in _pick(t, cols.key, n)],
                "caption": [_as_str(c) for c in _pick(t, cols.caption, n)],
                "image": _pick(t, cols.image, n),
                "status": [_as_str(s) for s in _pick(t, cols.status, n)],
                "error": [_as_str(e) for e in _pick(t, cols.error, n)],
            }


def _wds_samples(f: InputFile, cols: ColumnsConfig) -> Iterator[dict]:
    """Group tar members by key (the basename up to its first dot), in archive order."""
    current: dict | None = None
    with fsspec.open(f.path, "rb") as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
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


def _skip_rows(blocks: Iterator[dict[str, list]], n: int) -> Iterator[dict[str, list]]:
    """Drop the first ``n`` rows of a block stream (resuming a file after a transient fault)."""
    for block in blocks:
        size = len(block["key"])
        if n >= size:
            n -= size
            continue
        yield {k: v[n:] for k, v in block.items()} if n else block
        n = 0


def _blocks(f: InputFile, cols: ColumnsConfig, rows_per_block: int) -> Iterator[dict[str, list]]:
    if f.format == "parquet":
        return _parquet_blocks(f, cols, rows_per_block)
    return _wds_blocks(f, cols, rows_per_block)


def read_file(f: InputFile, cols: ColumnsConfig, rows_per_block: int) -> Iterator[pa.Table]:
    """Stream one input file as internal-layout tables; the last row is marked.

    A transient storage fault (a reset connection, a throttle) is retried with backoff, resuming after
    the rows already read; if it outlasts the retries the error goes up, so the task fails and the file
    stays uncommitted for a re-run: a passing fault is never a row's fate. A file that cannot be read
    (corrupt, missing column, breaks off) ends in one ``read_error`` row that says why, and the rows
    read before it are kept.
    """
    start, pending = 0, None
    try:
        for attempt in storage_retrying():
            with attempt:
                consumed = start + (len(pending["key"]) if pending is not None else 0)
                for block in _skip_rows(_blocks(f, cols, rows_per_block), consumed):
                    if pending is not None:  # one block of look-ahead, so the last row can be marked
                        yield _rows_table(pending, f.file_id, start, last=False)
                        start += len(pending["key"])
                    pending = block
    except Exception as err:
        if is_transient_io(err):
            raise  # outlasted the retries: fail the task, leave the file uncommitted
        if pending is not None:
            yield _rows_table(pending, f.file_id, start, last=False)
            start += len(pending["key"])
        error_row = {
            "key": [f"{f.file_id}:{start}"],
            "caption": [None],
            "image": [None],
            "status": [READ_ERROR],
            "error": [f"{f.path}: {type(err).__name__}: {err}"],
        }
        yield _rows_table(error_row, f.file_id, start, last=True)
        return
    if pending is not None:
        yield _rows_table(pending, f.file_id, start, last=True)


def read_curated_file(f: InputFile, image_column: str | None, rows_per_block: int) -> Iterator[pa.Table]:
    """A part of a curated folder (for rewrite.only): contract columns as they are, plus the internal ones."""
    with fsspec.open(f.path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        total, start = pf.metadata.num_rows, 0
        for batch in pf.iter_batches(batch_size=rows_per_block):
            # The text branch's columns and the lineage are written anew by this run.
            redone = ("caption_rewritten", "rewrite_status", "source_file", "source_row")
            t = pa.Table.from_batches([batch]).drop_columns([c for c in redone if c in batch.schema.names])
            if image_column and image_column in t.column_names:
                t = t.rename_columns([IMAGE_COL if c == image_column else c for c in t.column_names])
            n = t.num_rows
            t = t.append_column(schema.SOURCE_COL, pa.array([f.file_id] * n, pa.string()))
            t = t.append_column(schema.ROW_COL, pa.array(range(start, start + n), pa.int64()))
            t = t.append_column(LAST_COL, pa.array([start + i == total - 1 for i in range(n)], pa.bool_()))
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
