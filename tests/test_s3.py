"""The curated table on object storage: an S3-compatible server on loopback (moto in server mode), two
slices of one corpus written into one s3:// table at once, configured the way users configure S3 (the
usual AWS_* variables). Delta commits each log entry as a conditional PUT (If-None-Match), so concurrent
writers need no lock service."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from datajuicer_ray.io import curated
from datajuicer_ray.io.table import OutputTable
from tests.support.drills import curate_process, drill_overrides
from tests.support.inputs import img2dataset_parquet

BUCKET = "curated"
FILES, ROWS = 6, 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto_server on 127.0.0.1, a bucket, AWS_* set for this process, its subprocesses and a Ray
    started after them (so the workers that write data files see them too)."""
    import boto3
    import ray

    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    t0 = time.time()
    while True:
        try:
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
            break
        except Exception:  # noqa: BLE001 - the server is still starting
            assert time.time() - t0 < 30, log.read_text()
            time.sleep(0.3)
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    server.terminate()
    server.wait(timeout=10)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_two_slices_write_one_s3_table_at_once(s3, tmp_path):
    keys = set()
    for i in range(FILES):
        img2dataset_parquet(tmp_path / "in" / f"{i:05d}.parquet", ROWS, start=100 * i)
        keys |= {f"{j:09d}" for j in range(100 * i, 100 * i + ROWS)}
    out = f"s3://{BUCKET}/laion/curated"

    def slice_(i: int) -> subprocess.Popen:
        overrides = drill_overrides(tmp_path / "in", out, f"input.shard={i}/2", on_workers=False)
        return curate_process(tmp_path, overrides, s3)

    procs = [slice_(0), slice_(1)]
    for p in procs:
        text, _ = p.communicate(timeout=400)
        assert p.returncode == 0, text[-3000:]

    table = OutputTable(out)
    rows = table.dataset().to_table(columns=["key", "source_file"]).to_pylist()
    out_keys = [r["key"] for r in rows]
    assert len(out_keys) == len(set(out_keys)) and set(out_keys) == keys
    assert set(Counter(r["source_file"] for r in rows).values()) == {ROWS}
    assert len(curated.data_files(out)) >= FILES and all(
        u.startswith("s3://") for u in curated.data_files(out)
    )
    assert len(table.run_records()) == 2  # one record per slice, none overwritten
    summary = curated.read_summary(out)
    assert summary["rows_in"] == summary["rows_out"] == FILES * ROWS
    assert summary["files_committed"] == FILES
