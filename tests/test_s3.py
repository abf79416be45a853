"""Object storage end to end: an S3-compatible server on loopback (moto in server mode) behind a small
proxy (tests/support/s3proxy.py) that throttles and resets the way a loaded S3 does, configured the way
users configure S3 (the usual AWS_* variables, AWS_ENDPOINT_URL pointing at the proxy). Inputs and the
table on S3, two slices at once, every command on the s3:// table, credentials never in a message."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datajuicer_ray.config import ColumnsConfig, ConfigError, InputConfig, load_curate_config
from datajuicer_ray.io.columns import STORAGE_RETRIES_COL, UPSTREAM_ERROR_COL, UPSTREAM_STATUS_COL
from datajuicer_ray.io.curated import CuratedTable
from datajuicer_ray.io.reader import plan_inputs, read_file
from datajuicer_ray.io.table import OutputTable
from tests.conftest import start_local_ray
from tests.support.drills import curate_argv, curate_process, drill_overrides
from tests.support.exports import hf_image_parquet
from tests.support.inputs import img2dataset_parquet
from tests.support.s3 import ACCESS_KEY, SECRET, aws_env, environment, moto_server, s3_client
from tests.support.s3proxy import FaultPlan, S3Proxy

BUCKET = "curated"
FILES, ROWS = 6, 8
CONF_TRAIN = Path(__file__).resolve().parents[1] / "conf" / "train" / "dry_run.yaml"


@dataclass
class S3Env:
    proxy: S3Proxy  # what AWS_ENDPOINT_URL points at
    client: Any  # boto3, straight to moto: the test's own hands, never faulted
    address: str  # the Ray every job of this module joins
    drill: Path  # DATAJUICER_RAY_DRILL_DIR of that Ray's workers


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto on 127.0.0.1, the proxy in front of it, a bucket, AWS_* set for this process, its subprocesses
    and a Ray started after them (so its workers read and write through the proxy too)."""
    import ray

    base = tmp_path_factory.mktemp("s3")
    (base / "drill").mkdir()
    with moto_server(base / "moto.log") as upstream, S3Proxy(upstream) as proxy:
        client = s3_client(upstream)
        client.create_bucket(Bucket=BUCKET)
        with environment({**aws_env(proxy.endpoint), "DATAJUICER_RAY_DRILL_DIR": str(base / "drill")}):
            start_local_ray(fresh=True)  # its workers inherit the S3 environment above
            try:
                yield S3Env(proxy, client, ray.get_runtime_context().gcs_address, base / "drill")
            finally:
                ray.shutdown()


def upload_corpus(s3: S3Env, prefix: str, local: Path, files: int = FILES, rows: int = ROWS) -> set[str]:
    """img2dataset shards, one row group each (as img2dataset writes them), under ``s3://BUCKET/prefix``."""
    keys = set()
    for i in range(files):
        path = img2dataset_parquet(local / f"{i:05d}.parquet", rows, start=100 * i)
        pq.write_table(pq.read_table(path), path)
        s3.client.upload_file(str(path), BUCKET, f"{prefix}/{i:05d}.parquet")
        keys |= {f"{j:09d}" for j in range(100 * i, 100 * i + rows)}
    return keys


def table_rows(out: str) -> list[dict]:
    return OutputTable(out).dataset().to_table(columns=["key", "status", "source_file"]).to_pylist()


@dataclass
class ThrottledRun:
    keys: set[str]
    out: str
    outputs: list[str]
    injected: dict[str, int]


@pytest.fixture(scope="module")
def throttled(s3, tmp_path_factory) -> ThrottledRun:
    """Two slices of an S3 corpus into an S3 table at once, through a proxy that answers the first two
    GETs of every object and byte range with 503 SlowDown, the first listings too, and cuts every fourth
    response it serves off halfway with a reset."""
    tmp = tmp_path_factory.mktemp("throttled")
    keys = upload_corpus(s3, "laion/in", tmp / "in")
    out = f"s3://{BUCKET}/laion/out"
    s3.proxy.plan = FaultPlan(BUCKET, "laion/in/", throttle=2, reset_every=4, throttle_lists=2)
    try:
        procs = [
            curate_process(
                tmp,
                drill_overrides(f"s3://{BUCKET}/laion/in", out, f"input.shard={i}/2", on_workers=False),
                s3.address,
            )
            for i in range(2)
        ]
        outputs = []
        for p in procs:
            text, _ = p.communicate(timeout=400)
            assert p.returncode == 0, text[-3000:]
            outputs.append(text)
    finally:
        injected, s3.proxy.plan = dict(s3.proxy.plan.injected), None
    return ThrottledRun(keys, out, outputs, injected)


def test_throttled_s3_input_lands_every_row_once_with_no_read_error(throttled):
    rows = table_rows(throttled.out)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) and set(keys) == throttled.keys  # every row, exactly once
    assert Counter(r["status"] for r in rows) == {"ok": FILES * ROWS}  # no read_error, as without faults
    assert all(r["source_file"].startswith(f"s3://{BUCKET}/laion/in/") for r in rows)
    table = CuratedTable(throttled.out)
    assert len(table.data_files()) >= FILES and all(u.startswith("s3://") for u in table.data_files())
    assert len(table.run_records()) == 2  # one record per slice, none overwritten
    summary = table.stored_summary()
    assert summary["rows_in"] == summary["rows_out"] == FILES * ROWS
    assert summary["files_committed"] == FILES
    # Each fault the proxy injected was retried once, by one of the two slices' drivers or workers, and
    # each slice's summary counted its own.
    assert throttled.injected["throttle"] > 0 and throttled.injected["reset"] > 0, throttled.injected
    retried = [int(re.search(r"retried\s+(\d+)\s+storage requests", t).group(1)) for t in throttled.outputs]
    assert sum(retried) == sum(throttled.injected.values()), (retried, throttled.injected)


def test_train_inspect_and_vacuum_on_the_s3_table(throttled, s3, tmp_path):
    from datajuicer_ray.cli import main
    from datajuicer_ray.config import load_train_config
    from datajuicer_ray.train.job import run_training

    cfg = load_train_config(
        CONF_TRAIN,
        [
            f"data.path={throttled.out}",
            f"run.storage_path={tmp_path / 'runs'}",
            "run.name=s3",
            "train.steps=2",
            "train.num_workers=1",
            "train.log_every=1",
            "train.checkpoint_every=2",
        ],
    )
    trained = run_training(cfg)
    assert trained["metrics"]["step"] == 2 and trained["checkpoint"] is not None

    report = f"s3://{BUCKET}/reports/laion.html"  # the report may go to object storage too
    assert main(["inspect", throttled.out, "--sample", "4", "--out", report]) == 0
    html = s3.client.get_object(Bucket=BUCKET, Key="reports/laion.html")["Body"].read().decode()
    assert html.startswith("<!") and any(k in html for k in throttled.keys)

    # An uncommitted data file (a killed run's) goes; every committed row stays.
    orphan = "laion/out/part-orphan-00000.parquet"
    s3.client.put_object(Bucket=BUCKET, Key=orphan, Body=b"PAR1")
    assert main(["vacuum", throttled.out, "--retention-hours", "0"]) == 0
    listed = s3.client.list_objects_v2(Bucket=BUCKET, Prefix="laion/out/part-")["Contents"]
    assert orphan not in {o["Key"] for o in listed}
    assert {r["key"] for r in table_rows(throttled.out)} == throttled.keys


def test_resume_retry_failed_and_refusals_on_an_s3_table_of_a_hugging_face_export(s3, tmp_path):
    """A Hugging Face export (image as struct<bytes, path>, caption `text`) on S3 into an S3 table."""
    from datajuicer_ray.pipeline import curate

    for i in range(2):
        path = hf_image_parquet(tmp_path / f"train-{i:05d}.parquet", ROWS, start=10 * i)
        s3.client.upload_file(str(path), BUCKET, f"hf/in/train-{i:05d}.parquet")
    out = f"s3://{BUCKET}/hf/out"

    def job(*extra: str, output: str = out):
        cols = ("input.columns.image=image", "input.columns.caption=text")
        return load_curate_config(
            None, drill_overrides(f"s3://{BUCKET}/hf/in", output, *cols, *extra, on_workers=False)
        )

    (s3.drill / "score_error_keys").write_text(":3")  # the fourth row of each file fails to score
    try:
        first = curate(job())
    finally:
        (s3.drill / "score_error_keys").unlink()
    assert first["by_status"] == {"ok": 2 * ROWS - 2, "score_error": 2}
    assert curate(job())["this_run"]["rows"] == 0  # resume: every input committed, nothing read
    retried = curate(job("output.retry_failed=true"))
    assert retried["by_status"] == {"ok": 2 * ROWS}
    assert retried["rows_in"] == retried["rows_out"] == 2 * ROWS
    keys = [r["key"] for r in table_rows(out)]
    assert len(keys) == len(set(keys)) == 2 * ROWS  # replaced, not appended

    with pytest.raises(ConfigError, match="output.path"):  # other settings into the same table
        curate(job("vision.keep_ratio=0.25"))
    s3.client.put_object(Bucket=BUCKET, Key="hf/foreign/notes.txt", Body=b"someone's notes")
    with pytest.raises(ConfigError, match="not empty and not a curated table"):  # even to overwrite
        curate(job("output.mode=overwrite", output=f"s3://{BUCKET}/hf/foreign"))
    assert (
        s3.client.get_object(Bucket=BUCKET, Key="hf/foreign/notes.txt")["Body"].read() == b"someone's notes"
    )


def test_a_prefix_is_listed_in_pages_not_one_request_per_object(s3):
    n = 1050  # more than one ListObjectsV2 page (1,000 keys)
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda i: s3.client.put_object(Bucket=BUCKET, Key=f"many/{i:05d}.parquet", Body=b"x"),
                range(n),
            )
        )
    s3.proxy.calls.clear()
    assert len(plan_inputs(InputConfig(path=f"s3://{BUCKET}/many"))) == n
    assert len(plan_inputs(InputConfig(path=f"s3://{BUCKET}/many/000*.parquet"))) == 100
    calls = {method: k for (method, bucket), k in s3.proxy.calls.items() if bucket == BUCKET}
    assert calls.get("GET", 0) == 0 and calls.get("HEAD", 0) <= 2, calls  # nothing asked per object
    assert calls["LIST"] <= 6, calls  # two pages per listing, and a look at what the path is


@pytest.mark.parametrize("fault", [(500, "InternalError"), (429, "TooManyRequests"), (503, "SlowDown")])
def test_server_errors_and_throttles_are_retried_and_counted_on_the_rows(s3, tmp_path, fault):
    upload_corpus(s3, f"codes/{fault[0]}", tmp_path, files=1)
    (f,) = plan_inputs(InputConfig(path=f"s3://{BUCKET}/codes/{fault[0]}"))
    s3.proxy.plan = FaultPlan(BUCKET, f"codes/{fault[0]}/", throttle=1, fault=fault, reset_every=3)
    try:
        table = pa.concat_tables(read_file(f, ColumnsConfig(), rows_per_block=3))
    finally:
        injected, s3.proxy.plan = sum(s3.proxy.plan.injected.values()), None
    assert table.column(UPSTREAM_STATUS_COL).to_pylist() == ["success"] * ROWS
    assert injected > 0 and sum(table.column(STORAGE_RETRIES_COL).to_pylist()) == injected


def test_what_stays_broken_is_a_read_error_with_the_reason_and_no_secret(s3, tmp_path):
    upload_corpus(s3, "broken", tmp_path, files=2)
    denied, gone = plan_inputs(InputConfig(path=f"s3://{BUCKET}/broken"))
    s3.client.delete_object(Bucket=BUCKET, Key="broken/00001.parquet")  # gone since the listing
    s3.proxy.plan = FaultPlan(BUCKET, "broken/", throttle=0, denied=("broken/00000.parquet",))
    try:
        reasons = {f: pa.concat_tables(read_file(f, ColumnsConfig(), 4)).to_pylist() for f in (denied, gone)}
    finally:
        s3.proxy.plan = None
    for rows in reasons.values():
        assert [r[UPSTREAM_STATUS_COL] for r in rows] == ["read_error"]
        assert SECRET not in rows[0][UPSTREAM_ERROR_COL]
    assert "ACCESS_DENIED" in reasons[denied][0][UPSTREAM_ERROR_COL]
    assert "FileNotFoundError" in reasons[gone][0][UPSTREAM_ERROR_COL]


def test_a_failing_s3_path_fails_before_ray_without_the_secret_in_the_message(s3, tmp_path):
    out = f"s3://{BUCKET}/secret/out"
    s3.proxy.plan = FaultPlan(BUCKET, "none/", denied=("secret/in",))
    try:
        denied = subprocess.run(
            curate_argv(tmp_path, [f"input.path=s3://{BUCKET}/secret/in", f"output.path={out}"]),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        s3.proxy.plan = None
    in_url = subprocess.run(
        curate_argv(
            tmp_path, [f"input.path=s3://{ACCESS_KEY}:{SECRET}@{BUCKET}/laion/in", f"output.path={out}"]
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    for run in (denied, in_url):
        text = run.stdout + run.stderr
        assert run.returncode == 2, text[-2000:]
        assert SECRET not in text and "Traceback" not in text
        assert "Started a local Ray instance" not in text  # refused before Ray
    assert re.search(r"error: input.path: cannot list .*ACCESS_DENIED", denied.stderr), denied.stderr
    assert "<credentials>@curated/laion/in carries credentials" in in_url.stderr, in_url.stderr


def test_credentials_come_from_an_aws_profile_for_the_inputs_and_the_table_alike(throttled, s3, tmp_path):
    """No key in the environment, a profile in a credentials file: pyarrow (listing the inputs) and
    deltalake (reading the log) both sign with the profile's key."""
    (tmp_path / "credentials").write_text(
        "[curation]\naws_access_key_id = AKIDFROMPROFILE\naws_secret_access_key = profile-secret\n"
    )
    (tmp_path / "config").write_text("[profile curation]\nregion = us-east-1\n")
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env.update(
        AWS_PROFILE="curation",
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"),
        AWS_CONFIG_FILE=str(tmp_path / "config"),
    )
    script = (
        "from datajuicer_ray.io.reader import expand_paths\n"
        "from datajuicer_ray.io.table import OutputTable\n"
        f"print(len(expand_paths('s3://{BUCKET}/laion/in', 'parquet')), OutputTable('{throttled.out}').exists())"
    )
    s3.proxy.signers.clear()
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == [str(FILES), "True"], run.stderr[-2000:]
    assert {key for key, _ in s3.proxy.signers} == {"AKIDFROMPROFILE"}, s3.proxy.signers
    assert {kind for _, kind in s3.proxy.signers} == {"data", "log"}, s3.proxy.signers
