"""Writer: workers write data files into the table folder; the driver commits whole input files.

Worker side (:class:`DataFileWriter`): the rows of one input file that arrived in one batch become one
Parquet data file in the table folder, under a name no other write uses (run id, input, first row,
a random suffix): a retried or reconstructed task writes a new file and never touches one that may already
be committed. The worker returns each file's name, size, row numbers and Delta statistics.

Driver side (:class:`Committer`): it counts row numbers per input file; once a file's last row (marked by
the reader) and every row before it are in, the file is ready, and ready files are committed together in
one Delta transaction, each with its own marker (:mod:`datajuicer_ray.io.table`). Rows that arrive twice
(a task retried after its first output was seen) are never committed twice: a data file whose rows are all
known already is left out, one with some new rows is rewritten with just those.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from datajuicer_ray.io import columns as c
from datajuicer_ray.io import faults, schema
from datajuicer_ray.io.columns import STORAGE_RETRIES_COL
from datajuicer_ray.io.faults import hold_for_drill, storage_retrying
from datajuicer_ray.io.location import Location
from datajuicer_ray.io.reader import InputFile
from datajuicer_ray.io.table import Claim, DataFile, InputCommit, OutputTable

# ----------------------------------------------------------------------------------------------
# worker side


def to_output_table(batch: pa.Table, image_column: str | None, source_uri: str) -> pa.Table:
    """Internal batch of one input file -> contract columns, in contract order. Missing rewrite columns
    mean rewriting is off; missing vision columns mean the vision branch did not run."""
    n = batch.num_rows
    names = set(batch.column_names)
    out_schema = schema.output_schema(image_column)

    def given_or_null(name: str) -> pa.Array | pa.ChunkedArray:
        return batch.column(name) if name in names else pa.nulls(n, out_schema.field(name).type)

    cols: dict[str, pa.Array | pa.ChunkedArray] = {c.KEY: batch.column(c.KEY)}
    if image_column:
        cols[image_column] = batch.column(c.IMAGE_COL) if c.IMAGE_COL in names else pa.nulls(n, pa.binary())
    cols[c.CAPTION] = batch.column(c.CAPTION)
    if c.REWRITE_STATUS in names:
        cols[c.CAPTION_REWRITTEN] = batch.column(c.CAPTION_REWRITTEN)
        cols[c.REWRITE_STATUS] = batch.column(c.REWRITE_STATUS)
    else:
        cols[c.CAPTION_REWRITTEN] = pa.nulls(n, pa.string())
        cols[c.REWRITE_STATUS] = pa.array([schema.REWRITE_DISABLED] * n, pa.string())
    cols[c.REWRITE_CANDIDATE] = given_or_null(c.REWRITE_CANDIDATE)
    for name in c.VISION_COLUMNS:
        cols[name] = given_or_null(name)
    cols[c.STATUS] = batch.column(c.STATUS)
    cols[c.ERROR] = batch.column(c.ERROR)
    cols[c.SOURCE_FILE] = pa.array([source_uri] * n, pa.string())
    cols[c.SOURCE_ROW] = batch.column(c.ROW_COL)
    return pa.Table.from_pydict(cols).cast(out_schema)


def data_file_name(run_id: str, source_uri: str, first_row: int) -> str:
    source = hashlib.sha256(source_uri.encode()).hexdigest()[:12]
    return f"part-{run_id}-{source}-{first_row:09d}-{uuid.uuid4().hex[:8]}.parquet"


def delta_stats(table: pa.Table, source_uri: str) -> str:
    """Delta column statistics: the row count, and `source_file`'s bounds, so the log alone tells which
    data files hold an input file's rows (``OutputTable.data_files_of``)."""
    return json.dumps(
        {
            "numRecords": table.num_rows,
            "minValues": {"source_file": source_uri},
            "maxValues": {"source_file": source_uri},
            "nullCount": {"source_file": 0},
        }
    )


def write_data_file(location: Location, name: str, table: pa.Table) -> int:
    """Write one data file into the table folder (transient faults retried); returns its size in bytes."""
    fs, path = location.fs, location.path(name)
    for attempt in storage_retrying():
        with attempt:
            with fs.open_output_stream(path) as fh:
                pq.write_table(table, fh, compression="zstd")
            return fs.get_file_info(path).size
    raise AssertionError("unreachable: storage_retrying re-raises")


META_SCHEMA = pa.schema(
    [
        ("file_id", pa.string()),
        ("name", pa.string()),
        ("size", pa.int64()),
        ("rows", pa.list_(pa.int64())),
        ("last_row", pa.int64()),
        ("transient", pa.int64()),  # rows whose status a system fault set (the failure-rate limit)
        ("stats", pa.string()),
        ("storage_retries", pa.int64()),  # requests retried to read these rows and write this file
    ]
)


class DataFileWriter:
    """``batch -> data-file metadata``: each input file's rows of the batch become one data file."""

    def __init__(self, location: Location, image_column: str | None, run_id: str, uris: dict[str, str]):
        self.location = location
        self.image_column = image_column
        self.run_id = run_id
        self.uris = uris  # input file id -> full URI

    def __call__(self, batch: pa.Table) -> pa.Table:
        sources = batch.column(c.SOURCE_COL)
        meta: dict[str, list] = {f.name: [] for f in META_SCHEMA}
        for file_id in dict.fromkeys(sources.to_pylist()):
            group = batch.filter(pc.equal(sources, file_id))
            rows = group.column(c.ROW_COL).to_pylist()
            last = [r for r, is_last in zip(rows, group.column(c.LAST_COL).to_pylist()) if is_last]
            uri = self.uris[file_id]
            out = to_output_table(group, self.image_column, uri)
            name = data_file_name(self.run_id, uri, min(rows))
            retried = faults.retries()
            meta["file_id"].append(file_id)
            meta["name"].append(name)
            meta["size"].append(write_data_file(self.location, name, out))
            meta["rows"].append(rows)
            meta["last_row"].append(last[0] if last else -1)
            meta["transient"].append(_transient_rows(out))
            meta["stats"].append(delta_stats(out, uri))
            read = (
                pc.sum(group.column(STORAGE_RETRIES_COL)).as_py()
                if STORAGE_RETRIES_COL in group.column_names
                else 0
            )
            meta["storage_retries"].append((read or 0) + faults.retries() - retried)
        return pa.Table.from_pydict(meta, schema=META_SCHEMA)


def write_data_files(
    batch: pa.Table, location: Location, image_column: str | None, run_id: str, uris: dict[str, str]
) -> pa.Table:
    """Write task (Ray pickles it by reference: this module imports no torch). ``location`` is the
    table's, built once by the driver (``OutputTable.location``)."""
    return DataFileWriter(location, image_column, run_id, uris)(batch)


def _transient_rows(out: pa.Table) -> int:
    statuses = zip(out.column(c.STATUS).to_pylist(), out.column(c.REWRITE_STATUS).to_pylist())
    return sum(schema.is_transient(s, r) for s, r in statuses)


# ----------------------------------------------------------------------------------------------
# driver side


@dataclass
class _FileState:
    files: list[DataFile] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    last_row: int = -1


class Committer:
    """Tracks data files as they arrive and commits each input file once all its rows are written."""

    def __init__(
        self,
        table: OutputTable,
        files: list[InputFile],
        expected_rows: dict[str, int],
        claim: Claim,
        run_id: str,
        out_schema: pa.Schema,
        replacing: dict[str, tuple[list[str], int]] | None = None,
    ):
        self.table = table
        self.files = {f.file_id: f for f in files}
        self.expected = expected_rows
        self.claim = claim
        self.run_id = run_id
        self.schema = out_schema
        # retry_failed: input URI -> (data files its new rows replace, the marker version to commit)
        self.replacing = replacing or {}
        self.state: dict[str, _FileState] = {}
        self.ready: list[str] = []
        self.committed: list[str] = []  # input file ids committed by this run
        self.closed: set[str] = set()  # committed or skipped: their state is dropped, memory stays flat
        self.skipped: list[str] = []  # input file ids another driver committed first
        self.orphans: list[str] = []  # data files this run wrote and will not commit
        self.rows_written = 0
        self.status_counts: Counter = Counter()

    def add(self, meta: dict) -> bool:
        """One data file's metadata; True if it completed its input file (ready to commit)."""
        file_id, rows = meta["file_id"], list(meta["rows"])
        if file_id in self.closed:  # a late retry of a file already committed (or lost to another driver)
            self.orphans.append(meta["name"])
            return False
        st = self.state.setdefault(file_id, _FileState())
        dup = st.seen.intersection(rows)
        name, size, stats = meta["name"], meta["size"], meta["stats"]
        if dup:  # a retried task: keep only the rows we do not have yet
            keep = [i for i, r in enumerate(rows) if r not in st.seen]
            self.orphans.append(name)
            if not keep:
                return False
            name, size, stats = self._rewrite_subset(name, keep)
            rows = [rows[i] for i in keep]
        st.files.append(DataFile(name, size, len(rows), stats))
        st.seen.update(rows)
        if meta["last_row"] >= 0:
            st.last_row = meta["last_row"]
        self.rows_written += len(rows)
        if st.last_row >= 0 and len(st.seen) == st.last_row + 1:
            self.ready.append(file_id)
            return True
        return False

    def _rewrite_subset(self, name: str, keep: list[int]) -> tuple[str, int, str]:
        location = self.table.location
        with location.fs.open_input_file(location.path(name)) as fh:
            table = pq.read_table(fh).take(pa.array(keep))
        uri = table.column(c.SOURCE_FILE)[0].as_py()
        new = data_file_name(self.run_id, uri, int(pc.min(table.column(c.SOURCE_ROW)).as_py()))
        return new, write_data_file(location, new, table), delta_stats(table, uri)

    def _commit_for(self, file_id: str) -> InputCommit:
        f = self.files[file_id]
        st = self.state.get(file_id, _FileState())
        replaces, version = self.replacing.get(f.path, ([], 1))
        expected = self.expected.get(file_id, -1)
        return InputCommit(
            uri=f.path,
            app_id=self.claim.app_id(f.path),
            files=st.files,
            rows_in=expected if expected >= 0 else len(st.seen),
            replaces=replaces,
            version=version,
        )

    def flush(self) -> list[str]:
        """Commit every ready input file in one transaction; returns the file ids committed now."""
        if not self.ready:
            return []
        if self.committed:
            hold_for_drill("hold_second_commit")
        commits = {fid: self._commit_for(fid) for fid in self.ready}
        self.ready = []
        landed = {done.app_id for done in self.table.commit(list(commits.values()), self.schema, self.run_id)}
        now = []
        for fid, commit in commits.items():
            if commit.app_id in landed:
                now.append(fid)
            else:  # another driver on the same slice committed it first: ours are orphans
                self.skipped.append(fid)
                self.orphans += [f.name for f in commit.files]
        self.committed += now
        for fid in commits:
            self.closed.add(fid)
            self.state.pop(fid, None)
        return now

    def finish(self) -> None:
        """After the stream ended: files that produced no row are empty inputs (committed with no data
        file, so a re-run skips them); a file whose last row never came is a bug or a lost task."""
        for file_id in self.files:
            if file_id in self.closed:
                continue
            st = self.state.get(file_id)
            if st is None or not st.seen:
                if file_id not in self.ready:
                    self.ready.append(file_id)
            elif st.last_row < 0 or len(st.seen) != st.last_row + 1:
                raise RuntimeError(
                    f"input {self.files[file_id].path}: {len(st.seen)} rows written but the file's last row "
                    "never arrived; re-run to complete it"
                )
        self.flush()
        self.table.remove_files(self.orphans)
