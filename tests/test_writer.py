"""The writer: data files written by workers, and the driver's committer, which commits each input file
once, whole, whatever order and however often its rows arrive (no Ray: the stages are called directly)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from datajuicer_ray.io import columns as c
from datajuicer_ray.io.reader import InputFile
from datajuicer_ray.io.schema import output_schema
from datajuicer_ray.io.table import OutputTable
from datajuicer_ray.io.writer import Committer, DataFileWriter
from tests.support.tables import read_keys, read_rows, stage_rows


def _input_rows(file_id: str, lo: int, hi: int, last: bool) -> pa.Table:
    """Rows lo..hi-1 of one input file as the reader hands them on (the last one marked if ``last``)."""
    b = stage_rows(file_id, hi - lo)
    b = b.set_column(b.schema.get_field_index(c.ROW_COL), c.ROW_COL, pa.array(range(lo, hi), pa.int64()))
    keys = pa.array([f"{file_id}:{i}" for i in range(lo, hi)])
    b = b.set_column(b.schema.get_field_index(c.KEY), c.KEY, keys)
    b = b.append_column(c.SOURCE_COL, pa.array([file_id] * (hi - lo)))
    return b.append_column(c.LAST_COL, pa.array([last and i == hi - 1 for i in range(lo, hi)]))


def _inputs(*ids: str) -> list:
    return [InputFile(f"/data/{i}.parquet", i, "parquet") for i in ids]


def _meta(writer, file_id: str, lo: int, hi: int, last: bool) -> dict:
    (meta,) = writer(_input_rows(file_id, lo, hi, last)).to_pylist()
    return meta


def _data_files_on_disk(path: Path) -> set[str]:
    return {p.name for p in path.glob("part-*.parquet")}


def test_rows_that_arrive_twice_are_committed_once(tmp_path):
    """A task retried after its first output was seen sends some rows again, batched differently."""

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
