"""The text branch: rewrite each caption with an instruction-tuned LLM, grounded in the detected objects.

One prompt (:mod:`.prompt`), one guard (:mod:`.guard`, with :mod:`.language`, :mod:`.normalize`,
:mod:`.injection`, :mod:`.facts` and the WordNet table of :mod:`.lexicon` under it; measured by
``benchmarks/bench_guard.py`` on ``tests/support/data/guard_cases.jsonl``) and one row handling (:mod:`.rows`) shared by
three backends: a transformers ``generate`` actor pool on CPU (:mod:`.transformers_backend`), vLLM through
``ray.data.llm`` and any OpenAI-compatible HTTP endpoint (:mod:`.llm_processors`). The pipeline calls
:func:`datajuicer_ray.text.stage.add_rewrite_stage`.
"""
