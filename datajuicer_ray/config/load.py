"""Loading a config: YAML and command-line overrides merged onto the schema, then validated.

YAML files are merged onto the dataclasses of :mod:`.schema` with OmegaConf, then command-line dotlist
overrides (``vision.keep_ratio=0.3``) on top. Everything is checked here, before Ray starts: an unknown key
(with the closest known one), a value of the wrong type or out of range raises :class:`ConfigError` naming
the key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from datajuicer_ray.config.schema import ActorPoolConfig, ConfigError, CurateConfig, TrainConfig


def load_config(schema: type, path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """Merge YAML and dotlist overrides onto ``schema``, validate, and return the typed object."""
    base = OmegaConf.structured(schema)
    try:
        merged = base
        if path is not None:
            if not Path(path).exists():
                raise ConfigError(f"config file not found: {path}")
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        if overrides:
            _check_override_syntax(overrides)
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise ConfigError(f"{missing[0]}: required but not set (in the YAML or as {missing[0]}=...)")
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise _as_config_error(err, base) from None
    _VALIDATORS[schema](cfg)
    return cfg


def load_curate_config(path: str | Path | None = None, overrides: list[str] | None = None) -> CurateConfig:
    return load_config(CurateConfig, path, overrides)


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    return load_config(TrainConfig, path, overrides)


def _check_override_syntax(overrides: list[str]) -> None:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. vision.keep_ratio=0.3")


def _as_config_error(err: OmegaConfBaseException, base: DictConfig) -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    msg = getattr(err, "msg", None) or str(err).splitlines()[0]
    hint = ""
    if "not in struct" in str(err) or "Key '" in msg:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(base, parent) if parent else base
        if isinstance(node, DictConfig):
            close = difflib.get_close_matches(leaf, [str(k) for k in node], n=1)
            if close:
                hint = f" (did you mean {(parent + '.' if parent else '') + close[0]}?)"
        return ConfigError(f"{key}: unknown key{hint}")
    return ConfigError(f"{key or '<config>'}: {msg}")


def _require(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _one_of(value: str, key: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, key, f"{value!r} is not one of {', '.join(allowed)}")


def parse_shard(shard: str | None) -> tuple[int, int] | None:
    if shard is None or shard == "":
        return None
    try:
        i, n = (int(x) for x in str(shard).split("/"))
    except ValueError:
        raise ConfigError(f"input.shard: {shard!r} is not of the form i/n, e.g. 3/16") from None
    _require(n >= 1 and 0 <= i < n, "input.shard", f"{shard!r}: need 0 <= i < n")
    return i, n


def _validate_pool(pool: ActorPoolConfig, section: str) -> None:
    _require(
        1 <= pool.min_actors <= pool.max_actors, f"{section}.min_actors", "need 1 <= min_actors <= max_actors"
    )
    # An actor holding no CPU is scheduled anywhere, so nothing stops a node from being oversubscribed.
    _require(pool.num_cpus > 0, f"{section}.num_cpus", "must be > 0")
    _require(pool.batch_size >= 1, f"{section}.batch_size", "must be >= 1")


def _validate_curate(cfg: CurateConfig) -> None:
    i, o, v, r = cfg.input, cfg.output, cfg.vision, cfg.rewrite
    _one_of(i.format, "input.format", ("parquet", "webdataset", "sample"))
    if i.format != "sample":  # the sample has no path (preflight refuses one: it would be someone's data)
        _require(i.path is not None, "input.path", "must be set (a path, a glob, or a list of them)")
        paths = i.path if isinstance(i.path, list) else [i.path]
        _require(
            all(isinstance(p, str) and p for p in paths), "input.path", "must be a path or a list of paths"
        )
    parse_shard(i.shard)
    _require(i.rows_per_block >= 1, "input.rows_per_block", "must be >= 1")
    _require(i.sample_rows >= 1, "input.sample_rows", "must be >= 1")
    _require(i.max_files >= 0, "input.max_files", "must be >= 0")
    _require(
        i.columns.caption is None or bool(i.columns.caption),
        "input.columns.caption",
        "must be a column name, or null for an input without captions",
    )
    _require(bool(o.path), "output.path", "must be set")
    _one_of(o.mode, "output.mode", ("resume", "overwrite"))
    _require(0.0 < o.max_failure_rate <= 1.0, "output.max_failure_rate", "must be in (0, 1]")
    _require(o.failure_window >= 1, "output.failure_window", "must be >= 1")
    _require(
        not (o.retry_failed and o.mode == "overwrite"),
        "output.retry_failed",
        "retries rows of the existing table; it cannot be combined with output.mode=overwrite",
    )
    _require(bool(v.model), "vision.model", "must be set")
    _require(0.0 < v.keep_ratio <= 1.0, "vision.keep_ratio", f"{v.keep_ratio} is not in (0, 1]")
    _one_of(v.retention, "vision.retention", ("fixed", "mass"))
    _one_of(v.scorer, "vision.scorer", ("cls_attention", "text_guided"))
    _require(0.0 <= v.text_guided.weight <= 1.0, "vision.text_guided.weight", "must be in [0, 1]")
    _require(bool(v.text_guided.model), "vision.text_guided.model", "must be set")
    _require(0.0 < v.keep_mass <= 1.0, "vision.keep_mass", f"{v.keep_mass} is not in (0, 1]")
    _require(
        0.0 < v.min_keep_ratio <= v.max_keep_ratio <= 1.0,
        "vision.min_keep_ratio",
        f"need 0 < min_keep_ratio ({v.min_keep_ratio}) <= max_keep_ratio ({v.max_keep_ratio}) <= 1",
    )
    _require(0.0 <= v.min_confidence <= 1.0, "vision.min_confidence", f"{v.min_confidence} is not in [0, 1]")
    _require(v.max_objects >= 0, "vision.max_objects", "must be >= 0")
    _require(v.patch_size >= 1, "vision.patch_size", "must be >= 1")
    _require(v.image_size >= v.patch_size, "vision.image_size", "must be >= vision.patch_size")
    _require(
        v.image_size % v.patch_size == 0,
        "vision.image_size",
        f"{v.image_size} is not a multiple of vision.patch_size={v.patch_size}",
    )
    _require(v.scorer_image_size >= 0, "vision.scorer_image_size", "must be >= 0")
    _one_of(v.dtype, "vision.dtype", ("auto", "fp32", "bf16", "fp16"))
    _one_of(v.device, "vision.device", ("auto", "cpu", "cuda"))
    _one_of(v.decode, "vision.decode", ("auto", "cpu", "gpu"))
    _require(v.max_pixels > 0, "vision.max_pixels", "must be > 0")
    _require(v.max_image_bytes > 0, "vision.max_image_bytes", "must be > 0")
    _validate_pool(v, "vision")
    _require(v.decode_memory_mb >= 0, "vision.decode_memory_mb", "must be >= 0")
    _require(v.num_gpus >= 0 or v.num_gpus == -1, "vision.num_gpus", "must be >= 0, or -1 for auto")
    _one_of(r.backend, "rewrite.backend", ("vllm", "http", "transformers"))
    _require(not (r.only and not r.enabled), "rewrite.only", "needs rewrite.enabled=true")
    _require(bool(r.model), "rewrite.model", "must be set")
    _require(r.max_new_tokens >= 1, "rewrite.max_new_tokens", "must be >= 1")
    _require(r.max_words >= 1, "rewrite.max_words", "must be >= 1")
    _require(r.max_invented_words >= 0, "rewrite.max_invented_words", "must be >= 0")
    _require(r.temperature >= 0, "rewrite.temperature", "must be >= 0")
    _require(r.max_model_len >= 1, "rewrite.max_model_len", "must be >= 1")
    _require(r.max_caption_tokens >= 1, "rewrite.max_caption_tokens", "must be >= 1")
    _require(r.qps >= 0, "rewrite.qps", "must be >= 0")
    _require(
        r.request_timeout_s > 0, "rewrite.request_timeout_s", "must be > 0 (seconds one request may take)"
    )
    _require(
        r.kv_cache_gib >= 0, "rewrite.kv_cache_gib", "must be >= 0 (0: sized from batch_size x max_model_len)"
    )
    _require(0.0 < r.gpu_memory_utilization <= 1.0, "rewrite.gpu_memory_utilization", "must be in (0, 1]")
    _require(r.tensor_parallel_size >= 1, "rewrite.tensor_parallel_size", "must be >= 1")
    _require(r.concurrency >= 1, "rewrite.concurrency", "must be >= 1")
    _validate_pool(r, "rewrite")
    if r.enabled and r.backend == "http":
        _require(bool(r.url), "rewrite.url", "required when rewrite.backend=http")


def _validate_train(cfg: TrainConfig) -> None:
    d, t, m = cfg.data, cfg.train, cfg.model
    _require(bool(d.path), "data.path", "must be set (a curated folder)")
    _require(0.0 <= d.val_fraction < 1.0, "data.val_fraction", "must be in [0, 1)")
    _require(
        d.keep_ratio is None or 0.0 < d.keep_ratio <= 1.0,
        "data.keep_ratio",
        f"{d.keep_ratio} is not in (0, 1]",
    )
    _require(bool(cfg.run.name), "run.name", "must be set")
    _require(t.steps >= 1, "train.steps", "must be >= 1")
    _require(t.num_workers >= 0, "train.num_workers", "must be >= 0")
    _require(t.batch_size >= max(1, t.num_workers), "train.batch_size", "must be >= train.num_workers")
    _require(t.lr > 0, "train.lr", "must be > 0")
    _require(t.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
    _require(t.checkpoint_every >= 1, "train.checkpoint_every", "must be >= 1")
    _one_of(t.precision, "train.precision", ("auto", "fp32", "bf16"))
    _require(
        t.num_workers == 0 or t.batch_size % t.num_workers == 0,
        "train.batch_size",
        f"{t.batch_size} does not split evenly over train.num_workers={t.num_workers}",
    )
    _require(t.cpus_per_worker > 0, "train.cpus_per_worker", "must be > 0")
    _require(t.max_failures >= -1, "train.max_failures", "must be >= -1 (-1 = retry forever)")
    _require(t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
    _require(t.log_every >= 1, "train.log_every", "must be >= 1")
    _require(t.grad_clip > 0, "train.grad_clip", "must be > 0")
    _require(d.shuffle_buffer >= 0, "data.shuffle_buffer", "must be >= 0")
    _require(d.bucket_buffer >= 0, "data.bucket_buffer", "must be >= 0 (0 or 1: no length bucketing)")
    _require(bool(d.caption_column), "data.caption_column", "must be set")
    _require(cfg.eval.batch_size >= 1, "eval.batch_size", "must be >= 1")
    _one_of(cfg.eval.templates, "eval.templates", ("simple", "openai"))
    _require(
        isinstance(m.name, (str, dict)) and bool(m.name), "model.name", "an open_clip name or a model config"
    )


_VALIDATORS = {CurateConfig: _validate_curate, TrainConfig: _validate_train}
