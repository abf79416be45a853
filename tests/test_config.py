"""A bad config fails at once, naming the key, before Ray starts."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

from datajuicer_ray.config import ConfigError, fingerprint, load_curate_config, load_train_config, parse_shard

DRY = REPO / "conf" / "dry_run.yaml"


def test_dry_run_config_loads_with_contract_defaults():
    cfg = load_curate_config(DRY)
    assert cfg.vision.keep_ratio == 0.5 and cfg.vision.min_confidence == 0.7
    assert cfg.grid == 14 and cfg.keep_count == 98


def test_overrides_apply_and_are_typed():
    cfg = load_curate_config(DRY, ["vision.keep_ratio=0.3", "input.columns.caption=TEXT"])
    assert cfg.vision.keep_ratio == 0.3 and cfg.keep_count == round(0.3 * 196)
    assert cfg.input.columns.caption == "TEXT"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("vision.keep_ration=0.3", "vision.keep_ration: unknown key (did you mean vision.keep_ratio?)"),
        ("vision.keep_ratio=1.5", "vision.keep_ratio: 1.5 is not in (0, 1]"),
        ("vision.keep_ratio=half", "vision.keep_ratio"),
        ("input.format=csv", "input.format: 'csv' is not one of parquet, webdataset, sample"),
        ("vision.image_size=230", "vision.image_size: 230 is not a multiple of vision.patch_size=16"),
        ("input.shard=5/4", "input.shard"),
        ("rewrite.backend=gpt", "rewrite.backend: 'gpt' is not one of vllm, http, transformers"),
        ("vision.dtype=int8", "vision.dtype"),
        ("keep_ratio", "override 'keep_ratio': expected KEY=VALUE"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_curate_config(DRY, [override])
    assert message in str(err.value)


def test_rewrite_only_needs_rewriting_on():
    with pytest.raises(ConfigError, match="rewrite.only: needs rewrite.enabled=true"):
        load_curate_config(DRY, ["rewrite.enabled=false", "rewrite.only=true"])


def test_missing_required_key_is_named():
    with pytest.raises(ConfigError, match=r"output.path: required"):
        load_curate_config(None, ["input.path=x"])


def test_shard_parsing():
    assert parse_shard("3/16") == (3, 16)
    assert parse_shard(None) is None
    with pytest.raises(ConfigError, match="input.shard"):
        parse_shard("a/b")


def test_fingerprint_ignores_resources_but_not_semantics():
    a = load_curate_config(DRY)
    assert fingerprint(a) == fingerprint(
        load_curate_config(DRY, ["vision.batch_size=3", "vision.max_actors=8"])
    )
    assert fingerprint(a) != fingerprint(load_curate_config(DRY, ["vision.keep_ratio=0.25"]))


def test_train_config_names_bad_key():
    with pytest.raises(ConfigError, match=r"train.stepz: unknown key \(did you mean train.steps\?\)"):
        load_train_config(None, ["data.path=x", "train.stepz=3"])


def test_cli_reports_config_error_without_starting_ray(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "datajuicer_ray.cli", "curate", str(DRY), "vision.min_confidense=0.5"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert (
        "error: vision.min_confidense: unknown key (did you mean vision.min_confidence?)"
        in proc.stderr.splitlines()
    )
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout
