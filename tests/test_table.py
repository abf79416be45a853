"""The curated table is a Delta Lake table: slices written at once, a driver killed mid-run, markers that
make a commit happen once, folders that are not ours, overwrite and vacuum."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from drills import drill_overrides
from inputs import img2dataset_parquet
from tables import committed_inputs, read_keys, read_rows

from datajuicer_ray.config import ConfigError, load_curate_config
from datajuicer_ray.io.schema import output_schema
from datajuicer_ray.io.table import DataFile, InputCommit, OutputTable, input_app_id
from datajuicer_ray.io.writer import data_file_name, delta_stats, to_output_table, write_data_file
from datajuicer_ray.pipeline import curate

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


def curate_process(inp: Path, out: Path, address: str, *extra: str) -> subprocess.Popen:
    config = out.parent / "empty.yaml"
    config.write_text("{}\n")
    cmd = [sys.executable, "-m", "datajuicer_ray.cli", "curate", str(config), *overrides(inp, out, *extra)]
    return subprocess.Popen(
        cmd,
        env={**os.environ, "RAY_ADDRESS": address},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def whole_files_only(out: Path, rows_per_file: dict[str, int]) -> Counter:
    """What any Delta reader sees: every input file it shows is there whole, never in part."""
    import polars as pl

    seen = Counter(r["source_file"] for r in read_rows(out, ["source_file"]))
    for source, n in seen.items():
        assert n == rows_per_file[source], f"{source}: {n} of {rows_per_file[source]} rows visible"
    assert pl.read_delta(str(out)).height == sum(seen.values())  # another engine agrees
    return seen


def test_two_slices_at_once_one_killed_then_rerun(shared_ray, drill_dir, corpus, tmp_path):
    inp, rows_per_file = corpus
    out = tmp_path / "out"
    # each driver stops before its second commit until the hold is lifted: b is killed there
    hold = drill_dir / "hold_second_commit"
    hold.touch()
    a = curate_process(inp, out, shared_ray, "input.shard=0/2")
    b = curate_process(inp, out, shared_ray, "input.shard=1/2")
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
    rerun = curate_process(inp, out, shared_ray, "input.shard=1/2")
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


def _batch(source: str, n: int) -> pa.Table:
    from datajuicer_ray.io import schema

    return pa.table(
        {
            "key": [f"{source}:{i}" for i in range(n)],
            "caption": ["c"] * n,
            "patch_grid": pa.array([None] * n, pa.int16()),
            "status": ["ok"] * n,
            "error": pa.array([None] * n, pa.string()),
            schema.ROW_COL: pa.array(range(n), pa.int64()),
        }
    )


def _data_file(table: OutputTable, run_id: str, source: str, n: int) -> DataFile:
    out = to_output_table(_batch(source, n), None, source)
    name = data_file_name(run_id, source, 0)
    return DataFile(name, write_data_file(table.path, name, out), n, delta_stats(out, source))


def test_a_marker_commits_once_even_from_two_drivers_at_once(tmp_path):
    schema = output_schema(None)
    table = OutputTable(str(tmp_path / "t"))
    gen = table.claim("fp", schema, overwrite=False)
    app = input_app_id(gen, "fp", "s3://bucket/00000.parquet")
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
    assert input_app_id(gen, "fp", other) != app


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


def test_rows_that_arrive_twice_are_committed_once(tmp_path):
    """A task retried after its first output was seen sends some rows again, batched differently."""
    from datajuicer_ray.io import schema as s
    from datajuicer_ray.io.reader import LAST_COL, InputFile
    from datajuicer_ray.io.writer import Committer, DataFileWriter

    out = str(tmp_path / "t")
    table = OutputTable(out)
    gen = table.claim("fp", output_schema(None), overwrite=False)
    f = InputFile("/data/00000.parquet", "f0", "parquet")
    writer = DataFileWriter(out, None, "run-x", {"f0": f.path})

    def rows(lo: int, hi: int, last: bool) -> pa.Table:
        b = _batch("f0", hi - lo)
        b = b.set_column(b.schema.get_field_index(s.ROW_COL), s.ROW_COL, pa.array(range(lo, hi), pa.int64()))
        b = b.set_column(b.schema.get_field_index("key"), "key", pa.array([f"k{i}" for i in range(lo, hi)]))
        b = b.append_column(s.SOURCE_COL, pa.array(["f0"] * (hi - lo)))
        return b.append_column(LAST_COL, pa.array([last and i == hi - 1 for i in range(lo, hi)]))

    committer = Committer(table, [f], {"f0": 10}, gen, "fp", "run-x", output_schema(None))
    metas = [
        writer(rows(0, 4, False)),
        writer(rows(0, 4, False)),
        writer(rows(2, 7, False)),
        writer(rows(7, 10, True)),
    ]
    done = [committer.add(m.to_pylist()[0]) for m in metas]
    assert done == [False, False, False, True]
    committer.flush()
    committer.finish()
    got = read_rows(out, ["key", "source_row"])
    assert sorted(r["source_row"] for r in got) == list(range(10))
    # the duplicate and the partly duplicate file were never committed, and are gone from the folder
    on_disk = {p.name for p in (tmp_path / "t").glob("part-*.parquet")}
    assert on_disk == {Path(u).name for u in table.file_uris()}
    # a late retry of a committed file is ignored, not committed again
    assert committer.add(writer(rows(7, 10, True)).to_pylist()[0]) is False
