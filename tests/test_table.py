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
from tests.support.tables import committed_inputs, read_keys, read_rows

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


def _input_rows(file_id: str, lo: int, hi: int, last: bool) -> pa.Table:
    """Rows lo..hi-1 of one input file as the reader hands them on (the last one marked if ``last``)."""
    from datajuicer_ray.io import schema as s
    from datajuicer_ray.io.reader import LAST_COL

    b = _batch(file_id, hi - lo)
    b = b.set_column(b.schema.get_field_index(s.ROW_COL), s.ROW_COL, pa.array(range(lo, hi), pa.int64()))
    keys = pa.array([f"{file_id}:{i}" for i in range(lo, hi)])
    b = b.set_column(b.schema.get_field_index("key"), "key", keys)
    b = b.append_column(s.SOURCE_COL, pa.array([file_id] * (hi - lo)))
    return b.append_column(LAST_COL, pa.array([last and i == hi - 1 for i in range(lo, hi)]))


def _inputs(*ids: str) -> list:
    from datajuicer_ray.io.reader import InputFile

    return [InputFile(f"/data/{i}.parquet", i, "parquet") for i in ids]


def _meta(writer, file_id: str, lo: int, hi: int, last: bool) -> dict:
    (meta,) = writer(_input_rows(file_id, lo, hi, last)).to_pylist()
    return meta


def _data_files_on_disk(path: Path) -> set[str]:
    return {p.name for p in path.glob("part-*.parquet")}


def test_rows_that_arrive_twice_are_committed_once(tmp_path):
    """A task retried after its first output was seen sends some rows again, batched differently."""
    from datajuicer_ray.io.writer import Committer, DataFileWriter

    out = str(tmp_path / "t")
    table = OutputTable(out)
    claim = table.claim("fp", output_schema(None), overwrite=False)
    (f,) = _inputs("f0")
    writer = DataFileWriter(table.location, None, "run-x", {"f0": f.path})

    def rows(lo: int, hi: int, last: bool) -> pa.Table:
        return _input_rows("f0", lo, hi, last)

    committer = Committer(table, [f], {"f0": 10}, claim, "run-x", output_schema(None))
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


@pytest.mark.parametrize(
    "batches",
    [[(0, 4, False)], [(0, 2, False), (3, 5, True)]],
    ids=["last-row-never-came", "a-row-before-the-last-never-came"],
)
def test_an_input_whose_rows_did_not_all_arrive_fails_the_run_and_is_not_committed(tmp_path, batches):
    from datajuicer_ray.io.writer import Committer, DataFileWriter

    out = str(tmp_path / "t")
    table = OutputTable(out)
    claim = table.claim("fp", output_schema(None), overwrite=False)
    files = _inputs("f0", "f1")
    writer = DataFileWriter(table.location, None, "run-x", {f.file_id: f.path for f in files})
    committer = Committer(table, files, {"f0": 5, "f1": 3}, claim, "run-x", output_schema(None))
    assert committer.add(_meta(writer, "f1", 0, 3, True)) is True
    assert committer.flush() == ["f1"]
    assert [committer.add(_meta(writer, "f0", *b)) for b in batches] == [False] * len(batches)
    assert committer.flush() == []  # nothing ready: f0 is incomplete
    with pytest.raises(
        RuntimeError, match=r"input /data/f0\.parquet: \d rows written but the file's last row"
    ):
        committer.finish()
    apps = {f.file_id: claim.app_id(f.path) for f in files}
    assert table.committed(apps.values()).keys() == {apps["f1"]}
    assert sorted(r["key"] for r in read_rows(out, ["key"])) == ["f1:0", "f1:1", "f1:2"]


def test_empty_inputs_are_committed_with_no_data_file_so_a_rerun_skips_them(tmp_path):
    from datajuicer_ray.io.writer import Committer, DataFileWriter

    out = str(tmp_path / "t")
    table = OutputTable(out)
    claim = table.claim("fp", output_schema(None), overwrite=False)
    files = _inputs("f0", "f1", "f2")  # f0 and f2 give no row at all
    expected = {"f0": 0, "f1": 3, "f2": 0}
    writer = DataFileWriter(table.location, None, "run-x", {f.file_id: f.path for f in files})
    committer = Committer(table, files, expected, claim, "run-x", output_schema(None))
    assert committer.add(_meta(writer, "f1", 0, 3, True)) is True
    committer.finish()  # flushes the ready file and the empty ones together
    assert sorted(committer.committed) == ["f0", "f1", "f2"] and committer.skipped == []
    apps = [claim.app_id(f.path) for f in files]
    assert table.committed(apps).keys() == set(apps)
    (last,) = DeltaTable(out).history(1)
    assert sorted((i["uri"], i["rows_in"]) for i in last["datajuicer_ray"]["inputs"]) == [
        (f.path, expected[f.file_id]) for f in files
    ]
    assert table.data_files_of("/data/f0.parquet") == [] and len(table.data_files_of("/data/f1.parquet")) == 1
    assert len(read_rows(out)) == 3
    # A re-run of the same inputs finds every marker in place: nothing is committed twice.
    version = DeltaTable(out).version()
    rerun = Committer(table, files, expected, claim, "run-y", output_schema(None))
    rerun.finish()
    assert rerun.committed == [] and sorted(rerun.skipped) == ["f0", "f1", "f2"]
    assert DeltaTable(out).version() == version


def test_an_input_another_driver_committed_first_is_skipped_and_its_files_removed(tmp_path):
    from datajuicer_ray.io.writer import Committer, DataFileWriter

    out = str(tmp_path / "t")
    table = OutputTable(out)
    claim = table.claim("fp", output_schema(None), overwrite=False)
    files = _inputs("f0", "f1")
    uris = {f.file_id: f.path for f in files}
    ours = Committer(table, files, {"f0": 3, "f1": 2}, claim, "run-a", output_schema(None))
    theirs = Committer(OutputTable(out), files[:1], {"f0": 3}, claim, "run-b", output_schema(None))
    their_meta = _meta(DataFileWriter(table.location, None, "run-b", uris), "f0", 0, 3, True)
    assert theirs.add(their_meta) is True and theirs.flush() == ["f0"]

    writer = DataFileWriter(table.location, None, "run-a", uris)
    our_f0 = [_meta(writer, "f0", 0, 2, False), _meta(writer, "f0", 2, 3, True)]
    our_f1 = _meta(writer, "f1", 0, 2, True)
    assert [ours.add(m) for m in [*our_f0, our_f1]] == [False, True, True]
    assert ours.flush() == ["f1"]  # f1 lands; f0 was committed by the other driver
    assert ours.skipped == ["f0"] and ours.committed == ["f1"]
    assert sorted(ours.orphans) == sorted(m["name"] for m in our_f0)
    assert ours.add(_meta(writer, "f0", 0, 3, True)) is False  # a late retry of it is an orphan too
    ours.finish()
    # The other driver's rows of f0 and ours of f1, each once; our f0 files are gone from the folder.
    assert sorted(read_keys(out)) == ["f0:0", "f0:1", "f0:2", "f1:0", "f1:1"]
    assert {r["key"]: r["source_file"] for r in read_rows(out, ["key", "source_file"])}["f0:0"] == uris["f0"]
    assert _data_files_on_disk(tmp_path / "t") == {Path(u).name for u in table.file_uris()}
    assert their_meta["name"] in _data_files_on_disk(tmp_path / "t")
