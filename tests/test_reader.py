"""The reader: img2dataset Parquet and WebDataset with no options, LAION/DataComp names by config, globs,
shards, and files that cannot be read."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datajuicer_ray.config import ColumnsConfig, InputConfig
from datajuicer_ray.io.columns import IMAGE_COL, LAST_COL, ROW_COL, UPSTREAM_STATUS_COL
from datajuicer_ray.io.reader import READ_ERROR, InputFile, file_id_for, plan_inputs, read_file
from tests.support.inputs import img2dataset_parquet, photo, webdataset_tar


def read_all(path, fmt="parquet", columns=None, rows_per_block=4) -> pa.Table:
    f = InputFile(str(path), file_id_for(str(path)), fmt)
    return pa.concat_tables(list(read_file(f, columns or ColumnsConfig(), rows_per_block)))


def test_img2dataset_parquet_with_failed_rows(tmp_path):
    path = img2dataset_parquet(tmp_path / "00000.parquet", 10, failed=(3, 7))
    t = read_all(path)
    assert t.num_rows == 10
    assert t.column("key").to_pylist() == [f"{i:09d}" for i in range(10)]
    assert t.column(UPSTREAM_STATUS_COL).to_pylist()[3] == "failed_to_download"
    assert t.column(IMAGE_COL).to_pylist()[3] is None and t.column(IMAGE_COL).to_pylist()[0] == photo(0)
    assert t.column(ROW_COL).to_pylist() == list(range(10))
    assert t.column(LAST_COL).to_pylist() == [False] * 9 + [True]


def test_webdataset_shard_reads_every_image_format(tmp_path):
    path = webdataset_tar(tmp_path / "00000.tar", 7)
    t = read_all(path, "webdataset", rows_per_block=3)
    assert t.column("key").to_pylist() == [f"{i:09d}" for i in range(7)]
    assert t.column("caption").to_pylist()[5] == "shard photo 5"
    assert all(b is not None for b in t.column(IMAGE_COL).to_pylist())
    assert t.column(LAST_COL).to_pylist()[-1] is True


def test_laion_names_map_by_config_and_missing_keys_are_deterministic(tmp_path):
    path = tmp_path / "laion" / "part-00001.parquet"
    path.parent.mkdir()
    pq.write_table(
        pa.table({"URL": ["u1", "u2"], "TEXT": ["a dog", "a cat"], "image": [photo(1), photo(2)]}), path
    )
    cols = ColumnsConfig(caption="TEXT", image="image")
    t = read_all(path, columns=cols)
    assert t.column("caption").to_pylist() == ["a dog", "a cat"]
    keys = t.column("key").to_pylist()
    assert keys == [f"{file_id_for(str(path))}:0", f"{file_id_for(str(path))}:1"]
    assert read_all(path, columns=cols).column("key").to_pylist() == keys


def test_datacomp_names_map_by_config(tmp_path):
    path = tmp_path / "dc.parquet"
    pq.write_table(pa.table({"uid": ["abc", "def"], "text": ["x", "y"], "jpg": [photo(1), photo(2)]}), path)
    t = read_all(path, columns=ColumnsConfig(key="uid", caption="text"))
    assert t.column("key").to_pylist() == ["abc", "def"]


def test_missing_image_column_is_a_read_error_row_naming_the_setting(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"key": ["a"], "caption": ["c"], "png": [b"x"]}), path)
    t = read_all(path)
    assert t.column(UPSTREAM_STATUS_COL).to_pylist() == [READ_ERROR]
    assert "input.columns.image" in t.column("_upstream_error").to_pylist()[0]


def test_truncated_shard_keeps_rows_before_the_break(tmp_path):
    path = webdataset_tar(tmp_path / "00000.tar", 6)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    t = read_all(path, "webdataset")
    statuses = t.column(UPSTREAM_STATUS_COL).to_pylist()
    assert statuses[-1] == READ_ERROR and all(s == "success" for s in statuses[:-1])
    assert 1 <= t.num_rows - 1 < 6
    assert t.column(LAST_COL).to_pylist()[-1] is True


def test_paths_globs_lists_and_shards(tmp_path):
    for i in range(6):
        img2dataset_parquet(tmp_path / "in" / f"{i:05d}.parquet", 2, start=10 * i)
    (tmp_path / "in" / "_SUCCESS.parquet").write_bytes(b"")  # side files are not inputs
    all_files = plan_inputs(InputConfig(path=str(tmp_path / "in")))
    assert [f.path.rsplit("/", 1)[1] for f in all_files] == [f"{i:05d}.parquet" for i in range(6)]
    globbed = plan_inputs(InputConfig(path=str(tmp_path / "in" / "0000[0-2].parquet")))
    assert len(globbed) == 3
    listed = plan_inputs(
        InputConfig(path=[str(tmp_path / "in" / "00001.parquet"), str(tmp_path / "in" / "00004.parquet")])
    )
    assert len(listed) == 2
    shards = [plan_inputs(InputConfig(path=str(tmp_path / "in"), shard=f"{i}/4")) for i in range(4)]
    assert sorted(f.path for s in shards for f in s) == sorted(f.path for f in all_files)
    assert shards[1] == plan_inputs(InputConfig(path=str(tmp_path / "in"), shard="1/4"))
    with pytest.raises(FileNotFoundError, match="input.path"):
        plan_inputs(InputConfig(path=str(tmp_path / "nope")))


def test_a_read_task_builds_the_sample_where_the_driver_built_it_elsewhere(tmp_path, monkeypatch):
    """The dry run's sample lives in each node's cache: a read task on a node without it builds it."""
    from datajuicer_ray.io.reader import FileReader, file_items, plan_inputs
    from datajuicer_ray.io.sample import sample_path, write_sample

    monkeypatch.setenv("DATAJUICER_RAY_CACHE", str(tmp_path / "driver"))
    cfg = InputConfig(format="sample", sample_rows=3)
    planned = plan_inputs(InputConfig(path=str(write_sample(3)), format="parquet"))
    # Another node: the same cache path (the same image and user), but no sample in it yet.
    (tmp_path / "driver").rename(tmp_path / "elsewhere")
    items = file_items(planned)
    batch = {k: [item[k] for item in items] for k in items[0]}
    rows = sum(t.num_rows for t in FileReader(cfg)(batch))
    assert sample_path(3).exists() and rows == pq.read_metadata(sample_path(3)).num_rows >= 3


def test_a_hugging_face_export_reads_its_image_struct_as_the_image(tmp_path):
    from tests.support.exports import hf_image_parquet

    path = hf_image_parquet(tmp_path / "train-00000.parquet", 5)
    t = read_all(path, columns=ColumnsConfig(image="image", caption="text"))
    assert t.column(IMAGE_COL).to_pylist() == [photo(i) for i in range(5)]
    assert t.column("caption").to_pylist()[2] == "an exported photo 2"
    assert t.column(UPSTREAM_STATUS_COL).to_pylist() == [None] * 5


def test_an_unreadable_column_type_or_a_vanished_or_corrupt_file_is_a_read_error_saying_why(tmp_path):
    urls = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": ["https://example.org/1.jpg"], "caption": ["c"]}), urls)
    (row,) = read_all(urls, columns=ColumnsConfig(image="url")).to_pylist()
    assert row[UPSTREAM_STATUS_COL] == READ_ERROR
    assert "input.columns.image: column 'url' is string" in row["_upstream_error"]

    gone = img2dataset_parquet(tmp_path / "gone.parquet", 3)
    f = InputFile(str(gone), file_id_for(str(gone)), "parquet")
    gone.unlink()  # listed, then deleted before its read task ran
    (row,) = pa.concat_tables(read_file(f, ColumnsConfig(), 4)).to_pylist()
    assert row[UPSTREAM_STATUS_COL] == READ_ERROR and "FileNotFoundError" in row["_upstream_error"]

    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1" + b"\0" * 100 + b"PAR1")
    (row,) = read_all(corrupt).to_pylist()
    assert row[UPSTREAM_STATUS_COL] == READ_ERROR and row[LAST_COL] is True


def test_listing_skips_hidden_folders_and_globs_cross_folders_only_with_double_stars(tmp_path):
    for name in ("a/00000.parquet", "a/b/00001.parquet", "_temporary/0/00002.parquet", "a/.cache/x.parquet"):
        img2dataset_parquet(tmp_path / name, 1)
    names = lambda spec: sorted(f.path[len(str(tmp_path)) + 1 :] for f in plan_inputs(InputConfig(path=spec)))  # noqa: E731
    assert names(str(tmp_path)) == ["a/00000.parquet", "a/b/00001.parquet"]
    assert names(f"{tmp_path}/*/*.parquet") == ["a/00000.parquet"]
    assert names(f"{tmp_path}/**/*.parquet") == ["a/00000.parquet", "a/b/00001.parquet"]
    assert names(f"file://{tmp_path}/a") == ["a/00000.parquet", "a/b/00001.parquet"]


@pytest.mark.parametrize(
    ("text", "transient"),
    [
        ("AWS Error SLOW_DOWN during ListObjectsV2 operation: Please reduce your request rate.", True),
        ("AWS Error SERVICE_UNAVAILABLE during GetObject operation: ", True),
        ("AWS Error INTERNAL_FAILURE during GetObject operation: We encountered an internal error.", True),
        (
            "AWS Error UNKNOWN (HTTP status 429) during GetObject operation: Unable to parse ExceptionName",
            True,
        ),
        ("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 28, Timeout was reached", True),
        (
            "AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 56, Connection reset by peer",
            True,
        ),
        ("google::cloud::Status(UNAVAILABLE: connection closed)", True),
        ("AWS Error ACCESS_DENIED during HeadObject operation: No response body.", False),
        ("When reading information for key 'laion/00503.parquet': AWS Error ACCESS_DENIED", False),
        (
            "AWS Error NO_SUCH_BUCKET during ListObjectsV2 operation: The specified bucket does not exist",
            False,
        ),
    ],
)
def test_transient_and_permanent_storage_faults_are_told_apart(text, transient):
    from datajuicer_ray.io.faults import is_transient_io

    assert is_transient_io(OSError(text)) is transient
