"""The benchmark scripts keep working: structure of their rows, not speed (no timing is asserted)."""

from __future__ import annotations

import pytest

from benchmarks import bench_attention, bench_gpu, run_all
from benchmarks.common import COLUMNS, markdown


@pytest.fixture(autouse=True)
def bench_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DATAJUICER_RAY_BENCH_DIR", str(tmp_path))


def check_rows(rows: list[dict]) -> None:
    assert rows
    for r in rows:
        assert set(COLUMNS) <= set(r), r
        assert isinstance(r["figure"], str) and r["figure"]
        assert r["met"] in (True, False, None)


def test_attention_benchmark_rows_and_probe_matches_eager():
    from datajuicer_ray.vision.models import build_tiny_model

    rows = bench_attention.measure(batch=1, reps=1, model_dir=build_tiny_model("tiny-random-dino"))
    check_rows(rows)
    probe, eager = rows
    assert probe["ours"] > 0 and probe["reference"] > 0 and probe["ratio"] > 0
    # The row carries the probe-vs-eager difference; the probe must reproduce eager's [CLS] row.
    diff = float(probe["figure"].split("max |probe - eager| = ")[1].rstrip("]"))
    assert diff < 1e-4
    assert eager["met"] is None


@pytest.mark.skipif(bench_gpu.gpu_reason() is None, reason="a GPU is present: the real GPU figures run there")
def test_gpu_benchmark_skips_cleanly_without_a_gpu():
    rows = bench_gpu.run(quick=True)
    check_rows(rows)
    assert len(rows) == len(bench_gpu.FIGURES)
    assert all("[skipped: " in r["figure"] and r["met"] is None for r in rows)


def test_run_all_reports_a_missing_or_broken_benchmark_as_an_error_row(capsys):
    missing = run_all.run_one("nope", "benchmarks.bench_does_not_exist", quick=True)
    assert len(missing) == 1 and "nope: error: ModuleNotFoundError" in missing[0]["figure"]
    assert missing[0]["met"] is False
    table = markdown(missing)
    assert table.splitlines()[0] == "| " + " | ".join(COLUMNS) + " |"
    assert len(table.splitlines()) == 3
