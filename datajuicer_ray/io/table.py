"""The curated table's layout: one owner for everything under ``output.path``.

``output.path`` is a Delta Lake table (``docs/contract.md``)::

    OUT/part-<run>-<input>-<row>-<digest>.parquet   data files, written by the workers
    OUT/_delta_log/                                 what is committed (only the log says what is data)
    OUT/_runs/<run id>.json                         one record per run
    OUT/_summary.json                               the whole table, refreshed at the end of every run

Exactly once, without a protocol of our own: the driver commits each input file's data files in a Delta
transaction carrying an app-transaction marker (``txn``) whose id is derived from the table's generation,
the run fingerprint and the input file's URI. Before committing, the driver reloads the log and skips
markers already there; two drivers that commit the same marker at once are told apart by Delta's
conflict check (the second gets ``CommitFailedError``), after which the loser reloads and skips.

The table also carries two markers of its own: ``datajuicer_ray/generation`` (bumped by
``output.mode=overwrite``, in the same commit that removes every file) and
``datajuicer_ray/fingerprint/<fp>`` (set to the generation the fingerprint owns). A run whose fingerprint
does not own the current generation is refused. Custom table properties would be the obvious place, but
delta-rs refuses unknown property names; markers are atomic with the commit that changes them.

Data files are written with pyarrow's own filesystems (local, S3, GCS; credentials and endpoints from the
usual ``AWS_*`` variables), the log with deltalake's. Readers list files through the log and read them
with pyarrow too: deltalake's own pyarrow dataset aborts the process at exit on S3 (seen with 1.6.6).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import AddAction, CommitProperties, RemoveAction, Transaction

from datajuicer_ray.io.faults import storage_retrying
from datajuicer_ray.io.location import Location
from datajuicer_ray.io.storage import delta_options

RUNS_DIR = "_runs"
SUMMARY_FILE = "_summary.json"
GENERATION_APP = "datajuicer_ray/generation"
COMMIT_RETRIES = 8


class TableConflict(ValueError):
    """The output path holds something this run must not write into (named in the message)."""


class FingerprintConflict(TableConflict):
    """The table was made with other settings (another run fingerprint owns its generation)."""


def fingerprint_app(fp: str) -> str:
    return f"datajuicer_ray/fingerprint/{fp}"


@dataclass(frozen=True)
class Claim:
    """What a run holds once :meth:`OutputTable.claim` let it in: the generation it writes and its
    fingerprint, which together name every input file's commit marker."""

    generation: int
    fingerprint: str

    def app_id(self, input_uri: str) -> str:
        """The idempotency marker of one input file's commit: its full URI, the run fingerprint, the
        table's generation. Same-named files in different folders (img2dataset restarts at 00000) never
        collide."""
        key = f"{self.generation}|{self.fingerprint}|{input_uri}"
        return "datajuicer_ray/input/" + hashlib.sha256(key.encode()).hexdigest()


# ----------------------------------------------------------------------------------------------
# committing


@dataclass
class DataFile:
    """One Parquet file a worker wrote into the table folder (not yet data: only a commit makes it so)."""

    name: str
    size: int
    rows: int
    stats: str  # Delta column statistics (numRecords, minValues, maxValues, nullCount) as JSON


@dataclass
class InputCommit:
    """Everything one input file contributes to one commit."""

    uri: str
    app_id: str
    files: list[DataFile]
    rows_in: int
    replaces: list[str] = field(default_factory=list)  # data files removed in the same commit
    version: int = 1  # txn version: 1 on first commit, +1 per retry_failed replacement


class OutputTable:
    """The Delta table at ``output.path``, its run records and its summary. Open it once per command and
    pass the handle down: the log is loaded on first use and then only advanced (``update_incremental``),
    and ``location`` (the filesystem client) is what workers receive."""

    def __init__(self, path: str):
        self.path = path
        self.location = Location.of(path)
        self.uri, self.fs, self.root = self.location.uri, self.location.fs, self.location.root
        self._dt: DeltaTable | None = None

    # -- the log ----------------------------------------------------------------------------

    def delta(self, refresh: bool = True) -> DeltaTable | None:
        """The table at its latest version (None if there is none). ``update_incremental`` reads only new
        log entries: without it every commit would replay the whole log."""
        if self._dt is None:
            try:
                self._dt = DeltaTable(self.uri, storage_options=delta_options(self.uri))
            except TableNotFoundError:
                return None
        elif refresh:
            self._dt.update_incremental()
        return self._dt

    def exists(self) -> bool:
        return self.delta() is not None

    def generation(self) -> int | None:
        dt = self.delta()
        return None if dt is None else dt.transaction_version(GENERATION_APP)

    def claim(self, fp: str, schema: pa.Schema, overwrite: bool) -> Claim:
        """Create the table, or check that this run may write into it; returns what the run writes under.

        Creation is an empty ``write_deltalake(mode="append")`` (two drivers creating at once both land
        as appends, unlike ``mode="error"``, which lets both "succeed"); the markers come with it.
        """
        for _ in range(COMMIT_RETRIES):
            refusal = self.refusal()  # loads or advances the log
            if refusal:
                raise TableConflict(f"output.path: {refusal}")
            dt = self.delta(refresh=False)  # as refusal() just read it: one log read per attempt
            if dt is None:
                # Created, or lost the race to another creator: either way, look at what is there now.
                self._write_markers(schema, 0, fp, mode="append")
                continue
            gen = dt.transaction_version(GENERATION_APP)
            assert gen is not None, "refusal() names a Delta table without our generation marker"
            if overwrite:
                self._write_markers(schema, gen + 1, fp, mode="overwrite")
                return Claim(gen + 1, fp)
            if dt.transaction_version(fingerprint_app(fp)) == gen:
                return Claim(gen, fp)
            raise FingerprintConflict(
                f"output.path: {self.path} holds a run with a different fingerprint; use a new "
                "output.path, or output.mode=overwrite to replace it"
            )
        raise TableConflict(f"output.path: {self.path}: could not create or claim the table (busy)")

    def _write_markers(self, schema: pa.Schema, gen: int, fp: str, mode: str) -> bool:
        markers = CommitProperties(
            app_transactions=[Transaction(GENERATION_APP, gen), Transaction(fingerprint_app(fp), gen)],
            custom_metadata={"datajuicer_ray": {"generation": gen, "fingerprint": fp}},
        )
        empty = pa.Table.from_batches([], schema=schema)
        try:
            write_deltalake(
                self.uri,
                empty,
                mode=mode,  # type: ignore[arg-type]
                schema_mode="overwrite" if mode == "overwrite" else None,
                commit_properties=markers,
                storage_options=delta_options(self.uri),
            )
        except CommitFailedError:
            return False  # someone else moved the markers first; the caller looks again
        self._dt = None
        return True

    def refusal(self) -> str | None:
        """Why no run may write here, or None: a file; a Delta table this tool did not create (overwrite
        only ever replaces our own); a folder of someone else's files. The one place these rules live: the
        preflight lists the answer with the other problems, :meth:`claim` raises it."""
        if self.delta() is not None:
            if self.generation() is None:
                return (
                    f"{self.path} is a Delta table that datajuicer_ray did not create; choose another "
                    "output.path (overwrite only ever replaces a table this tool wrote)"
                )
            return None
        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.File:
            return f"{self.path} is a file, not a folder; give output.path a folder"
        if info.type == pafs.FileType.NotFound:
            return None
        entries = self.fs.get_file_info(pafs.FileSelector(self.root))
        foreign = sorted(
            e.base_name for e in entries if e.base_name not in (RUNS_DIR, SUMMARY_FILE, "_delta_log")
        )
        if not foreign:
            return None
        held = repr(foreign[0]) + (f" and {len(foreign) - 1} more" if len(foreign) > 1 else "")
        return f"{self.path} is not empty and not a curated table (it holds {held}); choose a new or empty folder"

    def committed(self, app_ids: Iterable[str]) -> dict[str, int]:
        """The app ids among these already in the log, with their versions (asks the log, reads no data)."""
        dt = self.delta()
        if dt is None:
            return {}
        out = {}
        for a in app_ids:
            v = dt.transaction_version(a)
            if v is not None:
                out[a] = v
        return out

    def committed_sources(self) -> set[str]:
        """URIs of the input files with rows in the table, from the log's file statistics (every data file
        holds one input file's rows, and its ``source_file`` bounds say which): one read of the log's state,
        rather than one marker lookup per input (docs/benchmarks.md, bench_table)."""
        dt = self.delta()
        if dt is None:
            return set()
        actions = pa.table(dt.get_add_actions(flatten=True))
        if "min.source_file" not in actions.column_names:
            return set()
        return {s for s in actions.column("min.source_file").to_pylist() if s is not None}

    def commit(self, inputs: list[InputCommit], schema: pa.Schema, run_id: str) -> list[InputCommit]:
        """Commit several input files in one transaction, each with its own marker; returns those
        committed now. An input whose marker is already at its version is skipped (its data files become
        orphans for ``vacuum``); a concurrent commit of the same marker makes the retry skip it."""
        pending = list(inputs)
        for _ in range(COMMIT_RETRIES):
            # One snapshot for the check and the commit: a refresh in between would move the commit's read
            # version past another driver's commit of the same marker, and Delta's conflict check (which
            # only looks at commits after the read version) would let both land.
            dt = self.delta()
            assert dt is not None, "claim() creates the table before anything is committed"
            pending = [c for c in pending if (dt.transaction_version(c.app_id) or 0) < c.version]
            if not pending:
                return []
            actions: list[AddAction | RemoveAction] = []
            now = int(time.time() * 1000)
            for c in pending:
                actions += [AddAction(f.name, f.size, {}, now, True, f.stats) for f in c.files]
                actions += [RemoveAction(name, True, now) for name in c.replaces]
            props = CommitProperties(
                app_transactions=[Transaction(c.app_id, c.version, now) for c in pending],
                custom_metadata={
                    "datajuicer_ray": {
                        "run_id": run_id,
                        "inputs": [
                            {"uri": c.uri, "rows_in": c.rows_in, "version": c.version} for c in pending
                        ],
                    }
                },
            )
            try:
                dt.create_write_transaction(actions, mode="append", schema=schema, commit_properties=props)
            except CommitFailedError:
                continue  # another driver committed one of these markers first: reload and skip it
            return pending
        raise RuntimeError(f"output.path: {self.path}: commit kept conflicting after {COMMIT_RETRIES} tries")

    # -- reading ----------------------------------------------------------------------------

    def file_uris(self) -> list[str]:
        dt = self.delta()
        return [] if dt is None else dt.file_uris()

    def dataset(self) -> pads.Dataset:
        """The committed rows as a pyarrow dataset (the data files the log lists, nothing else)."""
        dt = self.delta()
        if dt is None:
            raise FileNotFoundError(f"{self.path}: no curated table here (no _delta_log)")
        schema = pa.schema(dt.schema().to_arrow())
        paths = [self.location.path(self.location.name_of(u)) for u in dt.file_uris()]
        return pads.dataset(paths, schema=schema, filesystem=self.fs, format="parquet")

    def data_files_of(self, input_uri: str) -> list[str]:
        """The committed data files holding this input file's rows (from the log's statistics)."""
        dt = self.delta()
        if dt is None:
            return []
        uris = dt.file_uris(file_pruning_predicate=[("source_file", "=", input_uri)])
        return [self.location.name_of(u) for u in uris]

    # -- run records and the summary -----------------------------------------------------------

    def write_json(self, name: str, obj: dict) -> None:
        """Write a JSON file under the table folder; local writes go through a rename so a reader never
        sees half a file (object stores publish a PUT whole)."""
        target = f"{self.root}/{name}"
        data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
        tmp = target if not isinstance(self.fs, pafs.LocalFileSystem) else f"{target}.{uuid.uuid4().hex}.tmp"
        for attempt in storage_retrying():  # a throttled PUT must not fail a run that has committed its rows
            with attempt:
                self.fs.create_dir(posixpath.dirname(target), recursive=True)
                with self.fs.open_output_stream(tmp) as fh:
                    fh.write(data)
                if tmp != target:
                    self.fs.move(tmp, target)

    def read_json(self, name: str) -> dict[str, Any]:
        try:
            with self.fs.open_input_stream(f"{self.root}/{name}") as fh:
                return json.loads(fh.read())
        except FileNotFoundError:
            return {}

    def run_records(self) -> list[str]:
        """Run record names (``_runs/<run id>.json``), oldest first (run ids start with a UTC time)."""
        sel = pafs.FileSelector(f"{self.root}/{RUNS_DIR}", allow_not_found=True)
        return sorted(
            f"{RUNS_DIR}/{i.base_name}" for i in self.fs.get_file_info(sel) if i.base_name.endswith(".json")
        )

    def latest_run(self) -> dict[str, Any]:
        """The newest run record ({} if there is none)."""
        names = self.run_records()
        return self.read_json(names[-1]) if names else {}

    def summary(self) -> dict[str, Any]:
        """Counts over every committed row, streamed batch by batch (memory stays flat at any size).

        ``rows_in`` is what the input files held: for each source file, its highest row number + 1 (a file is
        only committed once every row before its last is in, so a gap would show as rows_in > rows_out).
        """
        dt = self.delta()
        if dt is None:
            return {}
        by_status: Counter = Counter()
        by_rewrite: Counter = Counter()
        last_row: dict[str, int] = {}
        rows_out = 0
        columns = ["status", "rewrite_status", "source_file", "source_row"]
        for batch in self.dataset().to_batches(columns=columns, batch_size=65536):
            t = pa.Table.from_batches([batch])
            rows_out += t.num_rows
            by_status.update(_counts(t.column("status")))
            by_rewrite.update(_counts(t.column("rewrite_status")))
            for g in t.group_by("source_file").aggregate([("source_row", "max")]).to_pylist():
                last_row[g["source_file"]] = max(last_row.get(g["source_file"], -1), g["source_row_max"])
        return {
            "rows_in": sum(r + 1 for r in last_row.values()),
            "rows_out": rows_out,
            "by_status": dict(sorted(by_status.items())),
            "by_rewrite_status": dict(sorted(by_rewrite.items())),
            "files_committed": len(last_row),
            "table_version": dt.version(),
        }

    def vacuum(self, retention_hours: float, dry_run: bool) -> list[str]:
        """Delete data files no commit references (a killed driver's, a lost race's) older than the
        retention, plus removed files past it. Files younger than it may belong to a live run."""
        dt = self.delta()
        if dt is None:
            raise FileNotFoundError(f"{self.path}: no curated table here (no _delta_log)")
        return dt.vacuum(
            retention_hours=int(retention_hours),
            dry_run=dry_run,
            enforce_retention_duration=False,
            full=True,
        )

    def remove_files(self, names: Iterable[str]) -> int:
        """Delete data files this run wrote and did not commit (no other run can commit them: their names
        carry this run's id)."""
        n = 0
        for name in names:
            try:
                self.fs.delete_file(f"{self.root}/{name}")
                n += 1
            except FileNotFoundError:
                pass
        return n


def _counts(column: pa.ChunkedArray) -> dict[str, int]:
    vc = pc.value_counts(column)
    out = Counter({str(v["values"]): int(v["counts"]) for v in vc.to_pylist()})
    return dict(sorted(out.items()))


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
