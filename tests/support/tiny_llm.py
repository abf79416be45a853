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
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from datajuicer_ray.text.models import SMOLLM2, resolve

    if (target / "config.json").exists():
        return target
    tokenizer = AutoTokenizer.from_pretrained(resolve(SMOLLM2).path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    LlamaForCausalLM(config).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    return target
