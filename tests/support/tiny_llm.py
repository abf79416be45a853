"""A tiny chat model for engine tests: a 2-layer Llama with seeded random weights and SmolLM2's tokenizer
(its chat template), saved with ``save_pretrained`` and loaded back by whatever loads real checkpoints.

Its heads are 64 wide: vLLM's CPU attention takes head sizes from 32 up, so the text branch's own
``tiny-random`` (16-wide heads, fast under transformers) does not load there. It writes nonsense, which
the guard rejects; what it shows is the engine and its decoding constraints, not caption quality.
"""

from __future__ import annotations

import os
from pathlib import Path


def tiny_llama(target: Path, seed: int = 0) -> Path:
    """The model folder at ``target``, built once."""
    from transformers import AutoTokenizer

    from datajuicer_ray.text.models import SMOLLM2, resolve, save_tiny_llama

    if (target / "config.json").exists():
        return target
    tokenizer = AutoTokenizer.from_pretrained(resolve(SMOLLM2).path)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    # 64-wide heads: vLLM's CPU attention has no kernel for the built-in tiny-random's 16-wide ones.
    save_tiny_llama(tokenizer, tmp, hidden_size=128, heads=2, kv_heads=1, seed=seed)
    tmp.rename(target)
    return target
