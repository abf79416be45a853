"""The CPU backend: transformers ``generate`` in a Ray actor pool.

:class:`TransformersRewriter` is a plain callable (``__init__`` loads the model, ``__call__`` maps a
pyarrow batch to a pyarrow batch), so the stage hands it to ``map_batches`` and tests call it directly.
Prompts of one batch are generated together with left padding (a decoder-only model continues from
the right end, so padding goes left and the attention mask hides it). If a batch raises, its rows are
retried one by one so that a single bad row costs only itself: ``failed:<exception name>``.

The answer is started for the model: the prompt ends with :data:`~.prompt.ANSWER_PREFIX` (``{"caption": "``)
after the chat template's generation prompt, so even a 135M model writes inside the JSON object it was
asked for (the CPU path's stand-in for vLLM's guided decoding). Captions reach the prompt without any of
the tokenizer's special tokens (:func:`~.prompt.sanitize_caption`), so parsing the template's own special
tokens cannot turn caption text into one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from datajuicer_ray.allocator import keep_freed_memory
from datajuicer_ray.config import RewriteConfig
from datajuicer_ray.text.guard import GuardSettings
from datajuicer_ray.text.models import load_causal_lm
from datajuicer_ray.text.prompt import ANSWER_PREFIX, special_tokens
from datajuicer_ray.text.rows import Generation, RowPlan, attach, plan_table, settle

log = logging.getLogger(__name__)


class TransformersRewriter:
    def __init__(self, rewrite: RewriteConfig, num_threads: int | None = None):
        import torch

        if num_threads:
            # Ray sets OMP_NUM_THREADS for actors, but torch may have read it before; say it again.
            torch.set_num_threads(num_threads)
        # Generation allocates and frees the same buffers step after step: keep them (allocator.py; 1.09x
        # captions/s, SmolLM2 at batch 16 on one core, benchmarks/bench_allocator.py).
        keep_freed_memory()
        self.rewrite = rewrite
        self.model, self.tokenizer, self.source = load_causal_lm(rewrite.model, rewrite.revision)
        self.settings = GuardSettings.for_words(
            rewrite.max_words, rewrite.max_invented_words, special_tokens(self.tokenizer)
        )
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        # Counters a benchmark reads; not part of the output.
        self.generated_tokens = 0
        self.generated_rows = 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        plans = plan_table(batch, self.rewrite, self.tokenizer)
        todo = [i for i, plan in enumerate(plans) if plan.messages]
        outputs: dict[int, Generation] = {}
        step = self.rewrite.batch_size
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            outputs.update(zip(chunk, self._generate_safely([plans[i] for i in chunk]), strict=True))
        results = [settle(plan, outputs.get(i), self.settings) for i, plan in enumerate(plans)]
        return attach(batch, results)

    def _generate_safely(self, plans: Sequence[RowPlan]) -> list[Generation]:
        try:
            return self.generate([p.messages or [] for p in plans])
        except Exception as err:  # one bad prompt must not cost its neighbours
            if len(plans) > 1:
                log.warning("rewrite: batch of %d failed (%r); retrying row by row", len(plans), err)
                return [g for p in plans for g in self._generate_safely([p])]
            log.warning("rewrite: row failed: %r", err)
            return [Generation(error=f"{type(err).__name__}: {err}")]

    def generate(self, conversations: Sequence[list[dict[str, str]]]) -> list[Generation]:
        """Greedy (or sampled, if rewrite.temperature > 0) answers, in the order of ``conversations``."""
        import torch

        texts = [
            self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) + ANSWER_PREFIX
            for c in conversations
        ]
        # The chat template already wrote the special tokens it needs.
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        sampling: dict[str, Any] = {"do_sample": False}
        if self.rewrite.temperature > 0:
            sampling = {"do_sample": True, "temperature": self.rewrite.temperature}
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                max_new_tokens=self.rewrite.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=sorted(self.eos_ids),
                **sampling,
            )
        new_tokens = out[:, enc["input_ids"].shape[1] :].tolist()
        gens = [self._decode(ids) for ids in new_tokens]
        self.generated_rows += len(gens)
        self.generated_tokens += sum(g.tokens for g in gens)
        return gens

    def _decode(self, ids: list[int]) -> Generation:
        end = next((k for k, t in enumerate(ids) if t in self.eos_ids), None)
        kept = ids if end is None else ids[:end]
        text = ANSWER_PREFIX + self.tokenizer.decode(kept, skip_special_tokens=True)
        return Generation(
            text=text, truncated=end is None, tokens=len(kept) + (end is not None), prefilled=True
        )


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    if not ids:
        raise ValueError("rewrite model has no end-of-sequence token: cannot tell a finished caption")
    return ids
