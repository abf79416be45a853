"""CPU models with the freed memory kept (``allocator.keep_freed_memory``) vs glibc's defaults.

Each side is a fresh process; the "glibc defaults" side replaces ``keep_freed_memory`` with a no-op
before the model is built. Two workloads:
- the scorer: the bare loop of ``bench_pipeline.py`` (decode a batch of 32 web photos, score it with the
  ViT-S/16-sized scorer, fp32 on a CPU, torch on every core) over the first N rows of the same corpus; only
  the scoring is timed, and the peak RSS of each process is the memory the kept heap costs;
- the CPU rewriter: SmolLM2-135M (transformers) rewrites 32 captions at batch 16 on one thread.

    python benchmarks/bench_allocator.py --quick   # scorer N=200, 3 rounds; rewriter 2 rounds
    python benchmarks/bench_allocator.py           # scorer N=500, 5 rounds; rewriter 3 rounds
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_pipeline import BATCH, scoring_rounds
from benchmarks.common import alternate, main_for, median, row, spread


def child(mode: str, input_dir: str, model_dir: str, n: int) -> None:
    import datajuicer_ray.vision.scorer as scorer_module
    from benchmarks.bench_pipeline import scoring_child

    if mode == "defaults":
        scorer_module.keep_freed_memory = lambda: False
    scoring_child(input_dir, model_dir, n)


def rewriter_child(mode: str) -> None:
    import datajuicer_ray.text.transformers_backend as backend
    from benchmarks.bench_rewrite import captions_table
    from datajuicer_ray.config import RewriteConfig

    if mode == "defaults":
        backend.keep_freed_memory = lambda: False
    rewrite = RewriteConfig(model="smollm2", max_new_tokens=32, batch_size=16)
    rewriter = backend.TransformersRewriter(rewrite, num_threads=1)
    rewriter(captions_table(2))  # warm-up
    table = captions_table(32)
    began = time.perf_counter()
    rewriter(table)
    print(json.dumps({"captions_per_s": table.num_rows / (time.perf_counter() - began)}))


def measure_rewriter(reps: int) -> list[dict]:
    def side(mode: str):
        def go() -> float:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--rewriter-child", mode]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            return json.loads(out.stdout.strip().splitlines()[-1])["captions_per_s"]

        return go

    rate = alternate({"kept": side("kept"), "defaults": side("defaults")}, reps)
    speedup = median([k / d for k, d in zip(rate["kept"], rate["defaults"])])
    return [
        row(
            f"CPU rewriter captions/s, freed memory kept vs glibc's defaults [SmolLM2-135M, transformers, "
            f"32 captions at batch 16, 1 thread, {reps} alternated rounds; kept {spread(rate['kept'])}, "
            f"defaults {spread(rate['defaults'])}]",
            median(rate["kept"]),
            median(rate["defaults"]),
            "faster than the defaults",
            speedup > 1.0,
            ratio=speedup,
        )
    ]


def measure(n: int, reps: int) -> list[dict]:
    results = scoring_rounds(str(Path(__file__).resolve()), ("kept", "defaults"), n, reps)
    ms = {mode: [r["ms_per_row"] for r in res] for mode, res in results.items()}
    speedup = median([d / k for k, d in zip(ms["kept"], ms["defaults"])])
    rss = {m: spread([r["peak_rss_mb"] for r in results[m]], " MB", 0) for m in results}
    rows = results["kept"][0]["rows"]
    return [
        row(
            f"CPU scorer images/s, freed memory kept vs glibc's defaults [ViT-S/16 fp32, batches of {BATCH} web "
            f"photos decoded between them, {rows} rows, {reps} alternated rounds; ms a row kept "
            f"{spread(ms['kept'], ' ms', 1)}, defaults {spread(ms['defaults'], ' ms', 1)}; peak RSS kept "
            f"{rss['kept']}, defaults {rss['defaults']}]",
            1000 / median(ms["kept"]),
            1000 / median(ms["defaults"]),
            "faster than the defaults",
            speedup > 1.0,
            ratio=speedup,
        )
    ]


def run(quick: bool) -> list[dict]:
    if quick:
        return measure(200, 3) + measure_rewriter(2)
    return measure(500, 5) + measure_rewriter(3)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, input_dir, model_dir, n = sys.argv[2:6]
        child(mode, input_dir, model_dir, int(n))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--rewriter-child":
        rewriter_child(sys.argv[2])
        return
    main_for(run, __doc__)


if __name__ == "__main__":
    main()
