"""The training job end to end on a real local Ray: Ray Data pipeline, TorchTrainer with 2 gloo workers,
checkpoints, and the resume path (model, optimizer, scheduler, step restored)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from deltalake import DeltaTable
from PIL import Image

from datajuicer_ray.config import ConfigError, load_train_config
from datajuicer_ray.vision.geometry import top_k_indices
from tests.support.tables import write_table

CONF = Path(__file__).resolve().parents[1] / "conf" / "train" / "dry_run.yaml"
PHOTOS = {
    "astronaut": "an astronaut in a white suit in front of a flag",
    "coffee": "a cup of coffee on a saucer",
    "chelsea": "a tabby cat looking to the side",
    "rocket": "a rocket on its launch pad",
    "immunohistochemistry": "a stained tissue sample under a microscope",
    "hubble_deep_field": "galaxies in deep space",
    "colorwheel": "a colour wheel of hues",
    "coins": "old coins on a table",
}


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _rows(n: int, rng: np.random.Generator) -> list[dict]:
    names = list(PHOTOS)
    rows = []
    for i in range(n):
        name = names[i % len(names)]
        img = getattr(skimage.data, name)()
        variant = i // len(names)  # crops/flips make each row a distinct image
        if variant % 2:
            img = img[:, ::-1]
        h, w = img.shape[:2]
        img = np.ascontiguousarray(img[: h - 20 * variant, 10 * variant :])
        keep = 98 if i % 5 else 60 + i  # a few rows keep fewer patches: padded batches
        idx = top_k_indices(rng.random((14, 14)), keep)
        rows.append(
            {
                "key": f"{i:06d}",
                "jpg": _jpeg(img),
                "caption": f"photo {i}: {PHOTOS[name]}",
                "caption_rewritten": None if i % 3 == 0 else f"{PHOTOS[name]} (view {variant})",
                "rewrite_status": "disabled" if i % 3 == 0 else "ok",
                "patch_grid": 14,
                "patch_index": idx.tolist(),
                "objects": [],
                "status": "ok",
                "error": None,
            }
        )
    # A rejected row, as curation writes it: the trainer must skip it.
    rows.append(
        {
            "key": "broken",
            "jpg": b"not an image",
            "caption": "unreadable",
            "caption_rewritten": None,
            "rewrite_status": "skipped:decode_error",
            "patch_grid": None,
            "patch_index": None,
            "objects": None,
            "status": "decode_error",
            "error": "cannot identify image file",
        }
    )
    return rows


def make_curated(path: Path, n: int = 24, seed: int = 0) -> Path:
    """A table laid out like `datajuicer-ray curate` output: two commits, a run record with geometry, real JPEGs."""
    rows = _rows(n, np.random.default_rng(seed))
    half = len(rows) // 2
    run = {
        "config": {"input": {"columns": {"image": "jpg"}}, "output": {"keep_image": True}},
        "geometry": {"S": 224, "P": 16, "G": 14},
    }
    return write_table(path, [rows[:half], rows[half:]], run)


@pytest.fixture(scope="module")
def curated_like(tmp_path_factory) -> Path:
    return make_curated(tmp_path_factory.mktemp("curated"))


def _cfg(data: Path, storage: Path, *extra: str):
    return load_train_config(
        CONF,
        [
            f"data.path={data}",
            f"run.storage_path={storage}",
            "run.name=t",
            "train.checkpoint_every=6",
            "train.log_every=3",
            *extra,
        ],
    )


def test_dataset_skips_rejected_rows_and_splits_by_key(ray_local, curated_like):
    from datajuicer_ray.train.job import build_datasets

    cfg = _cfg(curated_like, Path("/unused"), "data.materialize=false", "data.hflip=false")
    ds = build_datasets(cfg)
    train, val = ds["train"].take_all(), ds["val"].take_all()
    assert len(train) + len(val) == 24  # the rejected row is gone, every ok row is in exactly one split
    assert 1 <= len(val) <= 10
    row = train[0]
    assert row["image"].shape == (3, 224, 224) and row["image"].dtype == np.uint8
    assert row["text"].shape == (32,)
    kept = row["patch_index"][row["patch_index"] >= 0]
    assert np.all(np.diff(kept) > 0) and kept.max() < 196


def test_geometry_mismatch_is_a_config_error(ray_local, curated_like):
    from datajuicer_ray.train.job import build_datasets

    cfg = _cfg(curated_like, Path("/unused"), "model.name.vision_cfg.patch_size=14")
    with pytest.raises(ConfigError, match="S=224, P=16"):
        build_datasets(cfg)


def test_not_a_curated_folder_is_a_config_error(tmp_path):
    from datajuicer_ray.io.curated import CuratedTable
    from datajuicer_ray.train.data import open_source

    with pytest.raises(ConfigError, match="no committed rows"):
        open_source(CuratedTable(str(tmp_path)))


@pytest.mark.slow
def test_cli_trains_on_the_dry_run_curation_then_resumes(ray_local, curated_dir, tmp_path, capsys):
    """The done-when: `datajuicer-ray train conf/train/dry_run.yaml data.path=CURATED_DIR` on 2 gloo workers,
    loss down on a fixed small set, a checkpoint written, a second run resuming from it."""
    from ray.train import Checkpoint

    from datajuicer_ray.cli import main
    from datajuicer_ray.train.checkpoint import load_state

    args = [
        "train",
        str(CONF),
        f"data.path={curated_dir}",
        f"run.storage_path={tmp_path}",
        "run.name=t",
        "train.checkpoint_every=6",
        "train.log_every=3",
    ]
    assert main([*args, "train.steps=12"]) == 0
    out = capsys.readouterr().out
    assert "fresh start" in out
    first = json.loads(out[out.index("{") :])
    m = first["metrics"]
    assert m["step"] == 12 and first["resumed_from_step"] == -1
    assert m["loss"] < m["loss_first"]  # a fixed small set: the model fits it
    assert 0.0 <= m["val_i2t_R@1"] <= m["val_i2t_R@5"] <= 1.0
    assert Path(first["checkpoint"], "state.pt").exists()

    assert main([*args, "train.steps=15"]) == 0
    out = capsys.readouterr().out
    assert "resumed from step 12" in out
    second = json.loads(out[out.index("{") :])
    assert second["resumed_from_step"] == 12 and second["metrics"]["step"] == 15

    state = load_state(Checkpoint(second["checkpoint"]))
    assert state["position"]["step"] == 15
    assert state["scheduler"]["last_epoch"] == 15  # the schedule continued, not restarted
    # The loss history spans both runs: the resumed run appended to the first one's.
    assert [s for s, _ in state["position"]["history"]] == [3, 6, 9, 12, 15]
    # AdamW's per-parameter step counts continued too: its moments were restored, not reset.
    assert {float(v["step"]) for v in state["optimizer"]["state"].values()} == {15.0}


def test_two_workers_train_on_varied_kept_counts_bucketed_in_the_stream(ray_local, curated_like, tmp_path):
    """Rows of different kept counts (the table's 60-80 and 98) through length_bucketed on each of the two
    gloo workers: both take the same steps (the run would hang in DDP otherwise) over several epochs."""
    from datajuicer_ray.train.job import run_training

    cfg = _cfg(curated_like, tmp_path, "train.steps=5", "data.bucket_buffer=2", "data.materialize=false")
    summary = run_training(cfg)
    m = summary["metrics"]
    assert m["step"] == 5 and m["epoch"] >= 1 and np.isfinite(m["loss"])
    assert summary["checkpoint"] is not None


def test_training_at_another_keep_ratio_uses_the_patches_that_curation_would_keep(ray_local, tmp_path):
    """A table curated at 0.5 trained at data.keep_ratio=0.3 sees exactly what a 0.3 curation keeps."""
    from datajuicer_ray.config import load_curate_config
    from datajuicer_ray.pipeline import curate
    from datajuicer_ray.train.job import build_datasets
    from tests.support.inputs import img2dataset_parquet

    img2dataset_parquet(tmp_path / "in" / "00000.parquet", 10)
    tables = {}
    for ratio in (0.5, 0.3):
        out = tmp_path / f"out-{ratio}"
        curate(
            load_curate_config(
                None,
                [
                    f"input.path={tmp_path / 'in'}",
                    f"output.path={out}",
                    "vision.model=tiny-random-dino",
                    f"vision.keep_ratio={ratio}",
                    "ray.progress=false",
                ],
            )
        )
        tables[ratio] = out
    fresh = {
        tuple(r["patch_index"])
        for r in DeltaTable(str(tables[0.3])).to_pyarrow_table(columns=["patch_index"]).to_pylist()
    }
    seen = []
    for keep_ratio in ("0.3", None):
        extra = ["data.materialize=false", "data.hflip=false", "data.val_fraction=0"]
        extra += [f"data.keep_ratio={keep_ratio}"] if keep_ratio else []
        rows = build_datasets(_cfg(tables[0.5], Path("/unused"), *extra))["train"].take_all()
        seen.append({tuple(int(i) for i in r["patch_index"] if i >= 0) for r in rows})
    assert len(seen[0]) == 10 and seen[0] == fresh  # re-selected at 0.3 = curated at 0.3
    assert {len(k) for k in seen[1]} == {round(0.5 * 196)}  # without the override: the table's own
