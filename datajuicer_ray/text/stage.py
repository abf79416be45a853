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
from typing import Any

from datajuicer_ray.config import CurateConfig
from datajuicer_ray.text.guard import GuardSettings
from datajuicer_ray.text.llm_processors import (
    apply_llm_processor,
    engine_kwargs,
    response_format,
    sampling_params,
    vllm_sampling_params,
)
from datajuicer_ray.text.models import BUILTINS, SMOLLM2, SMOLLM2_ID, describe, resolve
from datajuicer_ray.text.prompt import PROMPT_VERSION, prompt_hash, system_message
from datajuicer_ray.text.transformers_backend import TransformersRewriter


def add_rewrite_stage(ds: Any, cfg: CurateConfig) -> Any:
    """``ds`` with ``caption_rewritten`` and ``rewrite_status`` added by ``rewrite.backend``."""
    r = cfg.rewrite
    if r.backend in ("vllm", "http"):
        return apply_llm_processor(ds, cfg)
    if r.backend != "transformers":
        raise ValueError(f"rewrite.backend: {r.backend!r} is not one of vllm, http, transformers")
    from datajuicer_ray.runtime import actor_pool_kwargs

    if r.model in BUILTINS:
        resolve(r.model)  # convert/build the cached folder once, before the actors start
    return ds.map_batches(
        TransformersRewriter,
        batch_format="pyarrow",
        fn_constructor_kwargs={"rewrite": r, "num_threads": max(1, int(r.num_cpus))},
        **actor_pool_kwargs(r),
    )


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
        info["engine_kwargs"] = engine_kwargs(r)
        info["concurrency"] = r.concurrency
        info["sampling_params"] = vllm_sampling_params(r)
    elif r.backend == "http":
        info["url"] = r.url
        info["sampling_params"] = sampling_params(r)
        info["response_format"] = response_format()
    return info
