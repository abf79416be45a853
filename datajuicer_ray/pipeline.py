"""The curation job: plan, build the Ray Data pipeline, stream it into the Delta table exactly once.

    input files -> read (tasks) -> decode (CPU tasks) -> score (actor pool, GPUs) -> rewrite (optional)
                -> write data files (tasks) -> driver commits each finished input file (Delta)

Everything that can fail on a config or a path fails here before Ray starts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import deque

import pyarrow as pa
import ray

from datajuicer_ray import preflight
from datajuicer_ray.config import ConfigError, CurateConfig, load_curate_config
from datajuicer_ray.io import faults, reader, schema, writer
from datajuicer_ray.io.curated import CuratedTable
from datajuicer_ray.io.reader import InputFile
from datajuicer_ray.io.sample import write_sample
from datajuicer_ray.io.table import Claim, FingerprintConflict, OutputTable, TableConflict, new_run_id
from datajuicer_ray.operators import Operator, check_columns
from datajuicer_ray.plan import operators
from datajuicer_ray.progress import Progress, console, print_summary
from datajuicer_ray.provenance import config_difference, run_record, scorer_precision
from datajuicer_ray.runtime import gpus_available_or_scalable, init_ray, shutdown_ray

log = logging.getLogger("datajuicer_ray")
say = console("curate")  # what the run tells its user, as "[curate] ..." on stdout


class RunConflict(ConfigError):
    """The output table holds a run made with different settings."""


class TooManyFailures(RuntimeError):
    """Most recent rows failed for a system reason: the cluster, not the data, is broken."""


def check_capacity(ops: list[Operator], mode: str) -> None:
    """Fail (locally) or warn (on a cluster that may autoscale) when what the operators hold at once (actor
    pools at their minimum size, one task of each kind) exceeds the cluster's CPUs: Ray Data would
    otherwise wait forever without a word."""
    need = {op.holds.keys or op.name: op.holds.cpus for op in ops}
    have = ray.cluster_resources().get("CPU", 0.0)
    if sum(need.values()) <= have:
        return
    detail = ", ".join(f"{k}={v:g}" for k, v in need.items())
    msg = (
        f"the pipeline holds {sum(need.values()):g} CPUs at once ({detail}) but Ray has {have:g}; "
        "raise ray.num_cpus (logical CPUs may exceed cores) or lower the actors' num_cpus"
    )
    if mode == "local":
        raise ConfigError(f"ray.num_cpus: {msg}")
    log.warning("%s (waiting for the autoscaler to add nodes)", msg)


def scorer_resources(cfg: CurateConfig) -> tuple[float, str]:
    """GPUs per scorer actor: as configured, or (-1, auto) one per actor when the cluster has GPUs or its
    autoscaler can add a node type with GPUs (GPU nodes at 0 workers at start must not mean "score on CPU")."""
    v = cfg.vision
    if v.num_gpus >= 0:
        return v.num_gpus, "config"
    if gpus_available_or_scalable():
        return 1.0, "auto: the cluster has or can add GPU nodes"
    return 0.0, "auto: no GPU in the cluster or its node types"


def build_dataset(ops: list[Operator], files: list[InputFile]) -> ray.data.Dataset:
    """The lazy pipeline of ``ops`` (:func:`datajuicer_ray.operators.operators`) over the input files;
    nothing runs until the driver iterates it."""
    ds = ray.data.from_items(reader.file_items(files), override_num_blocks=max(1, len(files)))
    for op in ops:
        ds = op.apply(ds)
    return ds


# ----------------------------------------------------------------------------------------------
# planning


def plan_files(cfg: CurateConfig, source: CuratedTable | None) -> list[InputFile]:
    """The input files; with ``rewrite.only``, the committed data files of ``source``."""
    if cfg.input.format == "sample":  # built in the cache, then read as any img2dataset Parquet file
        path = write_sample(cfg.input.sample_rows)
        return reader.plan_inputs(dataclasses.replace(cfg.input, path=str(path), format="parquet"))
    if source is not None:  # rewrite.only: the curated table's committed data files are the inputs
        uris = source.data_files()
        if not uris:
            raise FileNotFoundError(f"input.path: no committed rows in a curated table at {cfg.input.path!r}")
        return [InputFile(u, reader.file_id_for(u), "curated") for u in uris]
    return reader.plan_inputs(cfg.input)


def output_image_column(cfg: CurateConfig, source: CuratedTable | None) -> str | None:
    if not cfg.output.keep_image:
        return None
    if source is not None:  # rewrite.only: the column the curated input already uses
        return source.image_column()
    return cfg.input.columns.image


def claim_table(cfg: CurateConfig, table: OutputTable, record: dict, out_schema: pa.Schema) -> Claim:
    """Create the table or check this run may write into it (before Ray starts)."""
    try:
        return table.claim(record["fingerprint"], out_schema, overwrite=cfg.output.mode == "overwrite")
    except FingerprintConflict:
        previous = table.latest_run()
        detail = config_difference(previous.get("config", {}), record["config"])
        if not detail and previous:
            detail = "same config; a package, model revision, prompt or guard differs"
        raise RunConflict(
            f"output.path: {cfg.output.path} holds a run with other settings ({detail or 'fingerprint differs'}); "
            "use a new output.path, or output.mode=overwrite to replace it"
        ) from None
    except TableConflict as err:
        raise ConfigError(str(err)) from None


def plan_retry(table: OutputTable, files: list[InputFile], app_ids: dict[str, str]):
    """output.retry_failed: the committed input files with rows a system fault left, the data files their
    new rows replace and the marker version to commit (one more than the committed one)."""
    ds = table.dataset()
    t = ds.to_table(columns=["source_file", "status", "rewrite_status"])
    bad = {
        src
        for src, st, rw in zip(
            *(t.column(c).to_pylist() for c in ("source_file", "status", "rewrite_status"))
        )
        if schema.is_transient(st, rw)
    }
    done = table.committed(app_ids[f.file_id] for f in files if f.path in bad)
    pending = [f for f in files if f.path in bad and app_ids[f.file_id] in done]
    replacing = {f.path: (table.data_files_of(f.path), done[app_ids[f.file_id]] + 1) for f in pending}
    return pending, replacing


class FailureRate:
    """Share of system-fault rows (read_error, score_error, failed:*) over the last ``window`` rows."""

    def __init__(self, max_rate: float, window: int):
        self.max_rate, self.window = max_rate, window
        self.parts: deque[tuple[int, int]] = deque()
        self.rows = self.failed = 0

    def add(self, rows: int, failed: int) -> None:
        self.parts.append((rows, failed))
        self.rows, self.failed = self.rows + rows, self.failed + failed
        while self.parts and self.rows - self.parts[0][0] >= self.window:
            r, f = self.parts.popleft()
            self.rows, self.failed = self.rows - r, self.failed - f
        if self.rows >= self.window and self.failed > self.max_rate * self.rows:
            raise TooManyFailures(
                f"{self.failed} of the last {self.rows} rows failed for a system reason (read_error, "
                f"score_error, failed:*), over output.max_failure_rate={self.max_rate:g}: stopping. Committed "
                "input files stay; fix the cause and re-run to resume, or output.retry_failed=true to redo "
                "the failed rows"
            )


# ----------------------------------------------------------------------------------------------
# the job


def curate(cfg: CurateConfig) -> dict:
    """Run curation; returns the summary written to ``_summary.json``."""
    retried_at_start = faults.retries()  # storage requests retried from here on count in the summary
    # Each table is opened once; the preflight, the plan and the commits share its handle (and its log).
    table = OutputTable(cfg.output.path)
    source = CuratedTable(str(cfg.input.path)) if cfg.rewrite.only else None
    preflight.check_curate(cfg, table, source)  # every problem knowable now, at once, before any write
    t0 = time.time()
    run_id = new_run_id()
    files = plan_files(cfg, source)
    image_column = output_image_column(cfg, source)
    out_schema = schema.output_schema(image_column)
    record = run_record(cfg, run_id, files, source)  # loads model configs: a bad model id fails here
    claim = claim_table(cfg, table, record, out_schema)
    app_ids = {f.file_id: claim.app_id(f.path) for f in files}
    # Asks the log, never the inputs: which inputs have rows (one read of its file statistics), then the
    # markers of the rest only (an input with no rows at all is committed by its marker alone).
    with_rows = table.committed_sources()
    rest = [f for f in files if f.path not in with_rows]
    marked = table.committed(app_ids[f.file_id] for f in rest)
    done = [f for f in files if f.path in with_rows or app_ids[f.file_id] in marked]
    replacing: dict = {}
    if cfg.output.retry_failed:
        pending, replacing = plan_retry(table, files, app_ids)
    else:
        pending = [f for f in rest if app_ids[f.file_id] not in marked]
    if not pending:
        what = "with rows to retry" if cfg.output.retry_failed else "to curate"
        say.info(f"nothing to do: no input file {what} ({len(files)} committed in {cfg.output.path})")
        return _refresh_summary(table, rows=0, seconds=0.0, files=0)
    if done and not cfg.output.retry_failed:
        say.info(f"resuming: {len(done)} of {len(files)} input files already committed, {len(pending)} to go")
    table.write_json(f"_runs/{run_id}.json", record)

    mode = init_ray(cfg.ray)
    num_gpus, why = scorer_resources(cfg)  # asks the cluster (and its autoscaler's config): once
    ops = operators(cfg, pending, image_column, run_id, num_gpus, table.location)
    check_columns(ops)
    check_capacity(ops, mode)
    scored = f"scorer GPUs per actor: {num_gpus:g} ({why})"
    if not cfg.rewrite.only:  # the precision the scorer computes in, as resolved on its device
        record["precision"] = scorer_precision(cfg.vision, num_gpus)
        table.write_json(f"_runs/{run_id}.json", record)
        scored += f", scoring in {record['precision']['precision']} ({record['precision']['why']})"
    say.info(f"{len(pending)} input files, ray {mode}, {scored}")
    expected = reader.count_rows(pending)
    committer = writer.Committer(table, pending, expected, claim, run_id, out_schema, replacing)
    progress = Progress(total_files=len(pending), expected_rows=sum(v for v in expected.values() if v > 0))
    failures = FailureRate(cfg.output.max_failure_rate, cfg.output.failure_window)
    t_stream, storage_retries = time.time(), 0
    try:
        for batch in build_dataset(ops, pending).iter_batches(batch_size=None, batch_format="pyarrow"):
            for meta in batch.to_pylist():
                finished = committer.add(meta)
                progress.update(len(meta["rows"]), finished)
                failures.add(len(meta["rows"]), meta["transient"])
                storage_retries += meta["storage_retries"]
            committer.flush()  # files completed by this batch: one commit
        committer.finish()
    finally:
        progress.close()
        record.update(
            ended_at=time.time(), inputs_committed=[committer.files[f].path for f in committer.committed]
        )
        table.write_json(f"_runs/{run_id}.json", record)
    elapsed = time.time() - t_stream
    summary = _refresh_summary(
        table,
        rows=committer.rows_written,
        seconds=elapsed,
        files=len(committer.committed),
        t0=t0,
        retries=storage_retries + faults.retries() - retried_at_start,  # the workers' and the driver's
        precision=record.get("precision", {}).get("precision"),
    )
    print_summary(summary, cfg.output.path)
    return summary


def _refresh_summary(
    table: OutputTable,
    rows: int,
    seconds: float,
    files: int,
    t0: float | None = None,
    retries: int = 0,
    precision: str | None = None,
) -> dict:
    """`_summary.json`: the whole table (every committed row), and this run's throughput, storage
    requests retried (throttled, reset, timed out: ``io/faults.py``) and the precision it scored in."""
    summary = table.summary()
    summary["images_per_s"] = round(rows / seconds, 3) if seconds > 0 else 0.0
    summary["this_run"] = {
        "rows": rows,
        "files": files,
        "seconds": round(time.time() - t0, 2) if t0 else 0.0,
        "storage_retries": retries,
    }
    if precision:
        summary["this_run"]["precision"] = precision
    table.write_json("_summary.json", summary)
    return summary


def curate_from_cli(config_path: str, overrides: list[str]) -> int:
    logging.basicConfig(
        level=os.environ.get("DATAJUICER_RAY_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s"
    )
    cfg = load_curate_config(config_path, overrides)
    ours = not ray.is_initialized()  # a caller's Ray (a notebook, a test) is left connected
    summary = curate(cfg)
    if ours:
        # Now rather than at exit: Ray's exit hook first sleeps 0.5 s for late worker messages, which a job
        # that has committed everything does not need (the hook then finds nothing to shut down). Only after
        # success: after an early stop, Ray Data's threads may still touch the core worker, which then ends
        # the process before the CLI has printed the error.
        shutdown_ray()
    return 0 if summary.get("rows_in") == summary.get("rows_out") else 1
