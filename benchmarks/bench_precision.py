"""Scorer precision on CPU: fp32 vs bf16 autocast, ViT-S/16-sized, through ``PatchScorer.score``.

Two scorers built from the same VisionConfig except ``vision.dtype`` score the same canonical views (real
photos) in turn. Besides the speed-up, the top-k agreement says what bf16 changes in the output: the share
of kept patches that are the same as fp32's.

    python benchmarks/bench_precision.py --quick   # batch 8, 5 rounds
    python benchmarks/bench_precision.py           # batch 32, 7 rounds
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from benchmarks.common import alternate, main_for, median, row, spread, timed, vit_s16_dir

AGREEMENT_TARGET = 0.9


def canonical_views(n: int) -> np.ndarray:
    from benchmarks.common import photos_rgb, web_jpeg
    from datajuicer_ray.config import VisionConfig
    from datajuicer_ray.vision.decode import Decoder

    decoder = Decoder(VisionConfig())
    photos = photos_rgb()
    views = []
    for i in range(n):
        _, _, pixels = decoder.decode_one(web_jpeg(photos, i), "success", None)
        views.append(np.frombuffer(pixels, np.uint8).reshape(224, 224, 3))
    return np.stack(views)


def scorers(model_dir: Path, batch: int):
    from datajuicer_ray.config import VisionConfig
    from datajuicer_ray.vision.scorer import PatchScorer

    def make(dtype: str) -> PatchScorer:
        return PatchScorer(VisionConfig(model=str(model_dir), dtype=dtype, device="cpu", batch_size=batch))

    return make("fp32"), make("bf16")


def topk_agreement(a: np.ndarray, b: np.ndarray, k: int) -> float:
    from datajuicer_ray.vision.geometry import top_k_indices

    same = [len(set(top_k_indices(x, k)) & set(top_k_indices(y, k))) / k for x, y in zip(a, b)]
    return float(np.mean(same))


def measure(batch: int, reps: int) -> list[dict]:
    fp32, bf16 = scorers(vit_s16_dir(), batch)
    views = canonical_views(batch)
    maps32, _ = fp32.score(views)  # warm-up + reference output
    maps16, _ = bf16.score(views)
    agreement = topk_agreement(maps32, maps16, fp32.k)
    times = alternate(
        {"fp32": lambda: timed(lambda: fp32.score(views)), "bf16": lambda: timed(lambda: bf16.score(views))},
        reps,
    )
    t32, t16 = times["fp32"], times["bf16"]
    speedup = median([a / b for a, b in zip(t32, t16)])
    where = f"ViT-S/16, batch {batch}, {reps} alternated rounds"
    return [
        row(
            f"scorer speed-up, bf16 autocast vs fp32 on CPU [{where}; fp32 {spread(t32, ' s')}, bf16 {spread(t16, ' s')}; "
            f"images/s fp32 {batch / median(t32):.2f}, bf16 {batch / median(t16):.2f}]",
            batch / median(t16),
            batch / median(t32),
            "measured (bf16 seen near 2x on this CPU)",
            None,
            ratio=speedup,
        ),
        row(
            f"kept patches (top-k) shared by bf16 and fp32 [{batch} real photos, k={fp32.k} of {fp32.grid**2}]",
            agreement,
            1.0,
            f">= {AGREEMENT_TARGET}",
            agreement >= AGREEMENT_TARGET,
        ),
    ]


def run(quick: bool) -> list[dict]:
    return measure(8, 5) if quick else measure(32, 7)


def main() -> None:
    main_for(run, __doc__)


if __name__ == "__main__":
    main()
