"""The curated table is a Delta Lake table: slices written at once, a driver killed mid-run, markers that
make a commit happen once, folders that are not ours, overwrite and vacuum."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from datajuicer_ray.config import ConfigError, load_curate_config
from datajuicer_ray.io.schema import output_schema
from datajuicer_ray.io.table import Claim, DataFile, InputCommit, OutputTable
from datajuicer_ray.io.writer import data_file_name, delta_stats, to_output_table, write_data_file
from datajuicer_ray.pipeline import curate
from tests.support.drills import curate_process, drill_overrides
from tests.support.inputs import img2dataset_parquet
from tests.support.tables import committed_inputs, read_keys, read_rows, stage_rows

FILES, ROWS = 12, 12


@pytest.fixture(scope="module")
def drill_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("drill")


@pytest.fixture(scope="module")
def shared_ray(drill_dir):
    """One Ray for this module whose drivers read the drill folder, so one can be killed mid-run; the
    drivers under test join it through RAY_ADDRESS as `ray job submit` drivers join a cluster."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    os.environ["DATAJUICER_RAY_DRILL_DIR"] = str(drill_dir)
    ray.init(
        address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    os.environ.pop("DATAJUICER_RAY_DRILL_DIR", None)


@pytest.fixture()
def corpus(tmp_path) -> tuple[Path, dict[str, int]]:
    rows = {}
    for i in range(FILES):
        p = img2dataset_parquet(
            tmp_path / "in" / f"{i:05d}.parquet", ROWS, start=1000 * i, failed=(1000 * i + 2,)
        )
        rows[str(p)] = ROWS
    return tmp_path / "in", rows


def overrides(inp: Path, out: Path, *extra: str) -> list[str]:
    return drill_overrides(inp, out, *extra, on_workers=False)


def curate_slice(inp: Path, out: Path, address: str, *extra: str) -> subprocess.Popen:
    return curate_process(out.parent, overrides(inp, out, *extra), address)


def whole_files_only(out: Path, rows_per_file: dict[str, int]) -> Counter:
    """What any Delta reader sees: every input file it shows is there whole, never in part."""
    import polars as pl

    # One snapshot for both readers: a slice still running may commit between two reads of the latest one.
    snapshot = DeltaTable(str(out))
    seen = Counter(snapshot.to_pyarrow_table(columns=["source_file"]).column("source_file").to_pylist())
    for source, n in seen.items():
        assert n == rows_per_file[source], f"{source}: {n} of {rows_per_file[source]} rows visible"
    assert pl.read_delta(str(out), version=snapshot.version()).height == sum(seen.values())  # another engine
    return seen


def test_two_slices_at_once_one_killed_then_rerun(shared_ray, drill_dir, corpus, tmp_path):
    inp, rows_per_file = corpus
    out = tmp_path / "out"
    # each driver stops before its second commit until the hold is lifted: b is killed there
    hold = drill_dir / "hold_second_commit"
    hold.touch()
    a = curate_slice(inp, out, shared_ray, "input.shard=0/2")
    b = curate_slice(inp, out, shared_ray, "input.shard=1/2")
    try:
        # b is killed (a spot driver node lost) once it has committed something but not everything
        t0 = time.time()
        while _inputs_of_slice(out, 1) < 1 and b.poll() is None:
            assert time.time() - t0 < 180, "slice 1/2 made no progress"
            time.sleep(0.2)
        b.send_signal(signal.SIGKILL)
        b.wait(timeout=30)
        assert 1 <= _inputs_of_slice(out, 1) < FILES // 2
    finally:
        hold.unlink()
        if b.poll() is None:
            b.kill()
    whole_files_only(out, rows_per_file)  # while it is down
    out_a, _ = a.communicate(timeout=300)
    assert a.returncode == 0, out_a[-3000:]
    whole_files_only(out, rows_per_file)
    rerun = curate_slice(inp, out, shared_ray, "input.shard=1/2")
    text, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, text[-3000:]
    assert "resuming:" in text
    seen = whole_files_only(out, rows_per_file)
    keys = read_keys(out)
    assert len(keys) == len(set(keys)) == FILES * ROWS
    assert set(seen) == set(rows_per_file)
    assert committed_inputs(out) == FILES  # no input file committed twice


def _inputs_of_slice(out: Path, i: int) -> int:
    if not (out / "_delta_log").exists():
        return 0
    names = [
        item["uri"]
        for h in DeltaTable(str(out)).history()
        for item in (h.get("datajuicer_ray") or {}).get("inputs", [])
    ]
    return sum(int(Path(n).stem) % 2 == i for n in names)


# ----------------------------------------------------------------------------------------------
# markers, without Ray


def _data_file(table: OutputTable, run_id: str, source: str, n: int) -> DataFile:
    out = to_output_table(stage_rows(source, n), None, source)
    name = data_file_name(run_id, source, 0)
    return DataFile(name, write_data_file(table.location, name, out), n, delta_stats(out, source))


def test_a_marker_commits_once_even_from_two_drivers_at_once(tmp_path):
    schema = output_schema(None)
    table = OutputTable(str(tmp_path / "t"))
    claim = table.claim("fp", schema, overwrite=False)
    app = claim.app_id("s3://bucket/00000.parquet")
    results: dict[str, list] = {}
    barrier = threading.Barrier(2)

    def driver(name: str) -> None:
        own = OutputTable(str(tmp_path / "t"))
        own.delta()  # both read the log before either commits
        commit = InputCommit(
            "s3://bucket/00000.parquet", app, [_data_file(own, name, "s3://bucket/00000.parquet", 5)], 5
        )
        barrier.wait()
        results[name] = own.commit([commit], schema, name)

    threads = [threading.Thread(target=driver, args=(n,)) for n in ("run-a", "run-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(len(v) for v in results.values()) == [0, 1]  # one landed, the other saw its marker
    assert len(read_rows(tmp_path / "t")) == 5
    # a sequential re-commit of the same marker is a no-op as well
    again = InputCommit(
        "s3://bucket/00000.parquet", app, [_data_file(table, "run-c", "s3://bucket/00000.parquet", 5)], 5
    )
    assert table.commit([again], schema, "run-c") == []
    assert len(read_rows(tmp_path / "t")) == 5
    # same-named files in different folders are different inputs
    other = "s3://bucket/other/00000.parquet"
    assert claim.app_id(other) != app
    assert Claim(claim.generation + 1, "fp").app_id("s3://bucket/00000.parquet") != app  # an overwrite's


def test_folders_that_are_not_ours_are_refused_before_any_work(ray_local, tmp_path):
    inp = tmp_path / "in"
    img2dataset_parquet(inp / "00000.parquet", 4)
    spark = tmp_path / "spark_output"
    spark.mkdir()
    (spark / "part-00000-abc.snappy.parquet").write_bytes(b"PAR1 user data")
    for mode in ("resume", "overwrite"):
        with pytest.raises(ConfigError, match="output.path: .* is not empty and not a curated table"):
            curate(load_curate_config(None, overrides(inp, spark, f"output.mode={mode}")))
    assert sorted(p.name for p in spark.iterdir()) == ["part-00000-abc.snappy.parquet"]  # untouched
    plain_delta = tmp_path / "someone_elses_delta"
    from deltalake import write_deltalake

    write_deltalake(str(plain_delta), pa.table({"x": [1]}))
    with pytest.raises(ConfigError, match="a Delta table that datajuicer_ray did not create"):
        curate(load_curate_config(None, overrides(inp, plain_delta, "output.mode=overwrite")))
    assert DeltaTable(str(plain_delta)).to_pyarrow_table().num_rows == 1


def test_overwrite_replaces_in_one_commit_and_vacuum_spares_young_files(ray_local, tmp_path):
    inp = tmp_path / "in"
    for i in range(2):
        img2dataset_parquet(inp / f"{i:05d}.parquet", 5, start=10 * i)
    out = tmp_path / "out"
    first = curate(load_curate_config(None, overrides(inp, out)))
    assert first["rows_out"] == 10
    orphan = out / "part-leftover-of-a-killed-run.parquet"
    orphan.write_bytes(b"never committed")
    again = curate(
        load_curate_config(None, overrides(inp, out, "vision.keep_ratio=0.25", "output.mode=overwrite"))
    )
    assert again["rows_in"] == again["rows_out"] == 10  # the old generation's rows are gone, counts too
    assert {len(r["patch_index"] or []) for r in read_rows(out) if r["status"] == "ok"} == {round(0.25 * 196)}
    table = OutputTable(str(out))
    # young files (a live run's, maybe) are spared; with no retention the orphan and replaced files go
    assert table.vacuum(retention_hours=1, dry_run=True) == []
    gone = table.vacuum(retention_hours=0, dry_run=False)
    assert orphan.name in gone and not orphan.exists()
    assert len(read_rows(out)) == 10
