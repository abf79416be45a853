"""Transient faults are retried, never recorded as a row's fate: a flaky store, a broken device, a
retry of the rows a fault did mark, and a job that stops when the cluster, not the data, is broken."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pytest

from datajuicer_ray.config import load_curate_config
from datajuicer_ray.io.location import Location
from datajuicer_ray.io.table import OutputTable
from datajuicer_ray.io.writer import write_data_file
from datajuicer_ray.pipeline import curate
from tests.conftest import start_local_ray
from tests.support.drills import curate_process, tiny_job
from tests.support.faultyfs import injected, register, set_budget
from tests.support.inputs import img2dataset_parquet
from tests.support.tables import read_keys, read_rows

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def drills(tmp_path_factory):
    """A Ray whose workers know the faulty filesystem and read the drill folder."""
    import ray

    base = tmp_path_factory.mktemp("drills")
    env = {
        "DATAJUICER_RAY_TEST_FAULTS": str(base / "faults"),
        "DATAJUICER_RAY_DRILL_DIR": str(base / "drill"),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    (base / "drill").mkdir()
    set_budget(base / "faults", 0)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    register()
    start_local_ray(fresh=True, runtime_env={"worker_process_setup_hook": "tests.support.faultyfs.register"})
    yield base
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def corpus(folder: Path, files: int = 3, rows: int = 6) -> set[str]:
    keys = set()
    for i in range(files):
        img2dataset_parquet(folder / f"{i:05d}.parquet", rows, start=100 * i)
        keys |= {f"{j:09d}" for j in range(100 * i, 100 * i + rows)}
    return keys


def job(inp: str, out: Path, *extra: str) -> list[str]:
    return tiny_job(inp, out, *extra, rows_per_block=3)  # files of 6 rows: two blocks each


def cfg(inp: str, out: Path, *extra: str):
    return load_curate_config(None, job(inp, out, *extra))


def test_a_flaky_store_is_retried_and_no_row_is_marked(drills, tmp_path):
    keys = corpus(tmp_path / "in")
    # enough failures that reads in the workers hit some, after the driver's preflight probe and row count
    # (which tolerate them: at most one each per file) took their share
    set_budget(drills / "faults", 3 + 3 + 4)
    summary = curate(cfg(f"faulty://{tmp_path / 'in'}", tmp_path / "out"))
    assert injected(drills / "faults") == 10
    assert summary["by_status"] == {"ok": len(keys)}, summary["by_status"]
    out_keys = read_keys(tmp_path / "out")
    assert sorted(out_keys) == sorted(keys)


def test_data_file_writes_retry_then_give_up(drills, tmp_path):
    table = pa.table({"x": [1, 2, 3]})
    set_budget(drills / "faults", 2)
    size = write_data_file(Location.of(f"faulty://{tmp_path}"), "part-a.parquet", table)
    assert size == (tmp_path / "part-a.parquet").stat().st_size and injected(drills / "faults") == 2
    set_budget(drills / "faults", 100)  # a store that stays down: the error goes up, nothing is recorded
    with pytest.raises(ConnectionResetError):
        write_data_file(Location.of(f"faulty://{tmp_path}"), "part-b.parquet", table)
    set_budget(drills / "faults", 0)


def test_run_records_retry_a_flaky_store(drills, tmp_path):
    """The driver's own writes (run records, `_summary.json`) retry a transient fault like the data files."""
    table = OutputTable(f"faulty://{tmp_path}")
    set_budget(drills / "faults", 2)
    table.write_json("_runs/r1.json", {"run_id": "r1"})
    assert injected(drills / "faults") == 2
    assert json.loads((tmp_path / "_runs" / "r1.json").read_text()) == {"run_id": "r1"}
    set_budget(drills / "faults", 100)
    with pytest.raises(ConnectionResetError):
        table.write_json("_summary.json", {})
    set_budget(drills / "faults", 0)


def test_retry_failed_replaces_the_marked_rows_exactly_once(drills, tmp_path):
    keys = corpus(tmp_path / "in")
    out = tmp_path / "out"
    (drills / "drill" / "score_error_keys").write_text("3")  # one row of each file: 000000003, 000000103, ...
    first = curate(cfg(str(tmp_path / "in"), out))
    assert first["by_status"] == {"ok": len(keys) - 3, "score_error": 3}
    files_before = len(OutputTable(str(out)).file_uris())
    (drills / "drill" / "score_error_keys").unlink()  # the fault has passed
    retried = curate(cfg(str(tmp_path / "in"), out, "output.retry_failed=true"))
    assert retried["by_status"] == {"ok": len(keys)}
    assert retried["rows_in"] == retried["rows_out"] == len(keys)
    out_keys = read_keys(out)
    assert sorted(out_keys) == sorted(keys)  # replaced, not appended
    assert len(OutputTable(str(out)).file_uris()) == files_before  # the old data files left the table
    # the markers moved to version 2: a second retry, or a plain resume, has nothing to do
    again = curate(cfg(str(tmp_path / "in"), out, "output.retry_failed=true"))
    assert again["rows_out"] == len(keys) and again["this_run"]["rows"] == 0
    assert curate(cfg(str(tmp_path / "in"), out))["this_run"]["rows"] == 0


def test_a_broken_device_restarts_the_actor_instead_of_failing_rows(drills, tmp_path):
    keys = corpus(tmp_path / "in", files=2)
    trigger = drills / "drill" / "device_fault_once"
    trigger.write_text("")
    summary = curate(cfg(str(tmp_path / "in"), tmp_path / "out"))
    assert not trigger.exists(), "the drill never fired"
    assert summary["by_status"] == {"ok": len(keys)}
    assert sorted(r["key"] for r in read_rows(tmp_path / "out", ["key"])) == sorted(keys)


# Ray 2.60's core worker can abort the driver when Ray Data cancels in-flight tasks after an early stop: a
# cancellation racing a task's reply ("Check failed: it != submissible_tasks_.end()", ray-project/ray#54798
# fixed its "retry" twin only). An early stop is what this test makes, so its driver runs in a process of its
# own, and a run that Ray itself aborted (its driver log says so) is run again, once.
RAY_CANCEL_RACE = "Check failed: it != submissible_tasks_.end()"


def _aborted_by_ray(pid: int) -> bool:
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    return any(
        RAY_CANCEL_RACE in f.read_text(errors="replace") for f in logs.glob(f"python-core-driver-*_{pid}.log")
    )


def test_a_job_whose_rows_mostly_fail_for_a_system_reason_stops(drills, tmp_path):
    import ray

    corpus(tmp_path / "in", files=4)
    (drills / "drill" / "score_error_keys").write_text("0")  # every key
    overrides = job(str(tmp_path / "in"), tmp_path / "out", "output.failure_window=6")
    try:
        for attempt in range(2):
            proc = curate_process(tmp_path, overrides, ray.get_runtime_context().gcs_address)
            text, _ = proc.communicate(timeout=300)
            if not (proc.returncode != 0 and attempt == 0 and _aborted_by_ray(proc.pid)):
                break
    finally:
        (drills / "drill" / "score_error_keys").unlink()
    assert proc.returncode == 1, text[-3000:]
    assert re.search(r"error: .*of the last \d+ rows failed for a system reason", text), text[-3000:]
    assert "Traceback" not in text
