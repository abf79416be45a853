"""A CPU scorer's threads: one row shard per thread vs one forward over the batch on every thread.

On a CPU the scorer splits a batch into one shard of rows per thread and runs each shard through the model
on a single thread (``PatchScorer._model_outputs``). The alternative, one forward on all threads, splits
every operator across the threads instead: each operator then waits for its slowest thread, so another
process that takes a core for a moment (in a job: Ray's processes, the driver's executor loop, the write
tasks, together ~10% of a core on 2 cores, docs/benchmarks.md) stalls every thread, not one shard.

Both sides are bench_pipeline's bare loop (web photos decoded between batches of 32, ViT-S/16 fp32) in a
fresh process, alternated; the figure is ms a row in ``PatchScorer.score``. Twice: on a quiet machine, and
beside a background process that is busy ``BUSY_MS`` of every ``BUSY_MS + IDLE_MS`` (a stand-in for the
job's own processes, about what they take in a `curate` run's steady state).

    python benchmarks/bench_row_shards.py --quick   # 160 rows, 2 rounds
    python benchmarks/bench_row_shards.py           # 320 rows, 3 rounds
"""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_pipeline import BATCH, scoring_rounds
from benchmarks.common import main_for, median, row, spread

BUSY_MS, IDLE_MS = 3, 25  # ~11% of one core, in bursts


def child(mode: str, input_dir: str, model_dir: str, n: int) -> None:
    from benchmarks.bench_pipeline import scoring_child
    from datajuicer_ray.vision.scorer import PatchScorer

    if mode == "one forward":
        PatchScorer._model_outputs = lambda self, views: self._on_threads(views, self.cpu_threads)
    scoring_child(input_dir, model_dir, n)


def background_load() -> None:
    busy, idle = BUSY_MS / 1000, IDLE_MS / 1000
    while True:
        began = time.perf_counter()
        while time.perf_counter() - began < busy:
            pass
        time.sleep(idle)


@contextmanager
def loaded(on: bool):
    proc = None
    if on:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--load"])
    try:
        yield
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


def measure(n: int, reps: int, load: bool) -> dict:
    modes = ("row shards", "one forward")
    results = scoring_rounds(str(Path(__file__).resolve()), modes, n, reps, around=lambda: loaded(load))
    ms = {mode: [r["ms_per_row"] for r in res] for mode, res in results.items()}
    threads = [r["threads"] for res in results.values() for r in res]
    speedup = median([o / s for s, o in zip(ms["row shards"], ms["one forward"])])
    where = f"beside a process busy {BUSY_MS}ms of every {BUSY_MS + IDLE_MS}ms" if load else "quiet"
    return row(
        f"CPU scorer images/s, row shards vs one forward on all threads, {where} [ViT-S/16 fp32, "
        f"{max(threads)} threads, batches of {BATCH} web photos decoded between them, {n} rows, {reps} "
        f"alternated rounds; ms a row shards {spread(ms['row shards'], ' ms', 1)}, one forward "
        f"{spread(ms['one forward'], ' ms', 1)}]",
        1000 / median(ms["row shards"]),
        1000 / median(ms["one forward"]),
        "faster than one forward" if load else ">= 0.97 (no slower when quiet)",
        speedup > 1.0 if load else speedup >= 0.97,
        ratio=speedup,
    )


def run(quick: bool) -> list[dict]:
    n, reps = (160, 2) if quick else (320, 3)
    return [measure(n, reps, load=False), measure(n, reps, load=True)]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, input_dir, model_dir, n = sys.argv[2:6]
        child(mode, input_dir, model_dir, int(n))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        background_load()
        return
    main_for(run, __doc__)


if __name__ == "__main__":
    main()
