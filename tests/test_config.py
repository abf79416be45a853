"""A bad config fails at once, naming the key, before Ray starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from datajuicer_ray.config import (
    ActorPoolConfig,
    ConfigError,
    RewriteConfig,
    VisionConfig,
    fingerprint,
    fingerprinted,
    load_curate_config,
    load_train_config,
    parse_shard,
    unfingerprinted_keys,
)
from datajuicer_ray.vision.geometry import Geometry
from tests.conftest import REPO

DRY = REPO / "conf" / "dry_run.yaml"


def test_dry_run_config_loads_with_contract_defaults():
    cfg = load_curate_config(DRY)
    assert cfg.vision.keep_ratio == 0.5 and cfg.vision.min_confidence == 0.7
    geo = Geometry.from_vision(cfg.vision)
    assert (geo.grid, geo.keep_count) == (14, 98)


def test_overrides_apply_and_are_typed():
    cfg = load_curate_config(DRY, ["vision.keep_ratio=0.3", "input.columns.caption=TEXT"])
    assert cfg.vision.keep_ratio == 0.3 and Geometry.from_vision(cfg.vision).keep_count == round(0.3 * 196)
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
        ("rewrite.request_timeout_s=0", "rewrite.request_timeout_s: must be > 0"),
        ("rewrite.kv_cache_gib=-1", "rewrite.kv_cache_gib: must be >= 0"),
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
    # Only the dry run's sample goes without an input path.
    with pytest.raises(ConfigError, match=r"input.path: must be set"):
        load_curate_config(None, ["output.path=y"])
    assert load_curate_config(None, ["output.path=y", "input.format=sample"]).input.path is None


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


def test_fingerprint_exclusions_are_declared_on_the_fields():
    excluded = unfingerprinted_keys()
    # Speed, slicing, location and transport: a resume on another cluster, slice or endpoint still matches.
    assert {"ray", "vision.min_actors", "vision.num_gpus", "rewrite.max_actors", "rewrite.url"} <= excluded
    assert {"input.shard", "output.path", "rewrite.allow_insecure_http"} <= excluded
    # What a row becomes, including the keys that sit next to the resource knobs.
    for key in (
        "vision.keep_ratio",
        "vision.image_size",
        "vision.dtype",
        "rewrite.model",
        "input.sample_rows",
    ):
        assert key not in excluded and fingerprinted(key), key
    assert not fingerprinted("ray.progress") and not fingerprinted("vision.batch_size")


def test_fingerprint_follows_the_declarations():
    base = ["input.path=in", "output.path=out"]
    a = fingerprint(load_curate_config(None, base))
    # The value every table curated before the exclusions moved onto the fields was stamped with: an
    # accidental change here would refuse to resume every existing table.
    assert a == "528b8655c8d9e391"
    for speed in ("ray.progress=false", "rewrite.max_actors=2", "rewrite.batch_size=4", "input.max_files=3"):
        assert fingerprint(load_curate_config(None, [*base, speed])) == a, speed
    for semantic in ("vision.patch_size=14", "rewrite.enabled=true", "vision.retention=mass"):
        assert fingerprint(load_curate_config(None, [*base, semantic])) != a, semantic


def test_actor_pool_keys_are_shared_but_stay_per_section():
    pools = ["vision.min_actors=2", "vision.max_actors=3", "rewrite.max_actors=4"]
    cfg = load_curate_config(None, ["input.path=in", "output.path=out", *pools])
    assert isinstance(cfg.vision, ActorPoolConfig) and isinstance(cfg.rewrite, ActorPoolConfig)
    assert (cfg.vision.min_actors, cfg.vision.max_actors, cfg.rewrite.max_actors) == (2, 3, 4)
    # Each section keeps its own default batch size.
    assert (cfg.vision.batch_size, cfg.rewrite.batch_size) == (
        VisionConfig.batch_size,
        RewriteConfig.batch_size,
    )
    with pytest.raises(ConfigError, match="rewrite.min_actors: need 1 <= min_actors <= max_actors"):
        load_curate_config(DRY, ["rewrite.min_actors=3", "rewrite.max_actors=2"])
    with pytest.raises(ConfigError, match="vision.num_cpus: must be > 0"):
        load_curate_config(DRY, ["vision.num_cpus=0"])


def test_actor_pool_kwargs():
    from datajuicer_ray.runtime import actor_pool_kwargs

    v = VisionConfig(min_actors=2, max_actors=5, num_cpus=2.0, batch_size=8, resources={"node:x": 0.1})
    kw = actor_pool_kwargs(v, num_gpus=1.0, resources=v.resources)
    assert (kw["compute"].min_size, kw["compute"].max_size) == (2, 5)
    assert (kw["batch_size"], kw["num_cpus"], kw["num_gpus"], kw["resources"]) == (
        8,
        2.0,
        1.0,
        {"node:x": 0.1},
    )
    # A pool without GPUs or resources asks for none: no num_gpus=0 or resources=None in its remote args;
    # it runs on the CPU, so its processes get one malloc arena (tests/test_allocator.py).
    kw = actor_pool_kwargs(RewriteConfig(max_actors=3, num_cpus=4.0))
    assert set(kw) == {"compute", "batch_size", "num_cpus", "runtime_env"} and kw["compute"].max_size == 3


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
