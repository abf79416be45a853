"""The GPU and endpoint backends: ``ray.data.llm`` processors for vLLM and OpenAI-compatible HTTP.

``build_processor(config, preprocess=, postprocess=)`` runs preprocess -> engine stages -> postprocess
as one streaming chain of the pipeline's dataset. Our preprocess builds the same chat messages as the
CPU backend (:mod:`.rows`, :mod:`.prompt`); our postprocess runs the same guard. Two details of
``ray.data.llm`` 2.60 shape this module:

- A row whose ``__inference_error__`` is non-empty bypasses every engine stage and the postprocess.
  Rows that must not be rewritten (bad image, no caption and no objects) are marked that way by the
  preprocess (:data:`SKIP_MARK`), so they cost no engine call and no HTTP request, and stay in the
  stream. vLLM rows that fail inference (``should_continue_on_error=True``) arrive the same way.
- Every row must carry the same keys through the row-wise maps, so the preprocess adds placeholders
  ("") and :func:`finalize` turns them into nulls, restores the input's columns (names recorded per
  row in ``_rw_columns``) and their contract types (a round trip through Python widens int16/float32).
- Structured output: the vLLM stage turns ``sampling_params["structured_outputs"]`` into vLLM's
  ``StructuredOutputsParams`` (``ray/llm/_internal/batch/stages/vllm_engine_stage.py``), so guided decoding
  holds the answer to :data:`~.prompt.ANSWER_SCHEMA`; the schema travels as a JSON string, since a nested
  dict in a row would become an Arrow struct. The HTTP payload asks for the same schema through the
  OpenAI ``response_format`` (vLLM's server, OpenAI, llama.cpp and others honour it); an endpoint that
  ignores it still has its answer parsed, and one that is not JSON becomes ``failed:unparsable``.

vLLM is not installed with the default (CPU) environment: it lives in the ``vllm`` extra and the GPU
image. The processor configs here are pydantic models that build without it.
"""

from __future__ import annotations

import json
import logging
import math
from functools import lru_cache, partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from datajuicer_ray.config import ConfigError, CurateConfig, RewriteConfig
from datajuicer_ray.io.schema import output_schema
from datajuicer_ray.text.endpoint import api_key, insecure_key_error
from datajuicer_ray.text.guard import OK, GuardSettings
from datajuicer_ray.text.models import BUILTINS, describe, resolve
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
# Transient endpoint errors (429/502/503/504, timeouts) are retried with exponential backoff.
HTTP_MAX_RETRIES = 3
_PLACEHOLDER_MESSAGES = [{"role": "user", "content": ""}]  # same shape as a real prompt; never sent
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


def engine_kwargs(rewrite: RewriteConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "max_model_len": rewrite.max_model_len,
        "gpu_memory_utilization": rewrite.gpu_memory_utilization,
        "tensor_parallel_size": rewrite.tensor_parallel_size,
    }
    if rewrite.revision:
        kwargs["revision"] = rewrite.revision
    return kwargs


def vllm_config(cfg: CurateConfig) -> Any:
    """``vLLMEngineProcessorConfig`` from ``rewrite.*``.

    A built-in model name becomes its cached local folder, which must then exist on the GPU nodes too
    (shared storage); on a cluster, name a hub id or a shared path.
    """
    from ray.data.llm import vLLMEngineProcessorConfig

    r = cfg.rewrite
    return vLLMEngineProcessorConfig(
        model_source=describe(r.model, r.revision).path,
        engine_kwargs=engine_kwargs(r),
        batch_size=r.batch_size,
        concurrency=r.concurrency,
        should_continue_on_error=True,
        # The engine returns each answer's text already (vLLM detokenizes). Ray's separate detokenize stage
        # would only repeat it, and there a batch of rows the rewrite skipped (all decode_error, say) carries
        # a null `metrics` column that Ray 2.60 cannot concatenate with the typed one of other batches.
        detokenize_stage=False,
    )


def http_config(cfg: CurateConfig) -> Any:
    """``HttpRequestProcessorConfig`` for the endpoint at ``rewrite.url``; the key comes from the environment."""
    from ray.data.llm import HttpRequestProcessorConfig

    r = cfg.rewrite
    # The preflight refuses this first; checked again where the header is built, for callers without one.
    insecure = insecure_key_error(r)
    if insecure:
        raise ConfigError(f"rewrite.allow_insecure_http: {insecure[0]}; {insecure[1]}")
    key = api_key(r)
    return HttpRequestProcessorConfig(
        url=r.url,
        headers={"Authorization": f"Bearer {key}"} if key else None,
        qps=math.ceil(r.qps) if r.qps > 0 else None,
        max_retries=HTTP_MAX_RETRIES,
        batch_size=r.batch_size,
        concurrency=r.concurrency,
    )


def build_llm_processor(cfg: CurateConfig) -> Any:
    from ray.data.llm import build_processor

    r = cfg.rewrite
    config = vllm_config(cfg) if r.backend == "vllm" else http_config(cfg)
    return build_processor(
        config,
        preprocess=partial(preprocess, rewrite=r, backend=r.backend),
        postprocess=partial(postprocess, rewrite=r, backend=r.backend),
    )


def apply_llm_processor(ds: Any, cfg: CurateConfig) -> Any:
    if cfg.rewrite.model in BUILTINS:
        resolve(cfg.rewrite.model)  # build the cached folder once, here, not in every worker
    processor = build_llm_processor(cfg)
    # batch_size=None: one block at a time, never concatenating blocks whose engine columns differ.
    return processor(ds).map_batches(finalize, batch_format="pyarrow", batch_size=None)


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
    """The engine's input for one row: chat messages (vLLM) or a chat-completions payload (HTTP)."""
    columns = [k for k in row if k not in _OWN_COLUMNS]
    tokenizer = caption_tokenizer(rewrite.model, rewrite.revision)
    plan = plan_row(row.get("caption"), row.get("objects"), row.get("status"), rewrite, tokenizer)
    messages = plan.messages or _PLACEHOLDER_MESSAGES
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
        out["messages"] = messages
        out["sampling_params"] = vllm_sampling_params(rewrite)
    else:
        out["payload"] = {
            "model": rewrite.model,
            "messages": messages,
            "response_format": response_format(),
            **sampling_params(rewrite),
        }
    return out


def vllm_generation(row: dict[str, Any], rewrite: RewriteConfig) -> Generation:
    tokens = int(row.get("num_generated_tokens") or 0)
    return Generation(row.get("generated_text") or "", tokens >= rewrite.max_new_tokens, None, tokens)


def http_generation(row: dict[str, Any]) -> Generation:
    """The answer in an OpenAI chat-completions response, or why there is none."""
    resp = row.get("http_response")
    if not isinstance(resp, dict):
        return Generation(error="bad_response: not a JSON object")
    if resp.get("error"):
        return Generation(error=f"http_error: {resp['error']}")
    choices = resp.get("choices") or []
    content = (choices[0].get("message") or {}).get("content") if choices else None
    if not isinstance(content, str):
        return Generation(error="bad_response: no choices[0].message.content")
    tokens = int((resp.get("usage") or {}).get("completion_tokens") or 0)
    return Generation(content, choices[0].get("finish_reason") == "length", None, tokens)


def postprocess(row: dict[str, Any], *, rewrite: RewriteConfig, backend: str) -> dict[str, Any]:
    """The guarded rewrite; never raises (an exception here would fail the whole batch)."""
    try:
        gen = vllm_generation(row, rewrite) if backend == "vllm" else http_generation(row)
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
